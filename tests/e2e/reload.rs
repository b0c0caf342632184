//! Reloading a running `knock serve`: POST /api/v1/reload and SIGHUP apply routes, tokens
//! and webhooks in flight, say which keys need a restart, and refuse a bad file whole.

use crate::world::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

struct Files {
    dir: tempfile::TempDir,
    smtp: SocketAddr,
    http: SocketAddr,
}

impl Files {
    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("knock.toml")
    }

    fn events(&self) -> std::path::PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// Writes the config: the common part, then `rest`.
    fn write(&self, hostname: &str, rest: &str) {
        std::fs::write(
            self.config(),
            format!(
                "[smtp]\nlisten = \"{}\"\nhostname = \"{hostname}\"\n[http]\nlisten = \"{}\"\n\
                 [spool]\npath = \"{}\"\n[events]\npath = \"{}\"\n{rest}",
                self.smtp,
                self.http,
                self.dir.path().join("spool").display(),
                self.events().display(),
            ),
        )
        .unwrap();
    }
}

async fn post_reload(http: SocketAddr) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/reload"))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn wait_delivered(path: &std::path::Path, rcpt: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if read_events(path)
            .iter()
            .any(|e| e["event"] == "delivered" && e["recipient"] == rcpt)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rcpt} not delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_routes_tokens_and_webhooks_and_refuses_a_bad_file() {
    knock::install_crypto_provider();
    let (a, b) = (plain_sink().await, plain_sink().await);
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
        smtp: dead_addr().await,
        http: dead_addr().await,
    };
    files.write(
        "one.test",
        &format!("[routes]\n\"rx.test\" = [\"{}\"]\n", a.addr),
    );
    let mut child = serve_binary(&files.config());
    wait_listening(files.http).await;
    smtp_send(
        files.smtp,
        "s@tx.test",
        &["first@rx.test"],
        b"Subject: 1\r\n\r\n1\r\n",
    )
    .await;
    wait_delivered(&files.events(), "first@rx.test").await;
    assert_eq!(a.received().len(), 1);

    // A webhook receiver that counts what it gets.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let events: Vec<Value> = serde_json::from_slice(&body).unwrap();
                state.lock().unwrap().extend(events);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A file knock cannot take is refused whole, naming the key.
    let good = std::fs::read_to_string(files.config()).unwrap();
    std::fs::write(
        files.config(),
        format!("{good}[delivery]\nwarp_speed = true\n"),
    )
    .unwrap();
    let (status, body) = post_reload(files.http).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("warp_speed") && error.contains("running configuration is kept"),
        "{body}"
    );
    // Still running on the old file: mail goes to a.
    smtp_send(
        files.smtp,
        "s@tx.test",
        &["second@rx.test"],
        b"Subject: 2\r\n\r\n2\r\n",
    )
    .await;
    wait_delivered(&files.events(), "second@rx.test").await;
    assert_eq!((a.received().len(), b.received().len()), (2, 0));

    // Routes to b, a named token, a webhook; and a hostname, which needs a restart.
    std::fs::write(
        files.config(),
        format!(
            "[smtp]\nlisten = \"{}\"\nhostname = \"two.test\"\n[http]\nlisten = \"{}\"\n\
             tokens = [{{ name = \"bob\", token = \"bob-has-a-long-token\" }}]\n\
             [spool]\npath = \"{}\"\n[events]\npath = \"{}\"\n[routes]\n\"rx.test\" = [\"{}\"]\n\
             [[webhook]]\nname = \"hook\"\nurl = \"http://{hook}/hook\"\nsecret = \"a-secret-of-enough-length\"\n\
             events = [\"delivered\"]\nbatch_delay = \"10ms\"\n",
            files.smtp,
            files.http,
            files.dir.path().join("spool").display(),
            files.events().display(),
            b.addr
        ),
    )
    .unwrap();
    let (status, body) = post_reload(files.http).await;
    assert_eq!(status, 200, "{body}");
    let applied: Vec<&str> = body["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for key in ["routes", "http.tokens", "webhook"] {
        assert!(applied.contains(&key), "{key} not applied: {body}");
    }
    assert_eq!(
        body["restart_needed"],
        serde_json::json!(["smtp"]),
        "{body}"
    );
    smtp_send(
        files.smtp,
        "s@tx.test",
        &["third@rx.test"],
        b"Subject: 3\r\n\r\n3\r\n",
    )
    .await;
    wait_delivered(&files.events(), "third@rx.test").await;
    assert_eq!(
        (a.received().len(), b.received().len()),
        (2, 1),
        "the new route"
    );
    let deadline = tokio::time::Instant::now() + T;
    while !got
        .lock()
        .unwrap()
        .iter()
        .any(|e| e["recipient"] == "third@rx.test")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new webhook got nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new token is in force: actions taken with it are bob's.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/suspend", files.http))
        .bearer_auth("bob-has-a-long-token")
        .body(r#"{"domain": "rx.test"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = reqwest::get(format!("http://{}/api/v1/suspensions", files.http))
        .await
        .unwrap();
    let s: Value = resp.json().await.unwrap();
    assert_eq!(s["suspensions"][0]["actor"], "bob", "{s}");

    // SIGHUP with a typo in the file: refused, knock keeps running on what it had.
    let good = std::fs::read_to_string(files.config()).unwrap();
    std::fs::write(
        files.config(),
        format!("{good}[shaping.\"gogle\"]\nrate = \"1/s\"\n"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload must not stop knock"
    );
    let (status, body) = post_reload(files.http).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("gogle"), "{body}");
    let (status, _) = http_get_addr(files.http, "/api/v1/health").await;
    assert_eq!(status, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn http_get_addr(http: SocketAddr, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("http://{http}{path}")).await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}
