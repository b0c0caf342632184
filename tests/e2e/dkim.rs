//! DKIM: knock signs at ingest with the sender's key and the platform's, and the message a
//! receiver gets verifies with two verifiers knock did not write (mail-auth's, asking a
//! real DNS server on loopback for the keys, and Python's dkimpy), after a deferral, a
//! restart and a retry: the signed bytes were stored, so every attempt sends the same.

use crate::dns::{Dnsmasq, txt_record};
use crate::world::*;
use knock::config::DkimConfig;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use mail_auth::hickory_resolver::config::ResolverOpts;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// dnsmasq's argument for a TXT record, its value in strings of at most 255 bytes.
pub fn key(
    domain: &str,
    signing: Option<&str>,
    selector: &str,
    path: &std::path::Path,
) -> DkimConfig {
    DkimConfig {
        domain: domain.into(),
        signing_domain: signing.map(String::from),
        selector: selector.into(),
        key: path.to_path_buf(),
        headers: vec!["From".into(), "To".into(), "Subject".into(), "Date".into()],
        canonicalization: "relaxed/relaxed".into(),
    }
}

async fn verify_with_mail_auth(dns: std::net::SocketAddr, message: &[u8]) -> Vec<String> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    let authenticator =
        MessageAuthenticator::new(knock::net::resolve::servers_config(&[dns]), opts).unwrap();
    let parsed = AuthenticatedMessage::parse(message).expect("a message");
    let outputs = authenticator.verify_dkim(&parsed).await;
    assert_eq!(outputs.len(), 2, "two signatures");
    outputs
        .iter()
        .map(|o| {
            let d = o.signature().map(|s| s.d.clone()).unwrap_or_default();
            match o.result() {
                DkimResult::Pass => format!("{d} pass"),
                other => format!("{d} {other:?}"),
            }
        })
        .collect()
}

/// dkimpy's verdict on every signature, the keys given as the DNS would give them.
fn verify_with_dkimpy(message: &[u8], records: &[(String, String)]) -> String {
    let table: String = records
        .iter()
        .map(|(name, value)| format!("{:?}: {:?},", format!("{name}."), value))
        .collect();
    let script = format!(
        r#"
import sys, dkim
records = {{{table}}}
def dnsfunc(name, timeout=5):
    return records.get(name.decode()).encode()
message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
def verify(i):
    try:
        return d.verify(idx=i, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        return False
count = message.count(b"DKIM-Signature:")
print(" ".join(str(verify(i)) for i in range(count)))
"#
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn signatures_verify_independently_after_a_deferral_a_restart_and_a_retry() {
    let keys = tempfile::tempdir().unwrap();
    let (sender_key, sender_name, sender_record) =
        knock::dkim::keygen(keys.path(), "tx.test", "s1", false).unwrap();
    let (platform_key, platform_name, platform_record) =
        knock::dkim::keygen(keys.path(), "platform.test", "p1", true).unwrap();
    assert_eq!(sender_name, "s1._domainkey.tx.test");
    // The key is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sender_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dns = Dnsmasq::start(&[
        txt_record(&sender_name, &sender_record),
        txt_record(&platform_name, &platform_record),
    ]);

    // The receiver greylists the first attempt.
    let rx = sink(SinkConfig {
        greylist: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    let mut w = World::new(&["1s"], "1h");
    w.config.dkim = vec![
        key("tx.test", None, "s1", &sender_key),
        key("*", Some("platform.test"), "p1", &platform_key),
    ];
    w.config.validate().unwrap();
    let resolver = route(StaticResolver::new(), "rx.test", rx.addr);
    let engine = w.start(resolver.clone()).await;
    let body = b"From: Shop <news@tx.test>\r\nTo: a@rx.test\r\nSubject: signed\r\nDate: Wed, 2 Dec 2026 12:00:00 +0000\r\n\r\nHello,  world  \r\n\r\n";
    let replies = smtp_send(engine.smtp_addr, "news@tx.test", &["a@rx.test"], body).await;
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    w.wait_event(T, is("deferred", "a@rx.test")).await;
    engine.shutdown().await;
    // Restarted: the retry sends what was stored.
    let engine = w.start(resolver).await;
    w.wait_event(T, is("delivered", "a@rx.test")).await;
    engine.shutdown().await;

    let received = rx.received();
    assert_eq!(received.len(), 1);
    let message = &received[0].body;
    let text = String::from_utf8_lossy(message);
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    // The platform's signature above the sender's.
    assert!(
        text.find("d=platform.test").unwrap() < text.find("d=tx.test").unwrap(),
        "{text}"
    );
    let mut verdicts = verify_with_mail_auth(dns.addr, message).await;
    verdicts.sort();
    assert_eq!(verdicts, ["platform.test pass", "tx.test pass"]);
    let records = [
        (sender_name.clone(), sender_record.clone()),
        (platform_name.clone(), platform_record.clone()),
    ];
    assert_eq!(verify_with_dkimpy(message, &records), "True True");
    // And a message changed on the way does not verify.
    let tampered = String::from_utf8_lossy(message).replace("Hello", "Hullo");
    assert_eq!(
        verify_with_dkimpy(tampered.as_bytes(), &records),
        "False False"
    );
}

#[tokio::test]
async fn mail_from_another_domain_is_not_signed_with_the_sender_s_key() {
    let keys = tempfile::tempdir().unwrap();
    let (sender_key, ..) = knock::dkim::keygen(keys.path(), "tx.test", "s1", true).unwrap();
    let rx = plain_sink().await;
    let mut w = World::new(&["1s"], "1h");
    w.config.dkim = vec![key("tx.test", None, "s1", &sender_key)];
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", rx.addr))
        .await;
    let body = b"From: other@elsewhere.test\r\nSubject: x\r\n\r\nhi\r\n";
    smtp_send(
        engine.smtp_addr,
        "other@elsewhere.test",
        &["a@rx.test"],
        body,
    )
    .await;
    w.wait_event(T, is("delivered", "a@rx.test")).await;
    let text = String::from_utf8_lossy(&rx.received()[0].body).to_string();
    assert!(!text.contains("DKIM-Signature"), "{text}");
    engine.shutdown().await;
}

#[test]
fn a_bad_key_is_a_start_up_error_naming_it_and_keygen_never_overwrites() {
    let keys = tempfile::tempdir().unwrap();
    let garbage = keys.path().join("bad.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let e = knock::dkim::Dkim::from_config(&[key("tx.test", None, "s1", &garbage)]).unwrap_err();
    assert!(format!("{e:#}").starts_with("dkim[0].key"), "{e:#}");
    knock::dkim::keygen(keys.path(), "tx.test", "s1", true).unwrap();
    let again = knock::dkim::keygen(keys.path(), "tx.test", "s1", true).unwrap_err();
    assert!(
        format!("{again:#}").contains("never overwritten"),
        "{again:#}"
    );
}

#[test]
fn knock_dkim_keygen_writes_the_key_and_prints_the_record_and_the_table() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path().to_str().unwrap();
    let (ok, out, err) = knock(&["dkim", "keygen", "tx.test", "s1", "--ed25519", "--dir", dir]);
    assert!(ok, "{err}");
    assert!(
        out.contains("s1._domainkey.tx.test. IN TXT ( \"v=DKIM1; k=ed25519; p="),
        "{out}"
    );
    assert!(
        out.contains("[[dkim]]\ndomain = \"tx.test\"\nselector = \"s1\""),
        "{out}"
    );
    assert!(keys.path().join("tx.test.s1.pem").exists());
    let (ok, _, err) = knock(&["dkim", "keygen", "not a domain", "s1", "--dir", dir]);
    assert!(!ok);
    assert!(err.contains("domain"), "{err}");
}

/// `knock check-domain` against a real DNS server on loopback: one source and one key set
/// up right, another source SPF does not name, and a key whose published record belongs to
/// another key.
#[test]
fn check_domain_says_what_is_right_and_what_to_fix() {
    let keys = tempfile::tempdir().unwrap();
    let (good, good_name, good_record) =
        knock::dkim::keygen(keys.path(), "tx.test", "s1", true).unwrap();
    let (stale, stale_name, _) = knock::dkim::keygen(keys.path(), "tx.test", "s2", true).unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_record) = knock::dkim::keygen(other.path(), "tx.test", "s2", true).unwrap();
    let dns = Dnsmasq::start(&[
        "--mx-host=tx.test,mx.tx.test,10".into(),
        "--host-record=mx.tx.test,127.0.0.1".into(),
        txt_record("tx.test", "v=spf1 ip4:127.0.0.2 -all"),
        txt_record(&good_name, &good_record),
        txt_record(&stale_name, &other_record),
        txt_record("_dmarc.tx.test", "v=DMARC1; p=reject"),
    ]);
    let config = keys.path().join("knock.toml");
    std::fs::write(
        &config,
        format!(
            r#"[dns]
servers = ["{}"]
timeout = "1s"

[[source]]
name = "a"
ip = "127.0.0.2"
ehlo = "mta1.tx.test"

[[source]]
name = "b"
ip = "127.0.0.3"
ehlo = "mta2.tx.test"

[[dkim]]
domain = "tx.test"
selector = "s1"
key = "{}"

[[dkim]]
domain = "tx.test"
selector = "s2"
key = "{}"
"#,
            dns.addr,
            good.display(),
            stale.display()
        ),
    )
    .unwrap();
    let (ok, out, err) = knock(&[
        "check-domain",
        "tx.test",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert!(!ok, "errors make it fail: {out}");
    assert!(err.contains("error(s) to fix"), "{err}");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let status = |check: &str, subject: &str| -> String {
        checks
            .iter()
            .find(|c| c["check"] == check && c["subject"].as_str().unwrap().contains(subject))
            .unwrap_or_else(|| panic!("no {check} {subject}: {out}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("mx", "tx.test"), "ok");
    assert_eq!(status("spf", "127.0.0.2"), "ok");
    assert_eq!(status("spf", "127.0.0.3"), "error");
    assert_eq!(status("dkim", "s1._domainkey"), "ok");
    assert_eq!(status("dkim", "s2._domainkey"), "error");
    assert_eq!(status("dmarc", "_dmarc.tx.test"), "ok");
    // Resolvers answer reverse lookups of loopback addresses themselves (RFC 6761), so
    // the forward-confirmed reverse DNS cannot be tried here: loopback sources are said
    // to be unchecked.
    assert_eq!(status("ptr", "127.0.0.2"), "warning");
    // Every error says what to fix.
    for c in checks.iter().filter(|c| c["status"] == "error") {
        assert!(c["fix"].is_string(), "{c}");
    }
    let spf_fix = checks
        .iter()
        .find(|c| c["check"] == "spf" && c["status"] == "error")
        .unwrap()["fix"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(spf_fix.contains("ip4:127.0.0.3"), "{spf_fix}");

    // A domain with nothing published: each missing record is named, with what to publish.
    let (ok, out, _) = knock(&[
        "check-domain",
        "bare.test",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok);
    for line in [
        "mx      warning  bare.test",
        "spf     error    bare.test                                no SPF record",
        "dkim    warning  bare.test",
        "dmarc   warning  _dmarc.bare.test",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(
        out.contains("\"v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 -all\""),
        "{out}"
    );
}

/// Forward-confirmed reverse DNS of sources at addresses a resolver does not answer for
/// itself (documentation addresses: check-domain only asks about them, nothing is sent):
/// a PTR that resolves back to the EHLO name, one that names another host, one whose name
/// does not resolve back, and none at all.
#[test]
fn check_domain_confirms_each_sources_reverse_dns() {
    let dir = tempfile::tempdir().unwrap();
    let dns = Dnsmasq::start(&[
        // A host record serves the name's address and the address's PTR.
        "--host-record=mta1.tx.test,192.0.2.10".into(),
        "--host-record=mta2.tx.test,192.0.2.11".into(),
        "--ptr-record=12.2.0.192.in-addr.arpa,ghost.tx.test".into(),
        txt_record("tx.test", "v=spf1 ip4:192.0.2.0/24 -all"),
    ]);
    let config = dir.path().join("knock.toml");
    let mut text = format!("[dns]\nservers = [\"{}\"]\ntimeout = \"1s\"\n", dns.addr);
    for (name, last, ehlo) in [
        ("a", 10, "mta1.tx.test"),
        ("b", 11, "mta9.tx.test"),
        ("c", 12, "ghost.tx.test"),
        ("d", 13, "mta4.tx.test"),
    ] {
        text.push_str(&format!(
            "\n[[source]]\nname = \"{name}\"\nip = \"192.0.2.{last}\"\nehlo = \"{ehlo}\"\n"
        ));
    }
    std::fs::write(&config, text).unwrap();
    let (ok, out, _) = knock(&[
        "check-domain",
        "tx.test",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    assert!(!ok, "errors make it fail: {out}");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let ptr = |ip: &str| -> (String, String) {
        let c = checks
            .iter()
            .find(|c| c["check"] == "ptr" && c["subject"].as_str().unwrap().contains(ip))
            .unwrap_or_else(|| panic!("no ptr check of {ip}: {out}"));
        (
            c["status"].as_str().unwrap().to_string(),
            c["detail"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        ptr("192.0.2.10"),
        (
            "ok".into(),
            "mta1.tx.test, which resolves back, is the EHLO name".into()
        )
    );
    let (status, detail) = ptr("192.0.2.11");
    assert_eq!(status, "warning", "{detail}");
    assert!(detail.contains("the EHLO name is mta9.tx.test"), "{detail}");
    let (status, detail) = ptr("192.0.2.12");
    assert_eq!(status, "error", "{detail}");
    assert!(
        detail.contains("ghost.tx.test) do not resolve back"),
        "{detail}"
    );
    assert_eq!(ptr("192.0.2.13").0, "error");
    // SPF passes for all four: the failures are the reverse DNS alone.
    assert_eq!(
        checks
            .iter()
            .filter(|c| c["check"] == "spf" && c["status"] == "ok")
            .count(),
        4,
        "{out}"
    );
}

/// The same checks over the HTTP API, on the running configuration: the sending domains
/// (those with a key) are listed, and any domain is checked on demand.
#[tokio::test]
async fn the_api_lists_the_sending_domains_and_checks_one() {
    let keys = tempfile::tempdir().unwrap();
    let (good, good_name, good_record) =
        knock::dkim::keygen(keys.path(), "tx.test", "s1", true).unwrap();
    let dns = Dnsmasq::start(&[
        "--mx-host=tx.test,mx.tx.test,10".into(),
        "--host-record=mx.tx.test,127.0.0.1".into(),
        txt_record("tx.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt_record(&good_name, &good_record),
        txt_record("_dmarc.tx.test", "v=DMARC1; p=quarantine"),
    ]);
    let mut w = World::new(&["1s"], "1h");
    w.config.dns.servers = vec![dns.addr];
    w.config.dkim = vec![
        key("tx.test", None, "s1", &good),
        key("*", Some("platform.test"), "p1", &good),
    ];
    let engine = w.start(StaticResolver::new()).await;
    let (status, body) = http_get(&engine, "/api/v1/domains").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"domains": [
            {"domain": "platform.test", "selectors": ["p1"]},
            {"domain": "tx.test", "selectors": ["s1"]},
        ]})
    );
    let (status, body) = http_get(&engine, "/api/v1/domains/TX.test/check").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["domain"], "tx.test");
    let status_of = |check: &str| -> Vec<String> {
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == check)
            .map(|c| c["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(status_of("mx"), ["ok"], "{body}");
    assert_eq!(status_of("dkim"), ["ok"], "{body}");
    assert_eq!(status_of("dmarc"), ["ok"], "{body}");
    assert_eq!(body["errors"], 0, "{body}");
    // A domain with nothing published: its missing records, counted.
    let (status, body) = http_get(&engine, "/api/v1/domains/bare.test/check").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].as_u64().unwrap() >= 1, "{body}");
    let (status, body) = http_get(&engine, "/api/v1/domains/not%20a%20domain/check").await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("domain")),
        "{body}"
    );
    engine.shutdown().await;
}
