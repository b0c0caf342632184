//! The client subcommands against a running engine, as a user runs them.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use std::process::Command;

/// `knock` with `stdin` on its standard input.
fn knock_with_stdin(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_knock"))
        .args(args)
        .env_remove("KNOCK_API")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn send_then_queue_and_show() {
    let w = World::new(&["1h"], "2h");
    let engine = w
        .start(route(StaticResolver::new(), "rx.test", dead_addr().await))
        .await;
    let api = format!("http://{}", engine.http_addr);
    let (ok, id, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || {
            knock(&[
                "send",
                "--api",
                &api,
                "--from",
                "s@tx.test",
                "--to",
                "a@rx.test",
                "--subject",
                "hi",
                "--text",
                "hello",
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    assert_eq!(id.len(), 36, "prints the id: {id:?}");
    w.wait_event(
        std::time::Duration::from_secs(10),
        is("deferred", "a@rx.test"),
    )
    .await;

    let (ok, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || knock(&["queue", "--api", &api])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("rx.test"))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[1..4], &["0", "1", "0"], "{out}");
    assert!(
        out.contains("DESTINATION") && out.contains("mx.rx.test"),
        "{out}"
    );

    let (ok, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || knock(&["diagnose", "--api", &api])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("mx.rx.test: outage"), "{out}");
    assert!(
        out.contains("knock is holding the queue and probing"),
        "{out}"
    );

    let (ok, out, _) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || knock(&["queue", "--api", &api, "--json"])
    })
    .await
    .unwrap();
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["domains"][0]["deferred"], 1);

    let (ok, out, err) = tokio::task::spawn_blocking({
        let (api, id) = (api.clone(), id.clone());
        move || knock(&["queue", "--api", &api, "show", &id])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("a@rx.test [deferred] next attempt"), "{out}");
    let header = out
        .lines()
        .position(|l| l.trim_start().starts_with("#  AT"))
        .unwrap_or_else(|| panic!("the attempts have a header row: {out}"));
    let first = out.lines().nth(header + 1).unwrap();
    assert!(
        first.trim_start().starts_with("1  ") && first.contains("4.4.1"),
        "{out}"
    );

    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        knock(&[
            "send",
            "--api",
            &api,
            "--from",
            "bad",
            "--to",
            "a@rx.test",
            "--subject",
            "x",
            "--text",
            "y",
        ])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("from"), "the error names the field: {err}");
    engine.shutdown().await;
}

#[test]
fn serve_refuses_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knock.toml");
    std::fs::write(
        &path,
        "[retry]\nschedule = [\"5m\"]\nmax_age = \"forever\"\n",
    )
    .unwrap();
    let (ok, _, err) = knock(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("max_age"), "{err}");
}

/// `knock config check FILE`: the configuration as `knock serve` would run it, every key
/// there, its defaults filled in and its secrets hidden, as TOML or JSON.
#[test]
fn config_check_prints_the_effective_config_with_secrets_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knock.toml");
    std::fs::write(
        &path,
        r#"
[smtp]
hostname = "mx.sender.example"
[http]
tokens = [{ name = "alice", token = "alice-secret-0123456789" }]
[shaping."google"]
rate = "600/min"
[tls.destinations]
"bank.example" = "verify"
microsoft = "require"
[[webhook]]
name = "crm"
url = "https://hooks.example/knock"
secret = "webhook-secret-0123456789"
"#,
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let (ok, out, err) = knock(&["config", "check", path]);
    assert!(ok, "{err}");
    assert!(
        !out.contains("alice-secret") && !out.contains("webhook-secret"),
        "{out}"
    );
    let effective: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        effective["smtp"]["hostname"].as_str(),
        Some("mx.sender.example")
    );
    // Defaults the file left out.
    assert_eq!(
        effective["retry"]["max_age"].as_str(),
        Some("3days"),
        "{out}"
    );
    assert_eq!(
        effective["smtp"]["max_message_size"].as_str(),
        Some("25MiB")
    );
    assert_eq!(
        effective["delivery"]["timeouts"]["connect"].as_str(),
        Some("30s")
    );
    assert_eq!(
        effective["shaping"]["google"]["rate"].as_str(),
        Some("600/1m")
    );
    assert_eq!(
        effective["tls"]["destinations"]["microsoft"].as_str(),
        Some("require")
    );
    let token = &effective["http"]["tokens"][0];
    assert_eq!(
        (token["name"].as_str(), token["token"].as_str()),
        (Some("alice"), Some("<hidden>"))
    );
    assert_eq!(effective["webhook"][0]["secret"].as_str(), Some("<hidden>"));
    assert_eq!(
        effective["webhook"][0]["batch_size"].as_integer(),
        Some(100)
    );

    let (ok, out, err) = knock(&["config", "check", path, "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["retry"]["max_age"], "3days");
    assert_eq!(json["http"]["tokens"][0]["token"], "<hidden>");
    assert_eq!(json["webhook"][0]["secret"], "<hidden>");
    assert!(json["tls"]["cert"].is_null(), "unset keys are there, null");

    // No file: the embedded defaults `knock serve` runs on without --config.
    let (ok, out, err) = knock(&["config", "check"]);
    assert!(ok, "{err}");
    let effective: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(effective["smtp"]["listen"].as_str(), Some("127.0.0.1:2525"));
    assert_eq!(effective["spool"]["path"].as_str(), Some("knock-data"));
}

/// Runs knock for at most `secs` seconds: `None` if it was still running (and was killed).
fn knock_within(args: &[&str], secs: u64) -> Option<(std::process::ExitStatus, String)> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_knock"))
        .args(args)
        .env_remove("KNOCK_API")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status, err));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// A provider name that matches no provider is a mistake, not silence: `config check` and
/// `serve` both refuse it in one line naming the key.
#[test]
fn a_misspelt_provider_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cases = [
        (
            "[shaping.\"gogle\"]\nrate = \"600/min\"\n",
            "shaping.\"gogle\": no provider is named \"gogle\" (did you mean \"google\"?)",
        ),
        (
            "[tls.destinations]\n\"bank.example\" = \"verify\"\nmicrosfot = \"require\"\n",
            "tls.destinations.\"microsfot\": no provider is named \"microsfot\" (did you mean \"microsoft\"?)",
        ),
    ];
    for (i, (text, says)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("knock-{i}.toml"));
        // Were it taken, serve would start: on ports of its own choosing, in the temporary
        // directory.
        let text = format!(
            "{text}[smtp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[spool]\npath = {:?}\n[events]\npath = {:?}\n",
            spool.to_str().unwrap(),
            spool.join("events.jsonl").to_str().unwrap()
        );
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();

        let (check, err) = knock_within(&["config", "check", path], 30).expect("check ends");
        assert!(!check.success(), "{path}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].ends_with(says),
            "{err}"
        );

        let (serve, err) =
            knock_within(&["serve", "--config", path], 10).expect("serve refuses to start");
        assert!(!serve.success());
        assert!(err.trim_end().ends_with(says), "{err}");
        assert_eq!(check.code(), serve.code(), "the same exit status as serve");
    }
    assert!(!spool.exists(), "serve opened no spool");

    // The files a configuration names are read, as serve reads them at start.
    let path = dir.path().join("rules.toml");
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &path,
        format!("[classify]\nrules = {:?}\n", missing.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out, err) = knock(&["config", "check", path.to_str().unwrap()]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.starts_with("error: ") && err.contains("classify.rules: reading"),
        "{err}"
    );
}

#[test]
fn unreachable_engine_is_a_clear_error() {
    let (ok, _, err) = knock(&["queue", "--api", "http://127.0.0.1:9"]);
    assert!(!ok);
    assert!(err.contains("cannot reach knock"), "{err}");
}

#[test]
fn classify_prints_class_and_disposition() {
    let (ok, out, err) = knock(&[
        "classify",
        "450 4.2.0 <a@b.test>: Recipient address rejected: Greylisted",
        "550 5.1.1 User unknown",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        lines,
        vec![vec!["greylist", "transient"], vec!["hard", "permanent"]]
    );

    let (ok, out, _) = knock_with_stdin(
        &["classify", "--json"],
        b"421 4.7.0 mx.test Error: too many connections from 192.0.2.1\n250 2.0.0 Ok\n",
    );
    assert!(ok);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["class"], "throttle");
    assert_eq!(rows[0]["transient"], true);
    assert_eq!(
        rows[0]["line"],
        "421 4.7.0 mx.test Error: too many connections from 192.0.2.1"
    );
    assert_eq!(
        (rows[1]["class"].is_null(), &rows[1]["transient"]),
        (true, &serde_json::json!(false))
    );

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("mine.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nclass = \"throttle\"\nphrases = [\"slow your roll\"]\n",
    )
    .unwrap();
    let (ok, out, _) = knock(&[
        "classify",
        "--rules",
        rules.to_str().unwrap(),
        "451 Slow your roll",
    ]);
    assert!(ok);
    assert!(out.starts_with("throttle"), "{out}");
    let (ok, _, err) = knock(&["classify", "not a reply"]);
    assert!(!ok && err.contains("no known phrase: not a reply"), "{err}");
}

/// A line from a mail log and a sending MTA's own diagnostic are classified, and the JSON
/// says what each was read as.
#[test]
fn classify_reads_logged_replies_and_sender_diagnostics() {
    let logged = "Dec  1 02:03:04 tx postfix/smtp[123]: 4Xyz: to=<a@rx.example>, \
                  relay=mx.rx.example[192.0.2.1]:25, delay=1.2, dsn=4.7.28, status=deferred \
                  (host mx.rx.example[192.0.2.1] said: 421-4.7.28 [192.0.2.9] Our system has \
                  detected an unusual rate of 421-4.7.28 mail originating from your IP \
                  address. 421 4.7.28 Try again later. gsmtp (in reply to end of DATA command))";
    let diagnostic = "connect to mx.rx.example[192.0.2.1]:25: Connection timed out";
    let bounce = "smtp; 550 5.1.1 <a@rx.example>... User unknown";
    let (ok, out, err) = knock_with_stdin(
        &["classify", "--json"],
        format!("{logged}\n{diagnostic}\n{bounce}\n").as_bytes(),
    );
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fields = |r: &serde_json::Value| {
        (
            r["read_as"].as_str().unwrap().to_string(),
            r["class"].as_str().map(str::to_string),
            r["disposition"].as_str().unwrap().to_string(),
            r["code"].as_u64(),
            r["enhanced"].as_str().map(str::to_string),
            r["failure"].as_str().map(str::to_string),
        )
    };
    let own = |s: &str| Some(s.to_string());
    assert_eq!(
        fields(&rows[0]),
        (
            "logged reply".into(),
            own("throttle"),
            "transient".into(),
            Some(421),
            own("4.7.28"),
            None
        )
    );
    assert_eq!(
        rows[0]["text"],
        "[192.0.2.9] Our system has detected an unusual rate of mail originating from your \
         IP address. Try again later. gsmtp"
    );
    assert_eq!(
        fields(&rows[1]),
        (
            "diagnostic".into(),
            own("network"),
            "transient".into(),
            None,
            own("4.4.1"),
            own("connect_timeout")
        )
    );
    assert_eq!(
        fields(&rows[2]),
        (
            "logged reply".into(),
            own("hard"),
            "permanent".into(),
            Some(550),
            own("5.1.1"),
            None
        )
    );

    let (ok, out, err) = knock(&["classify", diagnostic]);
    assert!(ok, "{err}");
    assert_eq!(
        out.split_whitespace().take(3).collect::<Vec<_>>(),
        ["network", "transient", "diagnostic"]
    );
}

#[test]
fn passwd_prints_a_line_the_credentials_file_takes() {
    let run = |user: &str, stdin: &str| knock_with_stdin(&["passwd", user], stdin.as_bytes());
    let (ok, line, err) = run("alice", "wonderland\n");
    assert!(ok, "{err}");
    assert!(line.starts_with("alice:$argon2id$"), "{line}");
    assert!(
        !line.contains("wonderland"),
        "the password itself is not printed"
    );
    let users = knock::net::auth::Credentials::parse(&line).unwrap();
    assert!(users.verify("alice", "wonderland"));
    let (ok, _, err) = run("bad:name", "x\n");
    assert!(!ok && err.contains("user:"), "{err}");
    let (ok, _, err) = run("bob", "");
    assert!(!ok && err.contains("no password"), "{err}");
}

#[test]
fn simulate_reports_as_text_json_and_a_timeline_and_refuses_a_bad_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        "[traffic]\nmessages = 50\nover = \"1m\"\n\n[[traffic.to]]\nreceiver = \"grey\"\ndomains = 2\n\n[receiver.grey]\ngreylist = { window = \"2m\" }\n",
    )
    .unwrap();
    let path = scenario.to_str().unwrap();
    let (ok, out, err) = knock(&["simulate", path]);
    assert!(ok, "{err}");
    assert!(out.contains("RECEIVER") && out.contains("grey"), "{out}");
    let timeline = dir.path().join("t.csv");
    let (ok, out, err) = knock(&[
        "simulate",
        path,
        "--json",
        "--timeline",
        timeline.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grey = &report["receivers"][0];
    assert_eq!(grey["delivered"], 50);
    assert_eq!(grey["refused_share"], 0.5, "greylisted once each: {grey}");
    let csv = std::fs::read_to_string(&timeline).unwrap();
    assert!(csv.starts_with("minute,receiver,"), "{csv}");
    assert!(csv.lines().count() > 3, "{csv}");

    // Two configurations side by side: the second waits out a 2-minute window sooner.
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    std::fs::write(&a, "").unwrap();
    std::fs::write(&b, "[greylist]\nwindow = \"2m\"\n").unwrap();
    let (ok, out, err) = knock(&[
        "simulate",
        path,
        "--compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("drain") && out.contains("grey"), "{out}");

    // A bad scenario: nothing runs, and the error names the key and its line.
    std::fs::write(
        &scenario,
        "[traffic]\nmessages = 50\n\n[[traffic.to]]\nreceiver = \"grey\"\n\n[receiver.grey]\ndefer_share = 1.5\n",
    )
    .unwrap();
    let (ok, out, err) = knock(&["simulate", path]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("line 8") && err.contains("defer_share"),
        "{err}"
    );
}

#[test]
fn a_replay_of_a_damaged_log_names_the_line_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    std::fs::write(
        &log,
        concat!(
            r#"{"event":"processed","timestamp":"2026-11-23T07:53:55.943Z","message_id":"m1","recipient":"a@x.test","domain":"x.test","from":"s@y.test"}"#,
            "\n",
            r#"{"event":"delivered","timestamp":"2026-11-23T07:53:56.943Z","message_id":"m1","recipient":"a@x.test","domian":"x.test","from":"s@y.test"}"#,
            "\n"
        ),
    )
    .unwrap();
    let (ok, out, err) = knock(&["simulate", "--replay", log.to_str().unwrap()]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("line 2") && err.contains("domian"), "{err}");
}

/// Regression (issue 12): a user's mistake prints one `error:` line, never a backtrace, even
/// with RUST_BACKTRACE=1: a flag clap refuses, flags that exclude each other, a bad config,
/// an engine that is not there.
#[test]
fn user_errors_are_one_line_and_never_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("knock.toml");
    std::fs::write(
        &bad,
        "[smtp]\nhostname = \"k\"\n\n[retry]\nmax_age = \"forever\"\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let send = [
        "send",
        "--api",
        "http://127.0.0.1:9",
        "--from",
        "s@tx.test",
        "--to",
        "a@rx.test",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--bogus"], "unexpected argument '--bogus'"),
        (vec!["bogus"], "unrecognized subcommand 'bogus'"),
        (
            [
                &send[..],
                &["--file", "m.eml", "--subject", "s", "--text", "t"],
            ]
            .concat(),
            "cannot be used with",
        ),
        (
            [&send[..], &["--subject", "s"]].concat(),
            "required arguments were not provided",
        ),
        (
            vec!["serve", "--config", bad],
            "line 5 (max_age = \"forever\")",
        ),
        (
            vec!["config", "check", bad],
            "line 5 (max_age = \"forever\")",
        ),
        (
            vec!["queue", "--api", "http://127.0.0.1:9"],
            "cannot reach knock",
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_knock"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "1")
            .env_remove("KNOCK_API")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(says),
            "{args:?}: the first line says what is wrong: {err}"
        );
        for never in ["panicked", "backtrace", "stack", "src/"] {
            assert!(!err.contains(never), "{args:?}: {never} in {err}");
        }
        // Beyond clap's usage lines (after a blank line), the error is one line.
        let message: Vec<&str> = err.lines().take_while(|l| !l.is_empty()).collect();
        let clap = err.contains("Usage: ");
        assert!(clap || message.len() == 1, "{args:?}: one line: {err}");
    }
}

/// Regression (issue 12): `knock classify | head` ended in a panic and, with
/// RUST_BACKTRACE=1, a backtrace, once head had read its fill and closed the pipe.
#[test]
fn a_reader_that_stops_early_is_no_error() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_knock"))
        .arg("classify")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the first line is written.
    drop(child.stdout.take());
    let lines = "550 5.1.1 User unknown\n".repeat(10_000);
    // knock may stop reading stdin once stdout is gone: a failed write here is fine.
    let _ = child.stdin.take().unwrap().write_all(lines.as_bytes());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "{err}");
    assert!(out.status.success(), "{:?}", out.status);
}
