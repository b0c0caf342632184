//! SMTP smuggling, tried as an attacker would: a message whose body holds a line ending
//! that some receivers take for the end of DATA (a bare `LF . LF`, `CR . CR`, …) followed
//! by commands of a forged second message. knock ends DATA only on `CRLF . CRLF`, and
//! never keeps or relays a bare CR or LF: each becomes a CRLF at ingest (or the message is
//! refused, `[smtp] bare_line_endings = "refuse"`), so the receiver gets one message whose
//! every line ends in CRLF, the dot line stuffed and then unstuffed as text. The same
//! holds for a message sent in BDAT chunks (RFC 3030), which carry bytes as they are.

use crate::world::*;
use knock::config::BareLineEndings;
use knock::net::resolve::StaticResolver;
use std::time::Duration;

/// The sequences of the 2023 SMTP smuggling findings, each between the real message and
/// the forged one.
const SEQUENCES: [&[u8]; 5] = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n"];

const FORGED: &[u8] =
    b"MAIL FROM:<ceo@tx.test>\r\nRCPT TO:<victim@rx.test>\r\nDATA\r\nSubject: forged\r\n\r\nwire the money\r\n";

fn every_line_ends_in_crlf(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => body.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && body[i - 1] == b'\r',
        _ => true,
    })
}

/// One message with `sequence` and the forged commands in its body, over a raw session;
/// returns the reply to the final dot.
async fn submit(addr: std::net::SocketAddr, rcpt: &str, sequence: &[u8]) -> String {
    let (mut s, _) = Raw::connect(addr).await;
    s.cmd("EHLO attacker.test").await;
    assert!(s.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    assert!(s.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    assert!(s.cmd("DATA").await.starts_with("354"));
    let mut body = b"Subject: hello\r\n\r\nthe real message".to_vec();
    body.extend_from_slice(sequence);
    body.extend_from_slice(FORGED);
    s.send(&body).await;
    let reply = s.cmd(".").await;
    assert!(
        s.cmd("NOOP").await.starts_with("250"),
        "the session goes on"
    );
    reply
}

#[tokio::test]
async fn a_smuggled_message_reaches_the_receiver_as_text_of_the_real_one() {
    let rx = plain_sink().await;
    let w = World::new(&["1s"], "1h");
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    for (i, sequence) in SEQUENCES.iter().enumerate() {
        let reply = submit(engine.smtp_addr, &format!("u{i}@rx.test"), sequence).await;
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    // Over HTTP too: a raw message with bare line endings.
    let raw = "Subject: hello\n\nthe real message\r.\rMAIL FROM:<ceo@tx.test>\rRCPT TO:<victim@rx.test>\rDATA\r";
    let body = serde_json::json!({"from": "s@tx.test", "to": ["u9@rx.test"], "raw": raw});
    let (status, json) = http_post(&engine, "/api/v1/messages", &body.to_string()).await;
    assert_eq!(status, 202, "{json}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rx.received().len() < SEQUENCES.len() + 1 {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a second message the time to show up, if one was smuggled through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = rx.received();
    assert_eq!(
        received.len(),
        SEQUENCES.len() + 1,
        "one message each, none forged"
    );
    for m in &received {
        assert!(
            m.rcpts.iter().all(|r| r != "victim@rx.test"),
            "a forged message arrived: {m:?}"
        );
        assert!(
            every_line_ends_in_crlf(&m.body),
            "a bare line ending reached the receiver: {:?}",
            String::from_utf8_lossy(&m.body)
        );
        let text = String::from_utf8_lossy(&m.body);
        assert!(text.contains("the real message\r\n"), "{text}");
        assert!(text.contains("MAIL FROM:<ceo@tx.test>\r\n"), "{text}");
    }
    // The dot line of the smuggling sequence arrived as a line of text: stuffed on the
    // wire, unstuffed by the receiver. (After a CRLF, as in `CRLF . CR`, the dot began a
    // line of DATA, so knock took it as the client's stuffing and removed it, as RFC 5321
    // says a server does.)
    for (i, sequence) in SEQUENCES.iter().enumerate() {
        let m = received
            .iter()
            .find(|m| m.rcpts[0] == format!("u{i}@rx.test"))
            .unwrap();
        let text = String::from_utf8_lossy(&m.body);
        let line = match sequence.starts_with(b"\r\n") {
            true => "the real message\r\n\r\nMAIL FROM",
            false => "the real message\r\n.\r\nMAIL FROM",
        };
        assert!(text.contains(line), "{text}");
    }
    engine.shutdown().await;
}

/// The same, sent in BDAT chunks: the sequence and the forged commands split across
/// two chunks, the second the last. Returns the reply to the last chunk.
async fn submit_in_chunks(addr: std::net::SocketAddr, rcpt: &str, sequence: &[u8]) -> String {
    let (mut s, _) = Raw::connect(addr).await;
    let ehlo = s.cmd("EHLO attacker.test").await;
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    assert!(s.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    assert!(s.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    let mut first = b"Subject: hello\r\n\r\nthe real message".to_vec();
    first.extend_from_slice(sequence);
    s.send(format!("BDAT {}\r\n", first.len()).as_bytes()).await;
    s.send(&first).await;
    let reply = s.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    s.send(format!("BDAT {} LAST\r\n", FORGED.len()).as_bytes())
        .await;
    s.send(FORGED).await;
    let reply = s.reply().await;
    assert!(
        s.cmd("NOOP").await.starts_with("250"),
        "the session goes on"
    );
    reply
}

#[tokio::test]
async fn a_message_in_bdat_chunks_is_normalized_too() {
    let rx = plain_sink().await;
    let w = World::new(&["1s"], "1h");
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    for (i, sequence) in SEQUENCES.iter().enumerate() {
        let reply = submit_in_chunks(engine.smtp_addr, &format!("u{i}@rx.test"), sequence).await;
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rx.received().len() < SEQUENCES.len() {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = rx.received();
    assert_eq!(
        received.len(),
        SEQUENCES.len(),
        "one message each, none forged"
    );
    for (i, sequence) in SEQUENCES.iter().enumerate() {
        let m = received
            .iter()
            .find(|m| m.rcpts[0] == format!("u{i}@rx.test"))
            .unwrap();
        assert!(
            every_line_ends_in_crlf(&m.body),
            "a bare line ending reached the receiver: {:?}",
            String::from_utf8_lossy(&m.body)
        );
        // BDAT carries no dot-stuffing: the dot of the sequence is text from the start,
        // on a line of its own once its line endings are made CRLF.
        let text = String::from_utf8_lossy(&m.body);
        assert!(
            text.contains("the real message\r\n.\r\nMAIL FROM"),
            "{sequence:?}: {text}"
        );
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn bare_line_endings_can_be_refused_instead() {
    let rx = plain_sink().await;
    let mut w = World::new(&["1s"], "1h");
    w.config.smtp.bare_line_endings = BareLineEndings::Refuse;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    for sequence in SEQUENCES {
        let reply = submit(engine.smtp_addr, "u@rx.test", sequence).await;
        assert!(reply.starts_with("550 5.5.2"), "{reply}");
        let reply = submit_in_chunks(engine.smtp_addr, "u@rx.test", sequence).await;
        assert!(reply.starts_with("550 5.5.2"), "BDAT: {reply}");
    }
    // A clean message still goes.
    let reply = submit(engine.smtp_addr, "u@rx.test", b"\r\n").await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rx.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.received().len(),
        1,
        "only the clean message was accepted"
    );
    engine.shutdown().await;
}
