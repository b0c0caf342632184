//! `knock bench`: the SMTP load generator. It sends traffic of a chosen shape: N messages
//! over C concurrent sessions, each to K distinct recipients taken from a pool of numbered
//! addresses spread over D domains (evenly, or skewed as real recipient lists are towards a
//! few providers), of sizes drawn from a weighted list, over connections kept or closed
//! after M messages. Every draw is a function of a seed and the message's or recipient's
//! number, so the same flags send the same traffic whatever the sessions' interleaving.
//!
//! It reports accepted messages per second and acknowledgment latency percentiles. Given a
//! sink's stats URL it waits until the sink has every accepted recipient and reports the
//! end-to-end delivered rate; given process ids (the engine's), the CPU time they spent.
//! The bodies are built once per size and shared; only the headers (the message's own To
//! and Message-ID) are written per message.

use crate::address::Address;
use crate::config::TimeoutConfig;
use crate::net::smtp::client::Client;
use crate::net::tls::{Connectors, Policy};
use crate::tools::sink::Stats;
use anyhow::{Context, anyhow, bail, ensure};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: SocketAddr,
    pub count: usize,
    pub concurrency: usize,
    pub from: String,
    /// The recipient pattern: `{n}` is the recipient's number, `{d}` its domain's number,
    /// `{domain}` its domain's name. Without `{n}` there is one recipient per domain.
    pub to: String,
    /// How many distinct recipients (numbers `0..N`); `None` for one per recipient sent,
    /// so that none repeats.
    pub recipients: Option<usize>,
    /// Recipients per message, all distinct, in one transaction.
    pub rcpts: usize,
    /// Recipient domains: `example.test` when 1, else `d0.example.test` and on.
    pub domains: usize,
    pub mix: Mix,
    pub sizes: Sizes,
    /// Messages per connection before QUIT and a new connection; 0 keeps connections.
    pub per_session: usize,
    /// Seeds the draws of domains and sizes.
    pub seed: u64,
    /// Processes whose CPU time to report (the engine's).
    pub pids: Vec<u32>,
    pub sink_stats: Option<String>,
    pub progress: bool,
    /// Start TLS on every session (any certificate), as a submission client would.
    pub starttls: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            target: SocketAddr::from(([127, 0, 0, 1], 2525)),
            count: 20_000,
            concurrency: 20,
            from: "bench@knock.test".into(),
            to: "user{n}@{domain}".into(),
            recipients: None,
            rcpts: 1,
            domains: 1,
            mix: Mix::Real,
            sizes: Sizes::one(5 * 1024),
            per_session: 0,
            seed: 1,
            pids: Vec::new(),
            sink_stats: None,
            progress: false,
            starttls: false,
        }
    }
}

/// How recipients spread over the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Every domain alike.
    Uniform,
    /// As a real list leans on a few providers: 35, 20, 10 and 5 % to the first four
    /// domains, the other 30 % spread evenly over the rest.
    Real,
}

impl Mix {
    /// The relative weight of each of `domains` domains. With four domains or fewer the
    /// real mix keeps the proportions of its first ones (two domains: 35 to 20).
    fn weights(self, domains: usize) -> Vec<f64> {
        const HEAD: [f64; 4] = [35.0, 20.0, 10.0, 5.0];
        const TAIL: f64 = 30.0;
        match self {
            Mix::Uniform => vec![1.0; domains],
            Mix::Real => (0..domains)
                .map(|j| match HEAD.get(j) {
                    Some(&w) => w,
                    None => TAIL / (domains - HEAD.len()) as f64,
                })
                .collect(),
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mix::Uniform => "uniform",
            Mix::Real => "real",
        })
    }
}

/// Message sizes with their weights; each message draws one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizes(pub Vec<SizeWeight>);

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeWeight {
    pub bytes: usize,
    pub weight: u32,
}

impl Sizes {
    pub fn one(bytes: usize) -> Sizes {
        Sizes(vec![SizeWeight { bytes, weight: 1 }])
    }

    /// Reads `--size`: one size (`5KiB`) or a weighted list (`2KiB:50,20KiB:30,1MiB:5`).
    pub fn parse(text: &str) -> anyhow::Result<Sizes> {
        let text = text.trim();
        if !text.contains([':', ',']) {
            return Ok(Sizes::one(parse_size(text)?));
        }
        let mut list = Vec::new();
        for item in text.split(',').map(str::trim) {
            let (size, weight) = item.split_once(':').ok_or_else(|| {
                anyhow!("--size: {item:?} has no weight (a list is SIZE:WEIGHT,…, e.g. 2KiB:50,20KiB:30)")
            })?;
            let weight = weight
                .trim()
                .parse()
                .map_err(|_| anyhow!("--size: the weight in {item:?} is not a whole number"))?;
            list.push(SizeWeight {
                bytes: parse_size(size)?,
                weight,
            });
        }
        ensure!(
            list.iter().any(|s| s.weight > 0),
            "--size: the weights add up to 0"
        );
        Ok(Sizes(list))
    }

    /// The index of the size a draw `u` in [0, 1) falls on.
    fn pick(&self, u: f64) -> usize {
        let total: u64 = self.0.iter().map(|s| u64::from(s.weight)).sum();
        let mut point = (u * total as f64) as u64;
        for (i, s) in self.0.iter().enumerate() {
            match point.checked_sub(u64::from(s.weight)) {
                Some(rest) => point = rest,
                None => return i,
            }
        }
        self.0.len() - 1
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [one] = self.0.as_slice() {
            return write!(f, "{}", bytesize::ByteSize(one.bytes as u64));
        }
        for (i, s) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(
                f,
                "{sep}{}:{}",
                bytesize::ByteSize(s.bytes as u64),
                s.weight
            )?;
        }
        Ok(())
    }
}

fn parse_size(text: &str) -> anyhow::Result<usize> {
    let bytes = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| anyhow!("--size: {text:?} is not a size ({e})"))?
        .as_u64();
    ensure!(bytes > 0, "--size: a message has at least one byte");
    Ok(bytes as usize)
}

/// A piece of the `--to` pattern.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Number,
    DomainNumber,
    Domain,
}

/// The `--to` pattern, read once.
#[derive(Debug, Clone)]
struct Pattern(Vec<Piece>);

impl Pattern {
    fn parse(text: &str) -> anyhow::Result<Pattern> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| anyhow!("--to: {text:?} opens a {{ it does not close"))?
                + open;
            pieces.push(match &rest[open + 1..close] {
                "n" => Piece::Number,
                "d" => Piece::DomainNumber,
                "domain" => Piece::Domain,
                other => bail!(
                    "--to: {text:?} has an unknown placeholder {{{other}}} (there are {{n}}, {{d}} and {{domain}})"
                ),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Pattern(pieces))
    }

    fn has(&self, piece: &Piece) -> bool {
        self.0.contains(piece)
    }

    /// Writes recipient `n` of domain `d` to `out`.
    fn write(&self, out: &mut String, n: usize, d: usize, domains: &Domains) {
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Number => {
                    let _ = write!(out, "{n}");
                }
                Piece::DomainNumber => {
                    let _ = write!(out, "{d}");
                }
                Piece::Domain => domains.write_name(out, d),
            }
        }
    }
}

/// The recipient domains and the share of recipients each gets.
#[derive(Debug, Clone)]
struct Domains {
    /// The running sum of the shares, ending at 1.
    cumulative: Vec<f64>,
}

impl Domains {
    fn new(count: usize, mix: Mix) -> Domains {
        let weights = mix.weights(count);
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += w / total;
                sum
            })
            .collect();
        Domains { cumulative }
    }

    fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// The domain a draw `u` in [0, 1) falls on.
    fn pick(&self, u: f64) -> usize {
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.len() - 1)
    }

    /// One domain is `example.test`, as scripts and tests route it; several are numbered.
    fn write_name(&self, out: &mut String, d: usize) {
        if self.len() == 1 {
            out.push_str("example.test");
        } else {
            let _ = write!(out, "d{d}.example.test");
        }
    }
}

/// Streams of draws, so that a message's size and a recipient's domain are independent.
const DOMAIN_DRAWS: u64 = 0x646f_6d61_696e;
const SIZE_DRAWS: u64 = 0x7369_7a65;

/// A draw in [0, 1) that depends only on the seed, the stream and `n`.
fn draw(seed: u64, stream: u64, n: usize) -> f64 {
    let key = seed ^ stream.rotate_left(17) ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    fastrand::Rng::with_seed(key).f64()
}

/// What each message is: its recipients, their domains and its size, checked once.
#[derive(Debug, Clone)]
struct Plan {
    pattern: Pattern,
    count: usize,
    /// Distinct recipient numbers.
    recipients: usize,
    rcpts: usize,
    domains: Domains,
    mix: Mix,
    sizes: Sizes,
    seed: u64,
}

impl Plan {
    fn new(config: &BenchConfig) -> anyhow::Result<Plan> {
        ensure!(config.count >= 1, "--count must be at least 1");
        ensure!(config.concurrency >= 1, "--concurrency must be at least 1");
        ensure!(config.rcpts >= 1, "--rcpts must be at least 1");
        ensure!(config.domains >= 1, "--domains must be at least 1");
        ensure!(!config.sizes.0.is_empty(), "--size: no size given");
        let pattern = Pattern::parse(&config.to)?;
        let recipients = match config.recipients {
            Some(0) => bail!("--recipients must be at least 1"),
            Some(n) => n,
            None => config.count.saturating_mul(config.rcpts),
        };
        if config.rcpts > 1 {
            ensure!(
                pattern.has(&Piece::Number),
                "--rcpts: {} recipients per message need {{n}} in --to to be distinct",
                config.rcpts
            );
            ensure!(
                recipients >= config.rcpts,
                "--recipients: {recipients} is fewer than --rcpts {}, and a message's recipients are distinct",
                config.rcpts
            );
        }
        let plan = Plan {
            pattern,
            count: config.count,
            recipients,
            rcpts: config.rcpts,
            domains: Domains::new(config.domains, config.mix),
            mix: config.mix,
            sizes: config.sizes.clone(),
            seed: config.seed,
        };
        let mut first = String::new();
        plan.write_recipient(&mut first, 0);
        Address::parse(&first)
            .map_err(|e| anyhow!("--to: {:?} makes {first:?}, not an address: {e}", config.to))?;
        Ok(plan)
    }

    /// The recipient numbers of message `i`: `rcpts` consecutive ones, wrapping at the
    /// number of recipients.
    fn recipients_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.rcpts).map(move |k| (i * self.rcpts + k) % self.recipients)
    }

    /// Each recipient keeps its domain from message to message.
    fn domain_of(&self, recipient: usize) -> usize {
        self.domains.pick(draw(self.seed, DOMAIN_DRAWS, recipient))
    }

    /// The index in `sizes` of message `i`'s size.
    fn size_of(&self, i: usize) -> usize {
        self.sizes.pick(draw(self.seed, SIZE_DRAWS, i))
    }

    fn write_recipient(&self, out: &mut String, recipient: usize) {
        self.pattern
            .write(out, recipient, self.domain_of(recipient), &self.domains)
    }

    /// Writes message `i`'s recipients over `slots` (`rcpts` of them, reused).
    fn write_recipients_of(&self, i: usize, slots: &mut [String]) {
        for (slot, r) in slots.iter_mut().zip(self.recipients_of(i)) {
            slot.clear();
            self.write_recipient(slot, r);
        }
    }

    /// How many distinct addresses the run sends to.
    fn distinct_recipients(&self) -> usize {
        let numbers = self.recipients.min(self.count.saturating_mul(self.rcpts));
        if self.pattern.has(&Piece::Number) {
            return numbers;
        }
        if !self.pattern.has(&Piece::Domain) && !self.pattern.has(&Piece::DomainNumber) {
            return 1;
        }
        let mut seen = vec![false; self.domains.len()];
        for r in 0..numbers {
            seen[self.domain_of(r)] = true;
        }
        seen.iter().filter(|&&s| s).count()
    }
}

/// The plan with what every session shares: one body per size, and what makes this run's
/// Message-IDs unique.
struct Traffic {
    plan: Plan,
    from: String,
    bodies: Vec<Vec<u8>>,
    run: String,
}

impl Traffic {
    fn new(plan: Plan, from: &str) -> Traffic {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let run = format!("{}.{}", std::process::id(), since_epoch.as_millis());
        // The headers of the first message stand for all: the bodies leave room for them.
        let mut rcpts = vec![String::new(); plan.rcpts];
        plan.write_recipients_of(0, &mut rcpts);
        let mut headers = Vec::new();
        write_headers(&mut headers, from, &rcpts, 0, &run);
        let bodies = plan
            .sizes
            .0
            .iter()
            .map(|s| filler(s.bytes.saturating_sub(headers.len())))
            .collect();
        Traffic {
            plan,
            from: from.to_string(),
            bodies,
            run,
        }
    }

    /// Writes message `i`'s recipients into `rcpts` (one per slot) and the message into
    /// `out`, both reused from message to message.
    fn write_message(&self, i: usize, rcpts: &mut [String], out: &mut Vec<u8>) {
        self.plan.write_recipients_of(i, rcpts);
        out.clear();
        write_headers(out, &self.from, rcpts, i, &self.run);
        out.extend_from_slice(&self.bodies[self.plan.size_of(i)]);
    }
}

fn write_headers(out: &mut Vec<u8>, from: &str, rcpts: &[String], n: usize, run: &str) {
    let _ = write!(out, "From: <{from}>\r\nTo: ");
    for (k, rcpt) in rcpts.iter().enumerate() {
        let sep = if k == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}<{rcpt}>");
    }
    let _ = write!(
        out,
        "\r\nSubject: knock bench {n}\r\nMessage-ID: <bench-{n}.{run}@knock.bench>\r\n\r\n"
    );
}

/// Whole lines of text, at most `len` bytes.
fn filler(len: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog, and knock delivers it on time.\r\n";
    let mut body = Vec::with_capacity(len);
    while body.len() + line.len() <= len {
        body.extend_from_slice(line);
    }
    body
}

/// A message of about `size` bytes.
pub fn make_message(from: &str, to: &str, size: usize, n: usize) -> Vec<u8> {
    let mut m = Vec::new();
    write_headers(
        &mut m,
        from,
        &[to.to_string()],
        n,
        &std::process::id().to_string(),
    );
    let body = filler(size.saturating_sub(m.len()));
    m.extend_from_slice(&body);
    m
}

/// The traffic a run sent, for its report.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub messages: usize,
    pub rcpts_per_message: usize,
    pub distinct_recipients: usize,
    pub domains: usize,
    pub mix: Mix,
    pub sizes: Sizes,
    pub sessions: usize,
    /// Messages per connection; 0 when connections are kept.
    pub per_session: usize,
    pub starttls: bool,
    pub seed: u64,
}

impl Shape {
    fn new(config: &BenchConfig, plan: &Plan) -> Shape {
        Shape {
            messages: plan.count,
            rcpts_per_message: plan.rcpts,
            distinct_recipients: plan.distinct_recipients(),
            domains: plan.domains.len(),
            mix: plan.mix,
            sizes: plan.sizes.clone(),
            sessions: config.concurrency,
            per_session: config.per_session,
            starttls: config.starttls,
            seed: plan.seed,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} msg{} × {} rcpt{}, {} distinct recipient{} over {} domain{}",
            self.messages,
            s(self.messages),
            self.rcpts_per_message,
            s(self.rcpts_per_message),
            self.distinct_recipients,
            s(self.distinct_recipients),
            self.domains,
            s(self.domains)
        )?;
        if self.domains > 1 {
            write!(f, " ({} mix)", self.mix)?;
        }
        write!(
            f,
            ", {}, {} session{}, ",
            self.sizes,
            self.sessions,
            s(self.sessions)
        )?;
        match self.per_session {
            0 => write!(f, "connections kept")?,
            m => write!(f, "{m} msg{}/connection", s(m))?,
        }
        if self.starttls {
            write!(f, ", STARTTLS")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub shape: Shape,
    /// Messages with at least one recipient and the data accepted.
    pub accepted: usize,
    pub accepted_recipients: usize,
    pub refused: usize,
    pub elapsed: Duration,
    pub latencies: Latencies,
    /// What the sink received, with `sink_stats`.
    pub delivered: Option<Delivered>,
    /// The CPU time of the `pids`, from the start until delivery (or acceptance) was done.
    pub cpu: Option<Duration>,
}

/// What the sink received during the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivered {
    /// Messages as the sink counts them (a message to several domains arrives as several).
    pub messages: u64,
    pub recipients: u64,
    /// From the start until the last one arrived.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Latencies {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    pub fn from_samples(mut micros: Vec<u64>) -> Latencies {
        if micros.is_empty() {
            return Latencies::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            Duration::from_micros(micros[((micros.len() - 1) as f64 * q).round() as usize])
        };
        Latencies {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl BenchReport {
    /// CPU microseconds per accepted message.
    pub fn cpu_per_message(&self) -> Option<f64> {
        self.cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / self.accepted.max(1) as f64)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "shape      {}", self.shape)?;
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "accepted   {} messages in {secs:.2} s: {:.0} msg/s ({} refused)",
            self.accepted,
            self.accepted as f64 / secs,
            self.refused
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(
            f,
            "latency    p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.latencies.p50),
            ms(self.latencies.p95),
            ms(self.latencies.p99),
            ms(self.latencies.max)
        )?;
        if let Some(d) = self.delivered {
            let secs = d.elapsed.as_secs_f64();
            writeln!(
                f,
                "delivered  {} messages in {secs:.2} s: {:.0} msg/s end to end",
                d.messages,
                d.messages as f64 / secs
            )?;
            writeln!(
                f,
                "recipients {} of {} accepted delivered: {:.0} rcpt/s end to end",
                d.recipients,
                self.accepted_recipients,
                d.recipients as f64 / secs
            )?;
        }
        if let (Some(cpu), Some(per)) = (self.cpu, self.cpu_per_message()) {
            writeln!(
                f,
                "cpu        {:.2} s: {per:.0} µs per message",
                cpu.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// The report as `--json` prints it.
#[derive(Serialize)]
struct ReportJson<'a> {
    shape: &'a Shape,
    accepted: usize,
    accepted_recipients: usize,
    refused: usize,
    elapsed_s: f64,
    msgs_per_s: f64,
    latency_ms: LatencyJson,
    delivered: Option<DeliveredJson>,
    cpu: Option<CpuJson>,
}

#[derive(Serialize)]
struct LatencyJson {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct DeliveredJson {
    messages: u64,
    recipients: u64,
    seconds: f64,
    msgs_per_s: f64,
    rcpts_per_s: f64,
}

#[derive(Serialize)]
struct CpuJson {
    seconds: f64,
    us_per_msg: f64,
}

impl Serialize for BenchReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let elapsed = self.elapsed.as_secs_f64();
        ReportJson {
            shape: &self.shape,
            accepted: self.accepted,
            accepted_recipients: self.accepted_recipients,
            refused: self.refused,
            elapsed_s: elapsed,
            msgs_per_s: self.accepted as f64 / elapsed,
            latency_ms: LatencyJson {
                p50: ms(self.latencies.p50),
                p95: ms(self.latencies.p95),
                p99: ms(self.latencies.p99),
                max: ms(self.latencies.max),
            },
            delivered: self.delivered.map(|d| {
                let seconds = d.elapsed.as_secs_f64();
                DeliveredJson {
                    messages: d.messages,
                    recipients: d.recipients,
                    seconds,
                    msgs_per_s: d.messages as f64 / seconds,
                    rcpts_per_s: d.recipients as f64 / seconds,
                }
            }),
            cpu: self
                .cpu
                .zip(self.cpu_per_message())
                .map(|(cpu, per)| CpuJson {
                    seconds: cpu.as_secs_f64(),
                    us_per_msg: per,
                }),
        }
        .serialize(s)
    }
}

/// What one session counted.
#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    accepted_recipients: usize,
    refused: usize,
}

pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    crate::install_crypto_provider();
    let plan = Plan::new(&config)?;
    let shape = Shape::new(&config, &plan);
    let traffic = Arc::new(Traffic::new(plan, &config.from));
    let http = reqwest::Client::new();
    let baseline = match &config.sink_stats {
        Some(url) => Some(sink_stats(&http, url).await?),
        None => None,
    };
    let cpu_before = cpu_ticks(&config.pids)?;
    let bar = if config.progress {
        indicatif::ProgressBar::new(config.count as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..config.concurrency {
        let (config, traffic, next, bar) =
            (config.clone(), traffic.clone(), next.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            session(&config, &traffic, &next, &bar).await
        }));
    }
    let mut all = Tally {
        latencies: Vec::with_capacity(config.count),
        ..Default::default()
    };
    for t in tasks {
        let tally = t.await.context("a bench session panicked")??;
        all.latencies.extend(tally.latencies);
        all.accepted_recipients += tally.accepted_recipients;
        all.refused += tally.refused;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let delivered = match (&config.sink_stats, &baseline) {
        (Some(url), Some(base)) => {
            Some(wait_delivered(&http, url, base, all.accepted_recipients as u64, start).await?)
        }
        _ => None,
    };
    let cpu = if config.pids.is_empty() {
        None
    } else {
        let ticks = cpu_ticks(&config.pids)?.saturating_sub(cpu_before);
        Some(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_second() as f64,
        ))
    };
    Ok(BenchReport {
        shape,
        accepted: all.latencies.len(),
        accepted_recipients: all.accepted_recipients,
        refused: all.refused,
        elapsed,
        latencies: Latencies::from_samples(all.latencies),
        delivered,
        cpu,
    })
}

/// One SMTP session sending until the shared counter reaches the total, on a new
/// connection every `per_session` messages.
async fn session(
    config: &BenchConfig,
    traffic: &Traffic,
    next: &AtomicUsize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Tally> {
    let connectors = if config.starttls {
        Some(Connectors::new(None)?)
    } else {
        None
    };
    let mut tally = Tally::default();
    let mut client: Option<Client> = None;
    let mut on_connection = 0;
    let mut rcpts = vec![String::new(); traffic.plan.rcpts];
    let mut message = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= config.count {
            break;
        }
        if client.as_ref().is_none_or(|c| c.is_broken()) {
            client = Some(open(config, connectors.as_ref()).await?);
            on_connection = 0;
        }
        let c = client.as_mut().expect("connected above");
        traffic.write_message(i, &mut rcpts, &mut message);
        let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let replies = c.send_to(&config.from, &to, &message).await;
        let took = t0.elapsed();
        // Each recipient's reply is its RCPT refusal, else the reply to the data.
        let accepted = replies
            .per_recipient
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.is_positive()))
            .count();
        if accepted > 0 {
            tally.latencies.push(took.as_micros() as u64);
            tally.accepted_recipients += accepted;
        } else {
            tally.refused += 1;
        }
        bar.inc(1);
        on_connection += 1;
        if config.per_session > 0
            && on_connection >= config.per_session
            && let Some(c) = client.take()
        {
            c.quit().await;
        }
    }
    if let Some(c) = client {
        c.quit().await;
    }
    Ok(tally)
}

/// A new connection, greeted and said hello to (and over TLS with `connectors`).
async fn open(config: &BenchConfig, connectors: Option<&Connectors>) -> anyhow::Result<Client> {
    let timeouts = TimeoutConfig::default();
    let mut c = Client::connect(config.target, &timeouts).await?;
    c.read_greeting().await?;
    c.hello("bench.knock").await?;
    if let Some(connectors) = connectors {
        let host = config.target.ip().to_string();
        if let Err(refused) = c.starttls(connectors, Policy::Require, &host).await? {
            bail!("STARTTLS refused: {refused}");
        }
        c.hello("bench.knock").await?;
    }
    Ok(c)
}

async fn sink_stats(http: &reqwest::Client, url: &str) -> anyhow::Result<Stats> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("reading sink stats at {url}"))?;
    resp.json()
        .await
        .with_context(|| format!("sink stats at {url} are not JSON"))
}

/// Polls the sink until it has `expected` more recipients (the engine may carry several in
/// one message), or nothing arrives for 30 s.
async fn wait_delivered(
    http: &reqwest::Client,
    url: &str,
    base: &Stats,
    expected: u64,
    start: Instant,
) -> anyhow::Result<Delivered> {
    let mut last = Delivered {
        messages: 0,
        recipients: 0,
        elapsed: start.elapsed(),
    };
    let mut last_change = Instant::now();
    loop {
        let now = sink_stats(http, url).await?;
        let (messages, recipients) = (
            now.messages.saturating_sub(base.messages),
            now.recipients.saturating_sub(base.recipients),
        );
        if (messages, recipients) != (last.messages, last.recipients) {
            last = Delivered {
                messages,
                recipients,
                elapsed: start.elapsed(),
            };
            last_change = Instant::now();
        }
        if recipients >= expected || last_change.elapsed() > Duration::from_secs(30) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The user and system CPU time of `pids` together, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for &pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path)
            .with_context(|| format!("--pid {pid}: no such process (reading {path})"))?;
        let (user, system) = cpu_of_stat(&stat)
            .ok_or_else(|| anyhow!("--pid {pid}: {path} is not as Linux writes it"))?;
        total += user + system;
    }
    Ok(total)
}

/// utime and stime (fields 14 and 15 of `/proc/PID/stat`). The command name before them
/// is in parentheses and may hold spaces and parentheses itself, so fields count from the
/// last `)`.
fn cpu_of_stat(stat: &str) -> Option<(u64, u64)> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// Clock ticks per second, what `sysconf(_SC_CLK_TCK)` answers: the kernel hands it to
/// every process in its auxiliary vector (`AT_CLKTCK`). knock has no libc binding; should
/// the vector be unreadable, 100 is the value of Linux on every common architecture.
fn clock_ticks_per_second() -> u64 {
    const AT_CLKTCK: usize = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| usize::from_ne_bytes(b.try_into().expect("a word"));
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| {
            auxv.chunks_exact(2 * WORD)
                .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
                .find(|&(key, _)| key == AT_CLKTCK)
        })
        .map(|(_, ticks)| ticks as u64)
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(f: impl FnOnce(&mut BenchConfig)) -> anyhow::Result<Plan> {
        let mut config = BenchConfig {
            count: 10,
            ..Default::default()
        };
        f(&mut config);
        Plan::new(&config)
    }

    fn recipients(plan: &Plan, i: usize) -> Vec<String> {
        let mut slots = vec![String::new(); plan.rcpts];
        plan.write_recipients_of(i, &mut slots);
        slots
    }

    fn error(result: anyhow::Result<Plan>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn message_has_the_asked_size() {
        let m = make_message("a@b.test", "c@d.test", 5 * 1024, 1);
        assert!(
            m.len() <= 5 * 1024 && m.len() > 5 * 1024 - 100,
            "{}",
            m.len()
        );
        assert!(m.starts_with(b"From: <a@b.test>\r\n"));
    }

    #[test]
    fn percentiles() {
        let l = Latencies::from_samples((1..=100).collect());
        assert_eq!(
            (l.p50, l.p99, l.max),
            (
                Duration::from_micros(51),
                Duration::from_micros(99),
                Duration::from_micros(100)
            )
        );
    }

    #[test]
    fn patterns_expand_number_domain_number_and_domain() {
        let one = plan(|_| {}).unwrap();
        assert_eq!(recipients(&one, 7), ["user7@example.test"]);
        let p = plan(|c| {
            c.to = "x{n}.{d}@{domain}".into();
            c.domains = 3;
        })
        .unwrap();
        let [r] = &recipients(&p, 4)[..] else {
            panic!()
        };
        let d = p.domain_of(4);
        assert_eq!(*r, format!("x4.{d}@d{d}.example.test"));
        let fixed = plan(|c| c.to = "ann@example.test".into()).unwrap();
        assert_eq!(recipients(&fixed, 3), ["ann@example.test"]);
        assert_eq!(fixed.distinct_recipients(), 1);
        let per_domain = plan(|c| {
            c.to = "postmaster@{domain}".into();
            c.domains = 3;
            c.count = 100;
        })
        .unwrap();
        assert_eq!(per_domain.distinct_recipients(), 3);
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_flag() {
        let e = error(plan(|c| c.to = "user{m}@{domain}".into()));
        assert!(e.starts_with("--to:") && e.contains("{m}"), "{e}");
        let e = error(plan(|c| c.to = "user{n@x.test".into()));
        assert!(e.starts_with("--to:"), "{e}");
        let e = error(plan(|c| c.to = "user{n}".into()));
        assert!(e.starts_with("--to:") && e.contains("\"user0\""), "{e}");
    }

    #[test]
    fn recipients_number_from_the_message_and_wrap_at_recipients() {
        let every = plan(|c| c.rcpts = 2).unwrap();
        assert_eq!(every.recipients, 20, "none repeats by default");
        assert_eq!(
            (0..10)
                .flat_map(|i| every.recipients_of(i))
                .collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        assert_eq!(every.distinct_recipients(), 20);
        let wrapped = plan(|c| {
            c.rcpts = 2;
            c.recipients = Some(5);
        })
        .unwrap();
        let of = |i| wrapped.recipients_of(i).collect::<Vec<_>>();
        assert_eq!(
            (of(0), of(1), of(2), of(9)),
            (vec![0, 1], vec![2, 3], vec![4, 0], vec![3, 4])
        );
        assert_eq!(wrapped.distinct_recipients(), 5);
        let one = plan(|c| c.recipients = Some(1)).unwrap();
        assert!((0..10).all(|i| recipients(&one, i) == ["user0@example.test"]));
        assert_eq!(one.distinct_recipients(), 1);
        let mod_n = plan(|c| c.recipients = Some(3)).unwrap();
        assert_eq!(recipients(&mod_n, 7), ["user1@example.test"]);
    }

    #[test]
    fn bad_counts_are_refused_naming_the_flag() {
        assert_eq!(error(plan(|c| c.rcpts = 0)), "--rcpts must be at least 1");
        assert_eq!(
            error(plan(|c| c.domains = 0)),
            "--domains must be at least 1"
        );
        assert_eq!(error(plan(|c| c.count = 0)), "--count must be at least 1");
        assert_eq!(
            error(plan(|c| c.concurrency = 0)),
            "--concurrency must be at least 1"
        );
        assert_eq!(
            error(plan(|c| c.recipients = Some(0))),
            "--recipients must be at least 1"
        );
        let e = error(plan(|c| {
            c.rcpts = 3;
            c.recipients = Some(2);
        }));
        assert!(e.starts_with("--recipients:"), "{e}");
        let e = error(plan(|c| {
            c.rcpts = 2;
            c.to = "ann@{domain}".into();
        }));
        assert!(e.starts_with("--rcpts:") && e.contains("{n}"), "{e}");
    }

    /// The share of `draws` recipients each domain gets.
    fn shares(domains: usize, mix: Mix, draws: usize) -> Vec<f64> {
        let p = plan(|c| {
            c.domains = domains;
            c.mix = mix;
            c.count = draws;
        })
        .unwrap();
        let mut counts = vec![0usize; domains];
        for r in 0..draws {
            counts[p.domain_of(r)] += 1;
        }
        counts
            .iter()
            .map(|&n| n as f64 * 100.0 / draws as f64)
            .collect()
    }

    #[test]
    fn the_real_mix_leans_on_four_providers() {
        let s = shares(100, Mix::Real, 10_000);
        for (share, want) in s.iter().zip([35.0, 20.0, 10.0, 5.0]) {
            assert!((share - want).abs() < 1.5, "{share} % for {want} %: {s:?}");
        }
        // The other 96 share 30 %: 0.31 % each.
        let rest = &s[4..];
        assert!((rest.iter().sum::<f64>() - 30.0).abs() < 1.5, "{s:?}");
        assert!(rest.iter().all(|&x| x < 1.0), "{s:?}");
        assert!(rest.iter().filter(|&&x| x > 0.0).count() > 90, "{s:?}");
    }

    #[test]
    fn few_domains_keep_the_proportions_and_uniform_is_even() {
        let two = shares(2, Mix::Real, 10_000);
        assert!((two[0] - 35.0 / 55.0 * 100.0).abs() < 1.5, "{two:?}");
        assert_eq!(shares(1, Mix::Real, 100), [100.0]);
        let even = shares(4, Mix::Uniform, 10_000);
        assert!(even.iter().all(|x| (x - 25.0).abs() < 1.5), "{even:?}");
    }

    #[test]
    fn draws_repeat_with_the_seed() {
        let a = plan(|c| c.domains = 50).unwrap();
        let b = plan(|c| c.domains = 50).unwrap();
        let c = plan(|c| {
            c.domains = 50;
            c.seed = 2;
        })
        .unwrap();
        let domains = |p: &Plan| (0..100).map(|r| p.domain_of(r)).collect::<Vec<_>>();
        assert_eq!(domains(&a), domains(&b));
        assert_ne!(domains(&a), domains(&c));
    }

    #[test]
    fn size_lists_parse() {
        assert_eq!(Sizes::parse("5KiB").unwrap(), Sizes::one(5 * 1024));
        assert_eq!(Sizes::parse(" 1000 ").unwrap(), Sizes::one(1000));
        assert_eq!(
            Sizes::parse("2KiB:50, 1MiB:5").unwrap(),
            Sizes(vec![
                SizeWeight {
                    bytes: 2048,
                    weight: 50
                },
                SizeWeight {
                    bytes: 1024 * 1024,
                    weight: 5
                }
            ])
        );
        for bad in [
            "",
            "5 parsecs",
            "0",
            "2KiB:50,20KiB",
            "2KiB:x",
            "2KiB:-1",
            "2KiB:0,3KiB:0",
            "x:1",
        ] {
            let e = format!("{:#}", Sizes::parse(bad).unwrap_err());
            assert!(e.starts_with("--size: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sizes_are_drawn_in_proportion() {
        let p = plan(|c| {
            c.sizes = Sizes::parse("2KiB:50,20KiB:30,100KiB:15,1MiB:5").unwrap();
            c.count = 10_000;
        })
        .unwrap();
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            counts[p.size_of(i)] += 1;
        }
        for (n, want) in counts.iter().zip([50.0, 30.0, 15.0, 5.0]) {
            let share = *n as f64 / 100.0;
            assert!((share - want).abs() < 1.5, "{counts:?}");
        }
        assert_eq!(Sizes::one(10).pick(0.999), 0);
    }

    #[test]
    fn each_message_has_its_own_headers_over_a_shared_body() {
        let p = plan(|c| {
            c.rcpts = 2;
            c.domains = 5;
            c.sizes = Sizes::parse("2KiB:1,8KiB:1").unwrap();
        })
        .unwrap();
        let t = Traffic::new(p, "s@tx.test");
        assert_eq!(t.bodies.len(), 2, "one body per size");
        let (mut rcpts, mut out) = (vec![String::new(); 2], Vec::new());
        let mut seen = std::collections::HashSet::new();
        for i in 0..10 {
            t.write_message(i, &mut rcpts, &mut out);
            let text = String::from_utf8(out.clone()).unwrap();
            let to = format!("To: <{}>, <{}>\r\n", rcpts[0], rcpts[1]);
            assert!(text.contains(&to), "{text}");
            let id = text.lines().find(|l| l.starts_with("Message-ID:")).unwrap();
            assert!(seen.insert(id.to_string()), "{id} twice");
            let size = t.plan.sizes.0[t.plan.size_of(i)].bytes;
            assert!(
                out.len() <= size + 40 && out.len() + 100 > size,
                "{} for {size}",
                out.len()
            );
        }
    }

    #[test]
    fn cpu_time_is_read_from_proc() {
        let line = "1234 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        assert_eq!(cpu_of_stat(line), Some((250, 75)));
        assert_eq!(cpu_of_stat("1234 (x) S 1"), None);
        assert!(cpu_ticks(&[std::process::id()]).is_ok());
        let e = format!("{:#}", cpu_ticks(&[u32::MAX]).unwrap_err());
        assert!(e.starts_with(&format!("--pid {}:", u32::MAX)), "{e}");
        assert!(clock_ticks_per_second() >= 100);
    }

    #[test]
    fn the_report_opens_with_the_shape_and_prints_as_json() {
        let config = BenchConfig {
            count: 20_000,
            domains: 1000,
            per_session: 1,
            ..Default::default()
        };
        let report = BenchReport {
            shape: Shape::new(&config, &Plan::new(&config).unwrap()),
            accepted: 20_000,
            accepted_recipients: 20_000,
            refused: 0,
            elapsed: Duration::from_secs(4),
            latencies: Latencies::from_samples(vec![1000, 2000]),
            delivered: Some(Delivered {
                messages: 20_000,
                recipients: 20_000,
                elapsed: Duration::from_secs(5),
            }),
            cpu: Some(Duration::from_secs(2)),
        };
        let text = report.to_string();
        assert_eq!(
            text.lines().next().unwrap(),
            "shape      20000 msgs × 1 rcpt, 20000 distinct recipients over 1000 domains (real mix), 5.0 KiB, 20 sessions, 1 msg/connection"
        );
        assert!(
            text.contains("accepted   20000 messages in 4.00 s: 5000 msg/s (0 refused)"),
            "{text}"
        );
        assert!(
            text.contains("recipients 20000 of 20000 accepted delivered: 4000 rcpt/s"),
            "{text}"
        );
        assert!(
            text.contains("cpu        2.00 s: 100 µs per message"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["msgs_per_s"], 5000.0);
        assert_eq!(json["latency_ms"]["max"], 2.0);
        assert_eq!(json["delivered"]["recipients"], 20_000);
        assert_eq!(json["delivered"]["msgs_per_s"], 4000.0);
        assert_eq!(json["cpu"]["us_per_msg"], 100.0);
        assert_eq!(json["shape"]["domains"], 1000);
        assert_eq!(json["shape"]["mix"], "real");
        assert_eq!(json["shape"]["sizes"][0]["bytes"], 5120);
        let bare = BenchReport {
            delivered: None,
            cpu: None,
            ..report
        };
        let json = serde_json::to_value(&bare).unwrap();
        assert!(json["delivered"].is_null() && json["cpu"].is_null());
    }
}
