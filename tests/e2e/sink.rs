//! `knock sink`'s scripted modes, knock's client against older servers, and `knock bench`.

use crate::world::*;
use knock::config::Rate;
use knock::net::resolve::StaticResolver;
use knock::net::smtp::server::EhloMode;
use knock::tools::bench::{BenchConfig, Sizes};
use knock::tools::sink::{Sink, SinkConfig};
use std::collections::{BTreeMap, HashSet};
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
    let saved = saved_files(dir.path());
    assert_eq!(saved.len(), 1);
    assert_eq!(
        std::fs::read(&saved[0]).unwrap(),
        b"Subject: saved\r\n\r\nbody\r\n"
    );
}

fn saved_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn saves_one_file_per_message_with_fsync_and_runs_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..2 {
        let rx = sink(SinkConfig {
            save_dir: Some(dir.path().to_path_buf()),
            fsync: true,
            ..Default::default()
        })
        .await;
        let report = knock::tools::bench::run(BenchConfig {
            target: rx.addr,
            count: 30,
            concurrency: 3,
            sizes: Sizes::one(1024),
            from: "bench@tx.test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(report.accepted, 30);
        let files = saved_files(dir.path());
        assert_eq!(files.len(), 30 * (run + 1), "{files:?}");
        let mine: HashSet<Vec<u8>> = rx.received().into_iter().map(|m| m.body).collect();
        let on_disk = files
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .filter(|b| mine.contains(b))
            .count();
        assert_eq!(on_disk, 30, "each message of this run is a file");
    }
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
    let stats = served(&rx).await;
    let report = knock::tools::bench::run(BenchConfig {
        target: rx.addr,
        count: 200,
        sizes: Sizes::one(2048),
        concurrency: 4,
        from: "bench@tx.test".into(),
        to: "a@rx.test".into(),
        sink_stats: Some(stats),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!((report.accepted, report.refused), (200, 0));
    assert_eq!(report.delivered.map(|d| d.messages), Some(200));
    assert!(rx.received().iter().all(|m| m.rcpts == ["a@rx.test"]));
    assert!(report.latencies.p50 <= report.latencies.p99);
    assert_eq!(rx.stats().messages, 200);
    assert!(rx.stats().connections <= 4, "sessions are reused");
}

/// A sink with its stats served over HTTP; returns the base URL.
async fn served(rx: &Arc<Sink>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, knock::tools::sink::stats_router(rx.clone())).into_future());
    format!("http://{addr}/stats")
}

#[tokio::test]
async fn bench_shapes_recipients_domains_and_connections() {
    let rx = Arc::new(plain_sink().await);
    let stats = served(&rx).await;
    let report = knock::tools::bench::run(BenchConfig {
        target: rx.addr,
        count: 200,
        rcpts: 2,
        domains: 7,
        per_session: 3,
        sizes: Sizes::parse("1KiB:3,4KiB:1").unwrap(),
        concurrency: 4,
        from: "bench@tx.test".into(),
        sink_stats: Some(stats.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        (report.accepted, report.accepted_recipients, report.refused),
        (200, 400, 0)
    );
    let delivered = report.delivered.unwrap();
    assert_eq!((delivered.messages, delivered.recipients), (200, 400));
    let s = rx.stats();
    assert_eq!((s.messages, s.recipients), (200, 400));
    // At most 3 messages a connection: 67 at least, and at most one short one per session.
    assert!((67..=67 + 4).contains(&s.connections), "{s:?}");

    let domains: BTreeMap<String, u64> = reqwest::get(format!("{stats}/domains"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(domains, rx.domains());
    assert_eq!(domains.values().sum::<u64>(), 400);
    let names: Vec<String> = (0..7).map(|j| format!("d{j}.example.test")).collect();
    assert_eq!(domains.keys().cloned().collect::<Vec<_>>(), names);
    let top = knock::tools::sink::top_domains(&domains, 1);
    assert_eq!(top[0].0, "d0.example.test", "the real mix: {domains:?}");

    let received = rx.received();
    let rcpts: HashSet<&String> = received.iter().flat_map(|m| &m.rcpts).collect();
    assert_eq!(rcpts.len(), 400, "every recipient its own");
    for m in &received {
        let text = String::from_utf8_lossy(&m.body);
        let to = format!("To: <{}>, <{}>\r\n", m.rcpts[0], m.rcpts[1]);
        assert!(text.contains(&to), "{text}");
    }
    let ids: HashSet<&str> = received
        .iter()
        .map(|m| {
            let text = std::str::from_utf8(&m.body).unwrap();
            text.lines().find(|l| l.starts_with("Message-ID:")).unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 200);
    let big = received.iter().filter(|m| m.body.len() > 2048).count();
    assert!((25..=75).contains(&big), "a quarter at 4 KiB: {big}");
}
