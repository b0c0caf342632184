//! Delivery end to end: delivered, bounced with a DSN, greylisted, expired, mixed replies,
//! DNS outcomes, next MX, connection reuse, and carrying on after a restart.

use crate::world::*;
use knock::net::resolve::{DnsError, StaticResolver};
use knock::tools::sink::SinkConfig;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn delivered_with_body_intact_and_a_full_event() {
    let w = World::new(&["1s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let body = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\nend\r\n";
    let replies = smtp_send(engine.smtp_addr, "s@tx.test", &["a@rx.test"], body).await;
    assert!(
        replies[0].starts_with("250 2.0.0 Ok: queued as "),
        "{replies:?}"
    );

    let e = w.wait_event(T, is("delivered", "a@rx.test")).await;
    assert_eq!(e["attempt"], 1);
    assert_eq!(e["mx"], "mx.rx.test");
    assert_eq!(e["local_ip"], "127.0.0.1");
    assert_eq!(e["code"], 250);
    assert_eq!(e["enhanced"], "2.0.0");
    assert!(e["ee_seconds"].as_f64().unwrap() >= 0.0);
    assert!(w.events().iter().any(is("processed", "a@rx.test")));

    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "s@tx.test");
    assert_eq!(got[0].rcpts, vec!["a@rx.test"]);
    let text = String::from_utf8(got[0].body.clone()).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby knock.test (knock) with ESMTP id "
        ),
        "{text}"
    );
    assert!(
        text.ends_with("Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\nend\r\n"),
        "dot-stuffing must round-trip: {text:?}"
    );

    let id = queued_id(&replies[0]);
    let (status, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(m["recipients"][0]["state"], "delivered");
    assert_eq!(m["recipients"][0]["attempts"][0]["mx"], "mx.rx.test");
    engine.shutdown().await;
}

#[tokio::test]
async fn hard_bounce_sends_a_dsn_to_the_sender() {
    let w = World::new(&["1s"], "1h");
    let (rx, sender_mx, r) = receiver_and_sender().await;
    let engine = w.start(r).await;
    let body =
        b"From: s@tx.test\r\nSubject: for nobody\r\nMessage-ID: <orig-1@tx.test>\r\n\r\nbody\r\n";
    smtp_send(engine.smtp_addr, "s@tx.test", &["unknown@rx.test"], body).await;

    let e = w.wait_event(T, is("bounced", "unknown@rx.test")).await;
    assert_eq!(
        (
            e["code"].as_u64(),
            e["enhanced"].as_str(),
            e["class"].as_str()
        ),
        (Some(550), Some("5.1.1"), Some("hard"))
    );
    assert!(
        sender_mx.wait_for_messages(1, T).await,
        "the DSN never reached the sender's MX"
    );
    let dsn = &sender_mx.received()[0];
    assert_eq!(dsn.from, "", "DSNs come from the null sender");
    assert_eq!(dsn.rcpts, vec!["s@tx.test"]);
    let text = String::from_utf8_lossy(&dsn.body);
    for needle in [
        "multipart/report",
        "Final-Recipient: rfc822; unknown@rx.test",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 <unknown@rx.test>: Recipient address rejected",
        "Message-ID: <orig-1@tx.test>",
    ] {
        assert!(text.contains(needle), "DSN lacks {needle:?}:\n{text}");
    }
    assert_eq!(rx.stats().messages, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn null_sender_mail_never_gets_a_dsn() {
    let w = World::new(&["1s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    smtp_send(
        engine.smtp_addr,
        "",
        &["unknown@rx.test"],
        b"Subject: bounce\r\n\r\nx\r\n",
    )
    .await;
    w.wait_event(T, is("bounced", "unknown@rx.test")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let processed = w
        .events()
        .iter()
        .filter(|e| e["event"] == "processed")
        .count();
    assert_eq!(
        processed,
        1,
        "no DSN may be queued for <>: {:#?}",
        w.events()
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn greylisted_mail_is_delivered_on_the_attempt_after_the_window() {
    let window = Duration::from_millis(800);
    let w = World::new(&["1s", "5s"], "1h");
    let rx = sink(SinkConfig {
        greylist: Some(window),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["a@rx.test"],
        b"Subject: grey\r\n\r\nx\r\n",
    )
    .await;

    let deferred = w.wait_event(T, is("deferred", "a@rx.test")).await;
    assert_eq!(
        (deferred["code"].as_u64(), deferred["enhanced"].as_str()),
        (Some(450), Some("4.2.0"))
    );
    assert!(deferred["next_attempt"].is_string());
    let delivered = w.wait_event(T, is("delivered", "a@rx.test")).await;
    assert_eq!(delivered["attempt"], 2, "delivered on the second attempt");
    let stats = rx.stats();
    assert_eq!((stats.greylisted, stats.messages), (1, 1));
    let t =
        |e: &serde_json::Value| humantime::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    let gap = t(&delivered).duration_since(t(&deferred)).unwrap();
    assert!(
        gap >= window,
        "retried after {gap:?}, inside the {window:?} window"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn temporary_failures_forever_expire_with_a_dsn() {
    let w = World::new(&["200ms"], "1s");
    let (_rx, sender_mx, r) = receiver_and_sender().await;
    let engine = w.start(r).await;
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["tempfail@rx.test"],
        b"Subject: never\r\n\r\nx\r\n",
    )
    .await;

    let expired = w.wait_event(T, is("expired", "tempfail@rx.test")).await;
    let attempts = expired["attempt"].as_u64().unwrap();
    assert!(
        (3..=7).contains(&attempts),
        "tried {attempts} times in 1s at 200ms steps"
    );
    let deferrals = w
        .events()
        .iter()
        .filter(|e| is("deferred", "tempfail@rx.test")(e))
        .count() as u64;
    assert_eq!(
        deferrals,
        attempts - 1,
        "every attempt but the last was a deferral"
    );
    assert!(
        sender_mx.wait_for_messages(1, T).await,
        "no DSN for the expired recipient"
    );
    let text = String::from_utf8_lossy(&sender_mx.received()[0].body).to_string();
    assert!(text.contains("delivery time expired"), "{text}");
    assert!(text.contains("Status: 4.3.0"), "{text}");
    assert!(text.contains("Diagnostic-Code: smtp; 451 4.3.0"), "{text}");
    engine.shutdown().await;
}

#[tokio::test]
async fn mixed_rcpt_replies_in_one_transaction() {
    let w = World::new(&["30s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    smtp_send(
        engine.smtp_addr,
        "",
        &[
            "ok@rx.test",
            "tempfail@rx.test",
            "unknown@rx.test",
            "ok2@rx.test",
        ],
        b"Subject: mixed\r\n\r\nx\r\n",
    )
    .await;

    w.wait_event(T, is("delivered", "ok@rx.test")).await;
    w.wait_event(T, is("delivered", "ok2@rx.test")).await;
    w.wait_event(T, is("deferred", "tempfail@rx.test")).await;
    w.wait_event(T, is("bounced", "unknown@rx.test")).await;
    let stats = rx.stats();
    assert_eq!(
        (stats.connections, stats.messages, stats.recipients),
        (1, 1, 2),
        "one transaction carrying the accepted two"
    );
    assert_eq!(rx.received()[0].rcpts, vec!["ok@rx.test", "ok2@rx.test"]);
    let (_, q) = http_get(&engine, "/api/v1/queue").await;
    assert_eq!(q["domains"][0]["domain"], "rx.test");
    assert_eq!(q["domains"][0]["deferred"], 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn dns_outcomes_bounce_or_defer() {
    let w = World::new(&["30s"], "1h");
    let r = StaticResolver::new()
        .with_error("gone.test", DnsError::NxDomain("gone.test".into()))
        .with_error("nomail.test", DnsError::NullMx("nomail.test".into()))
        .with_error(
            "flaky.test",
            DnsError::Temporary("flaky.test".into(), "SERVFAIL".into()),
        );
    let engine = w.start(r).await;
    smtp_send(
        engine.smtp_addr,
        "",
        &["a@gone.test", "b@nomail.test", "c@flaky.test"],
        b"Subject: dns\r\n\r\nx\r\n",
    )
    .await;
    let a = w.wait_event(T, is("bounced", "a@gone.test")).await;
    assert_eq!(a["enhanced"], "5.1.2");
    let b = w.wait_event(T, is("bounced", "b@nomail.test")).await;
    assert_eq!(b["enhanced"], "5.1.10");
    let c = w.wait_event(T, is("deferred", "c@flaky.test")).await;
    assert_eq!(
        (c["enhanced"].as_str(), c["class"].as_str()),
        (Some("4.4.3"), Some("network"))
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn next_mx_when_the_first_is_down() {
    let w = World::new(&["30s"], "1h");
    let rx = plain_sink().await;
    let r = StaticResolver::new()
        .with_mx("rx.test", &["mx1.rx.test", "mx2.rx.test"])
        .with_host("mx1.rx.test", dead_addr().await)
        .with_host("mx2.rx.test", rx.addr);
    let engine = w.start(r).await;
    smtp_send(
        engine.smtp_addr,
        "",
        &["a@rx.test"],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    let e = w.wait_event(T, is("delivered", "a@rx.test")).await;
    assert_eq!(e["mx"], "mx2.rx.test");
    assert_eq!(
        e["attempt"], 1,
        "a dead MX host is not an attempt of its own"
    );
    // The event says which host was passed over and what it did.
    let tried = e["tried"].as_array().expect("hosts tried");
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_eq!(tried[0]["host"], "mx1.rx.test");
    assert!(
        tried[0]["said"].as_str().unwrap().contains("refused"),
        "{tried:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn connections_are_reused_for_several_messages() {
    let mut w = World::new(&["30s"], "1h");
    w.config.delivery.max_connections = 1;
    let rx = sink(SinkConfig {
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    for i in 0..6 {
        smtp_send(
            engine.smtp_addr,
            "",
            &[&format!("u{i}@rx.test")],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    }
    assert!(rx.wait_for_messages(6, T).await);
    let stats = rx.stats();
    assert!(
        stats.connections < 6,
        "6 messages over {} connections: no reuse",
        stats.connections
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_trickle_of_messages_keeps_one_connection_open() {
    let w = World::new(&["30s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    // Each message is delivered before the next comes, so the queue is empty in between:
    // the worker keeps its connection for the next one instead of closing it.
    for i in 0..5 {
        let rcpt = format!("u{i}@rx.test");
        smtp_send(
            engine.smtp_addr,
            "s@tx.test",
            &[&rcpt],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
        assert!(rx.wait_for_messages(i + 1, T).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rx.stats().connections, 1, "one connection for the trickle");
    engine.shutdown().await;
}

/// One small message to `rcpt`.
async fn send_to(engine: &knock::serve::Engine, rcpt: &str) {
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &[rcpt],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
}

#[tokio::test]
async fn domains_on_one_mx_share_a_connection() {
    let w = World::new(&["30s"], "1h");
    let rx = plain_sink().await;
    // Two domains, one MX (hosted mail, or every domain routed to one smart host).
    let r = StaticResolver::new()
        .with_mx("a.test", &["mx.hosting.test"])
        .with_mx("b.test", &["mx.hosting.test"])
        .with_host("mx.hosting.test", rx.addr);
    let engine = w.start(r).await;
    for (i, domain) in ["a.test", "b.test", "a.test", "b.test"].iter().enumerate() {
        send_to(&engine, &format!("u{i}@{domain}")).await;
        assert!(rx.wait_for_messages(i as u64 + 1, T).await);
    }
    assert_eq!(
        rx.stats().connections,
        1,
        "one connection carries both domains' mail"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_connection_to_one_tenant_does_not_carry_another_tenants_mail() {
    let mut w = World::new(&["30s"], "1h");
    w.config.delivery.max_connections = 1;
    let (rx_a, rx_b) = (plain_sink().await, plain_sink().await);
    // One provider (Microsoft's MX suffix), two tenants on different hosts.
    let r = StaticResolver::new()
        .with_mx("a.test", &["a-test.mail.protection.outlook.com"])
        .with_host("a-test.mail.protection.outlook.com", rx_a.addr)
        .with_mx("b.test", &["b-test.mail.protection.outlook.com"])
        .with_host("b-test.mail.protection.outlook.com", rx_b.addr);
    let engine = w.start(r).await;
    for (i, domain) in ["a.test", "b.test", "a.test", "b.test"].iter().enumerate() {
        send_to(&engine, &format!("u{i}@{domain}")).await;
    }
    assert!(rx_a.wait_for_messages(2, T).await);
    assert!(rx_b.wait_for_messages(2, T).await);
    let rcpts = |rx: &knock::tools::sink::Sink| {
        rx.received()
            .into_iter()
            .flat_map(|m| m.rcpts)
            .collect::<Vec<_>>()
    };
    assert_eq!(rcpts(&rx_a), vec!["u0@a.test", "u2@a.test"]);
    assert_eq!(rcpts(&rx_b), vec!["u1@b.test", "u3@b.test"]);
    engine.shutdown().await;
}

#[tokio::test]
async fn deferred_mail_survives_a_restart_with_its_attempt_count() {
    let w = World::new(&["1s"], "1h");
    let addr = dead_addr().await;
    let engine = w.start(route(StaticResolver::new(), "rx.test", addr)).await;
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["a@rx.test"],
        b"Subject: later\r\n\r\nx\r\n",
    )
    .await;
    let id = queued_id(&replies[0]);
    let deferred = w.wait_event(T, is("deferred", "a@rx.test")).await;
    assert_eq!(
        (deferred["attempt"].as_u64(), deferred["class"].as_str()),
        (Some(1), Some("network"))
    );
    engine.shutdown().await;

    let rx = sink(SinkConfig {
        listen: addr,
        ..Default::default()
    })
    .await;
    let engine = w.start(route(StaticResolver::new(), "rx.test", addr)).await;
    let delivered = w.wait_event(T, is("delivered", "a@rx.test")).await;
    assert_eq!(
        delivered["attempt"], 2,
        "the attempt count is kept across the restart"
    );
    assert_eq!(rx.stats().messages, 1);
    let (_, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(m["recipients"][0]["attempts"].as_array().unwrap().len(), 2);
    engine.shutdown().await;
}

/// A spool whose new-message writes (`full`) or outcome writes (`failing_updates`) can be
/// made to fail, as on a full disk.
struct FaultySpool {
    inner: knock::engine::spool::RedbSpool,
    full: std::sync::atomic::AtomicBool,
    failing_updates: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl knock::engine::spool::Spool for FaultySpool {
    fn submit(&self, ops: Vec<knock::engine::spool::Op>) -> knock::engine::spool::Committing {
        let stores = ops
            .iter()
            .any(|o| matches!(o, knock::engine::spool::Op::Store(_)));
        let updates = ops
            .iter()
            .any(|o| matches!(o, knock::engine::spool::Op::Update { .. }));
        let failing = (stores && self.full.load(std::sync::atomic::Ordering::SeqCst))
            || (updates
                && self
                    .failing_updates
                    .load(std::sync::atomic::Ordering::SeqCst));
        if failing {
            return Box::pin(std::future::ready(Err(
                knock::engine::spool::SpoolError::Storage(
                    "No space left on device (os error 28)".into(),
                ),
            )));
        }
        self.inner.submit(ops)
    }
    fn body(
        &self,
        id: knock::message::MessageId,
    ) -> Result<Option<bytes::Bytes>, knock::engine::spool::SpoolError> {
        self.inner.body(id)
    }
    fn record(
        &self,
        id: knock::message::MessageId,
    ) -> Result<Option<knock::engine::spool::Record>, knock::engine::spool::SpoolError> {
        self.inner.record(id)
    }
    fn recover(&self) -> Result<knock::engine::spool::Recovered, knock::engine::spool::SpoolError> {
        self.inner.recover()
    }
    fn purge(
        &self,
        before: knock::time::Timestamp,
    ) -> Result<usize, knock::engine::spool::SpoolError> {
        self.inner.purge(before)
    }
    fn suppressions(
        &self,
    ) -> Result<Vec<(String, knock::policy::suppress::Suppression)>, knock::engine::spool::SpoolError>
    {
        self.inner.suppressions()
    }
    fn ids_in(
        &self,
        range: std::ops::RangeInclusive<u128>,
        at_most: usize,
    ) -> Result<Vec<knock::message::MessageId>, knock::engine::spool::SpoolError> {
        self.inner.ids_in(range, at_most)
    }
    fn scan_pending(
        &self,
        after: Option<knock::message::MessageId>,
        visit: &mut dyn FnMut(
            &knock::message::Envelope,
            knock::message::Group,
        ) -> std::ops::ControlFlow<()>,
    ) -> Result<(), knock::engine::spool::SpoolError> {
        self.inner.scan_pending(after, visit)
    }
}

/// An engine on a `FaultySpool` (updates failing from the start when
/// `failing_updates`), delivering rx.test to `addr`.
async fn start_on_faulty_spool(
    w: &World,
    addr: std::net::SocketAddr,
    failing_updates: bool,
) -> (knock::serve::Engine, std::sync::Arc<FaultySpool>) {
    let spool = std::sync::Arc::new(FaultySpool {
        inner: knock::engine::spool::RedbSpool::open(&w.config.spool.path).unwrap(),
        full: false.into(),
        failing_updates: failing_updates.into(),
    });
    let transport = knock::net::transport::SmtpTransport::new(
        std::sync::Arc::new(route(StaticResolver::new(), "rx.test", addr)),
        &w.config.routes,
        w.config.delivery.clone(),
        "knock.test".into(),
        knock::net::tls::Connectors::new(None).unwrap(),
    );
    let engine = knock::serve::Engine::start_parts(
        w.config.clone(),
        std::sync::Arc::new(transport),
        spool.clone(),
    )
    .await
    .unwrap();
    (engine, spool)
}

#[tokio::test]
async fn a_full_spool_refuses_new_mail_keeps_the_old_and_recovers() {
    let mut w = World::new(&["300ms"], "1h");
    w.config.adapt.outage_backoff = Duration::from_millis(300);
    let addr = dead_addr().await;
    let (engine, spool) = start_on_faulty_spool(&w, addr, false).await;
    // Accepted while there is room, deferred (the receiver is down).
    let first = smtp_send(
        engine.smtp_addr,
        "",
        &["before@rx.test"],
        b"Subject: 1\r\n\r\nx\r\n",
    )
    .await;
    assert!(first[0].starts_with("250"), "{first:?}");
    w.wait_event(T, is("deferred", "before@rx.test")).await;

    spool.full.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = smtp_send(
        engine.smtp_addr,
        "",
        &["during@rx.test"],
        b"Subject: 2\r\n\r\nx\r\n",
    )
    .await;
    assert!(refused[0].starts_with("452 4.3.1"), "{refused:?}");
    assert_http_refuses_for_storage(&engine).await;

    // Space returns: new mail is taken again, and the old message is delivered.
    spool.full.store(false, std::sync::atomic::Ordering::SeqCst);
    let rx = sink(SinkConfig {
        listen: addr,
        ..Default::default()
    })
    .await;
    let again = smtp_send(
        engine.smtp_addr,
        "",
        &["after@rx.test"],
        b"Subject: 3\r\n\r\nx\r\n",
    )
    .await;
    assert!(again[0].starts_with("250"), "{again:?}");
    assert!(
        rx.wait_for_messages(2, Duration::from_secs(15)).await,
        "{:?}",
        rx.stats()
    );
    let got: Vec<String> = rx.received().iter().flat_map(|m| m.rcpts.clone()).collect();
    assert!(
        got.contains(&"before@rx.test".to_string()) && got.contains(&"after@rx.test".to_string()),
        "{got:?}"
    );
    assert!(!got.contains(&"during@rx.test".to_string()));
    engine.shutdown().await;
}

/// A transport whose first delivery panics mid-way: connected, then gone.
struct PanicsOnce {
    inner: knock::net::transport::SmtpTransport,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl knock::net::transport::Transport for PanicsOnce {
    async fn connect(
        &self,
        domain: &str,
        policy: knock::net::tls::Policy,
        source: &knock::net::transport::Source,
    ) -> Result<Box<dyn knock::net::transport::Connection>, knock::net::transport::ConnectError>
    {
        let conn = self.inner.connect(domain, policy, source).await;
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a bug in the transport, mid-delivery");
        }
        conn
    }

    async fn mx_hosts(&self, domain: &str) -> Vec<String> {
        self.inner.mx_hosts(domain).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_strands_no_group_and_costs_no_connection() {
    let mut w = World::new(&["1h"], "2h");
    w.config.delivery.max_connections = 3;
    let rx = sink(SinkConfig {
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let transport = PanicsOnce {
        inner: knock::net::transport::SmtpTransport::new(
            std::sync::Arc::new(route(StaticResolver::new(), "rx.test", rx.addr)),
            &w.config.routes,
            w.config.delivery.clone(),
            "knock.test".into(),
            knock::net::tls::Connectors::new(None).unwrap(),
        ),
        panicked: false.into(),
    };
    let engine = knock::serve::Engine::start_with_transport(
        w.config.clone(),
        std::sync::Arc::new(transport),
    )
    .await
    .unwrap();
    smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["first@rx.test"],
        b"Subject: 1\r\n\r\nx\r\n",
    )
    .await;
    // Not an hour later (the schedule's first step): the group came back without an attempt.
    let e = w.wait_event(T, is("delivered", "first@rx.test")).await;
    assert_eq!(e["attempt"], 1, "the lost try was no attempt: {e}");
    assert!(w.events().iter().all(|e| e["event"] != "deferred"));
    // The slot of the worker that died is free: the destination still opens all three.
    let n = 60;
    inject(&engine, n, "user@rx.test").await;
    assert!(rx.wait_for_messages(n as u64 + 1, T).await);
    assert_eq!(rx.stats().peak_sessions, 3, "{:?}", rx.stats());
    engine.shutdown().await;
}

#[tokio::test]
async fn a_final_state_that_could_not_be_written_is_written_again() {
    let w = World::new(&["1h"], "2h");
    let rx = plain_sink().await;
    let (engine, spool) = start_on_faulty_spool(&w, rx.addr, true).await;
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["a@rx.test"],
        b"Subject: 1\r\n\r\nx\r\n",
    )
    .await;
    assert!(rx.wait_for_messages(1, T).await);
    let id = queued_id(&replies[0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(
        m["recipients"][0]["state"], "queued",
        "not on disk yet: {m}"
    );
    // The disk takes writes again: the delivered state is written without another attempt.
    spool
        .failing_updates
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
        if m["recipients"][0]["state"] == "delivered" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.stats().messages, 1, "delivered once");
    engine.shutdown().await;
}
