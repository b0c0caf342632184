//! `knock sink`'s scripted modes, knock's client against older servers, and `knock bench`.

use crate::world::*;
use knock::config::Rate;
use knock::net::resolve::StaticResolver;
use knock::net::smtp::server::EhloMode;
use knock::tools::sink::SinkConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn rate_limit_answers_421_past_n_per_period() {
    let rx = sink(SinkConfig {
        rate: Some(Rate {
            count: 2,
            per: Duration::from_secs(60),
        }),
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        let r = smtp_send(
            rx.addr,
            "s@tx.test",
            &["a@rx.test"],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
        assert!(r[0].starts_with("250"), "{r:?}");
    }
    let r = smtp_send(
        rx.addr,
        "s@tx.test",
        &["a@rx.test"],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    assert!(
        r[0].starts_with("421 4.7.0") && r[0].contains("too much mail from 127.0.0.1"),
        "{r:?}"
    );
    assert_eq!((rx.stats().messages, rx.stats().rate_limited), (2, 1));
}

#[tokio::test]
async fn random_deferrals_and_magic_recipients() {
    let rx = sink(SinkConfig {
        defer_share: 1.0,
        ..Default::default()
    })
    .await;
    let r = smtp_send(
        rx.addr,
        "",
        &[
            "a@rx.test",
            "unknown@rx.test",
            "full@rx.test",
            "overquota@rx.test",
            "blocked@rx.test",
            "permfail@rx.test",
            "tempfail@rx.test",
        ],
        b"x\r\n",
    )
    .await;
    let codes: Vec<&str> = r.iter().map(|r| &r[..9]).collect();
    assert_eq!(
        codes,
        [
            "450 4.7.1",
            "550 5.1.1",
            "452 4.2.2",
            "552 5.2.2",
            "554 5.7.1",
            "550 5.7.1",
            "451 4.3.0"
        ]
    );
    let s = rx.stats();
    assert_eq!((s.deferred_random, s.refused_magic, s.messages), (1, 6, 0));
}

#[tokio::test]
async fn saves_messages_and_answers_slowly() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(100);
    let rx = sink(SinkConfig {
        save_dir: Some(dir.path().to_path_buf()),
        delay,
        ..Default::default()
    })
    .await;
    let t0 = Instant::now();
    smtp_send(
        rx.addr,
        "s@tx.test",
        &["a@rx.test"],
        b"Subject: saved\r\n\r\nbody\r\n",
    )
    .await;
    assert!(
        t0.elapsed() >= delay * 4,
        "greeting, MAIL, RCPT and DATA each wait {delay:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("1.eml")).unwrap(),
        b"Subject: saved\r\n\r\nbody\r\n"
    );
}

#[tokio::test]
async fn delivers_to_servers_without_pipelining_or_ehlo() {
    for mode in [EhloMode::NoPipelining, EhloMode::HeloOnly] {
        let w = World::new(&["30s"], "1h");
        let rx = sink(SinkConfig {
            ehlo: mode,
            ..Default::default()
        })
        .await;
        let engine = w
            .start(route(StaticResolver::new(), "rx.test", rx.addr))
            .await;
        smtp_send(
            engine.smtp_addr,
            "",
            &["a@rx.test", "unknown@rx.test", "b@rx.test"],
            b"Subject: old\r\n\r\nx\r\n",
        )
        .await;
        w.wait_event(T, is("delivered", "a@rx.test")).await;
        w.wait_event(T, is("delivered", "b@rx.test")).await;
        w.wait_event(T, is("bounced", "unknown@rx.test")).await;
        assert_eq!(
            rx.received()[0].rcpts,
            vec!["a@rx.test", "b@rx.test"],
            "{mode:?}"
        );
        engine.shutdown().await;
    }
}

#[tokio::test]
async fn bench_reports_accepted_and_delivered() {
    let rx = Arc::new(plain_sink().await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stats_addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, knock::tools::sink::stats_router(rx.clone())).into_future());
    let report = knock::tools::bench::run(knock::tools::bench::BenchConfig {
        target: rx.addr,
        count: 200,
        size: 2048,
        concurrency: 4,
        from: "bench@tx.test".into(),
        to: "a@rx.test".into(),
        sink_stats: Some(format!("http://{stats_addr}/stats")),
        progress: false,
        starttls: false,
    })
    .await
    .unwrap();
    assert_eq!((report.accepted, report.refused), (200, 0));
    assert_eq!(report.delivered.map(|d| d.0), Some(200));
    assert!(report.latencies.p50 <= report.latencies.p99);
    assert_eq!(rx.stats().messages, 200);
    assert!(rx.stats().connections <= 4, "sessions are reused");
}
