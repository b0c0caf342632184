//! `knock sink`: a receiving MX with scripted behaviour, for tests, benchmarks and for
//! operators trying their policy. It accepts mail over the same SMTP engine as ingest and
//! can greylist, rate-limit, defer at random, answer slowly, and refuse magic recipients:
//!
//! | local part | reply |
//! | --- | --- |
//! | `tempfail@` | `451 4.3.0` temporary failure |
//! | `permfail@` | `550 5.7.1` refused (permanent, not about the mailbox) |
//! | `unknown@` | `550 5.1.1` no such user |
//! | `full@` | `452 4.2.2` mailbox full (temporary) |
//! | `overquota@` | `552 5.2.2` mailbox full (permanent) |
//! | `blocked@` | `554 5.7.1` refused on policy grounds |
//!
//! It counts what it did and can keep or save each accepted message.

use crate::address::Address;
use crate::config::Rate;
use crate::net::smtp::server::{self, EhloMode, Handler, Limits, Session};
use crate::reply::Reply;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
    /// Save each accepted message as `<n>.eml` here.
    pub save_dir: Option<PathBuf>,
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
    /// Offer STARTTLS with a self-signed certificate made at start.
    pub tls: bool,
    /// Offer STARTTLS with this certificate chain and key (PEM files) instead.
    pub tls_files: Option<(PathBuf, PathBuf)>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().unwrap(),
            hostname: "sink.localdomain".into(),
            save_dir: None,
            keep: false,
            greylist: None,
            rate: None,
            defer_share: 0.0,
            delay: Duration::ZERO,
            max_connections: None,
            slow_above: None,
            max_message_size: 50 * 1024 * 1024,
            ehlo: EhloMode::Full,
            tls: false,
            tls_files: None,
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
    pub refused_magic: u64,
    pub refused_connections: u64,
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
    refused_magic: AtomicU64,
    refused_connections: AtomicU64,
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
            refused_magic: get(&self.refused_magic),
            refused_connections: get(&self.refused_connections),
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
    pub body: Vec<u8>,
    /// The TLS the message arrived over.
    pub tls: Option<crate::net::tls::TlsInfo>,
}

struct SinkHandler {
    config: SinkConfig,
    counters: Counters,
    received: Mutex<Vec<Received>>,
    /// First sighting of each greylist triplet.
    triplets: Mutex<HashMap<(IpAddr, String, String), Instant>>,
    /// Per client IP: start of its current rate window and messages in it.
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Open sessions per client IP.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SinkHandler {
    async fn pause(&self) {
        let mut wait = self.config.delay;
        if let Some((above, extra)) = self.config.slow_above
            && self.counters.sessions.load(Ordering::Relaxed) > above as u64
        {
            wait += extra;
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn magic(&self, rcpt: &Address) -> Option<Reply> {
        let r = match rcpt.local.to_ascii_lowercase().as_str() {
            "tempfail" => Reply::new(
                451,
                "4.3.0",
                format!("<{rcpt}>: Temporary failure, try again later"),
            ),
            "permfail" => Reply::new(550, "5.7.1", format!("<{rcpt}>: Message refused")),
            "unknown" => Reply::new(
                550,
                "5.1.1",
                format!(
                    "<{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table"
                ),
            ),
            "full" => Reply::new(
                452,
                "4.2.2",
                format!("<{rcpt}>: Mailbox full, try again later"),
            ),
            "overquota" => Reply::new(552, "5.2.2", format!("<{rcpt}>: Mailbox full")),
            "blocked" => Reply::new(
                554,
                "5.7.1",
                format!("<{rcpt}>: Service unavailable; client host blocked"),
            ),
            _ => return None,
        };
        Some(r)
    }

    /// `true` while the triplet's window has not passed since it was first seen.
    fn greylisted(&self, window: Duration, session: &Session, rcpt: &Address) -> bool {
        let key = (
            session.peer.ip(),
            session.from.clone().unwrap_or_default(),
            rcpt.to_string(),
        );
        let mut triplets = self.triplets.lock().expect("sink lock");
        let first = *triplets.entry(key).or_insert_with(Instant::now);
        first.elapsed() < window
    }

    fn over_rate(&self, rate: Rate, ip: IpAddr) -> bool {
        let mut windows = self.windows.lock().expect("sink lock");
        let now = Instant::now();
        let w = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(w.0) >= rate.per {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 > rate.count
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
        let ip = session.peer.ip();
        let from_ip = {
            let mut per_ip = self.open.lock().expect("sink lock");
            let n = per_ip.entry(ip).or_default();
            *n += 1;
            *n
        };
        if let Some(max) = self.config.max_connections
            && from_ip > max
        {
            self.count(&self.counters.refused_connections);
            return Err(Reply::new(
                421,
                "4.7.0",
                format!(
                    "{} Error: too many connections from {ip}",
                    self.config.hostname
                ),
            ));
        }
        self.pause().await;
        Ok(())
    }

    async fn disconnect(&self, session: &Session) {
        self.counters.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.open.lock().expect("sink lock");
        if let Some(n) = per_ip.get_mut(&session.peer.ip()) {
            *n = n.saturating_sub(1);
        }
    }

    async fn mail(&self, session: &Session, _from: &str) -> Reply {
        self.pause().await;
        if let Some(rate) = self.config.rate
            && self.over_rate(rate, session.peer.ip())
        {
            self.count(&self.counters.rate_limited);
            return Reply::new(
                421,
                "4.7.0",
                format!(
                    "{} Error: too much mail from {}",
                    self.config.hostname,
                    session.peer.ip()
                ),
            );
        }
        Reply::new(250, "2.1.0", "Ok")
    }

    async fn rcpt(&self, session: &Session, rcpt: &Address) -> Reply {
        self.pause().await;
        if let Some(reply) = self.magic(rcpt) {
            self.count(&self.counters.refused_magic);
            return reply;
        }
        if let Some(window) = self.config.greylist
            && self.greylisted(window, session, rcpt)
        {
            self.count(&self.counters.greylisted);
            let text = format!(
                "<{rcpt}>: Recipient address rejected: Greylisted, try again in {} seconds",
                window.as_secs().max(1)
            );
            return Reply::new(450, "4.2.0", text);
        }
        if self.config.defer_share > 0.0 && fastrand::f64() < self.config.defer_share {
            self.count(&self.counters.deferred_random);
            return Reply::new(
                450,
                "4.7.1",
                format!("<{rcpt}>: Recipient address rejected: try again later"),
            );
        }
        Reply::new(250, "2.1.5", "Ok")
    }

    async fn data(&self, session: &Session, body: Vec<u8>) -> Reply {
        self.pause().await;
        let n = self.counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters
            .recipients
            .fetch_add(session.rcpts.len() as u64, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        if session.tls.is_some() {
            self.count(&self.counters.messages_tls);
        }
        if let Some(dir) = &self.config.save_dir {
            let path = dir.join(format!("{n}.eml"));
            if let Err(e) = tokio::fs::write(&path, &body).await {
                tracing::warn!(path = %path.display(), error = %e, "sink could not save a message");
            }
        }
        if self.config.keep {
            self.received.lock().expect("sink lock").push(Received {
                client: session.peer.ip(),
                from: session.from.clone().unwrap_or_default(),
                rcpts: session.rcpts.iter().map(|a| a.to_string()).collect(),
                body,
                tls: session.tls.clone(),
            });
        }
        Reply::new(250, "2.0.0", format!("Ok: queued as {n}"))
    }
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
        });
        let handler = Arc::new(SinkHandler {
            config,
            counters: Counters::default(),
            received: Mutex::new(Vec::new()),
            triplets: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
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
                if let Ok((stream, _)) = accepted {
                    sessions.spawn(server::serve(stream, handler.clone(), limits.clone(), shutdown.clone()));
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    sessions.close();
    sessions.wait().await;
}

/// Serves the sink's counters as JSON at `GET /stats`, for tests and `knock bench`.
pub fn stats_router(sink: Arc<Sink>) -> axum::Router {
    axum::Router::new().route(
        "/stats",
        axum::routing::get(move || {
            let sink = sink.clone();
            async move { axum::Json(sink.stats()) }
        }),
    )
}
