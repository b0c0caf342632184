//! Egress sources and pools: each source binds its own loopback address and says its own
//! EHLO name, a receiver that limits per client address is paced per source, and a
//! stream sends from its pool.

use crate::world::*;
use knock::config::{PoolConfig, PoolMember, Rate, SourceConfig};
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn source(name: &str, ip: &str) -> SourceConfig {
    SourceConfig {
        ip: Some(ip.parse().unwrap()),
        ehlo: Some(format!("{name}.knock.test")),
        ..SourceConfig::named(name)
    }
}

#[tokio::test]
async fn each_source_binds_its_address_says_its_name_and_is_paced_on_its_own() {
    let mut w = World::new(&["1s"], "1h");
    w.config.sources = vec![source("a", "127.0.0.2"), source("b", "127.0.0.3")];
    w.config.pools.insert(
        "only-a".into(),
        PoolConfig {
            sources: vec![PoolMember::Name("a".into())],
        },
    );
    w.config.streams.0.get_mut("transactional").unwrap().pool = Some("only-a".into());
    w.config.validate().unwrap();
    // Four messages per 3 seconds per client address, counted by the sink per address.
    let rx = sink(SinkConfig {
        rate: Some(Rate {
            count: 4,
            per: Duration::from_secs(3),
        }),
        ..Default::default()
    })
    .await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    for i in 0..16 {
        let body = format!(
            r#"{{"from": "s@tx.test", "to": ["u{i}@rx.test"], "subject": "s", "text": "t"}}"#
        );
        let (status, json) = http_post(&engine, "/api/v1/messages", &body).await;
        assert_eq!(status, 202, "{json}");
    }
    for i in 0..2 {
        let body = format!(
            r#"{{"from": "s@tx.test", "to": ["t{i}@rx.test"], "subject": "s", "text": "t", "stream": "transactional"}}"#
        );
        let (status, json) = http_post(&engine, "/api/v1/messages", &body).await;
        assert_eq!(status, 202, "{json}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while w
        .events()
        .iter()
        .filter(|e| e["event"] == "delivered")
        .count()
        < 18
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all delivered: {:#?}",
            w.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The receiver saw both addresses, each with its own EHLO name.
    let mut by_client: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
    for m in rx.received() {
        let e = by_client.entry(m.client.to_string()).or_default();
        e.0 += 1;
        e.1 = m.helo.clone();
    }
    assert_eq!(
        by_client.keys().collect::<Vec<_>>(),
        ["127.0.0.2", "127.0.0.3"],
        "{by_client:?}"
    );
    assert_eq!(by_client["127.0.0.2"].1.as_deref(), Some("a.knock.test"));
    assert_eq!(by_client["127.0.0.3"].1.as_deref(), Some("b.knock.test"));
    // The default pool takes turns (a group deferred takes the next turn when it comes
    // back); transactional mail went out of `a` only.
    assert_eq!(by_client["127.0.0.2"].0 + by_client["127.0.0.3"].0, 18);
    assert!(by_client["127.0.0.3"].0 >= 6, "{by_client:?}");
    let events = w.events();
    for e in events.iter().filter(|e| e["event"] == "delivered") {
        let expected_ip = match e["source"].as_str().unwrap() {
            "a" => "127.0.0.2",
            "b" => "127.0.0.3",
            other => panic!("unknown source {other}"),
        };
        assert_eq!(e["local_ip"], expected_ip, "{e}");
        if e["stream"] == "transactional" {
            assert_eq!(e["source"], "a", "{e}");
        }
    }
    // Each source learned the receiver's limit on its own: a few refusals each, not one
    // per message (the burst's, a probe's a second later, and the trial a twentieth short
    // of the window found: with the probe timed from the burst's start, that window is
    // the receiver's own, so the trial is refused and settles it).
    for name in ["a", "b"] {
        let refused = events
            .iter()
            .filter(|e| e["event"] == "deferred" && e["source"] == name)
            .count();
        let times: Vec<String> = events
            .iter()
            .filter(|e| e["source"] == name && e["event"] != "processed")
            .map(|e| format!("{} {} {}", e["timestamp"], e["event"], e["recipient"]))
            .collect();
        assert!(
            refused <= 4,
            "source {name} was refused {refused} times: {times:#?}"
        );
    }
    // The destinations are per provider and source.
    let (_, json) = http_get(&engine, "/api/v1/destinations").await;
    let sources: Vec<&str> = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["destination"] == "rx.test" || d["domains"][0] == "rx.test")
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["a", "b"], "{json}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_source_the_provider_blocks_is_set_aside_for_it_and_its_mail_goes_out_of_another() {
    let mut w = World::new(&["1s"], "1h");
    w.config.sources = vec![source("a", "127.0.0.2"), source("b", "127.0.0.3")];
    let rx = plain_sink().await;
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    // The sink answers `blocked@` with "554 5.7.1 ... client host blocked" whoever sends.
    let reply = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["blocked@rx.test"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    assert!(reply[0].starts_with("250"), "{reply:?}");
    let bounced = w
        .wait_event(Duration::from_secs(15), is("bounced", "blocked@rx.test"))
        .await;
    let events = w.events();
    let deferred: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "deferred" && e["recipient"] == "blocked@rx.test")
        .collect();
    // First from one source: deferred, not bounced, with the reason; then from the other,
    // which has no other left: bounced as any block is.
    assert_eq!(deferred.len(), 1, "{events:#?}");
    assert_eq!(deferred[0]["class"], "block");
    let first = deferred[0]["source"].as_str().unwrap().to_string();
    assert!(
        deferred[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("blocks source {first}")),
        "{}",
        deferred[0]
    );
    assert_ne!(bounced["source"], first.as_str(), "{bounced}");
    // The first source is set aside for the provider: the next mail goes out of the other.
    for i in 0..4 {
        let to = format!("u{i}@rx.test");
        let reply = smtp_send(
            engine.smtp_addr,
            "s@tx.test",
            &[&to],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
        assert!(reply[0].starts_with("250"), "{reply:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let delivered: Vec<_> = w
            .events()
            .into_iter()
            .filter(|e| e["event"] == "delivered")
            .collect();
        if delivered.len() == 4 {
            assert!(
                delivered.iter().all(|e| e["source"] != first.as_str()),
                "{delivered:#?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:#?}", w.events());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, json) = http_get(&engine, "/api/v1/destinations").await;
    let set_aside: Vec<&Value> = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["blocked_until"].is_string())
        .collect();
    assert_eq!(set_aside.len(), 1, "{json}");
    assert_eq!(set_aside[0]["source"], first.as_str());
    let (_, metrics) = {
        let resp = reqwest::get(format!("http://{}/metrics", engine.http_addr))
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    let provider = bounced["provider"].as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            "knock_source_blocked_total{{provider=\"{provider}\",source=\"{first}\"}} 1"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("blocked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    engine.shutdown().await;
}
