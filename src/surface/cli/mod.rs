//! The `knock` command line: the subcommands and their arguments ([`Cli`]), one function per
//! subcommand, and what they print ([`format`](mod@format)). `serve` runs the engine; `send`, `queue`
//! and `diagnose` talk to a running engine over its HTTP API; `events` reads the event log
//! the engine writes; `sink` and `bench` are the receiving MX and load generator for tests,
//! benchmarks and trying a policy; `classify` and `passwd` work offline.

pub mod format;

/// `print!` that returns an error instead of panicking when stdout cannot be written:
/// [`StdoutClosed`] when its reader is gone (`knock classify | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// `println!`, as `out!` is `print!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// Whoever read stdout stopped reading: not a failure to report (`main` ends quietly).
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => StdoutClosed.into(),
        _ => anyhow::Error::from(e).context("writing to stdout"),
    }
}

mod steer;
mod suppress;

use crate::config::{Config, Rate};
use crate::net::smtp::server::EhloMode;
use crate::surface::api::SendRequest;
use crate::surface::client::{ApiClient, api_base};
use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "knock",
    version,
    about = "An outbound mail delivery engine that understands deferrals"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the engine (embedded defaults when no config file is given).
    Serve {
        /// The configuration file (docs/configuration.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print the effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inject a message through the HTTP API and print its id.
    Send(SendArgs),
    /// Show the queue per domain; list, show and print its messages, and its shape.
    Queue {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON (the API's answers) instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        show: Option<QueueCommand>,
    },
    /// Print the event log as one readable line per event; with --follow, as it is
    /// written.
    Events(EventsArgs),
    /// Stop sending to a provider or a domain: its mail stays queued (and still expires)
    /// until it is resumed.
    Suspend(steer::SuspendArgs),
    /// Resume a suspended provider or domain: its mail goes at the destination's pace.
    Resume(steer::TargetArgs),
    /// List what is suspended or held, since when, by whom and why.
    Suspensions {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold messages (by id, or all those a filter picks): they stay queued and are not
    /// tried until released.
    Hold(steer::HoldArgs),
    /// Release held messages (by id or filter): they go at their destinations' pace.
    Release(steer::HoldArgs),
    /// Try the chosen mail now, at each destination's pace (greylisted mail keeps its
    /// time).
    Retry(steer::FilterArgs),
    /// Remove the chosen recipients from the queue, without a DSN.
    Cancel(steer::FilterArgs),
    /// Bounce the chosen recipients: their senders get a DSN (unless --no-dsn).
    Bounce(steer::BounceArgs),
    /// The suppression list: list, show, add or remove addresses.
    Suppress(suppress::SuppressArgs),
    /// Run a scriptable receiving MX.
    #[command(after_help = magic_recipients_help())]
    Sink(SinkArgs),
    /// Send N messages of a chosen shape over C concurrent SMTP sessions and report the
    /// rates.
    Bench(BenchArgs),
    /// Move this node's queued mail to another node (or any MTA that relays for it) before
    /// maintenance: each message whole, cancelled here once the other took it.
    Drain {
        #[command(flatten)]
        api: ApiArgs,
        /// The other node's SMTP address, host:port.
        #[arg(long)]
        to: String,
        /// Messages per round (each round is one API call).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show the fleet this node belongs to: the nodes alive, whether Redis answers, and how
    /// many nodes share each limit (docs/fleet.md).
    Fleet {
        #[command(flatten)]
        api: ApiArgs,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say, per provider, what is behind the deferrals and bounces and what is being done
    /// about it.
    Diagnose {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this provider (as `knock queue` names it).
        provider: Option<String>,
        /// How far back to read the event log.
        #[arg(long, default_value = "1h")]
        window: String,
        /// Print the diagnosis as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a sending domain's DNS against the configuration: MX, SPF for every source
    /// address, each DKIM key's published record, DMARC, and each source's reverse DNS.
    /// Exits non-zero when something is an error.
    CheckDomain {
        /// The sending domain (the domain of your From addresses).
        domain: String,
        /// The configuration whose sources and keys are checked (embedded defaults if left
        /// out); its `[dns] servers` are asked.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// DKIM keys: make one and print the DNS record to publish.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Print a credentials-file line (`user:argon2-hash`) for SMTP AUTH; the password is
    /// read from stdin (first line), so it stays out of the shell history.
    Passwd {
        /// The user name (no ':' or spaces).
        user: String,
    },
    /// Run knock's own scheduling on virtual time against modelled receivers.
    Simulate(SimulateArgs),
    /// Classify replies, logged replies and sending MTAs' diagnostics (arguments, or one per
    /// line on stdin) as knock would.
    Classify {
        /// Your own rules (TOML, like data/classify.toml), read before the shipped ones.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// One JSON object per line: {"line", "read_as", "class", "disposition",
        /// "transient", "code", "enhanced", "text", "failure"}.
        #[arg(long)]
        json: bool,
        /// Lines, e.g. "450 4.2.0 Greylisted" or "host mx.example[192.0.2.1] said: 550
        /// 5.1.1 User unknown"; read from stdin when none are given.
        replies: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Write a new private key to DIR/DOMAIN.SELECTOR.pem (mode 0600, never over an existing
    /// file) and print the TXT record to publish at SELECTOR._domainkey.DOMAIN, with the
    /// `[[dkim]]` table that uses it.
    Keygen {
        /// The signing domain (`d=`), usually your From addresses' domain.
        domain: String,
        /// The selector (`s=`): the record goes at SELECTOR._domainkey.DOMAIN.
        selector: String,
        /// An Ed25519 key (RFC 8463) instead of RSA 2048. Not every receiver verifies
        /// Ed25519 yet: sign with both where it matters.
        #[arg(long)]
        ed25519: bool,
        /// Where the key file goes.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file as `knock serve` does at start, and print the
    /// effective configuration: every key with its value after defaults, tokens and
    /// webhook secrets shown as "<hidden>". A mistake is one line naming the key.
    Check {
        /// The configuration file; without it, the embedded defaults `knock serve` runs on
        /// when it is given no --config.
        file: Option<PathBuf>,
        /// Print the effective configuration as JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List the queued messages and their pending recipients (like mailq), oldest first,
    /// a page at a time; the filters narrow it down.
    List(ListArgs),
    /// One message's recipients and attempts.
    Show {
        /// The message's id (as `knock send` prints it, or `queued as` in the SMTP reply),
        /// or the start of it.
        id: String,
    },
    /// Print a queued message as it is stored: its header and body (like postcat).
    Cat {
        /// The message's id, or the start of it.
        id: String,
        /// Only the header section.
        #[arg(long)]
        headers: bool,
    },
    /// How long the pending recipients have waited, per domain (like Postfix's qshape).
    Shape {
        /// A row per domain, or per provider.
        #[arg(long, default_value = "domain", value_parser = ["domain", "provider"])]
        by: String,
    },
}

/// `knock queue list`: the filters of `GET /api/v1/messages` (all must hold) and paging.
#[derive(Args)]
pub struct ListArgs {
    /// Only recipients whose address contains this (in any case).
    #[arg(long)]
    recipient: Option<String>,
    /// Only recipients at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only recipients whose domain belongs to this provider (as `knock queue` names it).
    #[arg(long)]
    provider: Option<String>,
    /// Only recipients in these states, comma-separated: queued (not tried yet), deferred,
    /// active (being delivered now).
    #[arg(long)]
    state: Option<String>,
    /// Only recipients whose last attempt failed with this class (greylist, throttle,
    /// mailbox, system, network, policy, reputation, auth).
    #[arg(long)]
    class: Option<String>,
    /// Only messages that have waited at least this long, e.g. 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Only messages that have waited less than this long, e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    newer_than: Option<Duration>,
    /// Only recipients whose last reply contains this (in any case), e.g. "4.7.28" or
    /// "try again later".
    #[arg(long)]
    reply: Option<String>,
    /// Messages per page (at most 1000).
    #[arg(long, default_value_t = crate::surface::api::listing::DEFAULT_LIMIT)]
    limit: usize,
    /// Start after this message id: the one a previous page said to go on from.
    #[arg(long)]
    after: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    all: bool,
}

impl ListArgs {
    /// The API's query parameters.
    fn query(&self) -> Vec<(&'static str, String)> {
        let duration = |d: &Duration| humantime::format_duration(*d).to_string();
        [
            ("recipient", self.recipient.clone()),
            ("domain", self.domain.clone()),
            ("provider", self.provider.clone()),
            ("state", self.state.clone()),
            ("class", self.class.clone()),
            ("older_than", self.older_than.as_ref().map(duration)),
            ("newer_than", self.newer_than.as_ref().map(duration)),
            ("reply", self.reply.clone()),
            ("limit", Some(self.limit.to_string())),
            ("after", self.after.clone()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
    }
}

#[derive(Args)]
pub struct EventsArgs {
    /// Keep printing events as they are written (like tail -f), through the log being
    /// created, truncated or rotated.
    #[arg(long, short)]
    follow: bool,
    /// Only events of this provider (as `knock queue` names it).
    #[arg(long)]
    provider: Option<String>,
    /// Only events of this kind: processed, deferred, delivered, bounced, expired,
    /// suppressed, cancelled, held, released; repeat for more.
    #[arg(long = "event", value_name = "KIND")]
    events: Vec<crate::event::Kind>,
    /// Only the last N events the log holds, before following (default: all of them;
    /// 10 with --follow).
    #[arg(long, short = 'n', value_name = "N")]
    tail: Option<usize>,
    /// The event log (else --config's [events] path, else knock-data/events.jsonl, as
    /// `knock serve` writes it from the directory it runs in).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Read the event log's path from this config file's [events] path.
    #[arg(long, short, conflicts_with = "file")]
    config: Option<PathBuf>,
    /// Print each event as its JSON line, as written.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ApiArgs {
    /// Base URL of the engine's HTTP API, e.g. http://127.0.0.1:8025 or 127.0.0.1:8025
    /// (else --config's [http] listen, else KNOCK_API).
    #[arg(long, global = true)]
    api: Option<String>,
    /// Read the API address from this config file's [http] listen.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Bearer token, needed from outside the engine's [http] trusted_networks.
    #[arg(long, env = "KNOCK_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(
            api_base(self.api.as_deref(), self.config.as_deref())?,
            self.token.as_deref(),
        )
    }
}

/// The message is either built from --subject and --text, or read whole from --file.
#[derive(Args)]
#[command(
    group(ArgGroup::new("message").required(true).args(["subject", "file"])),
    // Clap's own would leave --text out of the alternative.
    override_usage = "knock send [OPTIONS] --from <FROM> --to <TO>... <--subject <SUBJECT> --text <TEXT>|--file <FILE>>"
)]
pub struct SendArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The envelope sender.
    #[arg(long)]
    from: String,
    /// A recipient; repeat for more.
    #[arg(long, required = true)]
    to: Vec<String>,
    /// With --text: the Subject of a message knock builds (instead of --file).
    #[arg(long, requires = "text")]
    subject: Option<String>,
    /// With --subject: the plain-text body of the message knock builds.
    #[arg(long, requires = "subject")]
    text: Option<String>,
    /// A whole RFC 5322 message, sent as it is (instead of --subject and --text).
    #[arg(long, conflicts_with_all = ["subject", "text"])]
    file: Option<PathBuf>,
    /// The stream (`[stream.NAME]`, e.g. transactional); the server's `[http] stream` when
    /// not given.
    #[arg(long)]
    stream: Option<String>,
    /// Which DSNs to get for the recipients (RFC 3461 NOTIFY): never, or some of success,
    /// failure, delay, comma-separated. Without it: failures only.
    #[arg(long, value_delimiter = ',')]
    notify: Option<Vec<String>>,
    /// What a failure DSN returns: full or headers (the default).
    #[arg(long)]
    ret: Option<String>,
    /// An id of yours for the message, given back in every DSN (RFC 3461 ENVID).
    #[arg(long)]
    envid: Option<String>,
}

#[derive(Args)]
pub struct SinkArgs {
    /// Where to accept SMTP.
    #[arg(long, default_value = "127.0.0.1:2600")]
    listen: std::net::SocketAddr,
    /// The name in the greeting and the EHLO reply.
    #[arg(long, default_value = "sink.localdomain")]
    hostname: String,
    /// Save each accepted message as a file in this directory (RUN-N.eml, RUN unique to
    /// this start). Without it the sink keeps nothing of a message: it only counts.
    #[arg(long)]
    save: Option<PathBuf>,
    /// With --save: fsync each file and its directory entry before answering 250, as a
    /// real MTA's queue does (451 if that fails).
    #[arg(long, requires = "save")]
    fsync: bool,
    /// Greylist the first attempt of each (client IP, sender, recipient) for this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    greylist: Option<Duration>,
    /// Answer 421 4.7.0 past N messages per period per client, e.g. 100/min.
    #[arg(long)]
    rate: Option<Rate>,
    /// Defer this share of recipients at random with 450 4.7.1 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    defer_share: f64,
    /// Wait this long before every reply.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Serve the counters as JSON at http://ADDR/stats, and the accepted recipients per
    /// domain at http://ADDR/stats/domains.
    #[arg(long)]
    stats: Option<std::net::SocketAddr>,
    /// Turn a client IP's connections away past this many at once (421 4.7.0).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Under load: past this many open sessions, every reply waits --slow-delay longer.
    #[arg(long, requires = "slow_delay")]
    slow_above: Option<usize>,
    /// The extra wait per reply under load (with --slow-above).
    #[arg(long, value_parser = humantime::parse_duration)]
    slow_delay: Option<Duration>,
    /// Do not offer PIPELINING.
    #[arg(long, conflicts_with = "helo_only")]
    no_pipelining: bool,
    /// Refuse EHLO (502), so clients fall back to HELO.
    #[arg(long)]
    helo_only: bool,
    /// Do not offer DSN (RFC 3461): a relay must not pass NOTIFY, ORCPT, RET or ENVID on.
    #[arg(long)]
    no_dsn: bool,
    /// Do not offer SMTPUTF8 (RFC 6531): mail that needs it must bounce (5.6.7).
    #[arg(long)]
    no_smtputf8: bool,
    /// Offer STARTTLS (with a self-signed certificate made at start).
    #[arg(long)]
    tls: bool,
    /// Play a receiver of this scenario file (the one `knock simulate` reads) instead of
    /// the flags' shorthands.
    #[arg(long, conflicts_with_all = ["greylist", "rate", "delay", "max_connections", "slow_above"])]
    scenario: Option<PathBuf>,
    /// Which `[receiver.NAME]` of the scenario to play (needed when it has several).
    #[arg(long, requires = "scenario")]
    receiver: Option<String>,
}

#[derive(Args)]
pub struct SimulateArgs {
    /// The scenario: traffic and receivers (see docs/simulate.md).
    #[arg(required_unless_present = "replay")]
    scenario: Option<PathBuf>,
    /// knock's configuration, as `knock serve` would read it (embedded defaults if left
    /// out).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Run the scenario under two configurations and show them side by side.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "config")]
    compare: Option<Vec<PathBuf>>,
    /// Build the scenario from a recorded event log instead (knock's `events.jsonl`).
    #[arg(long, conflicts_with = "scenario")]
    replay: Option<PathBuf>,
    /// With --replay: write the scenario built to this file.
    #[arg(long, requires = "replay")]
    write_scenario: Option<PathBuf>,
    /// Write the per-minute timeline as CSV.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Write the simulated events as knock's event log (JSON lines) to this file.
    #[arg(long, conflicts_with = "compare")]
    events: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Seed the scenario's random choices (instead of its own `[simulation] seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Send this many messages instead of the scenario's `[traffic] messages`.
    #[arg(long)]
    messages: Option<u64>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Where to send (knock's SMTP listener).
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp: std::net::SocketAddr,
    /// Messages to send.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    count: usize,
    /// Message size: one (5KiB), or sizes with weights each message draws from, e.g.
    /// 2KiB:50,20KiB:30,100KiB:15,1MiB:5.
    #[arg(long, default_value = "5KiB")]
    size: String,
    /// Concurrent SMTP sessions.
    #[arg(long, short = 'c', default_value_t = 20)]
    concurrency: usize,
    /// The envelope sender of every message.
    #[arg(long, default_value = "bench@knock.test")]
    from: String,
    /// Recipient pattern: {n} is the recipient's number, {d} its domain's number, {domain}
    /// its domain. Without {n} there is one recipient per domain (a fixed address: one).
    #[arg(long, default_value = "user{n}@{domain}")]
    to: String,
    /// Distinct recipients: message i goes to recipient i mod N (with --rcpts K, to
    /// recipients i*K to i*K+K-1, mod N). Default: none repeats. 1: all to one address.
    #[arg(long)]
    recipients: Option<usize>,
    /// Recipients per message, distinct, in one transaction.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Recipient domains: example.test when 1, else d0.example.test, d1.example.test, …
    #[arg(long, default_value_t = 1)]
    domains: usize,
    /// How recipients spread over the domains.
    #[arg(long, value_enum, default_value_t = crate::tools::bench::Mix::Real)]
    mix: crate::tools::bench::Mix,
    /// Seed of the draws of domains and sizes: the same seed sends the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Messages per connection before QUIT and a new connection (1: one message per
    /// connection); 0 keeps connections.
    #[arg(long, default_value_t = 0)]
    per_session: usize,
    /// Report the CPU time this process spent during the run (knock serve's pid; repeat
    /// for an engine of several processes).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// A sink's stats URL (http://ADDR/stats): wait for delivery and report its rate.
    #[arg(long)]
    sink_stats: Option<String>,
    /// Start TLS on every session.
    #[arg(long)]
    starttls: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one subcommand, logging to stderr as its configuration says (`serve`: `[log]`,
/// once the file is read; the others: plain).
pub async fn run(command: Command) -> anyhow::Result<()> {
    if !matches!(command, Command::Serve { .. }) {
        crate::logging::init(crate::config::LogFormat::Plain);
    }
    match command {
        Command::Serve { config } => serve(config).await,
        Command::Config {
            command: ConfigCommand::Check { file, json },
        } => config_check(file.as_deref(), json),
        Command::Send(args) => send(args).await,
        Command::Queue { api, json, show } => queue(api, json, show).await,
        Command::Events(args) => events(args).await,
        Command::Suspend(args) => steer::suspend(args).await,
        Command::Suppress(args) => suppress::suppress(args).await,
        Command::Resume(args) => steer::resume(args).await,
        Command::Suspensions { api, json } => steer::suspensions(api, json).await,
        Command::Hold(args) => steer::hold(args, false).await,
        Command::Release(args) => steer::hold(args, true).await,
        Command::Retry(args) => steer::retry(args).await,
        Command::Cancel(args) => steer::cancel(args).await,
        Command::Bounce(args) => steer::bounce(args).await,
        Command::Sink(args) => sink(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Diagnose {
            api,
            provider,
            window,
            json,
        } => diagnose(api, provider, window, json).await,
        Command::Fleet { api, json } => fleet(api, json).await,
        Command::Drain { api, to, limit } => drain(api, &to, limit).await,
        Command::Passwd { user } => passwd(&user),
        Command::CheckDomain {
            domain,
            config,
            json,
        } => check_domain(&domain, config.as_deref(), json).await,
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    ed25519,
                    dir,
                },
        } => dkim_keygen(&domain, &selector, ed25519, &dir),
        Command::Simulate(args) => simulate(args),
        Command::Classify {
            rules,
            json,
            replies,
        } => classify(rules, json, replies),
    }
}

async fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    crate::logging::init(config.log.format);
    let engine = crate::serve::Engine::start(config).await?;
    if let Some(path) = path {
        // Reloads (SIGHUP, POST /api/v1/reload) read the same file.
        engine.reload_from(std::fs::canonicalize(&path).unwrap_or(path));
    }
    engine.run_until_signal().await
}

/// `knock config check`: the file read and validated as `knock serve` reads it, then the
/// effective configuration printed.
fn config_check(file: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    let config = match file {
        Some(path) => Config::load(path)?,
        None => Config::parse("")?,
    };
    check_named_files(&config)
        .and_then(|()| config.check_host())
        .with_context(|| match file {
            Some(path) => format!("in config file {}", path.display()),
            None => "in the embedded defaults".to_string(),
        })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&config)?)?;
    } else {
        let source = match file {
            Some(path) => path.display().to_string(),
            None => "no file, the embedded defaults".to_string(),
        };
        outln!("# {source}: valid. Every key with its value after defaults; secrets are hidden.")?;
        out!(
            "{}",
            toml::to_string(&config).context("writing the configuration as TOML")?
        )?;
    }
    Ok(())
}

/// The files the configuration names, read as `knock serve` reads them at start. Nothing is
/// written: the self-signed certificate used without `tls.cert` is `serve`'s to make.
fn check_named_files(config: &Config) -> anyhow::Result<()> {
    crate::policy::classify::Classifier::from_config(&config.classify)?;
    crate::net::tls::Connectors::new(config.tls.ca_file.as_deref())?;
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        crate::net::tls::acceptor(
            Some(cert),
            Some(key),
            &config.spool.path,
            &config.smtp.hostname,
        )?;
    }
    if let Some(path) = &config.smtp.credentials {
        crate::net::auth::Credentials::load(path)?;
    }
    crate::dkim::Dkim::from_config(&config.dkim)?;
    Ok(())
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use crate::tools::simulate::{self, scenario::Scenario};
    let mut scenario = match (&args.scenario, &args.replay) {
        (Some(path), _) => Scenario::load(path)?,
        (None, Some(log)) => {
            let scenario = simulate::replay::scenario(log)?;
            if let Some(out) = &args.write_scenario {
                std::fs::write(out, toml::to_string(&scenario)?)
                    .with_context(|| format!("--write-scenario: writing {}", out.display()))?;
            }
            scenario
        }
        (None, None) => anyhow::bail!("a scenario file or --replay is needed"),
    };
    if let Some(seed) = args.seed {
        scenario.simulation.seed = seed;
    }
    if let Some(n) = args.messages {
        anyhow::ensure!(n > 0, "--messages: must be at least 1");
        anyhow::ensure!(
            scenario.traffic.arrivals.is_empty(),
            "--messages: the scenario lists its arrivals; it cannot be resized"
        );
        scenario.traffic.messages = n;
    }
    let load = |path: &Option<PathBuf>| -> anyhow::Result<Config> {
        match path {
            Some(p) => Config::load(p),
            None => Ok(Config::default()),
        }
    };
    let run =
        |config: &Config, label: &str| -> anyhow::Result<crate::tools::simulate::report::Report> {
            let bar = progress_bar(label);
            let report = simulate::run(&scenario, config, args.events.as_deref(), |done, all| {
                bar.set_length(all);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            Ok(report)
        };
    if let Some(paths) = &args.compare {
        let (a, b) = (&paths[0], &paths[1]);
        let ra = run(&Config::load(a)?, &a.display().to_string())?;
        let rb = run(&Config::load(b)?, &b.display().to_string())?;
        if args.json {
            let both = serde_json::json!({"a": ra, "b": rb});
            outln!("{}", serde_json::to_string_pretty(&both)?)?;
        } else {
            out!(
                "{}",
                simulate::report::compare(
                    (&a.display().to_string(), &ra),
                    (&b.display().to_string(), &rb)
                )
            )?;
        }
        return Ok(());
    }
    let report = run(&load(&args.config)?, "simulating")?;
    if let Some(path) = &args.timeline {
        std::fs::write(path, report.timeline_csv())
            .with_context(|| format!("--timeline: writing {}", path.display()))?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{report}")?;
    }
    Ok(())
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} recipients final")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

async fn queue(api: ApiArgs, json: bool, show: Option<QueueCommand>) -> anyhow::Result<()> {
    let client = api.client()?;
    match show {
        Some(QueueCommand::List(args)) => list(&client, &args, json).await?,
        Some(QueueCommand::Show { id }) => {
            let m = client.message(&id).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&m)?)?;
            } else {
                out!("{}", format::message(&m))?;
            }
        }
        Some(QueueCommand::Cat { id, headers }) => {
            use std::io::Write as _;
            let raw = client.raw(&id, headers).await?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&raw).map_err(stdout_error)?;
            stdout.flush().map_err(stdout_error)?;
        }
        Some(QueueCommand::Shape { by }) => {
            use crate::engine::scheduler::ShapeBy;
            let by = match by.as_str() {
                "provider" => ShapeBy::Provider,
                _ => ShapeBy::Domain,
            };
            let shape = client.shape(by).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&shape)?)?;
            } else {
                out!("{}", format::shape(&shape))?;
            }
        }
        None => {
            let q = client.queue().await?;
            let d = client.destinations().await?;
            let fleet = client.fleet().await?;
            if json {
                let both = serde_json::json!({"domains": q.domains, "destinations": d.destinations, "fleet": fleet});
                outln!("{}", serde_json::to_string_pretty(&both)?)?;
            } else {
                out!("{}\n{}", format::queue(&q), format::destinations(&d))?;
                if let Some(f) = &fleet {
                    outln!("\n{}", format::fleet_line(f))?;
                }
            }
        }
    }
    Ok(())
}

/// `knock queue list`: one page, or with `--all` every page (as one when printing JSON).
async fn list(client: &ApiClient, args: &ListArgs, json: bool) -> anyhow::Result<()> {
    let mut query = args.query();
    let mut page = client.list(&query).await?;
    while args.all
        && let Some(next) = page.next.take()
    {
        query.retain(|(name, _)| *name != "after");
        query.push(("after", next));
        let more = client.list(&query).await?;
        page.messages.extend(more.messages);
        page.next = more.next;
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&page)?)?;
    } else {
        out!("{}", format::list(&page, crate::time::Timestamp::now()))?;
    }
    Ok(())
}

/// How often `knock events --follow` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// `knock events`: what the log holds (the last `--tail` of it), then with `--follow` what
/// is written to it, until interrupted.
async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let path = match (&args.file, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => Config::load(config)?.events.path,
        (None, None) => crate::config::EventsConfig::default().path,
    };
    let mut tail = crate::surface::tail::Tail::new(&path);
    let keep = args.tail.or(args.follow.then_some(10));
    let mut last = std::collections::VecDeque::new();
    loop {
        let read = tail
            .read()
            .with_context(|| format!("reading {}", path.display()))?;
        for line in read.lines {
            if let Some(shown) = event_shown(&args, &line) {
                match keep {
                    Some(n) => {
                        last.push_back(shown);
                        if last.len() > n {
                            last.pop_front();
                        }
                    }
                    None => outln!("{shown}")?,
                }
            }
        }
        if read.caught_up {
            break;
        }
    }
    for shown in last {
        outln!("{shown}")?;
    }
    if !args.follow {
        anyhow::ensure!(
            tail.found(),
            "no event log at {} (knock serve writes it at its [events] path; see --file and --config)",
            path.display()
        );
        return Ok(());
    }
    if !tail.found() {
        eprintln!(
            "waiting for {} to appear (see --file and --config)",
            path.display()
        );
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        loop {
            let read = tail
                .read()
                .with_context(|| format!("reading {}", path.display()))?;
            for line in read.lines {
                if let Some(shown) = event_shown(&args, &line) {
                    outln!("{shown}")?;
                }
            }
            if read.caught_up {
                break;
            }
        }
    }
}

/// The line as `knock events` prints it, if its event passes the filters. A line that is
/// not an event is passed over with a word on stderr.
fn event_shown(args: &EventsArgs, line: &str) -> Option<String> {
    if line.trim().is_empty() {
        return None;
    }
    let event: crate::event::Event = match serde_json::from_str(line) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipped a line that is not an event ({e}): {line}");
            return None;
        }
    };
    let wanted = (args.events.is_empty() || args.events.contains(&event.event))
        && args
            .provider
            .as_ref()
            .is_none_or(|p| event.provider.as_ref() == Some(p));
    match (wanted, args.json) {
        (false, _) => None,
        (true, true) => Some(line.to_string()),
        (true, false) => Some(format::event(&event)),
    }
}

/// Rounds of `POST /api/v1/drain` until nothing is left, or a round moves nothing.
async fn drain(api: ApiArgs, to: &str, limit: usize) -> anyhow::Result<()> {
    let client = api.client()?;
    let body = serde_json::json!({"to": to, "limit": limit});
    let mut moved = 0;
    loop {
        let round: crate::engine::drain::Drained = client.post("/api/v1/drain", &body).await?;
        moved += round.moved;
        outln!(
            "moved {} ({moved} in all), {} left",
            round.moved,
            round.left
        )?;
        if round.left == 0 {
            return Ok(());
        }
        if round.moved == 0 {
            for k in &round.kept {
                outln!("  kept {}: {}", k.id, k.why)?;
            }
            anyhow::bail!(
                "{} message(s) stay here: the last round moved none (run again once they can go)",
                round.left
            );
        }
    }
}

async fn fleet(api: ApiArgs, json: bool) -> anyhow::Result<()> {
    match api.client()?.fleet().await? {
        None => outln!("knock runs alone here: no [cluster] redis (docs/fleet.md)")?,
        Some(f) if json => outln!("{}", serde_json::to_string_pretty(&f)?)?,
        Some(f) => out!("{}", format::fleet(&f, crate::time::Timestamp::now()))?,
    }
    Ok(())
}

async fn diagnose(
    api: ApiArgs,
    provider: Option<String>,
    window: String,
    json: bool,
) -> anyhow::Result<()> {
    let client = api.client()?;
    let report = client.diagnose(provider.as_deref(), &window).await?;
    if !json
        && let Some(f) = client.fleet().await?
        && !f.redis_up
    {
        outln!("{}", format::fleet_line(&f))?;
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else if report.providers.is_empty() {
        outln!("nothing to diagnose: no events in the last {window} and nothing queued")?;
    } else {
        for d in &report.providers {
            outln!("{d}")?;
        }
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use crate::tools::bench::{BenchConfig, Sizes};
    let report = crate::tools::bench::run(BenchConfig {
        target: args.smtp,
        count: args.count,
        concurrency: args.concurrency,
        from: args.from,
        to: args.to,
        recipients: args.recipients,
        rcpts: args.rcpts,
        domains: args.domains,
        mix: args.mix,
        sizes: Sizes::parse(&args.size)?,
        per_session: args.per_session,
        seed: args.seed,
        pids: args.pids,
        sink_stats: args.sink_stats,
        progress: true,
        starttls: args.starttls,
    })
    .await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{report}")?;
    }
    Ok(())
}

fn classify(rules: Option<PathBuf>, json: bool, replies: Vec<String>) -> anyhow::Result<()> {
    use crate::policy::logline;
    use std::io::BufRead;
    let classifier =
        crate::policy::classify::Classifier::from_config(&crate::config::ClassifyConfig { rules })?;
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = if replies.is_empty() {
        Box::new(std::io::stdin().lock().lines())
    } else {
        Box::new(replies.into_iter().map(Ok))
    };
    let mut bad = 0;
    for line in lines {
        let line = line.context("reading stdin")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let read = logline::read(line);
        let Some(outcome) = classifier.line(&read) else {
            eprintln!("no reply code, no known diagnostic and no known phrase: {line}");
            bad += 1;
            continue;
        };
        if json {
            outln!("{}", format::classified_json(&outcome, &read, line))?;
        } else {
            outln!("{}", format::classified(&outcome, &read, line))?;
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} line(s) could not be read");
    }
    Ok(())
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let raw = match &args.file {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let req = SendRequest {
        from: args.from,
        to: args.to,
        raw,
        subject: args.subject,
        text: args.text,
        stream: args.stream,
        notify: args.notify,
        ret: args.ret,
        envid: args.envid,
    };
    let resp = args.api.client()?.send(&req).await?;
    outln!("{}", resp.id)?;
    Ok(())
}

async fn check_domain(
    domain: &str,
    file: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::surface::check_domain::{self, Status};
    let config = match file {
        Some(path) => Config::load(path)?,
        None => Config::parse("")?,
    };
    let checks = check_domain::run(&config, domain).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&checks)?)?;
    } else {
        out!("{}", check_domain::table(&checks))?;
    }
    let errors = checks.iter().filter(|c| c.status == Status::Error).count();
    if errors > 0 {
        anyhow::bail!("{domain}: {errors} error(s) to fix");
    }
    Ok(())
}

fn dkim_keygen(
    domain: &str,
    selector: &str,
    ed25519: bool,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let probe = crate::config::DkimConfig {
        domain: domain.to_string(),
        signing_domain: None,
        selector: selector.to_string(),
        key: dir.join("-"),
        headers: vec!["From".into()],
        canonicalization: "relaxed/relaxed".into(),
    };
    // The same checks as the configuration's (domain, selector).
    let config = crate::config::Config {
        dkim: vec![probe],
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("dkim[0].", "")))?;
    let (path, name, record) = crate::dkim::keygen(dir, domain, selector, ed25519)?;
    // The record's value in 255-byte strings, as one TXT record may hold.
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    outln!("# wrote {} (readable by its owner only)", path.display())?;
    outln!("# publish this TXT record:")?;
    outln!("{name}. IN TXT ( {} )", strings.join(" "))?;
    outln!("# and sign with it:")?;
    outln!("[[dkim]]")?;
    outln!("domain = \"{domain}\"")?;
    outln!("selector = \"{selector}\"")?;
    outln!("key = \"{}\"", path.display())?;
    Ok(())
}

fn passwd(user: &str) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        anyhow::bail!("user: must be non-empty, without ':' or spaces");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    outln!("{user}:{}", crate::net::auth::hash_password(password)?)?;
    Ok(())
}

/// The receiver `name` of the scenario at `path` (its only one when `name` is left out).
fn scenario_receiver(
    path: &std::path::Path,
    name: Option<&str>,
) -> anyhow::Result<crate::tools::receiver::ReceiverModel> {
    let scenario = crate::tools::simulate::scenario::Scenario::load(path)?;
    let names: Vec<&String> = scenario.receivers.keys().collect();
    let name = match (name, names.as_slice()) {
        (Some(name), _) => name.to_string(),
        (None, [only]) => only.to_string(),
        (None, _) => anyhow::bail!(
            "--receiver: the scenario has several receivers, name one of: {}",
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    scenario.receivers.get(&name).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "--receiver: no [receiver.{name}] in {} (it has: {})",
            path.display(),
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The magic recipients, for `knock sink --help`: from the table the receivers answer
/// from, so the two cannot disagree.
fn magic_recipients_help() -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "Magic recipients, at any domain and with any +tag (tempfail+1@...), answer as scripted:\n",
    );
    for m in crate::tools::receiver::MAGIC_RECIPIENTS {
        let local = format!("{}@", m.local_part);
        let _ = writeln!(out, "  {local:<11} {} {}  {}", m.code, m.enhanced, m.means);
    }
    out.trim_end().to_string()
}

async fn sink(args: SinkArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.defer_share) {
        anyhow::bail!("--defer-share: must be between 0 and 1");
    }
    let model = match &args.scenario {
        Some(path) => Some(scenario_receiver(path, args.receiver.as_deref())?),
        None => None,
    };
    let sink = Arc::new(
        crate::tools::sink::Sink::start(crate::tools::sink::SinkConfig {
            listen: args.listen,
            hostname: args.hostname,
            save_dir: args.save,
            fsync: args.fsync,
            keep: false,
            greylist: args.greylist,
            rate: args.rate,
            defer_share: args.defer_share,
            delay: args.delay.unwrap_or_default(),
            max_connections: args.max_connections,
            slow_above: args.slow_above.zip(args.slow_delay),
            ehlo: match (args.no_pipelining, args.helo_only) {
                (_, true) => EhloMode::HeloOnly,
                (true, _) => EhloMode::NoPipelining,
                _ => EhloMode::Full,
            },
            extensions: crate::net::smtp::server::Extensions {
                dsn: !args.no_dsn,
                smtputf8: !args.no_smtputf8,
                chunking: true,
            },
            tls: args.tls,
            model,
            ..Default::default()
        })
        .await
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?,
    );
    eprintln!("knock sink listening on {}", sink.addr);
    if let Some(addr) = args.stats {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--stats: cannot listen on {addr}"))?;
        eprintln!("stats at http://{}/stats", listener.local_addr()?);
        let app = crate::tools::sink::stats_router(sink.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    let stats = sink.stop().await;
    eprintln!("{}", serde_json::to_string_pretty(&stats)?);
    let domains = sink.domains();
    let top = crate::tools::sink::top_domains(&domains, 20);
    if !top.is_empty() {
        eprintln!(
            "recipients by domain ({} domains, the top {}):",
            domains.len(),
            top.len()
        );
        for (domain, n) in top {
            eprintln!("{n:>10}  {domain}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_says_what_it_is_for() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "knock", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without a description: {missing:?}"
        );
        assert!(
            cli.get_subcommands().count() >= 10,
            "the walk saw the subcommands"
        );
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(
            [
                &["knock", "send", "--from", "s@a.test", "--to", "r@b.test"],
                args,
            ]
            .concat(),
        )
    }

    #[test]
    fn send_takes_a_file_or_a_subject_and_text_not_both() {
        let usage = Cli::command()
            .find_subcommand_mut("send")
            .unwrap()
            .render_usage()
            .to_string();
        assert!(
            usage.contains("<--subject <SUBJECT> --text <TEXT>|--file <FILE>>"),
            "the usage shows the alternatives: {usage}"
        );
        assert!(parse(&["--file", "m.eml"]).is_ok());
        assert!(parse(&["--subject", "s", "--text", "t"]).is_ok());
        for (args, kind) in [
            (
                &["--file", "m.eml", "--subject", "s", "--text", "t"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--file", "m.eml", "--text", "t"],
                ErrorKind::ArgumentConflict,
            ),
            (&["--subject", "s"], ErrorKind::MissingRequiredArgument),
            (&["--text", "t"], ErrorKind::MissingRequiredArgument),
            (&[], ErrorKind::MissingRequiredArgument),
        ] {
            let kind_seen = parse(args).err().map(|e| e.kind());
            assert_eq!(kind_seen, Some(kind), "{args:?}");
        }
    }

    #[test]
    fn sink_help_lists_the_magic_recipients() {
        let help = Cli::command()
            .find_subcommand_mut("sink")
            .unwrap()
            .render_long_help()
            .to_string();
        for m in crate::tools::receiver::MAGIC_RECIPIENTS {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{}@", m.local_part)))
                .unwrap_or_else(|| panic!("{} is not listed:\n{help}", m.local_part));
            assert!(
                line.contains(&format!("{} {}", m.code, m.enhanced)),
                "{line}"
            );
        }
        // The operator's guide lists them too.
        let doc = include_str!("../../../docs/operations.md");
        for m in crate::tools::receiver::MAGIC_RECIPIENTS {
            let entry = format!(
                "| `{}@` | `{} {}` | {} |",
                m.local_part, m.code, m.enhanced, m.means
            );
            assert!(doc.contains(&entry), "docs/operations.md lacks {entry}");
        }
    }

    #[test]
    fn queue_json_is_taken_after_show_too() {
        let cli = Cli::try_parse_from(["knock", "queue", "show", "an-id", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Queue {
                json: true,
                show: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn queue_subcommands_take_json_and_the_api_anywhere() {
        for args in [
            &[
                "knock",
                "queue",
                "list",
                "--domain",
                "rx.test",
                "--json",
                "--api",
                "127.0.0.1:1",
            ][..],
            &[
                "knock",
                "queue",
                "--json",
                "shape",
                "--by",
                "provider",
                "--api",
                "127.0.0.1:1",
            ],
            &[
                "knock",
                "queue",
                "--api",
                "127.0.0.1:1",
                "cat",
                "01a2",
                "--headers",
                "--json",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Queue { json, api, .. } = cli.command else {
                panic!("{args:?}")
            };
            assert!(json, "{args:?}");
            assert_eq!(api.api.as_deref(), Some("127.0.0.1:1"), "{args:?}");
        }
        let Command::Queue {
            show: Some(QueueCommand::List(list)),
            ..
        } = Cli::try_parse_from([
            "knock",
            "queue",
            "list",
            "--older-than",
            "90m",
            "--state",
            "deferred",
            "--limit",
            "5",
        ])
        .unwrap()
        .command
        else {
            panic!("a list")
        };
        assert_eq!(
            list.query(),
            [
                ("state", "deferred".to_string()),
                ("older_than", "1h 30m".to_string()),
                ("limit", "5".to_string()),
            ]
        );
        assert!(
            Cli::try_parse_from(["knock", "queue", "list", "--older-than", "soon"]).is_err(),
            "a duration is checked before anything is asked"
        );
    }

    /// The operator's guide names every flag of the queue's and the event log's readers, and
    /// of `config check`.
    #[test]
    fn the_guide_names_every_reading_flag() {
        let doc = include_str!("../../../docs/operations.md");
        let mut cli = Cli::command();
        cli.build();
        let queue = cli.find_subcommand("queue").unwrap();
        let commands = [
            queue.find_subcommand("list").unwrap(),
            queue.find_subcommand("cat").unwrap(),
            queue.find_subcommand("shape").unwrap(),
            cli.find_subcommand("events").unwrap(),
            cli.find_subcommand("config")
                .unwrap()
                .find_subcommand("check")
                .unwrap(),
        ];
        for cmd in commands {
            for arg in cmd.get_arguments().filter(|a| !a.is_global_set()) {
                if let Some(long) = arg.get_long().filter(|l| *l != "help") {
                    assert!(
                        doc.contains(&format!("--{long}")),
                        "operations.md: {} --{long}",
                        cmd.get_name()
                    );
                }
            }
        }
    }

    #[test]
    fn events_take_kinds_and_refuse_unknown_ones() {
        let cli = Cli::try_parse_from([
            "knock",
            "events",
            "--follow",
            "--event",
            "deferred",
            "--event",
            "bounced",
            "--provider",
            "google",
        ])
        .unwrap();
        let Command::Events(args) = cli.command else {
            panic!("events")
        };
        assert!(args.follow);
        assert_eq!(
            args.events,
            [crate::event::Kind::Deferred, crate::event::Kind::Bounced]
        );
        let err = Cli::try_parse_from(["knock", "events", "--event", "deferal"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not an event"), "{err}");
    }

    #[test]
    fn the_sink_plays_the_receiver_a_scenario_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let text = "[traffic]\nmessages = 1\n\n[[traffic.to]]\nreceiver = \"a\"\n\n[receiver.a]\nconnections = 2\n\n[receiver.b]\nconnections = 3\n";
        std::fs::write(&path, text).unwrap();
        let b = scenario_receiver(&path, Some("b")).unwrap();
        assert_eq!(b.connections, Some(3));
        let err = format!("{:#}", scenario_receiver(&path, None).unwrap_err());
        assert!(err.contains("--receiver") && err.contains("a, b"), "{err}");
        let err = format!("{:#}", scenario_receiver(&path, Some("c")).unwrap_err());
        assert!(err.contains("[receiver.c]"), "{err}");
        std::fs::write(&path, text.replace("\n[receiver.b]\nconnections = 3\n", "")).unwrap();
        assert_eq!(scenario_receiver(&path, None).unwrap().connections, Some(2));
    }
}
