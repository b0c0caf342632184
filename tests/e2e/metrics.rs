//! `/metrics`: scraped from a running knock with mail delivered, bounced, greylisted and
//! stuck at a dead host, and read with the reference Prometheus text parser
//! (`prometheus_client`, Python), not with knock's own code.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// The exposition parsed by `prometheus_client`: family types and every sample.
fn parse(text: &str) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/support/parse_metrics.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test installs prometheus-client for it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum of the samples named `name` whose labels include `with`.
fn total(parsed: &Value, name: &str, with: &[(&str, &str)]) -> f64 {
    parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == name && with.iter().all(|(k, v)| s[1][*k] == *v))
        .map(|s| s[2].as_f64().unwrap())
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_count_what_happened() {
    let w = World::new(&["1h"], "2h");
    let rx = plain_sink().await;
    let grey = sink(SinkConfig {
        greylist: Some(Duration::from_secs(600)),
        ..Default::default()
    })
    .await;
    // The sender's domain too, for the bounce's DSN.
    let resolver = route(
        route(
            route(
                route(StaticResolver::new(), "rx.test", rx.addr),
                "tx.test",
                rx.addr,
            ),
            "grey.test",
            grey.addr,
        ),
        "dead.test",
        dead_addr().await,
    );
    let engine = w.start(resolver).await;
    for rcpt in ["a@rx.test", "unknown@rx.test", "g@grey.test", "d@dead.test"] {
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
    w.wait_event(T, is("delivered", "s@tx.test")).await;
    let g = w.wait_event(T, is("deferred", "g@grey.test")).await;
    let d = w.wait_event(T, is("deferred", "d@dead.test")).await;
    let (grey_p, dead_p) = (
        g["provider"].as_str().unwrap().to_string(),
        d["provider"].as_str().unwrap().to_string(),
    );

    let resp = reqwest::get(format!("http://{}/metrics", engine.http_addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    let m = parse(&text);

    assert_eq!(m["families"]["knock_delivered"], "counter", "{text}");
    assert_eq!(m["families"]["knock_ee_seconds"], "histogram");
    assert_eq!(m["families"]["knock_queue_recipients"], "gauge");
    // Four messages and the DSN.
    assert_eq!(total(&m, "knock_processed_total", &[]), 5.0, "{text}");
    assert_eq!(total(&m, "knock_delivered_total", &[]), 2.0);
    assert_eq!(total(&m, "knock_bounces_total", &[("class", "hard")]), 1.0);
    assert_eq!(
        total(
            &m,
            "knock_deferrals_total",
            &[("provider", &grey_p), ("class", "greylist")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &m,
            "knock_deferrals_total",
            &[("provider", &dead_p), ("class", "network")]
        ),
        1.0
    );
    assert_eq!(
        total(&m, "knock_attempts_total", &[("result", "deferred")]),
        2.0
    );
    assert!(
        total(
            &m,
            "knock_connections_refused_total",
            &[("provider", &dead_p)]
        ) >= 1.0
    );
    assert_eq!(total(&m, "knock_ee_seconds_count", &[]), 2.0);
    assert_eq!(total(&m, "knock_ee_seconds_bucket", &[("le", "+Inf")]), 2.0);
    // The two deferred recipients wait in the queue, each under its provider.
    for p in [&grey_p, &dead_p] {
        assert_eq!(
            total(
                &m,
                "knock_queue_recipients",
                &[("provider", p), ("state", "deferred")]
            ),
            1.0,
            "{p}: {text}"
        );
    }
    assert!(total(&m, "knock_spool_bytes", &[]) > 0.0);
    assert!(total(&m, "knock_spool_commit_seconds_count", &[]) >= 4.0);
    // Every destination is in exactly one pacing state.
    assert_eq!(
        total(&m, "knock_destination_state", &[("provider", &grey_p)]),
        1.0
    );
    // Never labelled by recipient or message.
    for s in m["samples"].as_array().unwrap() {
        for key in s[1].as_object().unwrap().keys() {
            assert!(
                [
                    "provider",
                    "stream",
                    "source",
                    "class",
                    "result",
                    "state",
                    "le",
                    "period",
                    "window_seconds"
                ]
                .contains(&key.as_str()),
                "unexpected label {key} on {}",
                s[0]
            );
        }
    }
    engine.shutdown().await;
}
