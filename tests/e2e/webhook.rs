//! Webhooks against a real local HTTP receiver that fails for a while, is slow, answers 4xx
//! and 5xx, and across `kill -9`: every committed event arrives, signed, and an event comes
//! twice only when a POST of it was in flight.

use crate::world::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use knock::net::resolve::StaticResolver;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "a-webhook-secret-of-some-length";

/// What the receiver does with a POST.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// `429` asking to come back after a second.
    TooMany,
    /// Takes this long, then `200`.
    Slow(Duration),
    Ok,
}

#[derive(Default)]
struct Log {
    /// Answers for the next POSTs, in order; then `then`.
    script: VecDeque<Answer>,
    then: Option<Answer>,
    /// The events of every POST answered 2xx, in arrival order.
    taken: Vec<Value>,
    /// POSTs answered otherwise (or that knock gave up waiting for).
    refused: usize,
    bad_signatures: usize,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    async fn start(script: &[Answer], then: Answer) -> Receiver {
        let log = Arc::new(Mutex::new(Log {
            script: script.iter().copied().collect(),
            then: Some(then),
            ..Default::default()
        }));
        let state = log.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let log = state.clone();
                async move { answer(&log, &headers, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn then(&self, answer: Answer) {
        self.log.lock().unwrap().then = Some(answer);
    }

    fn taken(&self) -> Vec<Value> {
        self.log.lock().unwrap().taken.clone()
    }

    fn refused(&self) -> usize {
        self.log.lock().unwrap().refused
    }

    /// Waits until the receiver has taken an event of each `(kind, message_id)`.
    async fn wait_for(&self, wanted: &HashSet<(String, String)>, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have: HashSet<(String, String)> = self.taken().iter().map(kind_and_id).collect();
            let missing: Vec<_> = wanted.difference(&have).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the webhook did not get {} events within {timeout:?}, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn kind_and_id(e: &Value) -> (String, String) {
    (
        e["event"].as_str().unwrap_or_default().to_string(),
        e["message_id"].as_str().unwrap_or_default().to_string(),
    )
}

/// Checks the signature the way a consumer would, then answers as scripted.
async fn answer(log: &Mutex<Log>, headers: &HeaderMap, body: &[u8]) -> (StatusCode, HeaderMap) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let timestamp = header("x-knock-timestamp");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let signed = [timestamp.as_bytes(), b".", body].concat();
    let good = header("x-knock-signature")
        .strip_prefix("v1=")
        .and_then(|hex| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok());
    let now = knock::time::Timestamp::now().millis() / 1000;
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) < 300);
    let next = {
        let mut log = log.lock().unwrap();
        if !good || !fresh {
            log.bad_signatures += 1;
        }
        log.script.pop_front().or(log.then).unwrap()
    };
    let mut out = HeaderMap::new();
    let status = match next {
        Answer::Ok => StatusCode::OK,
        Answer::Status(s) => StatusCode::from_u16(s).unwrap(),
        Answer::TooMany => {
            out.insert("retry-after", "1".parse().unwrap());
            StatusCode::TOO_MANY_REQUESTS
        }
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
    };
    let mut log = log.lock().unwrap();
    if status.is_success() {
        let events: Vec<Value> = serde_json::from_slice(body).expect("a JSON array");
        log.taken.extend(events);
    } else {
        log.refused += 1;
    }
    (status, out)
}

fn webhook_toml(rx: &Receiver, extra: &str) -> String {
    format!(
        "[[webhook]]\nname = \"test\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nbatch_size = 4\n\
         batch_delay = \"50ms\"\nmax_in_flight = 2\ntimeout = \"500ms\"\nbackoff = \"100ms\"\n\
         backoff_max = \"1s\"\n{extra}",
        rx.url()
    )
}

fn with_webhook(world: &mut World, rx: &Receiver, extra: &str) {
    let text = webhook_toml(rx, extra);
    let parsed = knock::config::Config::parse(&text).unwrap();
    world.config.webhooks = parsed.webhooks;
}

/// The `(kind, message_id)` of every event in the log.
fn logged(path: &std::path::Path) -> HashSet<(String, String)> {
    read_events(path).iter().map(kind_and_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_through_errors_timeouts_and_slowness() {
    let rx = Receiver::start(
        &[
            Answer::Status(503),
            Answer::Status(500),
            Answer::Status(400),
            Answer::TooMany,
            Answer::Slow(Duration::from_secs(1)), // past knock's 500 ms timeout
            Answer::Status(502),
            Answer::Slow(Duration::from_millis(200)),
        ],
        Answer::Ok,
    )
    .await;
    let mut world = World::new(&["1s"], "1h");
    with_webhook(&mut world, &rx, "");
    let sink = plain_sink().await;
    let engine = world
        .start(route(StaticResolver::new(), "rx.test", sink.addr))
        .await;
    for i in 0..20 {
        let replies = smtp_send(
            engine.smtp_addr,
            "s@tx.test",
            &[&format!("user{i}@rx.test")],
            format!("Subject: {i}\r\n\r\nhello\r\n").as_bytes(),
        )
        .await;
        assert!(replies[0].starts_with("250"), "{replies:?}");
    }
    let delivered = |w: &World| {
        w.events()
            .iter()
            .filter(|e| e["event"] == "delivered")
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while delivered(&world) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wanted = logged(&world.events_path());
    assert_eq!(wanted.len(), 40, "a processed and a delivered per message");
    rx.wait_for(&wanted, Duration::from_secs(30)).await;

    let taken = rx.taken();
    let bad_signatures = rx.log.lock().unwrap().bad_signatures;
    assert_eq!(bad_signatures, 0, "every POST is signed with the secret");
    // 503, 500, 400, 429 and 502; the slow answer was taken here after knock gave up.
    assert_eq!(rx.refused(), 5, "the scripted failures were met");
    // The native format is the log's own: each event reads as a line of it, with its id.
    let by_id: HashMap<String, Value> = world
        .events()
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap().to_string(), e))
        .collect();
    for e in &taken {
        knock::event::Event::parse_line(&e.to_string()).unwrap();
        let id = e["id"].as_str().unwrap();
        assert_eq!(by_id.get(id), Some(e), "the webhook's event is the log's");
    }
    // A batch is sent twice only when its POST timed out at knock but was taken here.
    let unique: HashSet<&str> = taken.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(
        taken.len() - unique.len() <= 4,
        "{} duplicates",
        taken.len() - unique.len()
    );

    let metrics = reqwest::get(format!("http://{}/metrics", engine.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed = metrics
        .lines()
        .find(|l| l.starts_with("knock_webhook_posts_total{") && l.contains("result=\"failed\""))
        .unwrap_or_else(|| panic!("no failed posts counted:\n{metrics}"));
    // The five refusals and the POST that timed out (nextest runs each test in a process
    // of its own, so the counter is this test's).
    assert!(failed.ends_with(" 6"), "{failed}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_past_max_age_drops_its_oldest_events_and_says_so() {
    let rx = Receiver::start(&[], Answer::Status(503)).await;
    let mut world = World::new(&["1s"], "1h");
    with_webhook(&mut world, &rx, "max_age = \"1s\"\n");
    let sink = plain_sink().await;
    let engine = world
        .start(route(StaticResolver::new(), "rx.test", sink.addr))
        .await;
    for i in 0..5 {
        smtp_send(
            engine.smtp_addr,
            "s@tx.test",
            &[&format!("old{i}@rx.test")],
            b"Subject: old\r\n\r\nold\r\n",
        )
        .await;
    }
    // Failing for longer than max_age: the old events go, counted.
    let dropped = loop {
        let metrics = reqwest::get(format!("http://{}/metrics", engine.http_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let dropped: f64 = metrics
            .lines()
            .find(|l| l.starts_with("knock_webhook_dropped_events_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        if dropped >= 10.0 {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dropped, 10.0, "processed and delivered of five messages");
    // Back up: new events arrive, the dropped ones never do.
    rx.then(Answer::Ok);
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["new@rx.test"],
        b"Subject: new\r\n\r\nnew\r\n",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !rx.taken().iter().any(|e| e["recipient"] == "new@rx.test") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new event arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old: Vec<Value> = rx
        .taken()
        .into_iter()
        .filter(|e| e["recipient"].as_str().unwrap().starts_with("old"))
        .collect();
    assert!(old.is_empty(), "dropped events were sent: {old:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_format_speaks_their_fields() {
    let rx = Receiver::start(&[], Answer::Ok).await;
    let mut world = World::new(&["1s"], "1h");
    with_webhook(&mut world, &rx, "format = \"sendgrid\"\n");
    let sink = plain_sink().await;
    let engine = world
        .start(route(StaticResolver::new(), "rx.test", sink.addr))
        .await;
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["ok@rx.test", "unknown@rx.test", "tempfail@rx.test"],
        b"Subject: sg\r\n\r\nhello\r\n",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let find = |event: &str, email: &str| {
        rx.taken()
            .into_iter()
            .find(|e| e["event"] == event && e["email"] == email)
    };
    loop {
        if find("deferred", "tempfail@rx.test").is_some()
            && find("bounce", "unknown@rx.test").is_some()
            && find("delivered", "ok@rx.test").is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {:#?}",
            rx.taken()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = find("delivered", "ok@rx.test").unwrap();
    assert!(delivered["timestamp"].is_u64(), "Unix seconds: {delivered}");
    assert!(
        delivered["sg_event_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        delivered["sg_message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        delivered["response"].as_str().unwrap().starts_with("250"),
        "{delivered}"
    );
    assert_eq!(
        delivered["attempt"], "1",
        "a string, as theirs: {delivered}"
    );
    assert!(find("processed", "ok@rx.test").is_some());
    let bounce = find("bounce", "unknown@rx.test").unwrap();
    assert_eq!(bounce["type"], "bounce", "{bounce}");
    assert_eq!(bounce["status"], "5.1.1", "{bounce}");
    assert!(
        bounce["reason"].as_str().unwrap().contains("User unknown"),
        "{bounce}"
    );
    let deferred = find("deferred", "tempfail@rx.test").unwrap();
    assert!(
        deferred["response"]
            .as_str()
            .unwrap()
            .starts_with("451 4.3.0"),
        "{deferred}"
    );
    // Every sg_event_id is unique.
    let taken = rx.taken();
    let ids: HashSet<&str> = taken
        .iter()
        .map(|e| e["sg_event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), taken.len());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_committed_event_and_repeats_only_what_was_in_flight() {
    let rx = Receiver::start(&[], Answer::Status(503)).await;
    let sink = plain_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (smtp, http) = (dead_addr().await, dead_addr().await);
    let events = dir.path().join("events.jsonl");
    let config = dir.path().join("knock.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"{smtp}\"\n[http]\nlisten = \"{http}\"\n[spool]\npath = \"{}\"\n\
             [events]\npath = \"{}\"\n[routes]\n\"rx.test\" = [\"{}\"]\n{}",
            dir.path().join("spool").display(),
            events.display(),
            sink.addr,
            webhook_toml(&rx, "")
        ),
    )
    .unwrap();

    // The receiver is down while mail is accepted and delivered; then knock dies.
    let mut child = serve_binary(&config);
    wait_listening(smtp).await;
    let messages = 30;
    for i in 0..messages {
        let replies = smtp_send(
            smtp,
            "s@tx.test",
            &[&format!("user{i}@rx.test")],
            format!("Subject: {i}\r\n\r\nhello\r\n").as_bytes(),
        )
        .await;
        assert!(replies[0].starts_with("250"), "{replies:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.received().len() < messages {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the outcomes committed
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(rx.taken().is_empty());
    assert!(rx.refused() > 0, "knock tried while the receiver was down");

    // Up again but slow; killed again while POSTs are in flight.
    rx.then(Answer::Slow(Duration::from_millis(150)));
    let mut child = serve_binary(&config);
    wait_listening(smtp).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rx.taken().len() < 8 {
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A clean run sends the rest.
    rx.then(Answer::Ok);
    let mut child = serve_binary(&config);
    wait_listening(smtp).await;
    // Each message was accepted (processed) and delivered: both events must arrive,
    // whatever the event log (flushed every few ms) kept.
    let ids: HashSet<String> = read_events(&events)
        .iter()
        .filter(|e| e["event"] == "processed")
        .map(|e| e["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), messages, "every acceptance in the log");
    let wanted: HashSet<(String, String)> = ids
        .iter()
        .flat_map(|id| {
            [
                ("processed".to_string(), id.clone()),
                ("delivered".to_string(), id.clone()),
            ]
        })
        .collect();
    rx.wait_for(&wanted, Duration::from_secs(30)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let taken = rx.taken();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in &taken {
        *seen.entry(e["id"].as_str().unwrap()).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "webhook kill -9: {} events taken, {} unique, {duplicates} sent twice",
        taken.len(),
        seen.len()
    );
    // In flight at the kill: at most max_in_flight batches of batch_size.
    assert!(duplicates <= 2 * 4, "{duplicates} duplicates");
    assert_eq!(rx.log.lock().unwrap().bad_signatures, 0);
}

/// The code block of `lang` under `docs/events.md`'s webhook section.
fn doc_snippet(lang: &str) -> String {
    let doc = include_str!("../../docs/events.md");
    let start = doc
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no {lang} snippet in docs/events.md"))
        + lang.len()
        + 4;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
}

/// The verification snippets of docs/events.md accept knock's signature and refuse a
/// changed body, a wrong secret and an old timestamp.
#[test]
fn the_documented_snippets_verify_knocks_signatures() {
    let body = br#"[{"id":"x","event":"delivered","recipient":"caf\u00e9@rx.test"}]"#;
    let now = knock::time::Timestamp::now().millis() / 1000;
    let signature = knock::surface::webhook::sign(SECRET.as_bytes(), now, body);
    let old = now - 3600;
    let old_signature = knock::surface::webhook::sign(SECRET.as_bytes(), old, body);
    let body = String::from_utf8(body.to_vec()).unwrap();
    let python = format!(
        "{}\nbody = {body:?}.encode()\nprint(verify(b{SECRET:?}, '{now}', body, '{signature}'), \
         verify(b{SECRET:?}, '{now}', body + b' ', '{signature}'), \
         verify(b'another-secret-entirely', '{now}', body, '{signature}'), \
         verify(b{SECRET:?}, '{old}', body, '{old_signature}'))\n",
        doc_snippet("python")
    );
    let out = Command::new("python3")
        .args(["-c", &python])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True False False False",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = format!(
        "{}\nconst body = Buffer.from({body:?});\nconsole.log([verify({SECRET:?}, '{now}', body, '{signature}'), \
         verify({SECRET:?}, '{now}', Buffer.concat([body, Buffer.from(' ')]), '{signature}'), \
         verify('another-secret-entirely', '{now}', body, '{signature}'), \
         verify({SECRET:?}, '{old}', body, '{old_signature}')].join(' '));\n",
        doc_snippet("javascript")
    );
    let out = Command::new("node")
        .args(["-e", &node])
        .output()
        .expect("node (the machine's Node.js) runs the JavaScript snippet");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "true false false false",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
