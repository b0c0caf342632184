//! The dashboard at `/`, driven in headless Chromium (Debian's `chromium`, through
//! playwright-core: `support/dashboard.mjs`) against a running knock with mail in every
//! state: delivered, bounced, greylisted, throttled, and held back by a suspended domain. The
//! page must show each provider in its state, group the replies, find a message and its
//! attempts, show a retry's dry-run count, and suspend a provider from its confirm step; the
//! suspension is then checked through the API. It lists the sending domain and checks its
//! DNS (served by dnsmasq) when asked. The screenshot is kept in `target/dashboard.png`.

use crate::dns::{Dnsmasq, txt_record};
use crate::world::*;
use knock::config::Rate;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn support_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/support")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

async fn send(engine: &knock::serve::Engine, to: &str) {
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &[to],
        b"Subject: dashboard\r\n\r\nhello\r\n",
    )
    .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
}

/// Waits for the first event of `kind` to `rcpt` and returns its provider.
async fn provider_of(world: &World, kind: &'static str, rcpt: &'static str) -> String {
    world.wait_event(T, is(kind, rcpt)).await["provider"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs the page script with `args`; returns what it saw.
async fn drive(args: Value) -> Value {
    let modules = support_dir().join("node_modules/playwright-core");
    assert!(
        modules.exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/e2e/support` (scripts/test does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "no /usr/bin/chromium: `apt-get install chromium` (scripts/test does)"
    );
    let out = tokio::process::Command::new("node")
        .arg(support_dir().join("dashboard.mjs"))
        .arg(args.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the page script finishes within two minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the page script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_state_and_suspends_a_provider_after_a_confirm_step() {
    // A long retry step: what is deferred stays in the queue while the page looks at it.
    let mut world = World::new(&["1h"], "1d");
    // A sending domain with a key, whose records a DNS server on loopback serves.
    let keys = tempfile::tempdir().unwrap();
    let (key, name, record) = knock::dkim::keygen(keys.path(), "tx.test", "s1", true).unwrap();
    let dns = Dnsmasq::start(&[
        "--mx-host=tx.test,mx.tx.test,10".into(),
        "--host-record=mx.tx.test,127.0.0.1".into(),
        txt_record("tx.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt_record(&name, &record),
    ]);
    world.config.dns.servers = vec![dns.addr];
    world.config.dkim = vec![crate::dkim::key("tx.test", None, "s1", &key)];
    let rx = plain_sink().await;
    let grey = sink(SinkConfig {
        greylist: Some(Duration::from_secs(600)),
        ..Default::default()
    })
    .await;
    let throttling = sink(SinkConfig {
        rate: Some(Rate {
            count: 2,
            per: Duration::from_secs(60),
        }),
        ..Default::default()
    })
    .await;
    let resolver = [
        ("rx.test", rx.addr),
        ("tx.test", rx.addr),
        ("hold.test", rx.addr),
        ("grey.test", grey.addr),
        ("busy.test", throttling.addr),
    ]
    .into_iter()
    .fold(StaticResolver::new(), |r, (domain, addr)| {
        route(r, domain, addr)
    });
    let engine = world.start(resolver).await;

    let (status, body) = http_post(
        &engine,
        "/api/v1/suspend",
        r#"{"domain": "hold.test", "reason": "their MX is being moved"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for rcpt in [
        "a@rx.test",
        "unknown@rx.test",
        "g@grey.test",
        "g2@grey.test",
        "h@hold.test",
    ] {
        send(&engine, rcpt).await;
    }
    for i in 0..8 {
        send(&engine, &format!("b{i}@busy.test")).await;
    }
    world.wait_event(T, is("delivered", "a@rx.test")).await;
    world.wait_event(T, is("bounced", "unknown@rx.test")).await;
    let greylisted = provider_of(&world, "deferred", "g@grey.test").await;
    world.wait_event(T, is("deferred", "g2@grey.test")).await;
    let throttled = world
        .wait_event(T, |e| e["event"] == "deferred" && e["class"] == "throttle")
        .await["provider"]
        .as_str()
        .unwrap()
        .to_string();
    let delivered = provider_of(&world, "delivered", "a@rx.test").await;

    let retry_grey = json!({"provider": greylisted, "dry_run": true}).to_string();
    let (_, before) = http_post(&engine, "/api/v1/retry", &retry_grey).await;
    assert_eq!(before["recipients"], 2, "{before}");

    let screenshot = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let seen = drive(json!({
        "url": format!("http://{}/", engine.http_addr),
        "screenshot": screenshot,
        "providers": {
            greylisted.as_str(): ["open", "paced"],
            throttled.as_str(): ["paced", "paused", "probing"],
            delivered.as_str(): ["open", "paced"],
        },
        "suspended": ["domain:hold.test"],
        "classes": ["greylist", "throttle", "hard"],
        "search": "g@grey",
        "suspend": {"provider": greylisted, "pending": 2},
        "retry": throttled,
        // No DMARC record is published: the one warning.
        "domain": {"name": "tx.test", "expect": {"mx": "ok", "dkim": "ok", "dmarc": "warning"}},
    }))
    .await;
    eprintln!("the page showed: {seen:#}");
    assert_eq!(
        seen["detail"]["classes"],
        json!(["greylist"]),
        "the drill-down shows the greylisted attempt: {seen}"
    );
    assert!(
        seen["detail"]["recipients"][0]
            .as_str()
            .unwrap()
            .starts_with("g@grey.test"),
        "{seen}"
    );
    assert!(
        seen["retry"]["count"].as_u64().unwrap() >= 1,
        "the retry's dry run counts the throttled mail: {seen}"
    );

    // The suspension from the page took effect, under the page's caller.
    let (_, s) = http_get(&engine, "/api/v1/suspensions").await;
    let from_page = s["suspensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["provider"] == greylisted.as_str())
        .unwrap_or_else(|| panic!("no suspension of {greylisted}: {s}"));
    assert_eq!(from_page["reason"], "suspended from the dashboard test");
    assert_eq!(from_page["actor"], "trusted");
    // Suspended mail is not retried: the provider's two deferred recipients are out of reach.
    let (status, dry) = http_post(&engine, "/api/v1/retry", &retry_grey).await;
    assert_eq!(
        (status, dry["recipients"].as_u64()),
        (200, Some(0)),
        "{dry}"
    );

    let png = std::fs::read(&screenshot).expect("the screenshot is kept");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types_and_need_no_token() {
    let mut world = World::new(&["1h"], "1d");
    // Nobody is trusted: the page still loads, its data needs the token.
    world.config.http.trusted_networks = vec![];
    world.config.http.tokens = vec![knock::config::Token::Named {
        name: "ops".into(),
        token: "a-long-enough-token-for-ops".into(),
    }];
    let engine = world.start(StaticResolver::new()).await;
    let base = format!("http://{}", engine.http_addr);
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["cache-control"], "no-cache");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = page.text().await.unwrap();
    let app = html
        .split('"')
        .find(|s| s.starts_with("/assets/app.js?v="))
        .expect("the page loads app.js by a versioned URL");
    for (path, ty) in [
        (app.to_string(), "text/javascript; charset=utf-8"),
        (
            app.replace("app.js", "uPlot.iife.min.js"),
            "text/javascript; charset=utf-8",
        ),
        (
            app.replace("app.js", "style.css"),
            "text/css; charset=utf-8",
        ),
        (
            app.replace("app.js", "uPlot.min.css"),
            "text/css; charset=utf-8",
        ),
    ] {
        let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], ty, "{path}");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{path}"
        );
    }
    // Under another version's URL a file is checked again, not kept.
    let stale = reqwest::get(format!("{base}/assets/app.js?v=0"))
        .await
        .unwrap();
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    let etag = stale.headers()["etag"].clone();
    let again = reqwest::Client::new()
        .get(format!("{base}/assets/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let missing = reqwest::get(format!("{base}/assets/nope.js"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The data behind the page is not open.
    let (status, _) = http_get(&engine, "/api/v1/destinations").await;
    assert_eq!(status, 401);
    let data = reqwest::Client::new()
        .get(format!("{base}/api/v1/destinations"))
        .bearer_auth("a-long-enough-token-for-ops")
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), 200);
    engine.shutdown().await;
}
