//! Streams: a message names its stream (SMTP header, API field) or takes its listener's;
//! an unknown name is refused at ingest; the header never reaches the receiver; events say
//! the stream; a stream's deadline expires mail as soon as it cannot be met.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn message(subject: &str, stream: Option<&str>) -> Vec<u8> {
    let header = stream.map_or(String::new(), |s| format!("X-Knock-Stream: {s}\r\n"));
    format!("From: s@tx.test\r\nSubject: {subject}\r\n{header}\r\nbody\r\n").into_bytes()
}

#[tokio::test]
async fn a_message_names_its_stream_and_the_receiver_never_sees_the_header() {
    let w = World::new(&["1s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;

    let named = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["reset@rx.test"],
        &message("reset", Some("transactional")),
    )
    .await;
    assert!(named[0].starts_with("250"), "{named:?}");
    let plain = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["news@rx.test"],
        &message("news", None),
    )
    .await;
    assert!(plain[0].starts_with("250"), "{plain:?}");
    let unknown = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["typo@rx.test"],
        &message("typo", Some("transactionl")),
    )
    .await;
    assert!(
        unknown[0].starts_with("550") && unknown[0].contains("5.7.1"),
        "{unknown:?}"
    );
    assert!(unknown[0].contains("transactionl"), "{unknown:?}");

    // Over HTTP: the field, the raw message's header, and an unknown name.
    let (status, json) = http_post(
        &engine,
        "/api/v1/messages",
        r#"{"from": "s@tx.test", "to": ["api@rx.test"], "subject": "s", "text": "t", "stream": "transactional"}"#,
    )
    .await;
    assert_eq!(status, 202, "{json}");
    let raw = "From: s@tx.test\\r\\nX-Knock-Stream: transactional\\r\\nSubject: raw\\r\\n\\r\\nbody\\r\\n";
    let (status, json) = http_post(
        &engine,
        "/api/v1/messages",
        &format!(r#"{{"from": "s@tx.test", "to": ["raw@rx.test"], "raw": "{raw}"}}"#),
    )
    .await;
    assert_eq!(status, 202, "{json}");
    let (status, json) = http_post(
        &engine,
        "/api/v1/messages",
        r#"{"from": "s@tx.test", "to": ["bad@rx.test"], "subject": "s", "text": "t", "stream": "nope"}"#,
    )
    .await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["field"], "stream", "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("transactional"),
        "{json}"
    );

    for (rcpt, stream) in [
        ("reset@rx.test", "transactional"),
        ("news@rx.test", "bulk"),
        ("api@rx.test", "transactional"),
        ("raw@rx.test", "transactional"),
    ] {
        let e = w
            .wait_event(WAIT, |e| {
                e["event"] == "delivered" && e["recipient"] == rcpt
            })
            .await;
        assert_eq!(e["stream"], stream, "{e}");
    }
    assert!(
        !w.events()
            .iter()
            .any(|e| e["recipient"] == "typo@rx.test" || e["recipient"] == "bad@rx.test"),
        "a refused message was queued"
    );
    // A stream is suspended and resumed like a provider; an unknown one is refused.
    let (status, json) = http_post(&engine, "/api/v1/suspend", r#"{"stream": "nope"}"#).await;
    assert_eq!(
        (status, json["field"].as_str()),
        (400, Some("stream")),
        "{json}"
    );
    let (status, json) = http_post(&engine, "/api/v1/suspend", r#"{"stream": "bulk"}"#).await;
    assert_eq!(status, 200, "{json}");
    let reply = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["waits@rx.test"],
        &message("waits", None),
    )
    .await;
    assert!(reply[0].starts_with("250"), "{reply:?}");
    let (_, json) = http_get(&engine, "/api/v1/suspensions").await;
    assert_eq!(json["suspensions"][0]["stream"], "bulk", "{json}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !w.events()
            .iter()
            .any(|e| e["recipient"] == "waits@rx.test" && e["event"] == "delivered"),
        "suspended bulk mail went"
    );
    let (status, json) = http_post(&engine, "/api/v1/resume", r#"{"stream": "bulk"}"#).await;
    assert_eq!(status, 200, "{json}");
    w.wait_event(WAIT, is("delivered", "waits@rx.test")).await;

    let received = rx.received();
    assert_eq!(received.len(), 5);
    for m in &received {
        let text = String::from_utf8_lossy(&m.body);
        assert!(
            !text.to_ascii_lowercase().contains("x-knock-stream"),
            "the receiver saw the stream header:\n{text}"
        );
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_deadline_expires_mail_as_soon_as_it_cannot_be_met() {
    let mut w = World::new(&["1s"], "1h");
    let otp = knock::config::StreamConfig {
        deadline: Some(Duration::from_secs(4)),
        retry: Some(vec![Duration::from_secs(1)]),
        ..Default::default()
    };
    w.config.streams.0.insert("otp".into(), otp);
    // Nothing listens at the MX: every attempt fails.
    let dead = dead_addr().await;
    let engine = w.start(route(StaticResolver::new(), "rx.test", dead)).await;
    let sent = std::time::Instant::now();
    let reply = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["code@rx.test"],
        &message("your code", Some("otp")),
    )
    .await;
    assert!(reply[0].starts_with("250"), "{reply:?}");
    let e = w.wait_event(WAIT, is("expired", "code@rx.test")).await;
    // Given up within the deadline, not after the hour of max_age.
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(e["stream"], "otp", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("deadline"), "{e}");
    engine.shutdown().await;
}
