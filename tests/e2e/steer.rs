//! The operator's hands on the queue, end to end: suspend and resume (kept across a
//! restart), hold and release by an id's start, retry now, cancel and bounce with dry
//! runs, each recorded under the caller's token name; and the same from the command line.

use crate::world::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

async fn queued(engine: &knock::serve::Engine, domain: &str) -> Value {
    let (_, q) = http_get(engine, "/api/v1/queue").await;
    q["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == domain)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn send(engine: &knock::serve::Engine, to: &str) -> String {
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &[to],
        b"Subject: steer\r\n\r\nhello\r\n",
    )
    .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    queued_id(&replies[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_domain_keeps_its_mail_across_a_restart_until_resumed() {
    let world = World::new(&["1s"], "1h");
    let (rx, _tx, resolver) = receiver_and_sender().await;
    let engine = world.start(resolver.clone()).await;
    let (status, body) = http_post(
        &engine,
        "/api/v1/suspend",
        r#"{"domain": "RX.test", "reason": "their MX is being moved"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for i in 0..3 {
        send(&engine, &format!("u{i}@rx.test")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.received().is_empty(),
        "nothing goes to a suspended domain"
    );
    assert_eq!(queued(&engine, "rx.test").await["suspended"], 3);
    let (_, s) = http_get(&engine, "/api/v1/suspensions").await;
    assert_eq!(s["suspensions"][0]["domain"], "rx.test", "{s}");
    assert_eq!(s["suspensions"][0]["actor"], "trusted", "{s}");
    assert_eq!(s["suspensions"][0]["reason"], "their MX is being moved");
    // Twice is a conflict; an unknown provider is a typo.
    let (status, _) = http_post(&engine, "/api/v1/suspend", r#"{"domain": "rx.test"}"#).await;
    assert_eq!(status, 409);
    let (status, body) = http_post(&engine, "/api/v1/suspend", r#"{"provider": "gogle"}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("provider")),
        "{body}"
    );

    // Kept in the spool: a restart does not send it either.
    engine.shutdown().await;
    let engine = world.start(resolver).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.received().is_empty(), "still suspended after a restart");
    assert_eq!(queued(&engine, "rx.test").await["suspended"], 3);

    let (status, body) = http_post(&engine, "/api/v1/resume", r#"{"domain": "rx.test"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recipients"], 3, "{body}");
    let deadline = tokio::time::Instant::now() + T;
    while rx.received().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered after resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = http_post(&engine, "/api/v1/resume", r#"{"domain": "rx.test"}"#).await;
    assert_eq!(status, 404, "not suspended any more");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_release_by_the_start_of_an_id_are_events_with_their_actor() {
    let mut world = World::new(&["1s"], "1h");
    world.config.http.tokens = vec![knock::config::Token::Named {
        name: "alice".into(),
        token: "alice-has-a-long-token".into(),
    }];
    let (rx, _tx, resolver) = receiver_and_sender().await;
    // A second domain that is suspended, so that the held message waits either way.
    let engine = world.start(resolver).await;
    http_post(&engine, "/api/v1/suspend", r#"{"domain": "rx.test"}"#).await;
    let id = send(&engine, "held@rx.test").await;
    let client = reqwest::Client::new();
    let hold = client
        .post(format!(
            "http://{}/api/v1/messages/{}/hold",
            engine.http_addr,
            &id[..13]
        ))
        .bearer_auth("alice-has-a-long-token")
        .body(r#"{"reason": "customer asked"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(hold.status(), 200);
    http_post(&engine, "/api/v1/resume", r#"{"domain": "rx.test"}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.received().is_empty(), "a held message waits");
    let held = world
        .wait_event(T, |e| {
            e["event"] == "held" && e["recipient"] == "held@rx.test"
        })
        .await;
    assert_eq!(held["actor"], "alice", "{held}");
    let (status, body) = http_post(
        &engine,
        &format!("/api/v1/messages/{}/release", &id[..13]),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    world.wait_event(T, is("released", "held@rx.test")).await;
    world.wait_event(T, is("delivered", "held@rx.test")).await;
    let (_, s) = http_get(&engine, "/api/v1/suspensions").await;
    assert_eq!(s["suspensions"], serde_json::json!([]));

    // A held message that is cancelled: its hold goes with it, without a `released`.
    http_post(&engine, "/api/v1/suspend", r#"{"domain": "rx.test"}"#).await;
    let id = send(&engine, "dropped@rx.test").await;
    let (status, _) = http_post(&engine, &format!("/api/v1/messages/{id}/hold"), "").await;
    assert_eq!(status, 200);
    let (status, body) = http_post(
        &engine,
        "/api/v1/cancel",
        &format!(r#"{{"messages": ["{id}"]}}"#),
    )
    .await;
    assert_eq!(
        (status, body["recipients"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    world
        .wait_event(T, is("cancelled", "dropped@rx.test"))
        .await;
    let (_, s) = http_get(&engine, "/api/v1/suspensions").await;
    assert_eq!(
        s["suspensions"].as_array().unwrap().len(),
        1,
        "only the domain: {s}"
    );
    assert!(
        !world
            .events()
            .iter()
            .any(|e| e["event"] == "released" && e["recipient"] == "dropped@rx.test"),
        "no release for a cancelled recipient"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_bounce_take_a_filter_and_a_dry_run_says_how_many() {
    // A long retry step: deferred mail waits in the queue.
    let world = World::new(&["1h"], "1d");
    let (_rx, tx, resolver) = receiver_and_sender().await;
    let engine = world.start(resolver).await;
    for i in 0..4 {
        send(&engine, &format!("tempfail+{i}@rx.test")).await;
    }
    for i in 0..4 {
        let rcpt = format!("tempfail+{i}@rx.test");
        world
            .wait_event(T, move |e| {
                e["event"] == "deferred" && e["recipient"] == rcpt.as_str()
            })
            .await;
    }
    let (status, body) = http_post(&engine, "/api/v1/cancel", r#"{"dry_run": false}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("messages")),
        "{body}"
    );
    let (status, dry) = http_post(
        &engine,
        "/api/v1/cancel",
        r#"{"domain": "rx.test", "dry_run": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["recipients"].as_u64()),
        (Some(true), Some(4))
    );
    assert_eq!(
        queued(&engine, "rx.test").await["deferred"],
        4,
        "a dry run changes nothing"
    );

    // Retry now: attempted again at once, not in an hour.
    let (_, retried) = http_post(&engine, "/api/v1/retry", r#"{"domain": "rx.test"}"#).await;
    assert_eq!(retried["recipients"], 4, "{retried}");
    world
        .wait_event(T, |e| e["event"] == "deferred" && e["attempt"] == 2)
        .await;

    // One bounced with a DSN, the rest cancelled without.
    let first = world
        .events()
        .into_iter()
        .find(|e| e["recipient"] == "tempfail+0@rx.test")
        .unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http_post(
        &engine,
        "/api/v1/bounce",
        &format!(r#"{{"messages": ["{}"]}}"#, &first[..20]),
    )
    .await;
    assert_eq!(
        (status, body["recipients"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let bounced = world
        .wait_event(T, is("bounced", "tempfail+0@rx.test"))
        .await;
    assert_eq!(bounced["actor"], "trusted");
    assert_eq!(bounced["enhanced"], "5.0.0");
    let deadline = tokio::time::Instant::now() + T;
    while tx.received().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no DSN reached the sender"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dsn = String::from_utf8_lossy(&tx.received()[0].body).into_owned();
    assert!(dsn.contains("returned by the operator"), "{dsn}");

    let (_, body) = http_post(
        &engine,
        "/api/v1/cancel",
        r#"{"provider": "rx.test", "all": true}"#,
    )
    .await;
    assert_eq!(body["field"], "all", "all takes no other filter: {body}");
    let (status, body) = http_post(&engine, "/api/v1/cancel", r#"{"all": true}"#).await;
    assert_eq!(
        (status, body["recipients"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    for i in 1..4 {
        let rcpt = format!("tempfail+{i}@rx.test");
        world
            .wait_event(T, move |e| {
                e["event"] == "cancelled" && e["recipient"] == rcpt.as_str()
            })
            .await;
    }
    let deadline = tokio::time::Instant::now() + T;
    while !queued(&engine, "rx.test").await.is_null() {
        assert!(tokio::time::Instant::now() < deadline, "still queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tx.received().len(), 1, "a cancel sends no DSN");
    engine.shutdown().await;
}

/// `knock ARGS --api API`, the real binary, off the runtime's threads.
async fn knock_at(api: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = args.to_vec();
    all.extend(["--api", api]);
    knock_async(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_suspends_lists_retries_and_cancels() {
    let world = World::new(&["1h"], "1d");
    let (_rx, _tx, resolver) = receiver_and_sender().await;
    let engine = world.start(resolver).await;
    let api = engine.http_addr.to_string();
    let run = |args: &'static [&'static str]| knock_at(&api, args);
    let (ok, out, err) = run(&["suspend", "--domain", "rx.test", "--reason", "moving"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("suspended domain rx.test"), "{out}");
    let (ok, out, _) = run(&["suspensions"]).await;
    assert!(ok);
    assert!(
        out.contains("domain rx.test") && out.contains("moving"),
        "{out}"
    );
    send(&engine, "tempfail@rx.test").await;
    let (ok, out, err) = run(&["cancel", "--domain", "rx.test", "--dry-run"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("would cancel 1 recipients"), "{out}");
    let (ok, _, err) = run(&["cancel"]).await;
    assert!(!ok && err.lines().count() == 1, "one line: {err}");
    assert!(err.contains("filter"), "{err}");
    let (ok, out, _) = run(&["resume", "--domain", "rx.test", "--json"]).await;
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["recipients"], 1, "{v}");
    world
        .wait_event(T, is("deferred", "tempfail@rx.test"))
        .await;
    let (ok, out, err) = run(&["retry", "--domain", "rx.test"]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("1 recipients in 1 groups are due now"),
        "{out}"
    );
    world
        .wait_event(T, |e| e["event"] == "deferred" && e["attempt"] == 2)
        .await;
    let (ok, out, err) = run(&["cancel", "--all"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("cancelled 1 recipients"), "{out}");
    world
        .wait_event(T, is("cancelled", "tempfail@rx.test"))
        .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_edits_the_suppression_list() {
    let world = World::new(&["1h"], "1d");
    let (rx, _tx, resolver) = receiver_and_sender().await;
    let engine = world.start(resolver).await;
    let api = engine.http_addr.to_string();
    let run = |args: &'static [&'static str]| knock_at(&api, args);
    let (ok, out, err) = run(&[
        "suppress",
        "add",
        "Ann@rx.test",
        "--reason",
        "asked to stop",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("ann@rx.test") && out.contains("asked to stop"),
        "{out}"
    );
    let (ok, out, _) = run(&["suppress", "list"]).await;
    assert!(
        ok && out.starts_with("ADDRESS") && out.contains("ann@rx.test"),
        "{out}"
    );
    send(&engine, "ann@rx.test").await;
    world.wait_event(T, is("suppressed", "ann@rx.test")).await;
    let (ok, out, _) = run(&["suppress", "show", "ann@rx.test", "--json"]).await;
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reason"], "asked to stop", "{v}");
    let (ok, out, err) = run(&["suppress", "remove", "ann@rx.test"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("off the suppression list"), "{out}");
    let (ok, _, err) = run(&["suppress", "show", "ann@rx.test"]).await;
    assert!(
        !ok && err.lines().count() == 1 && err.contains("404"),
        "{err}"
    );
    send(&engine, "ann@rx.test").await;
    world.wait_event(T, is("delivered", "ann@rx.test")).await;
    assert_eq!(rx.received().len(), 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_release_take_a_filter_and_a_dry_run_too() {
    // A long retry step: deferred mail waits in the queue.
    let world = World::new(&["1h"], "1d");
    let (_rx, _tx, resolver) = receiver_and_sender().await;
    let engine = world.start(resolver).await;
    for i in 0..3 {
        send(&engine, &format!("tempfail+{i}@rx.test")).await;
    }
    for i in 0..3 {
        let rcpt = format!("tempfail+{i}@rx.test");
        world
            .wait_event(T, move |e| {
                e["event"] == "deferred" && e["recipient"] == rcpt.as_str()
            })
            .await;
    }
    let (status, body) = http_post(&engine, "/api/v1/hold", r#"{"reason": "x"}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("messages")),
        "{body}"
    );
    let (status, body) =
        http_post(&engine, "/api/v1/cancel", r#"{"all": true, "reason": "x"}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("reason")),
        "{body}"
    );
    let (status, dry) = http_post(
        &engine,
        "/api/v1/hold",
        r#"{"domain": "rx.test", "dry_run": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["recipients"].as_u64()),
        (Some(true), Some(3)),
        "{dry}"
    );
    assert_eq!(dry["messages"].as_array().unwrap().len(), 3);
    assert!(
        !world.events().iter().any(|e| e["event"] == "held"),
        "a dry run holds nothing"
    );
    let api = engine.http_addr.to_string();
    let (ok, out, err) =
        knock_at(&api, &["hold", "--domain", "rx.test", "--reason", "audit"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("held 3 messages (3 recipients)"), "{out}");
    let count = |kind: &'static str| {
        let world = &world;
        async move {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let n = world.events().iter().filter(|e| e["event"] == kind).count();
                if n >= 3 || tokio::time::Instant::now() > deadline {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(count("held").await, 3);
    let (_, s) = http_get(&engine, "/api/v1/suspensions").await;
    assert_eq!(s["suspensions"].as_array().unwrap().len(), 3, "{s}");
    assert!(
        s["suspensions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["reason"] == "audit")
    );
    // Held already: a second hold touches nothing.
    let (ok, out, _) = knock_at(&api, &["hold", "--all"]).await;
    assert!(ok && out.starts_with("held 0 messages"), "{out}");
    let (ok, out, err) = knock_at(&api, &["release", "--all", "--dry-run"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("would release 3 messages"), "{out}");
    let (ok, out, err) = knock_at(&api, &["release", "--provider", "rx.test", "--json"]).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let provider = queued(&engine, "rx.test").await["provider"].clone();
    if provider != "rx.test" {
        // The domain's provider is named after its MX: nothing matched that name.
        assert_eq!(v["messages"].as_array().map_or(0, |m| m.len()), 0, "{v}");
        let (ok, out, err) = knock_at(&api, &["release", "--domain", "rx.test"]).await;
        assert!(ok, "{err}");
        assert!(out.starts_with("released 3 messages"), "{out}");
    }
    let (_, s) = http_get(&engine, "/api/v1/suspensions").await;
    assert!(s["suspensions"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(count("released").await, 3);
    engine.shutdown().await;
}
