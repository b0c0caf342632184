//! A fleet of knock nodes sharing their limits through a real `redis-server` (Debian's,
//! started here on loopback): three nodes with a receiver's limit configured stay within
//! it together (measured on when the receiver got each message), where three nodes alone
//! send up to three times too much; Redis going away keeps each node on its last share and
//! loses nothing; a node that stops leaves the fleet.

use crate::world::*;
use knock::config::{Rate, ShapingConfig};
use knock::net::resolve::StaticResolver;
use knock::serve::Engine;
use knock::tools::sink::Sink;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A `redis-server` of its own on a loopback port, with nothing kept on disk; with `tls`,
/// on TLS only (its certificate, its key, and the CA that signed it).
pub struct Redis {
    child: Option<std::process::Child>,
    pub port: u16,
    tls: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            tls: None,
        };
        r.restart();
        r
    }

    /// On TLS only, with a certificate for 127.0.0.1 signed by a CA of its own, written to
    /// `dir` (`ca.pem` is the CA's).
    pub fn start_tls(dir: &std::path::Path) -> Redis {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let (ca_pem, cert, key_pem) = (
            dir.join("ca.pem"),
            dir.join("redis.pem"),
            dir.join("redis.key"),
        );
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            tls: Some((cert, key_pem, ca_pem)),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from)
            .to_vec();
        match &self.tls {
            None => args.extend(["--port".into(), port]),
            Some((cert, key, ca)) => {
                args.extend(["--port".into(), "0".into(), "--tls-port".into(), port]);
                for (flag, path) in [
                    ("--tls-cert-file", cert),
                    ("--tls-key-file", key),
                    ("--tls-ca-cert-file", ca),
                ] {
                    args.extend([flag.to_string(), path.display().to_string()]);
                }
                args.extend(["--tls-auth-clients".into(), "no".into()]);
            }
        }
        let child = std::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        if self.tls.is_some() {
            // Not PING in plaintext: wait for the port, then give it a moment.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node: its own spool and events, the receiver's limit configured for every provider,
/// in the fleet of `redis` when given.
async fn node(name: &str, redis: Option<&Redis>, rx: SocketAddr, rate: Rate) -> (World, Engine) {
    node_in(name, redis.map(|r| (r.url(), None)), rx, rate).await
}

/// Makes `w` the node `name` of the fleet at `url` (with a private CA for `rediss://`),
/// heartbeating every 200 ms.
fn join(w: &mut World, name: &str, url: String, ca: Option<std::path::PathBuf>) {
    w.config.cluster.redis = Some(url);
    w.config.cluster.ca = ca;
    w.config.cluster.node = Some(name.into());
    w.config.cluster.heartbeat = Duration::from_millis(200);
}

/// [`node`], in the fleet at a URL (and with a CA) of the caller's.
async fn node_in(
    name: &str,
    fleet: Option<(String, Option<std::path::PathBuf>)>,
    rx: SocketAddr,
    rate: Rate,
) -> (World, Engine) {
    let mut w = World::new(&["200ms"], "1h");
    w.config.shaping.insert(
        "*".into(),
        ShapingConfig {
            rate: Some(rate),
            max_connections: None,
            messages_per_connection: None,
        },
    );
    w.config.smtp.hostname = format!("{name}.knock.test");
    if let Some((url, ca)) = fleet {
        join(&mut w, name, url, ca);
    }
    let engine = w.start(route(StaticResolver::new(), "rx.test", rx)).await;
    (w, engine)
}

async fn fleet_of(engine: &Engine) -> Value {
    let (status, body) = http_get(engine, "/api/v1/fleet").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until each of `engines` sees `nodes` nodes sharing the limits, `within` each.
async fn all_see(engines: &[&Engine], nodes: u64, within: Duration) {
    for e in engines {
        wait_until(&format!("each node sees {nodes}"), within, async || {
            fleet_of(e).await["share"] == nodes
        })
        .await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `per_node` messages to each node (distinct recipients) while the receiver's
/// domain is suspended on every node, then resumes them all at once, and waits until the
/// receiver has every message. Returns how long delivery took and the most messages the
/// receiver got within any one second.
async fn run(engines: &[&Engine], rx: &Sink, per_node: usize) -> (Duration, usize) {
    let before = rx.received().len();
    for e in engines {
        let (status, body) = http_post(e, "/api/v1/suspend", r#"{"domain": "rx.test"}"#).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut sent = 0;
    for (k, e) in engines.iter().enumerate() {
        for i in 0..per_node {
            let to = format!("u{k}-{i}@rx.test");
            let r = smtp_send(
                e.smtp_addr,
                "s@tx.test",
                &[&to],
                b"Subject: fleet\r\n\r\nx\r\n",
            )
            .await;
            assert!(r[0].starts_with("250"), "{r:?}");
            sent += 1;
        }
    }
    let t0 = Instant::now();
    for e in engines {
        let (status, body) = http_post(e, "/api/v1/resume", r#"{"domain": "rx.test"}"#).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_until(
        "every message at the receiver",
        Duration::from_secs(60),
        async || rx.received().len() >= before + sent,
    )
    .await;
    let took = t0.elapsed();
    let mut at: Vec<u64> = rx.received()[before..]
        .iter()
        .map(|m| m.at.millis())
        .collect();
    at.sort();
    let mut most = 0;
    let mut from = 0;
    for to in 0..at.len() {
        while at[to] - at[from] >= 1000 {
            from += 1;
        }
        most = most.max(to - from + 1);
    }
    (took, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_a_receivers_limit_and_three_alone_exceed_it() {
    // The receiver's limit is 40 messages a second from the fleet's one address, and
    // each node is told so.
    let rate = Rate {
        count: 40,
        per: Duration::from_secs(1),
    };
    let rx = plain_sink().await;

    // Three nodes alone: each sends at the whole rate.
    let mut alone = Vec::new();
    for name in ["a1", "a2", "a3"] {
        alone.push(node(name, None, rx.addr, rate).await);
    }
    let engines: Vec<&Engine> = alone.iter().map(|(_, e)| e).collect();
    let (took_alone, most_alone) = run(&engines, &rx, 60).await;
    for (_, e) in alone {
        e.shutdown().await;
    }

    // Three nodes of a fleet: each takes a third.
    let redis = Redis::start();
    let mut fleet = Vec::new();
    for name in ["n1", "n2", "n3"] {
        fleet.push(node(name, Some(&redis), rx.addr, rate).await);
    }
    all_see(
        &fleet.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        3,
        Duration::from_secs(10),
    )
    .await;
    let view = fleet_of(&fleet[0].1).await;
    assert_eq!(view["redis_up"], true, "{view}");
    let names: Vec<&str> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"], "{view}");
    let engines: Vec<&Engine> = fleet.iter().map(|(_, e)| e).collect();
    let (took, most) = run(&engines, &rx, 60).await;
    eprintln!(
        "180 messages, limit 40/s: alone {took_alone:?}, at most {most_alone} in a second; \
         fleet {took:?}, at most {most} in a second"
    );
    assert!(
        most_alone >= 80,
        "three nodes alone send two or three times the limit: {most_alone} in a second"
    );
    assert!(
        most <= 42,
        "the fleet keeps within 5 % of the limit: {most} in a second"
    );
    assert!(
        took >= Duration::from_secs(3),
        "180 at 40 a second take 4.5 s: {took:?}"
    );

    // A node that stops leaves the fleet: the others take half each.
    let (_, gone) = fleet.pop().unwrap();
    gone.shutdown().await;
    all_see(
        &fleet.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        2,
        Duration::from_secs(5),
    )
    .await;
    for (_, e) in fleet {
        e.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_node_keeps_its_last_share_and_delivers() {
    let rate = Rate {
        count: 50,
        per: Duration::from_secs(1),
    };
    let mut redis = Redis::start();
    let rx = plain_sink().await;
    let (_w1, n1) = node("n1", Some(&redis), rx.addr, rate).await;
    let (_w2, n2) = node("n2", Some(&redis), rx.addr, rate).await;
    all_see(&[&n1, &n2], 2, Duration::from_secs(10)).await;
    let api = n1.http_addr.to_string();
    let (ok, out, err) = knock_async(&["fleet", "--api", &api]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("fleet: node n1 of 2, Redis up, each limit shared by 2 nodes"),
        "{out}"
    );
    assert!(
        out.contains("n1 ") && out.contains("(this node)") && out.contains("\nn2 "),
        "{out}"
    );
    redis.kill();
    for e in [&n1, &n2] {
        wait_until("Redis seen down", Duration::from_secs(10), async || {
            let (_, h) = http_get(e, "/api/v1/health").await;
            h["redis"] == "down"
        })
        .await;
        let view = fleet_of(e).await;
        assert_eq!(view["share"], 2, "the last share is kept: {view}");
        assert!(view["error"].is_string(), "{view}");
    }
    let (ok, out, err) = knock_async(&["queue", "--api", &api]).await;
    assert!(ok, "{err}");
    assert!(out.contains("fleet: node n1, Redis DOWN ("), "{out}");
    let metrics = reqwest::get(format!("http://{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("knock_fleet_redis_up 0"), "{metrics}");
    assert!(metrics.contains("knock_fleet_nodes 2"), "{metrics}");
    // Mail goes on, on the last share: 25 a second each.
    let (_, most) = run(&[&n1, &n2], &rx, 40).await;
    assert!(most <= 53, "within the shares: {most} in a second");
    // Redis back: the nodes find it again, and the fleet as it is.
    redis.restart();
    n2.shutdown().await;
    wait_until(
        "Redis back, one node",
        Duration::from_secs(10),
        async || {
            let v = fleet_of(&n1).await;
            v["redis_up"] == true && v["share"] == 1
        },
    )
    .await;
    n1.shutdown().await;
}

/// Another node's suppression list: what one node adds (an operator, a hard bounce) the
/// others refuse within a heartbeat or two; what one takes off, the others send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppression_on_one_node_holds_on_every_node() {
    let rate = Rate {
        count: 100,
        per: Duration::from_secs(1),
    };
    let redis = Redis::start();
    let rx = plain_sink().await;
    let (_w1, n1) = node("n1", Some(&redis), rx.addr, rate).await;
    let (w2, n2) = node("n2", Some(&redis), rx.addr, rate).await;
    all_see(&[&n1, &n2], 2, Duration::from_secs(10)).await;
    let http = reqwest::Client::new();
    let put = http
        .put(format!(
            "http://{}/api/v1/suppressions/stop@rx.test",
            n1.http_addr
        ))
        .body(r#"{"reason": "asked to stop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    wait_until(
        "n2 has n1's suppression",
        Duration::from_secs(5),
        async || http_get(&n2, "/api/v1/suppressions/stop@rx.test").await.0 == 200,
    )
    .await;
    let (_, entry) = http_get(&n2, "/api/v1/suppressions/stop@rx.test").await;
    assert_eq!(entry["reason"], "asked to stop", "{entry}");
    let r = smtp_send(
        n2.smtp_addr,
        "s@tx.test",
        &["stop@rx.test"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    w2.wait_event(Duration::from_secs(5), is("suppressed", "stop@rx.test"))
        .await;

    // A hard bounce on n1 suppresses on n2.
    let r = smtp_send(
        n1.smtp_addr,
        "s@tx.test",
        &["unknown@rx.test"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    wait_until("n2 has n1's bounce", Duration::from_secs(10), async || {
        http_get(&n2, "/api/v1/suppressions/unknown@rx.test")
            .await
            .0
            == 200
    })
    .await;

    // Taken off on n2, it is off on n1.
    let del = http
        .delete(format!(
            "http://{}/api/v1/suppressions/stop@rx.test",
            n2.http_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    wait_until("n1 took it off", Duration::from_secs(5), async || {
        http_get(&n1, "/api/v1/suppressions/stop@rx.test").await.0 == 404
    })
    .await;
    assert!(
        rx.received().is_empty(),
        "nothing went to a suppressed address"
    );
    n1.shutdown().await;
    n2.shutdown().await;
}

/// A receiver that refuses one node for going too fast slows the others within a second:
/// their destination of that provider starts looking for the window, as for its own
/// refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_one_node_slows_the_others_within_a_second() {
    let redis = Redis::start();
    // 5 messages a second from the fleet's one address, and knock not told so.
    let rx = sink(knock::tools::sink::SinkConfig {
        rate: Some(Rate {
            count: 5,
            per: Duration::from_secs(1),
        }),
        ..Default::default()
    })
    .await;
    let unlimited = Rate {
        count: 10_000,
        per: Duration::from_secs(1),
    };
    let (w1, n1) = node("n1", Some(&redis), rx.addr, unlimited).await;
    let (w2, n2) = node("n2", Some(&redis), rx.addr, unlimited).await;
    all_see(&[&n1, &n2], 2, Duration::from_secs(10)).await;
    // n2 knows the destination (one message delivered), and is not looking for a window.
    let r = smtp_send(
        n2.smtp_addr,
        "s@tx.test",
        &["first@rx.test"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    w2.wait_event(Duration::from_secs(10), is("delivered", "first@rx.test"))
        .await;
    let probing = async || -> Option<String> {
        let (_, d) = http_get(&n2, "/api/v1/destinations").await;
        d["destinations"]
            .as_array()?
            .iter()
            .find_map(|d| d["shaping"]["allowance"]["probing_since"].as_str())
            .map(String::from)
    };
    assert_eq!(probing().await, None);
    // n1 sends a burst: the receiver refuses it past five.
    for i in 0..20 {
        let to = format!("b{i}@rx.test");
        let r = smtp_send(
            n1.smtp_addr,
            "s@tx.test",
            &[&to],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
        assert!(r[0].starts_with("250"), "{r:?}");
    }
    let refused = w1
        .wait_event(Duration::from_secs(10), |e| {
            e["event"] == "deferred" && e["class"] == "throttle"
        })
        .await;
    let refused_at: chrono_free::Millis = refused["timestamp"].as_str().unwrap().into();
    let mut since = None;
    wait_until("n2 slows down", Duration::from_secs(5), async || {
        since = probing().await;
        since.is_some()
    })
    .await;
    let slowed_at: chrono_free::Millis = since.unwrap().as_str().into();
    let lag = slowed_at.0 - refused_at.0;
    eprintln!("n2 slowed {lag} ms after n1's refusal");
    assert!(lag < 1000, "within a second: {lag} ms");
    n1.shutdown().await;
    n2.shutdown().await;
}

/// RFC 3339 timestamps as milliseconds, through knock's own parser.
mod chrono_free {
    pub struct Millis(pub i64);
    impl From<&str> for Millis {
        fn from(text: &str) -> Millis {
            let t: knock::time::Timestamp =
                serde_json::from_value(serde_json::Value::String(text.into())).unwrap();
            Millis(t.millis() as i64)
        }
    }
}

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node killed with kill -9 leaves the fleet when its heartbeat key expires (three
/// heartbeats): the others take its part of the limits back. Its mail stays in its spool
/// and is delivered once it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_leaves_the_fleet_and_delivers_its_mail_when_back() {
    let redis = Redis::start();
    let rx = plain_sink().await;
    let rate = Rate {
        count: 100,
        per: Duration::from_secs(1),
    };
    let (_wa, a) = node("a", Some(&redis), rx.addr, rate).await;
    // Node b runs as a process of its own, to be killed.
    let dir = tempfile::tempdir().unwrap();
    let (smtp, http) = (free_port(), free_port());
    let config = dir.path().join("knock.toml");
    std::fs::write(
        &config,
        format!(
            r#"[smtp]
listen = "127.0.0.1:{smtp}"
hostname = "b.knock.test"
[http]
listen = "127.0.0.1:{http}"
[spool]
path = "{spool}"
[events]
path = "{events}"
[routes]
"rx.test" = ["{rx}"]
[retry]
schedule = ["200ms"]
[cluster]
redis = "{redis}"
node = "b"
heartbeat = "200ms"
"#,
            spool = dir.path().join("spool").display(),
            events = dir.path().join("events.jsonl").display(),
            rx = rx.addr,
            redis = redis.url(),
        ),
    )
    .unwrap();
    let start_b = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_knock"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let b_api = format!("http://127.0.0.1:{http}");
    let b_up = async || reqwest::get(format!("{b_api}/api/v1/health")).await.is_ok();
    let mut b = start_b();
    wait_until("b answers", Duration::from_secs(20), b_up).await;
    wait_until("a sees b", Duration::from_secs(10), async || {
        fleet_of(&a).await["share"] == 2
    })
    .await;
    // Mail queued on b, held back by a suspension (kept in b's spool).
    let http_client = reqwest::Client::new();
    let suspend = http_client
        .post(format!("{b_api}/api/v1/suspend"))
        .body(r#"{"domain": "rx.test"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(suspend.status(), 200);
    let b_smtp: SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    for i in 0..5 {
        let to = format!("k{i}@rx.test");
        let r = smtp_send(b_smtp, "s@tx.test", &[&to], b"Subject: k\r\n\r\nx\r\n").await;
        assert!(r[0].starts_with("250"), "{r:?}");
    }
    b.kill().unwrap(); // SIGKILL
    b.wait().unwrap();
    let killed = Instant::now();
    wait_until("a sees b gone", Duration::from_secs(5), async || {
        fleet_of(&a).await["share"] == 1
    })
    .await;
    let gone_after = killed.elapsed();
    eprintln!("a took b's share back {gone_after:?} after kill -9");
    assert!(gone_after < Duration::from_secs(2), "{gone_after:?}");
    // Back: its mail goes once the suspension is lifted.
    let mut b = start_b();
    wait_until("b answers again", Duration::from_secs(20), b_up).await;
    let resume = http_client
        .post(format!("{b_api}/api/v1/resume"))
        .body(r#"{"domain": "rx.test"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 200);
    wait_until("b's mail delivered", Duration::from_secs(20), async || {
        rx.received().len() >= 5
    })
    .await;
    assert_eq!(rx.received().len(), 5, "each once");
    wait_until("a sees b again", Duration::from_secs(10), async || {
        fleet_of(&a).await["share"] == 2
    })
    .await;
    b.kill().unwrap();
    b.wait().unwrap();
    a.shutdown().await;
}

/// A node that joins with suppressions of its own (kept in its spool from before it was in
/// the fleet) passes them to the nodes already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_brings_its_own_suppressions() {
    let rate = Rate {
        count: 100,
        per: Duration::from_secs(1),
    };
    let redis = Redis::start();
    let rx = plain_sink().await;
    let (_w1, n1) = node("n1", Some(&redis), rx.addr, rate).await;
    wait_until("n1 in the fleet", Duration::from_secs(10), async || {
        fleet_of(&n1).await["redis_up"] == true
    })
    .await;
    // n2 alone first: it suppresses an address, then stops.
    let (mut w2, n2) = node("n2", None, rx.addr, rate).await;
    let put = reqwest::Client::new()
        .put(format!(
            "http://{}/api/v1/suppressions/early@rx.test",
            n2.http_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    n2.shutdown().await;
    // Back as a node of the fleet, on the same spool.
    join(&mut w2, "n2", redis.url(), None);
    let n2 = w2
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    wait_until(
        "n1 has n2's suppression",
        Duration::from_secs(5),
        async || http_get(&n1, "/api/v1/suppressions/early@rx.test").await.0 == 200,
    )
    .await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// `knock drain --to`: a node's queue moves to another node, each message whole, and is
/// cancelled here once the other took it; a message the other will not take for every
/// recipient stays, and is delivered from here later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_the_queue_to_another_node_whole_messages_only() {
    let rx = plain_sink().await;
    let rate = Rate {
        count: 1000,
        per: Duration::from_secs(1),
    };
    let (wa, a) = node("a", None, rx.addr, rate).await;
    // b takes two recipients per message at most (452 4.5.3 past them).
    let mut wb = World::new(&["200ms"], "1h");
    wb.config.smtp.max_recipients = 2;
    let b = wb
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let (status, body) = http_post(&a, "/api/v1/suspend", r#"{"domain": "rx.test"}"#).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..10 {
        let to = format!("d{i}@rx.test");
        let r = smtp_send(a.smtp_addr, "s@tx.test", &[&to], b"Subject: d\r\n\r\nx\r\n").await;
        assert!(r[0].starts_with("250"), "{r:?}");
    }
    let r = smtp_send(
        a.smtp_addr,
        "s@tx.test",
        &["t1@rx.test", "t2@rx.test", "t3@rx.test"],
        b"Subject: three\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");

    let api = a.http_addr.to_string();
    let to = b.smtp_addr.to_string();
    let (ok, out, err) = knock_async(&["drain", "--api", &api, "--to", &to, "--limit", "4"]).await;
    assert!(!ok, "one message stays: {out}");
    assert!(out.contains("(10 in all), 1 left"), "{out}");
    assert!(out.contains("4.5.3"), "why it stayed: {out}");
    assert!(err.contains("1 message(s) stay here"), "{err}");
    // b delivers the ten, each once; a cancelled them, by the drain.
    wait_until("b delivers the ten", Duration::from_secs(20), async || {
        rx.received().len() >= 10
    })
    .await;
    // The cancellations' events follow their commit.
    let cancelled = || -> Vec<Value> {
        wa.events()
            .into_iter()
            .filter(|e| e["event"] == "cancelled")
            .collect()
    };
    wait_until(
        "a's ten cancelled events",
        Duration::from_secs(10),
        async || cancelled().len() >= 10,
    )
    .await;
    let cancelled = cancelled();
    assert_eq!(cancelled.len(), 10);
    assert!(
        cancelled
            .iter()
            .all(|e| e["actor"] == format!("drain to {to}"))
    );
    // The one left goes from a once its domain is resumed.
    let (status, body) = http_post(&a, "/api/v1/resume", r#"{"domain": "rx.test"}"#).await;
    assert_eq!(status, 200, "{body}");
    wait_until("a delivers the last", Duration::from_secs(20), async || {
        rx.received().len() >= 11
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = rx.received();
    assert_eq!(received.len(), 11, "nothing twice");
    assert!(received.iter().any(|m| m.rcpts.len() == 3));
    // Bad requests name their field.
    let (status, body) = http_post(&a, "/api/v1/drain", r#"{"limit": 5}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("to")),
        "{body}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Redis over TLS (`rediss://`), its certificate checked against a private CA
/// (`[cluster] ca`): the fleet forms as over plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_tls_to_redis_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_tls(dir.path());
    let rx = plain_sink().await;
    let rate = Rate {
        count: 100,
        per: Duration::from_secs(1),
    };
    let url = format!("rediss://127.0.0.1:{}/", redis.port);
    let ca = Some(dir.path().join("ca.pem"));
    let (_w1, n1) = node_in("t1", Some((url.clone(), ca.clone())), rx.addr, rate).await;
    let (_w2, n2) = node_in("t2", Some((url.clone(), ca)), rx.addr, rate).await;
    for e in [&n1, &n2] {
        wait_until(
            "each node sees two over TLS",
            Duration::from_secs(10),
            async || {
                let v = fleet_of(e).await;
                v["redis_up"] == true && v["share"] == 2
            },
        )
        .await;
    }
    // Without the CA, the certificate is not trusted: Redis stays down for that node.
    let (_w3, n3) = node_in("untrusting", Some((url, None)), rx.addr, rate).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = fleet_of(&n3).await;
    assert_eq!(v["redis_up"], false, "{v}");
    assert_eq!(
        fleet_of(&n1).await["share"],
        2,
        "the untrusting node never joined"
    );
    n1.shutdown().await;
    n2.shutdown().await;
    n3.shutdown().await;
}
