//! Crash safety: `kill -9` knock at random moments under load, twenty times, and prove that
//! every message that got a 250 is delivered at least once.

use crate::world::*;
use knock::net::smtp::client::Client;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn free_addr() -> SocketAddr {
    dead_addr().await
}

/// Sends numbered messages until `stop`, recording the numbers that got a 250.
async fn load(
    addr: SocketAddr,
    next: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
) {
    let timeouts = knock::config::TimeoutConfig {
        connect: Duration::from_secs(1),
        ..Default::default()
    };
    let Ok(mut c) = Client::connect(addr, &timeouts).await else {
        return;
    };
    if c.read_greeting().await.is_err() || c.hello("load.test").await.is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            "Subject: crash-{n}\r\nMessage-ID: <crash-{n}@load.test>\r\n\r\nmessage {n}\r\n"
        );
        let replies = c
            .send_to("load@load.test", &["user@crash.test"], body.as_bytes())
            .await;
        match replies.per_recipient.first() {
            Some(Ok(r)) if r.code == 250 => acked.lock().unwrap().push(n),
            _ => return,
        }
    }
}

fn number(body: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(body);
    let at = text.find("Subject: crash-")? + "Subject: crash-".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A config for `knock serve` on free ports, routing `crash.test` to `rx`.
async fn write_config(dir: &std::path::Path, rx: SocketAddr) -> (std::path::PathBuf, SocketAddr) {
    let (smtp, http) = (free_addr().await, free_addr().await);
    let config = dir.join("knock.toml");
    let text = format!(
        "[smtp]\nlisten = \"{smtp}\"\n[http]\nlisten = \"{http}\"\n[spool]\npath = \"{}\"\n[events]\npath = \"{}\"\n\
         [retry]\nschedule = [\"200ms\"]\n[adapt]\noutage_backoff = \"200ms\"\n[routes]\n\"crash.test\" = [\"{rx}\"]\n",
        dir.join("spool").display(),
        dir.join("events.jsonl").display(),
    );
    std::fs::write(&config, text).unwrap();
    (config, smtp)
}

/// How many times each numbered message reached the receiver.
fn delivered_counts(rx: &knock::tools::sink::Sink) -> HashMap<usize, usize> {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for m in rx.received() {
        if let Some(n) = number(&m.body) {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let rx = plain_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, smtp) = write_config(dir.path(), rx.addr).await;
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let kills = 20;
    for _ in 0..kills {
        let mut child = serve_binary(&config);
        wait_listening(smtp).await;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|_| tokio::spawn(load(smtp, next.clone(), acked.clone(), stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(0..250))).await;
        child.kill().unwrap(); // SIGKILL: no shutdown, no flush
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    // One last, clean run delivers whatever the spool still holds.
    let mut child = serve_binary(&config);
    wait_listening(smtp).await;
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let seen = delivered_counts(&rx);
        if acked.iter().all(|n| seen.contains_key(n)) || tokio::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let lost: Vec<&usize> = acked
        .iter()
        .filter(|n| !delivered.contains_key(n))
        .collect();
    let duplicates: usize = delivered.values().map(|c| c - 1).sum();
    eprintln!(
        "crash: {kills} kills, {} messages acknowledged, {} delivered, {} lost, {duplicates} duplicates",
        acked.len(),
        delivered.len(),
        lost.len()
    );
    assert!(
        acked.len() > 100,
        "the load was too light to mean anything: {}",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    // Only a delivery in flight at a kill can be repeated: at most the connections open then.
    assert!(duplicates <= kills * 10, "{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_work_and_loses_nothing() {
    let rx = plain_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, smtp) = write_config(dir.path(), rx.addr).await;
    let mut child = serve_binary(&config);
    wait_listening(smtp).await;
    let (next, acked, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(smtp, next.clone(), acked.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    assert!(status.success(), "knock exited with {status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let after_stop = delivered_counts(&rx).len();

    let mut child = serve_binary(&config);
    wait_listening(smtp).await;
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !acked.iter().all(|n| delivered_counts(&rx).contains_key(n))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let delivered = delivered_counts(&rx);
    let lost = acked.iter().filter(|n| !delivered.contains_key(n)).count();
    let duplicates: usize = delivered.values().map(|c| c - 1).sum();
    eprintln!(
        "sigterm: exit after {took:?}; {} acknowledged, {after_stop} delivered before the stop, {lost} lost, {duplicates} duplicates",
        acked.len()
    );
    assert!(acked.len() > 50, "too little load: {}", acked.len());
    assert_eq!(lost, 0);
    assert_eq!(
        duplicates, 0,
        "a graceful stop finishes what is in flight: nothing is sent twice"
    );
}
