//! The knobs, measured against `knock sink` receivers: greylisting waits out the window,
//! throttling slows the destination, an outage backs the destination off as a whole, a
//! slowing receiver loses connections before it refuses anything.

use crate::world::*;
use knock::config::Rate;
use knock::resolve::StaticResolver;
use knock::sink::SinkConfig;
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

/// Injects `n` messages to `to@rx.test`... over SMTP, `sessions` at a time.
async fn inject(engine: &knock::engine::Engine, n: usize, to: &str) {
    let report = knock::bench::run(knock::bench::BenchConfig {
        target: engine.smtp_addr,
        count: n,
        size: 1024,
        concurrency: 4,
        from: "s@tx.test".into(),
        to: to.into(),
        sink_stats: None,
        progress: false,
    })
    .await
    .unwrap();
    assert_eq!(report.accepted, n);
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
    for d in &delivered {
        let id = d["message_id"].as_str().unwrap();
        let first = events
            .iter()
            .find(|e| e["event"] == "deferred" && e["message_id"] == id)
            .unwrap();
        assert_eq!(first["class"], "greylist");
        let gap = secs(at(first), at(d));
        assert!(
            (1.0..=1.7).contains(&gap),
            "retried {gap:.2}s after a {window:?} window"
        );
    }
    assert_eq!(rx.stats().greylisted, n as u64);
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
    assert!(
        took <= 1.2 * ideal,
        "took {took:.1}s, more than 1.2 × {ideal:.1}s"
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
