//! `GET /api/v1/stats`: the deferral time series of a running knock with mail delivered,
//! bounced and greylisted, checked against the event log minute by minute and per
//! provider, and again after a restart on the same spool. (No dead host: its outage probes
//! would go on adding deferrals while the test compares.)

use crate::world::*;
use knock::net::resolve::StaticResolver;
use knock::time::Timestamp;
use knock::tools::sink::SinkConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const COLUMNS: [&str; 6] = [
    "attempts",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "internal_deferred",
];

/// What the event log says, by key: the counts an event adds, as `/metrics` counts them.
fn tally(events: &[Value], key: impl Fn(&Value) -> String) -> BTreeMap<String, [u64; 6]> {
    let mut out: BTreeMap<String, [u64; 6]> = BTreeMap::new();
    for e in events {
        let internal = e["internal"] == true;
        let with_attempt = u64::from(e["attempt"].is_u64());
        let add = match e["event"].as_str().unwrap() {
            "delivered" => [1, 1, 0, 0, 0, 0],
            "deferred" if internal => [0, 0, 0, 0, 0, 1],
            "deferred" => [1, 0, 1, 0, 0, 0],
            "bounced" => [with_attempt, 0, 0, 1, 0, 0],
            "expired" => [0, 0, 0, 0, 1, 0],
            _ => continue,
        };
        let row = out.entry(key(e)).or_default();
        for (r, a) in row.iter_mut().zip(add) {
            *r += a;
        }
    }
    out
}

fn columns(v: &Value) -> [u64; 6] {
    COLUMNS.map(|c| v[c].as_u64().unwrap_or_else(|| panic!("{c} in {v}")))
}

/// The minute an event's timestamp falls in, as the series writes its points.
fn minute(e: &Value) -> String {
    let at: Timestamp = serde_json::from_value(e["timestamp"].clone()).unwrap();
    Timestamp(at.millis() / 60_000 * 60_000).to_string()
}

async fn stats(engine: &knock::serve::Engine, query: &str) -> Value {
    let (status, body) = http_get(engine, &format!("/api/v1/stats{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// The series by minute, per provider and in total, agree with the event log.
async fn assert_agrees_with_the_log(engine: &knock::serve::Engine, events: &[Value]) {
    let total = stats(engine, "").await;
    let brief = &total["series"][0]["total"];
    assert_eq!(total["by"], "total");
    assert_eq!(total["step_seconds"], 60);
    let series = total["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{total}");
    let points = series[0]["points"].as_array().unwrap();
    // The last hour by the minute: 61 points unless now is on the minute (the minute an
    // hour ago and the one going on now are both partly in).
    assert!((60..=61).contains(&points.len()), "{}", points.len());
    let whole = tally(events, |_| String::new());
    assert_eq!(columns(&series[0]["total"]), whole[""], "{brief}");
    // Minute by minute: every point with counts is a minute of the log, and agrees.
    let by_minute = tally(events, minute);
    let counted: BTreeMap<String, [u64; 6]> = points
        .iter()
        .map(|p| (p["t"].as_str().unwrap().to_string(), columns(p)))
        .filter(|(_, c)| c.iter().any(|&n| n > 0))
        .collect();
    assert_eq!(counted, by_minute);
    // The deferrals by class.
    let deferred: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "deferred" && e["internal"] != true)
        .collect();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for e in &deferred {
        *classes
            .entry(e["class"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(series[0]["total"]["deferred_by_class"], json!(classes));

    let split = stats(engine, "?by=provider").await;
    let providers: BTreeMap<String, [u64; 6]> = split["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["provider"].as_str().unwrap().to_string(),
                columns(&s["total"]),
            )
        })
        .collect();
    let per_provider = tally(events, |e| e["provider"].as_str().unwrap_or("").to_string());
    assert_eq!(providers, per_provider);
}

#[tokio::test]
async fn the_series_counts_what_the_log_says_and_survives_a_restart() {
    let w = World::new(&["1h"], "2h");
    let rx = plain_sink().await;
    let grey = sink(SinkConfig {
        greylist: Some(Duration::from_secs(600)),
        ..Default::default()
    })
    .await;
    let resolver = route(
        route(
            route(StaticResolver::new(), "rx.test", rx.addr),
            "tx.test",
            rx.addr,
        ),
        "grey.test",
        grey.addr,
    );
    let engine = w.start(resolver.clone()).await;
    for rcpt in ["a@rx.test", "unknown@rx.test", "g@grey.test"] {
        smtp_send(
            engine.smtp_addr,
            "s@tx.test",
            &[rcpt],
            b"Subject: m\r\n\r\nx\r\n",
        )
        .await;
    }
    w.wait_event(T, is("delivered", "a@rx.test")).await;
    w.wait_event(T, is("bounced", "unknown@rx.test")).await;
    // The bounce's DSN, delivered to the sender.
    w.wait_event(T, is("delivered", "s@tx.test")).await;
    let g = w.wait_event(T, is("deferred", "g@grey.test")).await;
    // The log is flushed within 20 ms of an event; let it catch up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = w.events();
    let whole = tally(&events, |_| String::new());
    assert_eq!(
        whole[""],
        [4, 2, 1, 1, 0, 0],
        "delivered, deferred and bounced"
    );

    // Read within seconds of the events: from memory, before any flush could matter.
    assert_agrees_with_the_log(&engine, &events).await;
    let grey_p = g["provider"].as_str().unwrap();
    let one = stats(&engine, &format!("?provider={grey_p}&step=5m&from=-30m")).await;
    assert_eq!(one["provider"], grey_p);
    let s = &one["series"][0];
    assert_eq!(s["total"]["deferred"], 1, "{}", s["total"]);
    assert_eq!(s["total"]["deferred_by_class"], json!({"greylist": 1}));
    assert!(s["points"].as_array().unwrap().len() >= 6);
    let by_class = stats(&engine, "?by=class").await;
    let classes: Vec<&str> = by_class["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["class"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["greylist", "hard", "none"]);

    // Bad parameters are named.
    for (query, field) in [
        ("?step=90s", "step"),
        ("?from=-2d&step=1m", "step"),
        ("?from=yesterday", "from"),
        ("?from=-1h&to=-2h", "from"),
        ("?by=domain", "by"),
        ("?window=1h", "window"),
    ] {
        let (status, body) = http_get(&engine, &format!("/api/v1/stats{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }

    // Once the counts so far have been flushed (every 10 s), a new delivery is in memory
    // only: the answer adds the two, each count once.
    tokio::time::sleep(knock::stats::FLUSH_EVERY + Duration::from_secs(1)).await;
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["b@rx.test"],
        b"Subject: m\r\n\r\nx\r\n",
    )
    .await;
    w.wait_event(T, is("delivered", "b@rx.test")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = w.events();
    assert_eq!(tally(&events, |_| String::new())[""], [5, 3, 1, 1, 0, 0]);
    assert_agrees_with_the_log(&engine, &events).await;

    // Kept across a restart: the new engine's memory is empty, so what it answers comes
    // from the spool.
    engine.shutdown().await;
    let engine = w.start(resolver).await;
    let events_now = w.events();
    assert_eq!(
        tally(&events_now, |_| String::new()),
        tally(&events, |_| String::new()),
        "no attempts since (the deferred are due in an hour)"
    );
    assert_agrees_with_the_log(&engine, &events).await;
    engine.shutdown().await;
}
