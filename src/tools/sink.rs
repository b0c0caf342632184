//! `knock sink`: a receiving MX with scripted behaviour, for tests, benchmarks and for
//! operators trying their policy. It accepts mail over the same SMTP engine as ingest and
//! plays a receiver model (`tools::receiver`, the same that `knock simulate` plays): a
//! scenario's `[receiver.NAME]`, or the shorthands of its flags (greylist, a fixed-window
//! rate, a connection cap, random deferrals, slow replies). Magic recipients (`tempfail@`,
//! `unknown@`, ...: [`MAGIC_RECIPIENTS`](crate::tools::receiver::MAGIC_RECIPIENTS), which
//! `knock sink --help` lists) answer as scripted.
//!
//! It counts what it did, and the recipients it accepted per domain (served apart from the
//! counters, as a benchmark over thousands of domains makes that map large). Beyond the
//! counters it keeps nothing unless asked: each accepted message can be kept in memory (for
//! tests) or saved as a file, and with `fsync` the file and its directory entry reach the
//! disk before the `250`, as a real MTA's queue would have it.

use crate::address::Address;
use crate::config::Rate;
use crate::message::{MailParams, Rcpt};
use crate::net::smtp::server::{self, EhloMode, Extensions, Handler, Limits, Session};
use crate::reply::Reply;
use crate::time::{Timestamp, WallClock};
use crate::tools::receiver::{
    Answer, Greeting, Greylisting, Limit, OutageKind, Receiver, ReceiverModel, Replies, Scope,
    Session as ModelSession, Shape, Stage, Verdict,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub listen: SocketAddr,
    pub hostname: String,
    /// Save each accepted message here, as `<run>-<n>.eml` (`run` unique to the sink's
    /// start, `n` counting from 1), so that runs saving to one directory do not collide.
    pub save_dir: Option<PathBuf>,
    /// With `save_dir`: flush each file and its directory entry to disk before replying,
    /// and answer 451 when that fails.
    pub fsync: bool,
    /// Keep accepted messages in memory (for tests).
    pub keep: bool,
    /// Defer the first attempt of each (client IP, sender, recipient) for this long.
    pub greylist: Option<Duration>,
    /// Answer 421 4.7.0 past this many messages per period per client IP.
    pub rate: Option<Rate>,
    /// Defer this share of recipients at random (450 4.7.1).
    pub defer_share: f64,
    /// Wait this long before every reply.
    pub delay: Duration,
    /// Turn away a client IP's connections past this many at once (421 4.7.0).
    pub max_connections: Option<usize>,
    /// Under load: past this many open sessions, every reply waits this much longer.
    pub slow_above: Option<(usize, Duration)>,
    pub max_message_size: u64,
    /// What EHLO offers (play a server without PIPELINING, or one that knows only HELO).
    pub ehlo: EhloMode,
    /// Which of DSN, SMTPUTF8 and CHUNKING EHLO offers.
    pub extensions: Extensions,
    /// Offer STARTTLS with a self-signed certificate made at start.
    pub tls: bool,
    /// Offer STARTTLS with this certificate chain and key (PEM files) instead.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Play this receiver model instead of the shorthands above.
    pub model: Option<ReceiverModel>,
}

impl SinkConfig {
    /// The receiver model the sink plays: the one given, else the one its shorthands make.
    pub fn model(&self) -> ReceiverModel {
        if let Some(model) = &self.model {
            return model.clone();
        }
        ReceiverModel {
            latency: self.delay,
            greylist: self.greylist.map(|window| Greylisting {
                window,
                reply: Some(
                    "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, try again in {seconds} seconds"
                        .into(),
                ),
            }),
            limits: self
                .rate
                .map(|rate| Limit {
                    shape: Shape::FixedWindow,
                    rate,
                    burst: None,
                    strict: false,
                    per: Scope::Client,
                    at: Stage::Mail,
                    delay: None,
                    reply: Some("421 4.7.0 {host} Error: too much mail from {client}".into()),
                })
                .into_iter()
                .collect(),
            connections: self.max_connections.map(|c| c as u64),
            defer_share: self.defer_share,
            slow_above: self.slow_above.map(|(n, _)| n),
            slow_delay: self.slow_above.map(|(_, d)| d).unwrap_or_default(),
            replies: Replies {
                defer: "450 4.7.1 <{rcpt}>: Recipient address rejected: try again later".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().unwrap(),
            hostname: "sink.localdomain".into(),
            save_dir: None,
            fsync: false,
            keep: false,
            greylist: None,
            rate: None,
            defer_share: 0.0,
            delay: Duration::ZERO,
            max_connections: None,
            slow_above: None,
            max_message_size: 50 * 1024 * 1024,
            ehlo: EhloMode::Full,
            extensions: Extensions::ALL,
            tls: false,
            tls_files: None,
            model: None,
        }
    }
}

/// What the sink did, as counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Stats {
    pub connections: u64,
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
    pub greylisted: u64,
    pub rate_limited: u64,
    pub deferred_random: u64,
    /// Recipients refused at random as unknown.
    pub bounced_random: u64,
    pub refused_magic: u64,
    /// Connections turned away at the greeting (too many, or an outage).
    pub refused_connections: u64,
    /// Connections refused or left unanswered during an outage.
    pub outage_connections: u64,
    /// The most sessions open at once.
    pub peak_sessions: u64,
    /// Messages that arrived over TLS.
    pub messages_tls: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    messages: AtomicU64,
    recipients: AtomicU64,
    bytes: AtomicU64,
    greylisted: AtomicU64,
    rate_limited: AtomicU64,
    deferred_random: AtomicU64,
    bounced_random: AtomicU64,
    refused_magic: AtomicU64,
    refused_connections: AtomicU64,
    outage_connections: AtomicU64,
    sessions: AtomicU64,
    peak_sessions: AtomicU64,
    messages_tls: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections: get(&self.connections),
            messages: get(&self.messages),
            recipients: get(&self.recipients),
            bytes: get(&self.bytes),
            greylisted: get(&self.greylisted),
            rate_limited: get(&self.rate_limited),
            deferred_random: get(&self.deferred_random),
            bounced_random: get(&self.bounced_random),
            refused_magic: get(&self.refused_magic),
            refused_connections: get(&self.refused_connections),
            outage_connections: get(&self.outage_connections),
            peak_sessions: get(&self.peak_sessions),
            messages_tls: get(&self.messages_tls),
        }
    }
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub client: IpAddr,
    pub from: String,
    pub rcpts: Vec<String>,
    /// What MAIL FROM said beyond the address (DSN, SMTPUTF8).
    pub params: MailParams,
    /// The recipients with what RCPT TO said of DSNs.
    pub rcpt_params: Vec<Rcpt>,
    pub body: Vec<u8>,
    /// The TLS the message arrived over.
    pub tls: Option<crate::net::tls::TlsInfo>,
    /// The name the client gave in EHLO or HELO.
    pub helo: Option<String>,
    /// When the message was taken.
    pub at: Timestamp,
}

struct SinkHandler {
    config: SinkConfig,
    counters: Counters,
    /// Accepted recipients per domain.
    domains: Mutex<HashMap<String, u64>>,
    /// Names the saved files of this start; `saved` numbers them.
    run: String,
    saved: AtomicU64,
    received: Mutex<Vec<Received>>,
    receiver: Mutex<Receiver>,
    /// The model's session for each connection it accepted.
    sessions: Mutex<HashMap<SocketAddr, ModelSession>>,
    clock: WallClock,
}

impl SinkHandler {
    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Allocates only for a domain not seen before.
    fn count_domains(&self, rcpts: &[Rcpt]) {
        let mut domains = self.domains.lock().expect("sink lock");
        for rcpt in rcpts {
            match domains.get_mut(rcpt.address.domain.as_str()) {
                Some(n) => *n += 1,
                None => {
                    domains.insert(rcpt.address.domain.clone(), 1);
                }
            }
        }
    }

    /// Saves `body` as the next file of `dir` off the async threads, and gives it back.
    async fn save(&self, dir: &Path, body: Vec<u8>) -> (Vec<u8>, std::io::Result<()>) {
        let n = self.saved.fetch_add(1, Ordering::Relaxed) + 1;
        let path = dir.join(format!("{}-{n:08}.eml", self.run));
        let fsync = self.config.fsync;
        let written = tokio::task::spawn_blocking(move || {
            let result = store(&path, &body, fsync);
            if let Err(e) = &result {
                tracing::warn!(path = %path.display(), error = %e, "sink could not save a message");
            }
            (body, result)
        })
        .await;
        match written {
            Ok(done) => done,
            Err(e) => (Vec::new(), Err(std::io::Error::other(e))),
        }
    }

    /// Counts what the model did, waits as long as it says, and gives its reply.
    async fn answer(&self, answer: Answer) -> Reply {
        let counter = match answer.verdict {
            Verdict::Accepted => None,
            Verdict::Greylisted => Some(&self.counters.greylisted),
            Verdict::Limited(_) | Verdict::Capped => Some(&self.counters.rate_limited),
            Verdict::Deferred => Some(&self.counters.deferred_random),
            Verdict::Bounced => Some(&self.counters.bounced_random),
            Verdict::Magic => Some(&self.counters.refused_magic),
        };
        if let Some(c) = counter {
            self.count(c);
        }
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        answer.reply
    }

    /// Runs `f` on the model with the connection's session (a fresh one if the model never
    /// accepted it, which cannot happen past the greeting).
    fn with_session<T>(
        &self,
        peer: SocketAddr,
        f: impl FnOnce(&mut Receiver, &mut ModelSession) -> T,
    ) -> T {
        let mut sessions = self.sessions.lock().expect("sink lock");
        let s = sessions.entry(peer).or_insert_with(|| ModelSession {
            client: peer.ip().to_string(),
            ..Default::default()
        });
        let mut receiver = self.receiver.lock().expect("sink lock");
        f(&mut receiver, s)
    }
}

#[async_trait]
impl Handler for SinkHandler {
    async fn connect(&self, session: &Session) -> Result<(), Reply> {
        self.count(&self.counters.connections);
        let open = self.counters.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters
            .peak_sessions
            .fetch_max(open, Ordering::Relaxed);
        let client = session.peer.ip().to_string();
        let greeting = self
            .receiver
            .lock()
            .expect("sink lock")
            .connect(&client, self.clock.now());
        match greeting {
            Greeting::Accept { delay } => {
                self.sessions.lock().expect("sink lock").insert(
                    session.peer,
                    ModelSession {
                        client,
                        ..Default::default()
                    },
                );
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Greeting::TurnAway { reply, delay } => {
                self.count(&self.counters.refused_connections);
                tokio::time::sleep(delay).await;
                Err(reply)
            }
            // The accept loop handles these before a session starts.
            Greeting::Refuse | Greeting::Hang => {
                Err(Reply::new(421, "4.3.2", "Service not available"))
            }
        }
    }

    async fn disconnect(&self, session: &Session) {
        self.counters.sessions.fetch_sub(1, Ordering::Relaxed);
        if self
            .sessions
            .lock()
            .expect("sink lock")
            .remove(&session.peer)
            .is_some()
        {
            let client = session.peer.ip().to_string();
            self.receiver.lock().expect("sink lock").disconnect(&client);
        }
    }

    async fn mail(&self, session: &Session, from: &str) -> Reply {
        let now = self.clock.now();
        let answer = self.with_session(session.peer, |r, s| r.mail(s, from, now));
        self.answer(answer).await
    }

    async fn rcpt(&self, session: &Session, rcpt: &Address) -> Reply {
        let now = self.clock.now();
        let from = session.from.as_deref().unwrap_or_default();
        let rcpt = rcpt.to_string();
        let answer = self.with_session(session.peer, |r, s| r.rcpt(s, from, &rcpt, now));
        self.answer(answer).await
    }

    async fn data(&self, session: &Session, mut body: Vec<u8>) -> Reply {
        let now = self.clock.now();
        let answer = self.with_session(session.peer, |r, s| r.data(s, now));
        let reply = self.answer(answer).await;
        if let Some(dir) = &self.config.save_dir {
            let (back, saved) = self.save(dir, body).await;
            body = back;
            if saved.is_err() && self.config.fsync {
                // Not stored, so not taken: the sender keeps it and tries again.
                return Reply::new(451, "4.3.0", "could not store the message, try again");
            }
        }
        let n = self.counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters
            .recipients
            .fetch_add(session.rcpts.len() as u64, Ordering::Relaxed);
        self.count_domains(&session.rcpts);
        self.counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        if session.tls.is_some() {
            self.count(&self.counters.messages_tls);
        }
        if self.config.keep {
            self.received.lock().expect("sink lock").push(Received {
                client: session.peer.ip(),
                from: session.from.clone().unwrap_or_default(),
                rcpts: session
                    .rcpts
                    .iter()
                    .map(|r| r.address.to_string())
                    .collect(),
                params: session.params.clone(),
                rcpt_params: session.rcpts.clone(),
                body,
                tls: session.tls.clone(),
                helo: session.helo.clone(),
                at: now,
            });
        }
        Reply {
            text: format!("{}: queued as {n}", reply.text),
            ..reply
        }
    }
}

/// Writes `body` to a new file at `path`; with `fsync`, flushes the file and then the
/// directory entry naming it, as a queue must before it answers 250. Blocks.
fn store(path: &Path, body: &[u8], fsync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(body)?;
    if fsync {
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

pub struct Sink {
    pub addr: SocketAddr,
    handler: Arc<SinkHandler>,
    shutdown: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Sink {
    pub async fn start(config: SinkConfig) -> std::io::Result<Sink> {
        let tls = match (&config.tls_files, config.tls) {
            (Some((cert, key)), _) => Some(crate::net::tls::acceptor(
                Some(cert),
                Some(key),
                std::path::Path::new(""),
                &config.hostname,
            )),
            (None, true) => Some(crate::net::tls::ephemeral_acceptor(&config.hostname)),
            (None, false) => None,
        }
        .transpose()
        .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        if let Some(dir) = &config.save_dir {
            std::fs::create_dir_all(dir)?;
        }
        let limits = Arc::new(Limits {
            hostname: config.hostname.clone(),
            max_message_size: config.max_message_size,
            max_recipients: 1000,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_errors: 1000,
            ehlo: config.ehlo,
            tls,
            extensions: config.extensions,
        });
        let model = config.model();
        model.validate().map_err(std::io::Error::other)?;
        let clock = WallClock::new();
        let receiver = Receiver::new(model, &config.hostname, clock.now(), fastrand::u64(..));
        let handler = Arc::new(SinkHandler {
            config,
            counters: Counters::default(),
            domains: Mutex::new(HashMap::new()),
            run: uuid::Uuid::now_v7().simple().to_string(),
            saved: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            receiver: Mutex::new(receiver),
            sessions: Mutex::new(HashMap::new()),
            clock,
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            handler.clone(),
            limits,
            shutdown.clone(),
        ));
        Ok(Sink {
            addr,
            handler,
            shutdown,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn stats(&self) -> Stats {
        self.handler.counters.snapshot()
    }

    /// Accepted recipients per recipient domain.
    pub fn domains(&self) -> BTreeMap<String, u64> {
        let domains = self.handler.domains.lock().expect("sink lock");
        domains.iter().map(|(d, n)| (d.clone(), *n)).collect()
    }

    /// Starts the receiver model's time again from now: its outages count from here (a
    /// scenario's time starts with its traffic, not with the listener).
    pub fn restart_model(&self) {
        let model = self.handler.config.model();
        let now = self.handler.clock.now();
        *self.handler.receiver.lock().expect("sink lock") =
            Receiver::new(model, &self.handler.config.hostname, now, fastrand::u64(..));
    }

    /// The messages accepted so far (with `keep`).
    pub fn received(&self) -> Vec<Received> {
        self.handler.received.lock().expect("sink lock").clone()
    }

    /// Waits until at least `n` messages were accepted; `false` on timeout.
    pub async fn wait_for_messages(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.stats().messages < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops listening, closes sessions, and returns the final counts.
    pub async fn stop(&self) -> Stats {
        self.shutdown.cancel();
        let task = self.task.lock().expect("sink lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.stats()
    }
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<SinkHandler>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let sessions = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let outage = {
                    let receiver = handler.receiver.lock().expect("sink lock");
                    receiver.outage(handler.clock.now())
                };
                match outage {
                    // Down: the connection is dropped at once, or taken and never answered.
                    Some(OutageKind::Refused) => {
                        handler.count(&handler.counters.outage_connections);
                        drop(stream);
                    }
                    Some(OutageKind::Timeout) => {
                        handler.count(&handler.counters.outage_connections);
                        let shutdown = shutdown.clone();
                        sessions.spawn(async move {
                            shutdown.cancelled().await;
                            drop(stream);
                        });
                    }
                    _ => {
                        sessions.spawn(server::serve(stream, handler.clone(), limits.clone(), shutdown.clone()));
                    }
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    sessions.close();
    sessions.wait().await;
}

/// The `n` domains with the most recipients, most first (by name among equals).
pub fn top_domains(domains: &BTreeMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut top: Vec<(&str, u64)> = domains.iter().map(|(d, c)| (d.as_str(), *c)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(n);
    top
}

/// Serves the sink's counters as JSON at `GET /stats`, for tests and `knock bench` (which
/// polls it), and the recipients per domain at `GET /stats/domains`.
pub fn stats_router(sink: Arc<Sink>) -> axum::Router {
    let domains = sink.clone();
    axum::Router::new()
        .route(
            "/stats",
            axum::routing::get(move || {
                let sink = sink.clone();
                async move { axum::Json(sink.stats()) }
            }),
        )
        .route(
            "/stats/domains",
            axum::routing::get(move || {
                let sink = domains.clone();
                async move { axum::Json(sink.domains()) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_domains_are_the_most_recipients_first() {
        let domains: BTreeMap<String, u64> = [("c.test", 5), ("a.test", 2), ("b.test", 5)]
            .into_iter()
            .map(|(d, n)| (d.to_string(), n))
            .collect();
        assert_eq!(
            top_domains(&domains, 2),
            [("b.test", 5), ("c.test", 5)],
            "ties by name"
        );
        assert_eq!(top_domains(&domains, 20).len(), 3);
    }
}
