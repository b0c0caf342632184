//! The HTTP API: injection, errors that name the field, message state.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use std::time::Duration;

#[tokio::test]
async fn bad_requests_get_400_naming_the_field() {
    let w = World::new(&["30s"], "1h");
    let engine = w.start(StaticResolver::new()).await;
    let table = [
        ("{not json", "body"),
        (
            r#"{"to": ["a@x.test"], "subject": "s", "text": "t"}"#,
            "from",
        ),
        (
            r#"{"from": "s@tx.test", "subject": "s", "text": "t"}"#,
            "to",
        ),
        (
            r#"{"from": "s@tx.test", "to": "a@x.test", "subject": "s", "text": "t"}"#,
            "to",
        ),
        (
            r#"{"from": "nope", "to": ["a@x.test"], "subject": "s", "text": "t"}"#,
            "from",
        ),
        (
            r#"{"from": "s@tx.test", "to": [], "subject": "s", "text": "t"}"#,
            "to",
        ),
        (
            r#"{"from": "s@tx.test", "to": ["a@x.test", "b@"], "subject": "s", "text": "t"}"#,
            "to[1]",
        ),
        (
            r#"{"from": "s@tx.test", "to": ["a@x.test"], "subject": "s"}"#,
            "text",
        ),
        (
            r#"{"from": "s@tx.test", "to": ["a@x.test"], "text": "t"}"#,
            "subject",
        ),
        (
            r#"{"from": "s@tx.test", "to": ["a@x.test"], "raw": "Subject: x\r\n\r\nx", "text": "t"}"#,
            "raw",
        ),
        (
            r#"{"from": "s@tx.test", "to": ["a@x.test"], "raw": "just some words"}"#,
            "raw",
        ),
        (
            r#"{"from": "s@tx.test", "to": ["a@x.test"], "raw": "Subject: x\r\n\r\nx", "cc": ["b@x.test"]}"#,
            "cc",
        ),
    ];
    for (body, field) in table {
        let (status, json) = http_post(&engine, "/api/v1/messages", body).await;
        assert_eq!(status, 400, "{body} -> {json}");
        assert_eq!(json["field"], field, "{body} -> {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
    }
    let (status, json) = http_get(&engine, "/api/v1/messages/not-an-id").await;
    assert_eq!((status, json["field"].as_str()), (400, Some("id")));
    let (status, json) = http_get(
        &engine,
        "/api/v1/messages/01a20765-b5e3-77c1-9a3b-f54f15e7b095",
    )
    .await;
    assert_eq!(status, 404, "{json}");
    assert!(json["error"].is_string());
    let (status, _) = http_get(&engine, "/api/v1/nothing-here").await;
    assert_eq!(status, 404);
    engine.shutdown().await;
}

#[tokio::test]
async fn inject_built_and_raw_messages() {
    let w = World::new(&["30s"], "1h");
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let (status, json) = http_post(&engine, "/api/v1/messages", r#"{"from": "s@tx.test", "to": ["a@rx.test", "B@RX.test"], "subject": "hello", "text": "hi there"}"#).await;
    assert_eq!(status, 202, "{json}");
    assert_eq!(
        json["recipients"],
        serde_json::json!(["a@rx.test", "B@rx.test"])
    );
    let id = json["id"].as_str().unwrap().to_string();
    let (status, _) = http_post(&engine, "/api/v1/messages", r#"{"from": "s@tx.test", "to": ["c@rx.test"], "raw": "From: s@tx.test\nSubject: raw one\n\nline\n"}"#).await;
    assert_eq!(status, 202);
    assert!(rx.wait_for_messages(2, Duration::from_secs(10)).await);

    let built = rx
        .received()
        .into_iter()
        .find(|m| m.rcpts.len() == 2)
        .unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(&built.body[..])
        .unwrap();
    assert_eq!(parsed.subject(), Some("hello"));
    assert!(parsed.date().is_some(), "a built message has a Date");
    assert_eq!(
        parsed.message_id(),
        Some(format!("{id}@knock.test").as_str())
    );
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim_end),
        Some("hi there")
    );
    let raw = rx
        .received()
        .into_iter()
        .find(|m| m.rcpts == vec!["c@rx.test"])
        .unwrap();
    assert_eq!(
        raw.body, b"From: s@tx.test\r\nSubject: raw one\r\n\r\nline\r\n",
        "raw messages get CRLF line ends"
    );

    w.wait_event(Duration::from_secs(5), is("delivered", "B@rx.test"))
        .await;
    let (status, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(m["from"], "s@tx.test");
    let states: Vec<&str> = m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["delivered", "delivered"]);
    let attempt = &m["recipients"][0]["attempts"][0];
    for key in ["at", "mx", "code", "enhanced", "text"] {
        assert!(!attempt[key].is_null(), "attempt lacks {key}: {attempt}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn oversize_messages_get_413_in_json() {
    let mut w = World::new(&["30s"], "1h");
    w.config.smtp.max_message_size = 1000;
    let engine = w.start(StaticResolver::new()).await;
    let text = "x".repeat(5000);
    let body = format!(
        r#"{{"from": "s@tx.test", "to": ["a@x.test"], "subject": "big", "text": "{text}"}}"#
    );
    let (status, json) = http_post(&engine, "/api/v1/messages", &body).await;
    assert_eq!(
        (status, json["field"].as_str()),
        (413, Some("text")),
        "{json}"
    );
    let huge = format!(
        r#"{{"from": "s@tx.test", "to": ["a@x.test"], "raw": "{}"}}"#,
        "y".repeat(200_000)
    );
    let (status, json) = http_post(&engine, "/api/v1/messages", &huge).await;
    assert_eq!(
        (status, json["field"].as_str()),
        (413, Some("body")),
        "{json}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn untrusted_clients_need_a_bearer_token() {
    let mut w = World::new(&["30s"], "1h");
    w.config.http.trusted_networks = vec!["10.0.0.0/8".parse().unwrap()];
    w.config.http.tokens = vec!["a-long-enough-token-1".into()];
    let engine = w.start(StaticResolver::new()).await;
    let url = format!("http://{}/api/v1/queue", engine.http_addr);
    let http = reqwest::Client::new();

    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let json: serde_json::Value = resp.json().await.unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("bearer token is needed"),
        "{json}"
    );

    let resp = http
        .get(&url)
        .bearer_auth("a-long-enough-token-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .get(&url)
        .bearer_auth("a-long-enough-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, _) = http_get(&engine, "/api/v1/health").await;
    assert_eq!(status, 200, "the health check needs no token");

    let client = knock::surface::client::ApiClient::new(
        format!("http://{}", engine.http_addr),
        Some("a-long-enough-token-1"),
    )
    .unwrap();
    assert!(client.queue().await.is_ok());
    let anonymous =
        knock::surface::client::ApiClient::new(format!("http://{}", engine.http_addr), None)
            .unwrap();
    let err = anonymous.queue().await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    engine.shutdown().await;
}

/// `GET /api/v1/suppressions/{address}`: a bounced address shows why (the receiver's reply)
/// and since when; an operator's entry shows the note; an address not listed is 404.
#[tokio::test]
async fn a_suppressed_address_shows_why_and_since_when() {
    let w = World::new(&["30s"], "1h");
    let (_rx, _tx, resolver) = receiver_and_sender().await;
    let engine = w.start(resolver).await;
    let before = knock::time::Timestamp::now();
    let (status, json) = http_post(
        &engine,
        "/api/v1/messages",
        r#"{"from": "s@tx.test", "to": ["unknown@rx.test"], "subject": "s", "text": "t"}"#,
    )
    .await;
    assert_eq!(status, 202, "{json}");
    let id = json["id"].as_str().unwrap().to_string();
    w.wait_event(Duration::from_secs(10), is("bounced", "unknown@rx.test"))
        .await;

    // The list is written once the bounce is on disk; the event may come first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let entry = loop {
        let (status, json) = http_get(&engine, "/api/v1/suppressions/Unknown@RX.test").await;
        if status == 200 {
            break json;
        }
        assert_eq!(status, 404, "{json}");
        assert!(tokio::time::Instant::now() < deadline, "never suppressed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entry["address"], "unknown@rx.test", "{entry}");
    let reason = entry["reason"].as_str().unwrap();
    assert!(
        reason.contains("550") && reason.contains("5.1.1") && reason.contains("User unknown"),
        "the reply is the reason: {entry}"
    );
    assert_eq!(entry["message_id"], id.as_str(), "{entry}");
    let since: knock::time::Timestamp = serde_json::from_value(entry["added_at"].clone()).unwrap();
    // The engine's clock is UTC carried on by a monotonic clock: allow it a second.
    assert!(
        since.millis() + 1000 >= before.millis()
            && since.millis() <= knock::time::Timestamp::now().millis() + 1000,
        "{entry}"
    );

    let (status, json) = http_get(&engine, "/api/v1/suppressions/nobody@rx.test").await;
    assert_eq!(status, 404, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("nobody@rx.test"),
        "{json}"
    );

    let resp = reqwest::Client::new()
        .put(format!(
            "http://{}/api/v1/suppressions/stop@rx.test",
            engine.http_addr
        ))
        .body(r#"{"reason": "asked to stop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, json) = http_get(&engine, "/api/v1/suppressions/stop@rx.test").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["reason"], "asked to stop");
    assert!(
        json["added_at"].is_string() && json["message_id"].is_null(),
        "{json}"
    );
    let resp = reqwest::Client::new()
        .delete(format!(
            "http://{}/api/v1/suppressions/stop@rx.test",
            engine.http_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, _) = http_get(&engine, "/api/v1/suppressions/stop@rx.test").await;
    assert_eq!(status, 404);
    engine.shutdown().await;
}
