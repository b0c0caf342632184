//! The knobs, measured against `knock sink` receivers: greylisting waits out the window,
//! throttling slows the destination, an outage backs the destination off as a whole, a
//! slowing receiver loses connections before it refuses anything.

use crate::world::*;
use knock::config::Rate;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use serde_json::Value;
use std::time::{Duration, SystemTime};

fn at(e: &Value) -> SystemTime {
    humantime::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap()
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn wait_delivered(w: &World, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let events = w.events();
        let delivered = events.iter().filter(|e| e["event"] == "delivered").count();
        if delivered >= n {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} of {n} delivered in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_every_message_on_its_second_attempt_right_after_the_window() {
    let window = Duration::from_secs(1);
    let mut w = World::new(&["10s"], "1h");
    w.config.greylist.window = window;
    w.config.greylist.floor = Duration::from_millis(500);
    let rx = sink(SinkConfig {
        greylist: Some(window),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let n = 30;
    inject(&engine, n, "user@rx.test").await;
    let events = wait_delivered(&w, n, Duration::from_secs(20)).await;
    let delivered: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "delivered")
        .collect();
    assert!(
        delivered.iter().all(|e| e["attempt"] == 2),
        "every message on its second attempt"
    );
    let mut gaps = Vec::new();
    for d in &delivered {
        let id = d["message_id"].as_str().unwrap();
        let first = events
            .iter()
            .find(|e| e["event"] == "deferred" && e["message_id"] == id)
            .unwrap();
        assert_eq!(first["class"], "greylist");
        let gap = secs(at(first), at(d));
        gaps.push(gap);
        assert!(
            (1.0..=1.7).contains(&gap),
            "retried {gap:.2}s after a {window:?} window"
        );
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "greylist: {n} messages, all delivered on attempt 2, {:.2}-{:.2} s after the first (window {window:?})",
        gaps[0],
        gaps[gaps.len() - 1]
    );
    assert_eq!(rx.stats().greylisted, n as u64);
    let (status, d) = http_get(&engine, "/api/v1/diagnose?window=10m").await;
    assert_eq!(status, 200, "{d}");
    let p = &d["providers"][0];
    assert_eq!(
        (
            p["provider"].as_str(),
            p["cause"].as_str(),
            p["confidence"].as_str()
        ),
        (Some("mx.rx.test"), Some("greylisting"), Some("high")),
        "{p}"
    );
    assert_eq!(p["figures"]["greylist_cleared"], 1.0);
    let (_, d) = http_get(&engine, "/api/v1/destinations").await;
    assert_eq!(
        d["destinations"][0]["greylist_delay_seconds"], 1,
        "the delay that cleared is learned: {d}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_receiver_is_paced_not_hammered() {
    let (r, n) = (50.0, 600usize);
    let w = World::new(&["1m"], "1h");
    let rx = sink(SinkConfig {
        rate: Some(Rate {
            count: r as u32,
            per: Duration::from_secs(1),
        }),
        max_connections: Some(3),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    inject(&engine, n, "user@rx.test").await;
    let events = wait_delivered(&w, n, Duration::from_secs(40)).await;
    let start = events
        .iter()
        .filter(|e| e["event"] == "processed")
        .map(at)
        .min()
        .unwrap();
    let end = events
        .iter()
        .filter(|e| e["event"] == "delivered")
        .map(at)
        .max()
        .unwrap();
    let took = secs(start, end);
    let ideal = n as f64 / r;
    let after_first_period = |e: &&Value| secs(start, at(e)) > 1.0;
    let attempts: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "delivered" || e["event"] == "deferred")
        .filter(after_first_period)
        .collect();
    let deferred = attempts.iter().filter(|e| e["event"] == "deferred").count();
    let share = deferred as f64 / attempts.len() as f64;
    eprintln!(
        "throttle: {n} messages at {r}/s took {took:.1}s (ideal {ideal:.1}s), {deferred} of {} attempts deferred after the first second ({:.1} %)",
        attempts.len(),
        share * 100.0
    );
    // Virtual time holds pacing to 1.1 × the ideal for this shape (simulate.rs). Over real
    // sockets a scheduling hiccup on a loaded CI machine can make a window look shorter than
    // it was, and the learner then settles a little below the limit (CI once took 15.7 s
    // here with 2 refusals): the margin is for that jitter, the refusals are held tightly.
    assert!(
        took <= 1.4 * ideal,
        "took {took:.1}s, more than 1.4 × {ideal:.1}s"
    );
    assert!(share < 0.10, "{:.1} % deferred", share * 100.0);
    assert!(
        events
            .iter()
            .filter(|e| e["event"] == "deferred")
            .all(|e| e["class"] == "throttle")
    );
    let (_, d) = http_get(&engine, "/api/v1/destinations").await;
    let dest = &d["destinations"][0];
    assert!(
        dest["shaping"]["rate_per_minute"].as_f64().is_some(),
        "the destination shows its learned rate: {d}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_backs_off_the_destination_and_flows_after_one_probe() {
    let mut w = World::new(&["200ms"], "1h");
    w.config.adapt.outage_backoff = Duration::from_millis(400);
    w.config.adapt.outage_backoff_max = Duration::from_millis(1600);
    let addr = dead_addr().await;
    let engine = w.start(route(StaticResolver::new(), "rx.test", addr)).await;
    let n = 40;
    inject(&engine, n, "user@rx.test").await;
    // Down for a while: every 200 ms each message would be due again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, d) = http_get(&engine, "/api/v1/destinations").await;
    assert!(
        d["destinations"][0]["shaping"]["outage_since"].is_string(),
        "the destination is in outage: {d}"
    );
    let down = w.events();
    let mut per_message = std::collections::HashMap::new();
    for e in down.iter().filter(|e| e["event"] == "deferred") {
        *per_message
            .entry(e["message_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let most = per_message.values().copied().max().unwrap_or(0);
    let total: usize = per_message.values().sum();
    eprintln!("outage: {total} attempts for {n} messages in 4 s down, at most {most} for one");
    assert!(
        most <= 2,
        "a message was tried {most} times while the receiver was down"
    );
    assert!(
        total < 2 * n,
        "{total} attempts: the destination did not back off as a whole"
    );

    let back = std::time::Instant::now();
    let rx = sink(SinkConfig {
        listen: addr,
        ..Default::default()
    })
    .await;
    assert!(rx.wait_for_messages(1, Duration::from_secs(10)).await);
    let resumed = back.elapsed();
    assert!(
        rx.wait_for_messages(n as u64, Duration::from_secs(10))
            .await,
        "{} of {n} delivered",
        rx.stats().messages
    );
    let all = back.elapsed();
    eprintln!(
        "outage: flow resumed {resumed:?} after the receiver came back, all delivered after {all:?}"
    );
    // Within one probe interval: at most the 1.6 s maximum backoff, and a little.
    assert!(
        resumed <= Duration::from_millis(1600 + 400),
        "flow resumed after {resumed:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowing_receiver_loses_connections_before_it_refuses() {
    let mut w = World::new(&["1m"], "1h");
    w.config.delivery.max_connections = 6;
    let rx = sink(SinkConfig {
        slow_above: Some((2, Duration::from_millis(150))),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    // A quiet start sets the baseline: one message at a time is answered at once.
    for _ in 0..3 {
        smtp_send(
            engine.smtp_addr,
            "s@tx.test",
            &["user@rx.test"],
            b"Subject: warm\r\n\r\nx\r\n",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    inject(&engine, 400, "user@rx.test").await;
    let mut fewest = usize::MAX;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, d) = http_get(&engine, "/api/v1/destinations").await;
        if let Some(c) = d["destinations"][0]["shaping"]["connections"].as_u64() {
            fewest = fewest.min(c as usize);
        }
        if fewest <= 3 {
            break;
        }
    }
    let s = rx.stats();
    eprintln!(
        "slow receiver: connections down to {fewest} of 6; sink refused {}",
        s.refused_connections + s.rate_limited
    );
    assert!(fewest < 6, "concurrency never dropped");
    assert_eq!(
        s.refused_connections + s.rate_limited + s.deferred_random,
        0,
        "the receiver never refused anything"
    );
    assert!(w.events().iter().all(|e| e["event"] != "deferred"));
    engine.shutdown().await;
}

#[tokio::test]
async fn domains_are_grouped_into_providers() {
    let w = World::new(&["1m"], "1h");
    let rx = plain_sink().await;
    let r = StaticResolver::new()
        .with_mx("a.test", &["mx.shared.test"])
        .with_mx("b.test", &["mx.shared.test"])
        .with_mx("gmail.com", &["gmail-smtp-in.l.google.com"])
        .with_mx("company.test", &["aspmx.l.google.com"])
        .with_host("mx.shared.test", rx.addr)
        .with_host("gmail-smtp-in.l.google.com", rx.addr)
        .with_host("aspmx.l.google.com", rx.addr);
    let engine = w.start(r).await;
    smtp_send(
        engine.smtp_addr,
        "",
        &["x@a.test", "y@b.test", "z@gmail.com", "q@company.test"],
        b"Subject: p\r\n\r\nx\r\n",
    )
    .await;
    assert!(rx.wait_for_messages(4, Duration::from_secs(10)).await);
    let (_, d) = http_get(&engine, "/api/v1/destinations").await;
    let got: Vec<(String, Vec<String>)> = d["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap().to_string(),
                d["domains"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "google".to_string(),
                vec!["company.test".to_string(), "gmail.com".to_string()]
            ),
            (
                "mx.shared.test".to_string(),
                vec!["a.test".to_string(), "b.test".to_string()]
            ),
        ]
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn hard_bounces_are_suppressed_and_the_list_can_be_edited() {
    let w = World::new(&["1m"], "1h");
    let (rx, _tx, r) = receiver_and_sender().await;
    let engine = w.start(r.clone()).await;
    let t = Duration::from_secs(10);
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["unknown@rx.test"],
        b"Subject: 1\r\n\r\nx\r\n",
    )
    .await;
    w.wait_event(t, is("bounced", "unknown@rx.test")).await;
    let (_, list) = http_get(&engine, "/api/v1/suppressions").await;
    assert_eq!(
        list["suppressions"][0]["address"], "unknown@rx.test",
        "{list}"
    );
    assert!(
        list["suppressions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("550 5.1.1")
    );

    // Later mail to it is marked, never sent; the other recipient goes.
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["Unknown@rx.test", "ok@rx.test"],
        b"Subject: 2\r\n\r\nx\r\n",
    )
    .await;
    let id = queued_id(&replies[0]);
    w.wait_event(t, is("suppressed", "Unknown@rx.test")).await;
    w.wait_event(t, is("delivered", "ok@rx.test")).await;
    assert_eq!(rx.received().last().unwrap().rcpts, vec!["ok@rx.test"]);
    assert_eq!(
        rx.stats().refused_magic,
        1,
        "the suppressed address was not tried again"
    );
    let (_, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(m["recipients"][0]["state"], "suppressed");

    // Mail from the null sender is never suppressed.
    smtp_send(
        engine.smtp_addr,
        "",
        &["unknown@rx.test"],
        b"Subject: 3\r\n\r\nx\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.stats().refused_magic, 2);

    // Edit the list: bad address, add, remove, and it survives a restart.
    let put = |path: &str| reqwest::Client::new().put(format!("http://{}{path}", engine.http_addr));
    let resp = put("/api/v1/suppressions/not-an-address")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = put("/api/v1/suppressions/Someone@X.test")
        .body(r#"{"reason": "asked to stop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let del = reqwest::Client::new().delete(format!(
        "http://{}/api/v1/suppressions/unknown@rx.test",
        engine.http_addr
    ));
    assert_eq!(del.send().await.unwrap().status().as_u16(), 204);
    engine.shutdown().await;

    let engine = w.start(r).await;
    let (_, list) = http_get(&engine, "/api/v1/suppressions").await;
    let all: Vec<(&str, &str)> = list["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap(),
                s["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(all, vec![("someone@x.test", "asked to stop")]);
    let del = reqwest::Client::new().delete(format!(
        "http://{}/api/v1/suppressions/unknown@rx.test",
        engine.http_addr
    ));
    assert_eq!(del.send().await.unwrap().status().as_u16(), 404);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_connection_drawing_deferrals_is_not_reused() {
    let mut w = World::new(&["1h"], "2h");
    w.config.delivery.max_connections = 1;
    let rx = sink(SinkConfig {
        defer_share: 1.0,
        delay: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    inject(&engine, 12, "user@rx.test").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w
        .events()
        .iter()
        .filter(|e| e["event"] == "deferred")
        .count()
        < 12
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three deferrals per connection at most: 12 deferred messages need 4 connections.
    assert!(
        rx.stats().connections >= 4,
        "{} connections for 12 deferrals",
        rx.stats().connections
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn mail_waiting_in_a_paused_destination_still_expires() {
    let mut w = World::new(&["10s"], "1500ms");
    w.config.adapt.outage_backoff = Duration::from_secs(30);
    w.config.adapt.outage_backoff_max = Duration::from_secs(30);
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", dead_addr().await))
        .await;
    smtp_send(
        engine.smtp_addr,
        "",
        &["a@rx.test"],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    smtp_send(
        engine.smtp_addr,
        "",
        &["b@rx.test"],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    for rcpt in ["a@rx.test", "b@rx.test"] {
        let e = w
            .wait_event(Duration::from_secs(5), is("expired", rcpt))
            .await;
        assert!(
            e["attempt"].as_u64().unwrap() <= 1,
            "expired while waiting, not by trying: {e}"
        );
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_rate_is_kept_and_dsns_do_not_spend_it() {
    let mut w = World::new(&["1m"], "1h");
    let rate = knock::config::ShapingConfig {
        rate: Some("20/s".parse().unwrap()),
        ..Default::default()
    };
    w.config.shaping.insert("mx.rx.test".into(), rate);
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    inject(&engine, 40, "user@rx.test").await;
    // Mail from <> (as DSNs are) goes past the rate: 40 of them at once.
    for _ in 0..40 {
        smtp_send(
            engine.smtp_addr,
            "",
            &["dsn@rx.test"],
            b"Subject: dsn\r\n\r\nx\r\n",
        )
        .await;
    }
    let events = wait_delivered(&w, 80, Duration::from_secs(10)).await;
    let spread = |rcpt: &str| {
        let times: Vec<SystemTime> = events
            .iter()
            .filter(|e| e["event"] == "delivered" && e["recipient"] == rcpt)
            .map(at)
            .collect();
        secs(*times.iter().min().unwrap(), *times.iter().max().unwrap())
    };
    let (paced, free) = (spread("user@rx.test"), spread("dsn@rx.test"));
    eprintln!("rate: 40 messages at 20/s over {paced:.2} s; 40 from <> over {free:.2} s");
    assert!(paced >= 1.8, "40 messages at 20/s went out in {paced:.2} s");
    assert!(
        free < paced,
        "mail from <> waited for the senders' rate ({free:.2} s)"
    );
    engine.shutdown().await;
}
