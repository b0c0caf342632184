//! The test world: an engine, sinks, a static resolver, and helpers to talk to them.

use knock::config::Config;
use knock::net::resolve::StaticResolver;
use knock::net::tls::{Policy, Stream};
use knock::serve::Engine;
use knock::tools::sink::{Sink, SinkConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct World {
    _dir: tempfile::TempDir,
    pub config: Config,
}

impl World {
    /// A config on ephemeral ports with a temporary spool and a fast retry schedule.
    pub fn new(schedule: &[&str], max_age: &str) -> World {
        knock::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[smtp]
listen = "127.0.0.1:0"
hostname = "knock.test"
[http]
listen = "127.0.0.1:0"
[spool]
path = "{spool}"
[events]
path = "{events}"
[retry]
schedule = [{schedule}]
max_age = "{max_age}"
jitter = 0.0
[delivery.timeouts]
connect = "2s"
greeting = "5s"
command = "5s"
data_init = "5s"
data_block = "5s"
data_done = "5s"
"#,
            spool = dir.path().join("spool").display(),
            events = dir.path().join("events.jsonl").display(),
            schedule = schedule
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let config = Config::parse(&text).unwrap();
        World { _dir: dir, config }
    }

    pub fn events_path(&self) -> PathBuf {
        self.config.events.path.clone()
    }

    pub async fn start(&self, resolver: StaticResolver) -> Engine {
        Engine::start_with(self.config.clone(), Arc::new(resolver))
            .await
            .unwrap()
    }

    pub fn events(&self) -> Vec<Value> {
        read_events(&self.events_path())
    }

    /// Waits until an event matches; panics with all events after `timeout`.
    pub async fn wait_event(&self, timeout: Duration, what: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| what(e)) {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no matching event within {timeout:?}; events:\n{:#?}",
                    self.events()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The events in the log at `path`, without a last line the writer has not finished.
pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Matches an event by kind and recipient.
pub fn is(kind: &'static str, rcpt: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind && e["recipient"] == rcpt
}

pub async fn sink(config: SinkConfig) -> Sink {
    Sink::start(SinkConfig {
        keep: true,
        ..config
    })
    .await
    .unwrap()
}

pub async fn plain_sink() -> Sink {
    sink(SinkConfig::default()).await
}

/// A resolver sending `domain` to `addr` through an MX named `mx.<domain>`.
pub fn route(r: StaticResolver, domain: &str, addr: SocketAddr) -> StaticResolver {
    let mx = format!("mx.{domain}");
    r.with_mx(domain, &[&mx]).with_host(&mx, addr)
}

/// A receiver for `rx.test` and the sender's own MX for `tx.test`, where DSNs arrive.
pub async fn receiver_and_sender() -> (Sink, Sink, StaticResolver) {
    let rx = plain_sink().await;
    let tx = plain_sink().await;
    let r = route(
        route(StaticResolver::new(), "rx.test", rx.addr),
        "tx.test",
        tx.addr,
    );
    (rx, tx, r)
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Sends one message over SMTP the way a client program would; returns the final reply.
pub async fn smtp_send(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> Vec<String> {
    let timeouts = knock::config::TimeoutConfig::default();
    let mut c = knock::net::smtp::client::Client::connect(addr, &timeouts)
        .await
        .unwrap();
    c.read_greeting().await.unwrap();
    c.hello("client.test").await.unwrap();
    let replies = c.send_to(from, rcpts, body).await;
    c.quit().await;
    replies
        .per_recipient
        .into_iter()
        .map(|r| r.map(|r| r.one_line()).unwrap_or_else(|e| e.to_string()))
        .collect()
}

/// Injects `n` messages of 1 KiB to `to` over SMTP, four sessions at a time.
pub async fn inject(engine: &knock::serve::Engine, n: usize, to: &str) {
    let report = knock::tools::bench::run(knock::tools::bench::BenchConfig {
        target: engine.smtp_addr,
        count: n,
        sizes: knock::tools::bench::Sizes::one(1024),
        concurrency: 4,
        from: "s@tx.test".into(),
        to: to.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(report.accepted, n);
}

/// The queue id in `250 2.0.0 Ok: queued as <id>`.
pub fn queued_id(reply: &str) -> String {
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}

/// New mail is refused over HTTP because the spool cannot store it.
pub async fn assert_http_refuses_for_storage(engine: &Engine) {
    let (status, json) = http_post(
        engine,
        "/api/v1/messages",
        r#"{"from": "s@tx.test", "to": ["during@rx.test"], "subject": "s", "text": "t"}"#,
    )
    .await;
    assert_eq!(status, 507, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("nothing was accepted"),
        "{json}"
    );
}

/// A line-by-line SMTP conversation for protocol tests, in plaintext or over TLS.
pub struct Raw {
    stream: BufReader<Stream>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> (Raw, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            stream: BufReader::new(Stream::Plain(stream)),
        };
        let greeting = raw.reply().await;
        (raw, greeting)
    }

    /// STARTTLS and the handshake (any certificate); returns the reply to STARTTLS.
    pub async fn starttls(&mut self) -> String {
        let reply = self.cmd("STARTTLS").await;
        assert!(reply.starts_with("220 "), "{reply}");
        self.upgrade(&knock::net::tls::Connectors::new(None).unwrap())
            .await;
        reply
    }

    /// The TLS handshake, once the server has said 220 to STARTTLS.
    pub async fn upgrade(&mut self, connectors: &knock::net::tls::Connectors) {
        assert!(
            self.stream.buffer().is_empty(),
            "nothing may follow the 220"
        );
        self.stream
            .get_mut()
            .connect(connectors, Policy::Require, "knock.test")
            .await
            .unwrap();
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await.unwrap();
        stream.flush().await.unwrap();
    }

    /// Sends a command line and returns the reply (all its lines).
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Reads one whole reply; empty when the server closed the connection.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// `true` once the server has closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_line(&mut line)).await,
            Ok(Ok(0))
        )
    }
}

pub async fn http_get(engine: &Engine, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("http://{}{path}", engine.http_addr))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn http_post(engine: &Engine, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", engine.http_addr))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `knock serve --config CONFIG`, the real binary, its output discarded.
pub fn serve_binary(config: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_knock"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until something listens on `addr` (a knock started as a process).
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("knock did not start listening on {addr}");
}

/// `knock ARGS`, the real binary, as a user runs it (no `KNOCK_API` or `KNOCK_API_TOKEN`
/// from the environment): whether it succeeded, its stdout and its stderr.
pub fn knock(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_knock"))
        .args(args)
        .env_remove("KNOCK_API")
        .env_remove("KNOCK_API_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`knock`] off the async runtime's threads.
pub async fn knock_async(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        knock(&args)
    })
    .await
    .unwrap()
}
