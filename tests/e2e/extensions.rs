//! The SMTP extensions a sender expects of a submission server, exercised by clients knock
//! did not write: Python's smtplib (DSN's RET, ENVID, NOTIFY and ORCPT, SMTPUTF8, BDAT)
//! and swaks (what EHLO offers, a pipelined submission, a UTF-8 address refused without
//! SMTPUTF8). What each receiver got, and the DSNs the sender got, are checked on the
//! bytes the sinks received.

use crate::world::*;
use knock::message::{Notify, Ret};
use knock::net::resolve::StaticResolver;
use knock::net::smtp::server::Extensions;
use knock::tools::sink::{Received, SinkConfig};
use serde_json::Value;
use std::time::Duration;

/// The DSN among `received` that carries `envid`, as text.
fn dsns_for(received: &[Received], envid: &str) -> Vec<String> {
    let field = format!("Original-Envelope-Id: {envid}\r\n");
    received
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .filter(|t| t.contains(&field))
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn codes(steps: &Value) -> Vec<u64> {
    steps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn smtplib_uses_dsn_smtputf8_and_bdat_and_knock_honours_them() {
    // rx.test offers every extension; plain.test neither DSN nor SMTPUTF8; tx.test is the
    // sender's own MX, where DSNs arrive.
    let rx = plain_sink().await;
    let plain = sink(SinkConfig {
        extensions: Extensions {
            dsn: false,
            smtputf8: false,
            chunking: false,
        },
        ..SinkConfig::default()
    })
    .await;
    let tx = plain_sink().await;
    let resolver = route(
        route(
            route(StaticResolver::new(), "rx.test", rx.addr),
            "plain.test",
            plain.addr,
        ),
        "tx.test",
        tx.addr,
    );
    let mut w = World::new(&["300ms"], "1h");
    w.config.retry.delay_warning = Duration::from_secs(1);
    let engine = w.start(resolver).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/support/extensions.py"
    );
    let port = engine.smtp_addr.port().to_string();
    let out = tokio::process::Command::new("python3")
        .args([script, "127.0.0.1", &port])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    let features: Vec<&str> = out["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["dsn", "smtputf8", "chunking", "8bitmime", "pipelining"] {
        assert!(features.contains(&f), "{f} not offered: {features:?}");
    }
    let steps = &out["steps"];
    for step in [
        "passed_on",
        "relayed",
        "never",
        "delay",
        "utf8",
        "utf8_bounce",
        "bdat",
    ] {
        let codes = codes(&steps[step]);
        assert!(codes.iter().all(|c| *c == 250), "{step}: {}", steps[step]);
    }
    let refused = &steps["undeclared_utf8"][0];
    assert_eq!(refused[0], 553, "{refused}");
    assert!(
        refused[1].as_str().unwrap().starts_with("5.6.7"),
        "{refused}"
    );

    // Passed on: rx.test offers DSN, so it got RET, ENVID, NOTIFY and ORCPT.
    wait_for(
        "u1, u3 and jös at rx.test",
        Duration::from_secs(20),
        || rx.received().len() >= 3,
    )
    .await;
    let received = rx.received();
    let a = received
        .iter()
        .find(|m| m.rcpts == ["u1@rx.test"])
        .expect("A");
    assert_eq!(a.params.ret, Some(Ret::Full));
    assert_eq!(a.params.envid.as_deref(), Some("env-A"));
    let r = &a.rcpt_params[0];
    assert_eq!(
        r.notify,
        Some(Notify {
            success: true,
            failure: true,
            delay: false
        })
    );
    assert_eq!(r.orcpt.as_deref(), Some("orig+u1@rx.test"));
    // SMTPUTF8 where needed and offered.
    let e = received
        .iter()
        .find(|m| m.rcpts == ["jös@rx.test"])
        .expect("E");
    assert!(e.params.smtputf8);
    assert!(
        !a.params.smtputf8,
        "SMTPUTF8 only when the message needs it"
    );
    // BDAT: one message from both chunks.
    let h = received
        .iter()
        .find(|m| m.rcpts == ["u3@rx.test"])
        .expect("H");
    assert!(
        String::from_utf8_lossy(&h.body).contains("first half, second half\r\n"),
        "{:?}",
        String::from_utf8_lossy(&h.body)
    );
    // plain.test offers no DSN: nothing of it went on (its server would refuse it).
    wait_for("u2 at plain.test", Duration::from_secs(20), || {
        !plain.received().is_empty()
    })
    .await;
    let b = &plain.received()[0];
    assert_eq!(b.params, Default::default());
    assert_eq!(b.rcpt_params[0].notify, None);

    // The sender's DSNs.
    wait_for("the DSNs of A, B, D and F", Duration::from_secs(30), || {
        let t = tx.received();
        ["env-A", "env-B", "env-D", "env-F"]
            .iter()
            .all(|id| !dsns_for(&t, id).is_empty())
    })
    .await;
    let t = tx.received();
    let dsn_a = dsns_for(&t, "env-A");
    assert_eq!(
        dsn_a.len(),
        1,
        "one DSN: the failure; u1's success is rx.test's to tell"
    );
    for needle in [
        "Original-Recipient: rfc822; orig-pf@rx.test\r\nFinal-Recipient: rfc822; permfail@rx.test\r\nAction: failed\r\nStatus: 5.7.1",
        "Content-Type: message/rfc822",
        "body-A",
    ] {
        assert!(dsn_a[0].contains(needle), "{needle:?} not in\n{}", dsn_a[0]);
    }
    let dsn_b = &dsns_for(&t, "env-B")[0];
    assert!(
        dsn_b.contains("Subject: Successful Mail Delivery Report"),
        "{dsn_b}"
    );
    assert!(
        dsn_b
            .contains("Final-Recipient: rfc822; u2@plain.test\r\nAction: relayed\r\nStatus: 2.0.0"),
        "{dsn_b}"
    );
    let dsn_d = &dsns_for(&t, "env-D")[0];
    assert!(
        dsn_d.contains("Subject: Delayed Mail (still being retried)"),
        "{dsn_d}"
    );
    assert!(
        dsn_d.contains("Action: delayed\r\nStatus: 4.3.0"),
        "{dsn_d}"
    );
    assert!(dsn_d.contains("Will-Retry-Until: "), "{dsn_d}");
    let dsn_f = &dsns_for(&t, "env-F")[0];
    assert!(dsn_f.contains("Action: failed\r\nStatus: 5.6.7"), "{dsn_f}");
    assert!(dsn_f.contains("SMTPUTF8"), "{dsn_f}");
    // The delayed recipient keeps being tried, and is warned once; NEVER hears nothing.
    let deferrals = || {
        w.events()
            .iter()
            .filter(|e| e["event"] == "deferred" && e["recipient"] == "tempfail@rx.test")
            .count()
    };
    let seen = deferrals();
    wait_for(
        "two more attempts at tempfail",
        Duration::from_secs(20),
        || deferrals() >= seen + 2,
    )
    .await;
    w.wait_event(
        Duration::from_secs(10),
        is("bounced", "permfail@plain.test"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = tx.received();
    assert_eq!(dsns_for(&t, "env-D").len(), 1, "warned once");
    assert!(dsns_for(&t, "env-C").is_empty(), "NOTIFY=NEVER");
    engine.shutdown().await;
}

#[tokio::test]
async fn swaks_sees_the_extensions_pipelines_and_is_refused_a_utf8_address() {
    let rx = plain_sink().await;
    let w = World::new(&["1s"], "1h");
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let server = engine.smtp_addr.to_string();
    let swaks = |args: &[&str]| {
        let mut all = vec!["--server", server.as_str(), "--ehlo", "client.test"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|a| a.to_string()).collect();
        async move {
            let out = tokio::process::Command::new("swaks")
                .args(&all)
                .output()
                .await
                .expect("swaks (scripts/test installs it)");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        }
    };
    let (ok, text) = swaks(&["--quit-after", "EHLO"]).await;
    assert!(ok, "{text}");
    for keyword in ["DSN", "SMTPUTF8", "CHUNKING", "PIPELINING", "8BITMIME"] {
        assert!(
            text.lines().any(|l| l.ends_with(&format!("250-{keyword}"))
                || l.ends_with(&format!("250 {keyword}"))),
            "{keyword} not offered:\n{text}"
        );
    }
    let (ok, text) = swaks(&[
        "--pipeline",
        "--from",
        "s@tx.test",
        "--to",
        "u1@rx.test,u2@rx.test",
        "--body",
        "sent by swaks",
    ])
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");
    let (ok, text) = swaks(&["--from", "s@tx.test", "--to", "jös@rx.test"]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("553 5.6.7"), "{text}");
    wait_for("the swaks message", Duration::from_secs(20), || {
        !rx.received().is_empty()
    })
    .await;
    let m = &rx.received()[0];
    assert_eq!(m.rcpts, ["u1@rx.test", "u2@rx.test"]);
    assert!(String::from_utf8_lossy(&m.body).contains("sent by swaks"));
    engine.shutdown().await;
}

/// The HTTP API takes the same DSN parameters for every recipient of a message, and says
/// which field is wrong.
#[tokio::test]
async fn the_api_takes_notify_ret_and_envid_and_names_a_bad_one() {
    let rx = plain_sink().await;
    let tx = plain_sink().await;
    let resolver = route(
        route(StaticResolver::new(), "rx.test", rx.addr),
        "tx.test",
        tx.addr,
    );
    let w = World::new(&["1s"], "1h");
    let engine = w.start(resolver).await;
    for (body, field) in [
        (
            serde_json::json!({"from": "s@tx.test", "to": ["a@rx.test"], "subject": "s", "text": "t", "notify": ["never", "success"]}),
            "notify",
        ),
        (
            serde_json::json!({"from": "s@tx.test", "to": ["a@rx.test"], "subject": "s", "text": "t", "notify": ["sometimes"]}),
            "notify",
        ),
        (
            serde_json::json!({"from": "s@tx.test", "to": ["a@rx.test"], "subject": "s", "text": "t", "ret": "all"}),
            "ret",
        ),
        (
            serde_json::json!({"from": "s@tx.test", "to": ["a@rx.test"], "subject": "s", "text": "t", "envid": "two words"}),
            "envid",
        ),
    ] {
        let (status, json) = http_post(&engine, "/api/v1/messages", &body.to_string()).await;
        assert_eq!(
            (status, json["field"].as_str()),
            (400, Some(field)),
            "{json}"
        );
    }
    let body = serde_json::json!({
        "from": "s@tx.test", "to": ["u1@rx.test", "permfail@rx.test"], "subject": "s", "text": "t",
        "notify": ["success", "failure"], "ret": "full", "envid": "api-1",
    });
    let (status, json) = http_post(&engine, "/api/v1/messages", &body.to_string()).await;
    assert_eq!(status, 202, "{json}");
    wait_for("the message and the DSN", Duration::from_secs(20), || {
        !rx.received().is_empty() && !dsns_for(&tx.received(), "api-1").is_empty()
    })
    .await;
    let m = &rx.received()[0];
    assert_eq!(m.params.envid.as_deref(), Some("api-1"));
    assert_eq!(m.params.ret, Some(Ret::Full));
    assert!(
        m.rcpt_params[0]
            .notify
            .is_some_and(|n| n.success && n.failure)
    );
    let dsn = &dsns_for(&tx.received(), "api-1")[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; permfail@rx.test\r\nAction: failed"),
        "{dsn}"
    );
    engine.shutdown().await;
}
