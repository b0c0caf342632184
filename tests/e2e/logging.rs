//! What `knock serve` writes on stderr, as a process whose stderr is a pipe: plain text with
//! no colour codes, or JSON lines with `[log] format = "json"`; and a line for each
//! delivery, deferral and bounce, with the message id, the recipient and the reply.

use crate::world::*;
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// `knock serve` as a child process, its stderr collected line by line.
struct Served {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Serves with `[log] format`, routing rx.test and tx.test (where DSNs go) to `mx`.
    fn start(format: &str, mx: std::net::SocketAddr) -> Served {
        knock::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("knock.toml");
        std::fs::write(
            &config,
            format!(
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
schedule = ["1h"]
[routes]
"rx.test" = ["{mx}"]
"tx.test" = ["{mx}"]
[log]
format = "{format}"
"#,
                spool = dir.path().join("spool").display(),
                events = dir.path().join("events.jsonl").display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_knock"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("KNOCK_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Served {
            child,
            lines,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line `what` accepts; panics with everything written after `T`.
    async fn wait_line(&self, what: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| what(l)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such line on stderr:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one message to `to` over the engine's API (`http` from its start-up line).
    async fn send(&self, http: &str, to: &[&str]) -> String {
        let body = serde_json::json!({"from": "s@tx.test", "to": to, "subject": "s", "text": "t"});
        let resp = reqwest::Client::new()
            .post(format!("http://{http}/api/v1/messages"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let json: Value = resp.json().await.unwrap();
        json["id"].as_str().unwrap().to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RCPTS: [&str; 3] = ["a@rx.test", "unknown@rx.test", "tempfail@rx.test"];

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_each_outcome() {
    let rx = plain_sink().await;
    let knock = Served::start("json", rx.addr);
    let running = knock.wait_line(|l| l.contains("knock is running")).await;
    let running: Value = serde_json::from_str(&running).unwrap();
    let http = running["http"].as_str().unwrap().to_string();
    let id = knock.send(&http, &RCPTS).await;

    let parsed = |l: &str| serde_json::from_str::<Value>(l).ok();
    let about = |what: &'static str, rcpt: &'static str| {
        move |l: &str| parsed(l).is_some_and(|v| v["message"] == what && v["rcpt"] == rcpt)
    };
    let delivered = parsed(&knock.wait_line(about("delivered", "a@rx.test")).await).unwrap();
    let bounced = parsed(&knock.wait_line(about("bounced", "unknown@rx.test")).await).unwrap();
    let deferred = parsed(&knock.wait_line(about("deferred", "tempfail@rx.test")).await).unwrap();
    for (line, code, enhanced) in [
        (&delivered, 250, "2.0.0"),
        (&bounced, 550, "5.1.1"),
        (&deferred, 451, "4.3.0"),
    ] {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["id"], id.as_str(), "{line}");
        assert_eq!(line["code"], code, "{line}");
        assert_eq!(line["enhanced"], enhanced, "{line}");
        assert_eq!(line["attempt"], 1, "{line}");
        assert!(
            line["mx"].is_string() && line["provider"].is_string(),
            "{line}"
        );
        assert!(line["timestamp"].is_string(), "{line}");
    }
    assert!(
        bounced["text"].as_str().unwrap().contains("User unknown"),
        "{bounced}"
    );
    assert_eq!(bounced["class"], "hard");
    assert!(deferred["next_attempt"].is_string(), "{deferred}");
    assert!(delivered["next_attempt"].is_null(), "{delivered}");
    // One line per recipient event, and every line is JSON.
    let lines = knock.lines();
    for l in &lines {
        assert!(parsed(l).is_some_and(|v| v.is_object()), "not JSON: {l:?}");
    }
    let outcomes = lines
        .iter()
        .filter_map(|l| parsed(l))
        .filter(|v| v["id"] == id.as_str() && v["rcpt"] == "unknown@rx.test")
        .count();
    assert_eq!(outcomes, 1, "{lines:#?}");
}

#[tokio::test]
async fn plain_logs_on_a_pipe_have_no_colour_codes() {
    let rx = plain_sink().await;
    let knock = Served::start("plain", rx.addr);
    let running = knock.wait_line(|l| l.contains("knock is running")).await;
    let http = running
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("{running}"))
        .to_string();
    let id = knock.send(&http, &RCPTS).await;
    let bounced = knock
        .wait_line(|l| l.contains(" bounced ") && l.contains("unknown@rx.test"))
        .await;
    for field in [
        format!("id={id}"),
        "code=550".into(),
        "enhanced=5.1.1".into(),
    ] {
        assert!(bounced.contains(&field), "{field} in {bounced:?}");
    }
    assert!(bounced.contains(" INFO "), "{bounced:?}");
    knock
        .wait_line(|l| l.contains(" delivered ") && l.contains("a@rx.test"))
        .await;
    knock
        .wait_line(|l| l.contains(" deferred ") && l.contains("code=451"))
        .await;
    let all = knock.lines().join("\n");
    assert!(!all.contains("\x1b["), "colour codes on a pipe:\n{all:?}");
}
