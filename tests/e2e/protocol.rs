//! The SMTP listener against clients that get things wrong: every error has its standard
//! reply with an enhanced status code, and nothing crashes or wedges the server.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use knock::serve::Engine;
use std::time::Duration;

async fn engine_with(edit: impl FnOnce(&mut knock::config::Config)) -> (World, Engine) {
    let mut w = World::new(&["30s"], "1h");
    edit(&mut w.config);
    let engine = w.start(StaticResolver::new()).await;
    (w, engine)
}

fn code(reply: &str) -> &str {
    reply.get(..9).unwrap_or(reply)
}

#[tokio::test]
async fn ehlo_advertises_the_extensions() {
    let (_w, engine) = engine_with(|_| {}).await;
    let (mut s, greeting) = Raw::connect(engine.smtp_addr).await;
    assert!(
        greeting.starts_with("220 2.0.0 knock.test ESMTP"),
        "{greeting}"
    );
    let ehlo = s.cmd("EHLO client.test").await;
    for ext in [
        "250-PIPELINING",
        "250-SIZE 26214400",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250 STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert_eq!(code(&s.cmd("HELO client.test").await), "250 2.0.0");
    assert_eq!(code(&s.cmd("NOOP").await), "250 2.0.0");
    assert_eq!(code(&s.cmd("RSET").await), "250 2.0.0");
    assert_eq!(code(&s.cmd("VRFY someone").await), "252 2.0.0");
    assert_eq!(code(&s.cmd("QUIT").await), "221 2.0.0");
    assert!(s.closed().await);
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_syntax_and_bad_sequence() {
    let (_w, engine) = engine_with(|_| {}).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let table = [
        ("MAIL FROM:<a@b.test>", "503 5.5.1"),
        ("EHLO client.test", "250-knock"),
        ("RCPT TO:<a@b.test>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("FROB", "500 5.5.2"),
        ("MAIL FROM:a@b.test", "501 5.5.2"),
        ("MAIL FROM:<not an address>", "501 5.1.7"),
        ("MAIL FROM:<s@tx.test>", "250 2.1.0"),
        ("MAIL FROM:<s@tx.test>", "503 5.5.1"),
        ("RCPT TO:<no-domain>", "501 5.1.3"),
        ("RCPT TO:<a@@b>", "501 5.1.3"),
        ("DATA", "503 5.5.1"),
        ("ETRN tx.test", "502 5.5.1"),
        ("AUTH PLAIN", "503 5.5.1"),
    ];
    for (cmd, expected) in table {
        let reply = s.cmd(cmd).await;
        assert_eq!(code(&reply), expected, "{cmd} got {reply}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn too_many_recipients() {
    let (_w, engine) = engine_with(|c| c.smtp.max_recipients = 2).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO c.test").await;
    s.cmd("MAIL FROM:<>").await;
    assert_eq!(code(&s.cmd("RCPT TO:<a@x.test>").await), "250 2.1.5");
    assert_eq!(code(&s.cmd("RCPT TO:<b@x.test>").await), "250 2.1.5");
    assert_eq!(code(&s.cmd("RCPT TO:<c@x.test>").await), "452 4.5.3");
    engine.shutdown().await;
}

#[tokio::test]
async fn oversize_messages_are_refused_and_the_session_goes_on() {
    let (_w, engine) = engine_with(|c| c.smtp.max_message_size = 1000).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO c.test").await;
    assert_eq!(code(&s.cmd("MAIL FROM:<> SIZE=5000").await), "552 5.3.4");
    s.cmd("MAIL FROM:<>").await;
    s.cmd("RCPT TO:<a@x.test>").await;
    assert_eq!(code(&s.cmd("DATA").await), "354 2.0.0");
    let big = "x".repeat(100);
    for _ in 0..30 {
        s.send(format!("{big}\r\n").as_bytes()).await;
    }
    assert_eq!(code(&s.cmd(".").await), "552 5.3.4");
    assert_eq!(
        code(&s.cmd("NOOP").await),
        "250 2.0.0",
        "the session survives an oversize message"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn overlong_lines_get_500_and_the_session_goes_on() {
    let (_w, engine) = engine_with(|_| {}).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let long = format!("NOOP {}", "y".repeat(10_000));
    assert_eq!(code(&s.cmd(&long).await), "500 5.5.6");
    assert_eq!(code(&s.cmd("NOOP").await), "250 2.0.0");
    engine.shutdown().await;
}

#[tokio::test]
async fn idle_clients_are_dropped_with_421() {
    let (_w, engine) = engine_with(|c| c.smtp.idle_timeout = Duration::from_millis(300)).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let reply = s.reply().await;
    assert_eq!(code(&reply), "421 4.4.2", "{reply}");
    assert!(s.closed().await);
    engine.shutdown().await;
}

#[tokio::test]
async fn untrusted_clients_may_not_relay() {
    let (_w, engine) =
        engine_with(|c| c.smtp.trusted_networks = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO c.test").await;
    s.cmd("MAIL FROM:<s@tx.test>").await;
    assert_eq!(code(&s.cmd("RCPT TO:<a@x.test>").await), "554 5.7.1");
    engine.shutdown().await;
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let (_w, engine) = engine_with(|c| c.smtp.max_errors = 3).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("FROB").await;
    s.cmd("FROB").await;
    assert_eq!(code(&s.cmd("FROB").await), "500 5.5.2");
    assert_eq!(code(&s.reply().await), "421 4.7.0");
    assert!(s.closed().await);
    engine.shutdown().await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let (_w, engine) = engine_with(|_| {}).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO c.test").await;
    s.send(b"MAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<bad>\r\nDATA\r\n")
        .await;
    let expected = ["250 2.1.0", "250 2.1.5", "501 5.1.3", "354 2.0.0"];
    for e in expected {
        assert_eq!(code(&s.reply().await), e);
    }
    s.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    let queued = s.reply().await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    assert_eq!(code(&s.reply().await), "221 2.0.0");
    let id = queued_id(&queued);
    let (status, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(
        status, 200,
        "the 250 came after the message was in the spool"
    );
    assert_eq!(m["recipients"][0]["address"], "a@x.test");
    engine.shutdown().await;
}

#[tokio::test]
async fn garbage_does_not_wedge_the_server() {
    let (_w, engine) = engine_with(|_| {}).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    s.send(&garbage).await;
    drop(s);
    // A fresh client is served normally.
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["a@x.test"],
        b"Subject: ok\r\n\r\nok\r\n",
    )
    .await;
    assert!(replies[0].starts_with("250 2.0.0"), "{replies:?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn slowloris_commands_and_data_are_cut_off() {
    let (_w, engine) = engine_with(|c| {
        c.smtp.idle_timeout = Duration::from_millis(400);
        c.smtp.data_timeout = Duration::from_millis(800);
    })
    .await;
    // A command line dribbled one byte per 100 ms never completes: the line's time runs out.
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let started = tokio::time::Instant::now();
    for b in b"NOOP this line never ends ".iter().cycle() {
        if started.elapsed() > Duration::from_millis(300) {
            break;
        }
        s.send(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code(&s.reply().await), "421 4.4.2");
    // A message dribbled faster than the idle timeout is still cut off at the data timeout.
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO c.test").await;
    s.cmd("MAIL FROM:<s@tx.test>").await;
    s.cmd("RCPT TO:<a@x.test>").await;
    assert_eq!(code(&s.cmd("DATA").await), "354 2.0.0");
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(700) {
        s.send(b"x").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = s.reply().await;
    assert_eq!(code(&reply), "421 4.4.2", "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "cut off at the data timeout"
    );
    assert!(s.closed().await);
    engine.shutdown().await;
}
