//! Reading the queue as an operator coming from Postfix does: the listing and its filters
//! (mailq), a message as stored (postcat), the age histogram (qshape), ids by their start,
//! and the event log followed as it is written; over the HTTP API and through the `knock`
//! binary, with `--api` given as `host:port`.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

/// Injects a message over HTTP; returns its id.
async fn send(engine: &knock::serve::Engine, to: &[&str]) -> String {
    let body = serde_json::json!({"from": "s@tx.test", "to": to, "subject": "s", "text": "t"});
    let (status, json) = http_post(engine, "/api/v1/messages", &body.to_string()).await;
    assert_eq!(status, 202, "{json}");
    json["id"].as_str().unwrap().to_string()
}

/// The (message id, recipient) pairs of a listing page.
fn listed(page: &Value) -> Vec<(String, String)> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            m["recipients"].as_array().unwrap().iter().map(|r| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    r["address"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

/// A world where `grey.test` greylists (for an hour) and `rx.test` answers as its magic
/// recipients script: every recipient below is deferred on its first attempt and waits.
struct Deferred {
    /// Kept for its temporary spool and log.
    _world: World,
    engine: knock::serve::Engine,
    /// Message ids, oldest first, and their recipients.
    messages: Vec<(String, Vec<&'static str>)>,
    _sinks: (knock::tools::sink::Sink, knock::tools::sink::Sink),
}

async fn deferred_world() -> Deferred {
    let w = World::new(&["1h"], "2h");
    let grey = sink(SinkConfig {
        greylist: Some(Duration::from_secs(3600)),
        ..Default::default()
    })
    .await;
    let rx = plain_sink().await;
    let r = route(
        route(StaticResolver::new(), "grey.test", grey.addr),
        "rx.test",
        rx.addr,
    );
    let engine = w.start(r).await;
    let plan: [&[&'static str]; 5] = [
        &["g1@grey.test"],
        &["tempfail@rx.test", "full@rx.test"],
        &["g2@grey.test", "full@rx.test"],
        &["full@rx.test"],
        &["tempfail@rx.test"],
    ];
    let mut messages = Vec::new();
    for to in plan {
        messages.push((send(&engine, to).await, to.to_vec()));
    }
    let deadline = tokio::time::Instant::now() + T;
    while w
        .events()
        .iter()
        .filter(|e| e["event"] == "deferred")
        .count()
        < 7
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "7 deferrals: {:#?}",
            w.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sorted = messages.clone();
    sorted.sort();
    assert_eq!(sorted, messages, "ids are in the order of acceptance");
    Deferred {
        _world: w,
        engine,
        messages,
        _sinks: (grey, rx),
    }
}

impl Deferred {
    /// The (id, recipient) pairs, oldest message first, of the recipients that pass
    /// `keep`.
    fn expect(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        self.messages
            .iter()
            .flat_map(|(id, to)| {
                to.iter()
                    .filter(|r| keep(r))
                    .map(|r| (id.clone(), r.to_string()))
            })
            .collect()
    }

    fn api(&self) -> String {
        // No scheme: `--api` takes `host:port` as `[http] listen` is written.
        self.engine.http_addr.to_string()
    }
}

#[tokio::test]
async fn the_queue_is_listed_filtered_and_paged() {
    let d = deferred_world().await;
    let all = d.expect(|_| true);
    assert_eq!(all.len(), 7);
    let grey = |r: &str| r.ends_with("@grey.test");
    let table: Vec<(&str, Vec<(String, String)>)> = vec![
        ("", all.clone()),
        ("domain=GREY.test", d.expect(grey)),
        ("provider=mx.grey.test", d.expect(grey)),
        ("recipient=FULL@", d.expect(|r| r.starts_with("full@"))),
        ("class=mailbox", d.expect(|r| r.starts_with("full@"))),
        ("class=system", d.expect(|r| r.starts_with("tempfail@"))),
        ("class=greylist", d.expect(grey)),
        ("reply=greylisted", d.expect(grey)),
        ("reply=452%204.2.2", d.expect(|r| r.starts_with("full@"))),
        ("state=deferred", all.clone()),
        ("state=queued", vec![]),
        ("newer_than=1h", all.clone()),
        ("older_than=1h", vec![]),
        (
            "domain=rx.test&class=system&newer_than=10m",
            d.expect(|r| r.starts_with("tempfail@")),
        ),
    ];
    for (query, expected) in table {
        let (status, page) = http_get(&d.engine, &format!("/api/v1/messages?{query}")).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(listed(&page), expected, "{query}");
        assert!(page["next"].is_null(), "{query}: one page");
    }
    let (_, page) = http_get(&d.engine, "/api/v1/messages?recipient=full@").await;
    let first = &page["messages"][0];
    assert_eq!(first["id"], d.messages[1].0);
    assert!(first["age_seconds"].as_u64().unwrap() < 60);
    let full = &first["recipients"][0];
    assert_eq!(
        (
            &full["state"],
            &full["provider"],
            &full["attempts"],
            &full["last_attempt"]["code"],
            &full["last_attempt"]["class"]
        ),
        (
            &Value::from("deferred"),
            &Value::from("mx.rx.test"),
            &Value::from(1),
            &Value::from(452),
            &Value::from("mailbox")
        ),
        "{first}"
    );
    assert!(full["next_attempt"].is_string(), "{full}");

    // Pages of two messages, each saying where the next starts, add up to the whole.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("/api/v1/messages?limit=2&after={a}"),
            None => "/api/v1/messages?limit=2".into(),
        };
        let (status, page) = http_get(&d.engine, &query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert!(page["messages"].as_array().unwrap().len() <= 2);
        seen.extend(listed(&page));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, all.clone()));

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=lots", "limit"),
        ("sender=s@tx.test", "sender"),
        ("state=delivered", "state"),
        ("state=stuck", "state"),
        ("class=slow", "class"),
        ("older_than=a%20while", "older_than"),
        ("after=01a2", "after"),
        ("domain=a.test&domain=b.test", "domain"),
    ] {
        let (status, json) = http_get(&d.engine, &format!("/api/v1/messages?{query}")).await;
        assert_eq!(status, 400, "{query}: {json}");
        assert_eq!(json["field"], field, "{query}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }

    // The same through the CLI: a table for people, JSON anywhere on the line.
    let api = d.api();
    let (ok, out, err) =
        knock_async(&["queue", "list", "--api", &api, "--domain", "grey.test"]).await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("RECIPIENT") && header.contains("LAST REPLY"),
        "{out}"
    );
    for (id, rcpt) in d.expect(grey) {
        let row = out
            .lines()
            .find(|l| l.contains(&rcpt))
            .unwrap_or_else(|| panic!("{rcpt}: {out}"));
        assert!(row.starts_with(&id), "{row}");
        assert!(
            row.contains("deferred") && row.contains("Greylisted"),
            "{row}"
        );
    }
    assert!(!out.contains("@rx.test"), "{out}");
    assert!(out.contains("2 messages, 2 recipients"), "{out}");

    let (ok, out, err) = knock_async(&[
        "queue", "--json", "list", "--class", "system", "--limit", "1", "--all", "--api", &api,
    ])
    .await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed(&page), d.expect(|r| r.starts_with("tempfail@")));

    let (ok, out, _) = knock_async(&["queue", "list", "--api", &api, "--limit", "2"]).await;
    assert!(ok);
    assert!(
        out.contains(&format!("--after {}", d.messages[1].0)),
        "where to go on: {out}"
    );
    let (ok, _, err) = knock_async(&["queue", "list", "--api", &api, "--state", "stuck"]).await;
    assert!(!ok);
    assert!(
        err.starts_with("error: 400 Bad Request: state:") && err.lines().count() == 1,
        "{err}"
    );
    d.engine.shutdown().await;
}

#[tokio::test]
async fn ids_may_be_given_by_their_start() {
    let d = deferred_world().await;
    let ids: Vec<&str> = d.messages.iter().map(|(id, _)| id.as_str()).collect();
    // The shortest start of the third id that no other id shares.
    let target = ids[2];
    let unique = (1..=target.len())
        .map(|n| &target[..n])
        .find(|p| ids.iter().filter(|id| id.starts_with(p)).count() == 1)
        .unwrap();
    // A start every id shares: they were made within the same few seconds.
    let shared: String = target
        .chars()
        .enumerate()
        .take_while(|(i, c)| ids.iter().all(|id| id.chars().nth(*i) == Some(*c)))
        .map(|(_, c)| c)
        .collect();
    assert!(!shared.is_empty() && shared.len() < unique.len());
    let none = "ffff";

    let (status, m) = http_get(&d.engine, &format!("/api/v1/messages/{unique}")).await;
    assert_eq!((status, m["id"].as_str()), (200, Some(target)), "{m}");
    let (status, json) = http_get(&d.engine, &format!("/api/v1/messages/{shared}")).await;
    assert_eq!(
        (status, &json["field"]),
        (409, &Value::from("id")),
        "{json}"
    );
    assert!(
        json["error"].as_str().unwrap().starts_with(&format!(
            "{} messages have ids starting with {shared}",
            ids.len()
        )),
        "{json}"
    );
    let (status, json) = http_get(&d.engine, &format!("/api/v1/messages/{none}")).await;
    assert_eq!(
        (status, &json["field"]),
        (404, &Value::from("id")),
        "{json}"
    );
    let (status, json) = http_get(&d.engine, "/api/v1/messages/01a2-0765").await;
    assert_eq!(
        (status, &json["field"]),
        (400, &Value::from("id")),
        "{json}"
    );

    let api = d.api();
    let (ok, out, err) = knock_async(&["queue", "show", unique, "--api", &api]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("message {target}")), "{out}");
    assert!(out.contains("g2@grey.test [deferred]"), "{out}");
    let (ok, out, err) = knock_async(&["queue", "cat", unique, "--api", &api, "--headers"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("Message-ID: <{target}@knock.test>")),
        "{out}"
    );

    for (prefix, says) in [
        (
            shared.as_str(),
            format!("{} messages have ids starting with {shared}", ids.len()),
        ),
        (none, format!("no message id starts with {none}")),
    ] {
        for sub in ["show", "cat"] {
            let (ok, out, err) = knock_async(&["queue", sub, prefix, "--api", &api]).await;
            assert!(!ok && out.is_empty(), "{sub} {prefix}: {out}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(
                err.starts_with("error: ") && err.contains(&says),
                "{sub} {prefix}: {err}"
            );
        }
    }
    d.engine.shutdown().await;
}

#[tokio::test]
async fn a_queued_message_is_printed_as_stored() {
    let w = World::new(&["1h"], "2h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let raw = "From: s@tx.test\nTo: full@rx.test\nSubject: the quarterly report\nX-Campaign: q3\n\nLine one.\n\nLine two, after a blank line.\n";
    let body = serde_json::json!({"from": "s@tx.test", "to": ["full@rx.test"], "raw": raw});
    let (status, json) = http_post(&engine, "/api/v1/messages", &body.to_string()).await;
    assert_eq!(status, 202, "{json}");
    let id = json["id"].as_str().unwrap().to_string();
    w.wait_event(T, is("deferred", "full@rx.test")).await;
    let stored = raw.replace('\n', "\r\n");
    let headers = stored.split("\r\n\r\n").next().unwrap().to_string() + "\r\n";

    let get = |path: String| {
        let url = format!("http://{}{path}", engine.http_addr);
        async move {
            let resp = reqwest::get(url).await.unwrap();
            let status = resp.status().as_u16();
            let kind = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, kind, resp.text().await.unwrap())
        }
    };
    let (status, kind, text) = get(format!("/api/v1/messages/{id}/raw")).await;
    assert_eq!(
        (status, kind.as_deref(), text.as_str()),
        (200, Some("message/rfc822"), stored.as_str())
    );
    let (status, _, text) = get(format!("/api/v1/messages/{id}/raw?headers=true")).await;
    assert_eq!((status, text.as_str()), (200, headers.as_str()));
    let (status, _, text) = get(format!("/api/v1/messages/{id}/raw?headers=maybe")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"field\":\"headers\""), "{text}");

    let api = engine.http_addr.to_string();
    let (ok, out, err) = knock_async(&["queue", "cat", &id[..13], "--api", &api]).await;
    assert!(ok, "{err}");
    assert_eq!(out, stored, "printed byte for byte");
    let (ok, out, err) = knock_async(&["queue", "cat", &id, "--headers", "--api", &api]).await;
    assert!(ok, "{err}");
    assert_eq!(out, headers);

    // Delivered, the message is on record but its body is gone: 410, said as much.
    let (status, _) = http_post(
        &engine,
        "/api/v1/messages",
        r#"{"from": "s@tx.test", "to": ["a@rx.test"], "subject": "s", "text": "t"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let delivered = w.wait_event(T, is("delivered", "a@rx.test")).await;
    let done = delivered["message_id"].as_str().unwrap();
    let (status, _, text) = get(format!("/api/v1/messages/{done}/raw")).await;
    assert_eq!(status, 410, "{text}");
    let (ok, _, err) = knock_async(&["queue", "cat", done, "--api", &api]).await;
    assert!(!ok && err.contains("its body is not kept"), "{err}");
    engine.shutdown().await;
}

#[tokio::test]
async fn the_shape_counts_the_queue_by_age_per_domain_and_provider() {
    let d = deferred_world().await;
    let (status, shape) = http_get(&d.engine, "/api/v1/queue/shape").await;
    assert_eq!(status, 200, "{shape}");
    assert_eq!(shape["by"], "domain");
    let labels: Vec<&str> = shape["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+"
        ]
    );
    let row = |r: &Value| {
        (
            r["name"].as_str().unwrap().to_string(),
            r["total"].as_u64().unwrap(),
            r["counts"][0].as_u64().unwrap(),
        )
    };
    assert_eq!(row(&shape["total"]), ("TOTAL".into(), 7, 7));
    let rows: Vec<_> = shape["rows"].as_array().unwrap().iter().map(row).collect();
    assert_eq!(
        rows,
        [("rx.test".into(), 5, 5), ("grey.test".to_string(), 2, 2)]
    );
    let (_, by_provider) = http_get(&d.engine, "/api/v1/queue/shape?by=provider").await;
    let names: Vec<&str> = by_provider["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mx.rx.test", "mx.grey.test"]);
    let (status, json) = http_get(&d.engine, "/api/v1/queue/shape?by=sender").await;
    assert_eq!(
        (status, &json["field"]),
        (400, &Value::from("by")),
        "{json}"
    );

    let api = d.api();
    let (ok, out, err) = knock_async(&["queue", "shape", "--api", &api]).await;
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][..4], ["DOMAIN", "TOTAL", "5m", "10m"], "{out}");
    assert_eq!(lines[0].last(), Some(&"1280m+"));
    assert_eq!(lines[1][..3], ["TOTAL", "7", "7"], "{out}");
    assert_eq!(lines[2][..3], ["rx.test", "5", "5"], "{out}");
    assert_eq!(lines[3][..3], ["grey.test", "2", "2"], "{out}");
    let (ok, out, err) = knock_async(&[
        "queue", "shape", "--by", "provider", "--json", "--api", &api,
    ])
    .await;
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["by"], "provider");
    assert_eq!(json["total"]["total"], 7);
    d.engine.shutdown().await;
}

/// Reads a child's stdout a line at a time on a thread of its own.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line within `T`, off the async runtime.
async fn next_line(lines: &mut Option<std::sync::mpsc::Receiver<String>>) -> String {
    let rx = lines.take().unwrap();
    let (rx, line) = tokio::task::spawn_blocking(move || {
        let line = rx.recv_timeout(T);
        (rx, line)
    })
    .await
    .unwrap();
    *lines = Some(rx);
    line.expect("a line within the timeout")
}

#[tokio::test]
async fn events_are_followed_as_they_are_written() {
    use std::process::Stdio;
    let w = World::new(&["1h"], "2h");
    let path = w.events_path();
    assert!(!path.exists(), "the log is made when the engine starts");
    // Following from before the log exists, for deferrals only.
    let mut child = Command::new(env!("CARGO_BIN_EXE_knock"))
        .args(["events", "--follow", "--event", "deferred", "--file"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Some(lines_of(&mut child));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let deferred = send(&engine, &["full@rx.test"]).await;
    let line = next_line(&mut lines).await;
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[1..7],
        [
            "deferred",
            deferred.as_str(),
            "full@rx.test",
            "mx.rx.test",
            "mailbox",
            "452"
        ],
        "{line}"
    );
    assert!(line.ends_with("Mailbox full, try again later"), "{line}");

    // Delivered and processed events are left out; the next deferral comes through.
    let delivered = send(&engine, &["a@rx.test"]).await;
    w.wait_event(T, is("delivered", "a@rx.test")).await;
    let second = send(&engine, &["tempfail@rx.test"]).await;
    let line = next_line(&mut lines).await;
    assert!(
        line.contains(&second) && line.contains(" system "),
        "{line}"
    );
    assert!(!line.contains(&delivered), "{line}");

    // Rotated by copying and truncating: what is written next still arrives.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = send(&engine, &["full@rx.test"]).await;
    let line = next_line(&mut lines).await;
    assert!(line.contains(&third), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Without --follow: what the log holds (since the truncation), then it ends; --json
    // prints the lines as written.
    let file = path.to_str().unwrap();
    let (ok, out, err) = knock_async(&[
        "events",
        "--file",
        file,
        "--json",
        "--provider",
        "mx.rx.test",
    ])
    .await;
    assert!(ok, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!events.is_empty(), "{out}");
    assert!(
        events.iter().all(|e| e["provider"] == "mx.rx.test"),
        "{out}"
    );
    assert!(events.iter().any(|e| e["message_id"] == third.as_str()));
    let (ok, out, err) =
        knock_async(&["events", "--file", file, "--event", "processed", "-n", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("processed") && out.contains(&third), "{out}");
    let (ok, _, err) = knock_async(&["events", "--file", "/nonexistent/events.jsonl"]).await;
    assert!(
        !ok && err.contains("no event log at /nonexistent/events.jsonl"),
        "{err}"
    );
    engine.shutdown().await;
}
