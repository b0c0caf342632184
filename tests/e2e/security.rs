//! Security: STARTTLS both ways with the TLS outcome on attempts, per-destination TLS
//! policy, AUTH over TLS only, the relay rule, and per-client limits.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn message(engine: &knock::serve::Engine, id: &str) -> Value {
    let (status, m) = http_get(engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{m}");
    m
}

/// The first attempt at the message's recipient in `domain`.
fn first_attempt(m: &Value, domain: &str) -> Value {
    let rcpts = m["recipients"].as_array().unwrap();
    let r = rcpts.iter().find(|r| r["domain"] == domain).unwrap();
    r["attempts"][0].clone()
}

#[tokio::test]
async fn starttls_works_out_of_the_box_and_the_certificate_is_kept() {
    let w = World::new(&["1s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("250-STARTTLS") || ehlo.contains("250 STARTTLS"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "no credentials, no AUTH: {ehlo}");
    s.starttls().await;
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
    assert!(s.cmd("STARTTLS").await.starts_with("554 5.5.1"));
    assert!(s.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    assert!(s.cmd("RCPT TO:<a@rx.test>").await.starts_with("250"));
    assert!(s.cmd("DATA").await.starts_with("354"));
    let done = s.cmd("Subject: over TLS\r\n\r\nhello\r\n.").await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    w.wait_event(WAIT, is("delivered", "a@rx.test")).await;
    let body = String::from_utf8(rx.received()[0].body.clone()).unwrap();
    assert!(body.contains("with ESMTPS id"), "{body}");
    assert!(body.contains("(using TLSv1.3 with cipher"), "{body}");
    let (cert, key) = knock::net::tls::self_signed_paths(&w.config.spool.path);
    assert!(
        cert.exists() && key.exists(),
        "the self-signed pair is kept with the spool"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn pipelined_commands_after_starttls_are_discarded() {
    let w = World::new(&["1s"], "1h");
    let engine = w.start(StaticResolver::new()).await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO client.test").await;
    // An attacker in the path appends a command to the plaintext STARTTLS (CVE-2011-0411).
    s.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n")
        .await;
    assert!(s.reply().await.starts_with("220 "));
    let connectors = knock::net::tls::Connectors::new(None).unwrap();
    s.upgrade(&connectors).await;
    // The injected MAIL was not taken: the session starts over and needs EHLO.
    assert!(
        s.cmd("MAIL FROM:<s@tx.test>")
            .await
            .starts_with("503 5.5.1")
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn outbound_tls_is_opportunistic_and_recorded_on_the_attempt() {
    let mut w = World::new(&["300ms"], "1h");
    w.config
        .tls
        .destinations
        .insert("strict.test".into(), knock::net::tls::Policy::Require);
    let tls_rx = sink(SinkConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    let plain_rx = plain_sink().await;
    let resolver = route(
        route(
            route(StaticResolver::new(), "tls.test", tls_rx.addr),
            "plain.test",
            plain_rx.addr,
        ),
        "strict.test",
        plain_rx.addr,
    );
    let engine = w.start(resolver).await;
    let rcpts = ["a@tls.test", "b@plain.test", "c@strict.test"];
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &rcpts,
        b"Subject: t\r\n\r\nx\r\n",
    )
    .await;
    let id = queued_id(&replies[0]);

    let over_tls = w.wait_event(WAIT, is("delivered", "a@tls.test")).await;
    let tls = over_tls["tls"].as_str().unwrap();
    assert!(tls.starts_with("TLSv1.3 TLS13_"), "{over_tls}");
    assert!(
        !tls.ends_with("verified"),
        "a self-signed certificate is not verified"
    );
    assert_eq!(tls_rx.stats().messages_tls, 1);

    let plain = w.wait_event(WAIT, is("delivered", "b@plain.test")).await;
    assert!(
        plain.get("tls").is_none(),
        "plaintext when not offered: {plain}"
    );

    let strict = w.wait_event(WAIT, is("deferred", "c@strict.test")).await;
    assert_eq!(strict["enhanced"], "4.7.4", "{strict}");
    assert!(
        strict["text"]
            .as_str()
            .unwrap()
            .contains("TLS is required, but was not offered"),
        "{strict}"
    );
    assert_eq!(
        plain_rx.stats().messages,
        1,
        "nothing went to strict.test in the clear"
    );

    let m = message(&engine, &id).await;
    let attempt = |domain: &str| first_attempt(&m, domain);
    assert_eq!(attempt("tls.test")["tls"]["version"], "TLSv1.3", "{m}");
    assert_eq!(attempt("tls.test")["tls"]["verified"], false);
    assert!(attempt("plain.test").get("tls").is_none(), "{m}");
    engine.shutdown().await;
}

#[tokio::test]
async fn the_verify_policy_delivers_only_to_a_certificate_valid_for_the_mx() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["mx.good.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let good = sink(SinkConfig {
        tls_files: Some((cert.clone(), key)),
        ..Default::default()
    })
    .await;
    let untrusted = sink(SinkConfig {
        tls: true,
        ..Default::default()
    })
    .await;

    let mut w = World::new(&["300ms"], "1h");
    w.config.tls.outbound = knock::net::tls::Policy::Verify;
    w.config.tls.ca_file = Some(cert);
    let resolver = route(
        route(StaticResolver::new(), "good.test", good.addr),
        "bad.test",
        untrusted.addr,
    );
    let engine = w.start(resolver).await;
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["a@good.test", "b@bad.test"],
        b"Subject: t\r\n\r\nx\r\n",
    )
    .await;
    let id = queued_id(&replies[0]);
    let ok = w.wait_event(WAIT, is("delivered", "a@good.test")).await;
    assert!(ok["tls"].as_str().unwrap().ends_with(" verified"), "{ok}");
    let refused = w.wait_event(WAIT, is("deferred", "b@bad.test")).await;
    assert_eq!(refused["enhanced"], "4.7.5", "{refused}");
    assert_eq!(untrusted.stats().messages, 0);
    let m = message(&engine, &id).await;
    assert_eq!(
        first_attempt(&m, "good.test")["tls"]["verified"],
        true,
        "{m}"
    );
    engine.shutdown().await;
}

/// An engine whose SMTP clients on loopback are not trusted, with one user, alice.
async fn engine_with_users() -> (World, knock::serve::Engine, knock::tools::sink::Sink) {
    let mut w = World::new(&["1s"], "1h");
    let rx = plain_sink().await;
    let credentials = w.config.spool.path.with_file_name("users");
    let line = format!(
        "alice:{}\n",
        knock::net::auth::hash_password("wonderland").unwrap()
    );
    std::fs::write(&credentials, line).unwrap();
    w.config.smtp.credentials = Some(credentials);
    w.config.smtp.trusted_networks = vec!["192.0.2.0/24".parse().unwrap()];
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    (w, engine, rx)
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn auth_only_over_tls_and_only_users_may_relay() {
    let (w, engine, rx) = engine_with_users().await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("AUTH"), "no AUTH in plaintext: {ehlo}");
    let plain = b64("\0alice\0wonderland");
    assert_eq!(
        code(&s.cmd(&format!("AUTH PLAIN {plain}")).await),
        "538 5.7.11"
    );
    assert!(s.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    assert_eq!(code(&s.cmd("RCPT TO:<a@rx.test>").await), "554 5.7.1");
    s.cmd("RSET").await;

    s.starttls().await;
    let ehlo = s.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let wrong = b64("\0alice\0rabbit-hole");
    assert_eq!(
        code(&s.cmd(&format!("AUTH PLAIN {wrong}")).await),
        "535 5.7.8"
    );
    let nobody = b64("\0mallory\0wonderland");
    assert_eq!(
        code(&s.cmd(&format!("AUTH PLAIN {nobody}")).await),
        "535 5.7.8"
    );
    assert_eq!(code(&s.cmd("AUTH CRAM-MD5").await), "504 5.5.4");
    assert_eq!(code(&s.cmd("AUTH LOGIN").await), "334 VXNlcm5hbWU6");
    assert_eq!(
        code(&s.cmd("*").await),
        "501 5.7.0",
        "the client may give up"
    );
    assert_eq!(code(&s.cmd("AUTH LOGIN").await), "334 VXNlcm5hbWU6");
    assert_eq!(code(&s.cmd(&b64("alice")).await), "334 UGFzc3dvcmQ6");
    assert_eq!(code(&s.cmd(&b64("wonderland")).await), "235 2.7.0");
    assert_eq!(
        code(&s.cmd("AUTH PLAIN").await),
        "503 5.5.1",
        "once is enough"
    );
    assert!(s.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    assert!(s.cmd("RCPT TO:<a@rx.test>").await.starts_with("250"));
    assert!(s.cmd("DATA").await.starts_with("354"));
    assert!(
        s.cmd("Subject: by alice\r\n\r\nx\r\n.")
            .await
            .starts_with("250 2.0.0")
    );
    w.wait_event(WAIT, is("delivered", "a@rx.test")).await;
    let body = String::from_utf8(rx.received()[0].body.clone()).unwrap();
    assert!(body.contains("with ESMTPSA id"), "{body}");
    engine.shutdown().await;
}

#[tokio::test]
async fn auth_plain_with_a_prompt_and_garbage() {
    let (_w, engine, _rx) = engine_with_users().await;
    let (mut s, _) = Raw::connect(engine.smtp_addr).await;
    s.cmd("EHLO client.test").await;
    s.starttls().await;
    s.cmd("EHLO client.test").await;
    assert_eq!(code(&s.cmd("AUTH PLAIN !!notbase64").await), "501 5.5.2");
    assert_eq!(code(&s.cmd("AUTH PLAIN").await), "334");
    assert_eq!(code(&s.cmd(&b64("alice-without-nuls")).await), "501 5.5.2");
    assert_eq!(code(&s.cmd("AUTH PLAIN").await), "334");
    assert_eq!(code(&s.cmd(&b64("\0alice\0wonderland")).await), "235 2.7.0");
    engine.shutdown().await;
}

#[tokio::test]
async fn per_client_limits_on_connections_messages_and_recipients() {
    let mut w = World::new(&["1s"], "1h");
    let limits = &mut w.config.smtp.client_limits;
    limits.connections = 2;
    limits.messages = Some("2/min".parse().unwrap());
    limits.recipients = Some("3/min".parse().unwrap());
    limits.exempt_trusted = false;
    let engine = w.start(StaticResolver::new()).await;

    let (mut a, greeting) = Raw::connect(engine.smtp_addr).await;
    assert!(greeting.starts_with("220"));
    let (b, greeting) = Raw::connect(engine.smtp_addr).await;
    assert!(greeting.starts_with("220"));
    let (mut c, greeting) = Raw::connect(engine.smtp_addr).await;
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    assert!(
        greeting.contains("too many connections from 127.0.0.1"),
        "{greeting}"
    );
    assert!(c.closed().await);
    drop(b);
    // The slot comes back once the server has seen the close.
    let mut back = false;
    for _ in 0..50 {
        let (_, greeting) = Raw::connect(engine.smtp_addr).await;
        if greeting.starts_with("220") {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "a closed connection gives its slot back");

    a.cmd("EHLO client.test").await;
    assert!(a.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    for n in 1..=3 {
        let r = a.cmd(&format!("RCPT TO:<r{n}@rx.test>")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    let over = a.cmd("RCPT TO:<r4@rx.test>").await;
    assert_eq!(code(&over), "450 4.7.1", "{over}");
    assert!(
        over.contains("too many recipients from 127.0.0.1"),
        "{over}"
    );
    a.cmd("RSET").await;
    assert!(a.cmd("MAIL FROM:<s@tx.test>").await.starts_with("250"));
    a.cmd("RSET").await;
    let over = a.cmd("MAIL FROM:<s@tx.test>").await;
    assert_eq!(code(&over), "450 4.7.1", "{over}");
    assert!(over.contains("too much mail from 127.0.0.1"), "{over}");
    engine.shutdown().await;
}

/// `250 2.1.0 Ok` → `250 2.1.0`; a bare `334 ` → `334`.
fn code(reply: &str) -> String {
    reply
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end()
        .to_string()
}
