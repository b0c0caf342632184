//! A real full disk: the spool on a small tmpfs that fills up, then gets room again.
//! Needs root (to mount); the CI runs as root. Not run elsewhere, and says so.

use crate::world::*;
use knock::net::resolve::StaticResolver;
use knock::tools::sink::SinkConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A tmpfs of `size` mounted at `path`, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(path.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Writes a file until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
}

async fn send(engine: &knock::serve::Engine, rcpt: &str, body: &[u8]) -> String {
    smtp_send(engine.smtp_addr, "s@tx.test", &[rcpt], body).await[0].clone()
}

#[tokio::test]
async fn a_real_full_disk_refuses_new_mail_and_recovers_when_space_returns() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a small filesystem needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let fs = SmallFs::mount(&mnt, "24m").expect("root, but mounting a tmpfs failed");
    let mut w = World::new(&["300ms"], "1h");
    w.config.spool.path = mnt.join("spool");
    w.config.adapt.outage_backoff = Duration::from_millis(300);
    let addr = dead_addr().await;
    let engine = w.start(route(StaticResolver::new(), "rx.test", addr)).await;

    let first = send(&engine, "before@rx.test", b"Subject: 1\r\n\r\nx\r\n").await;
    assert!(first.starts_with("250"), "{first}");
    let id = queued_id(&first);
    w.wait_event(T, is("deferred", "before@rx.test")).await;

    // The disk fills up (someone else's file), and knock's next writes fail.
    let filler = mnt.join("filler");
    fill(&filler);
    let big = {
        let mut b = b"Subject: big\r\n\r\n".to_vec();
        b.resize(512 * 1024, b'x');
        b
    };
    let mut refused = None;
    for i in 0..40 {
        let reply = send(&engine, &format!("during{i}@rx.test"), &big).await;
        if !reply.starts_with("250") {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("a full disk must refuse something");
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    assert_http_refuses_for_storage(&engine).await;

    // Room again: knock takes mail without a restart, and the old message was kept.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let again = loop {
        let reply = send(&engine, "after@rx.test", b"Subject: 3\r\n\r\nx\r\n").await;
        if reply.starts_with("250") || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        again.starts_with("250"),
        "no recovery once space returned: {again}"
    );
    let (status, m) = http_get(&engine, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{m}");
    let rx = sink(SinkConfig {
        listen: addr,
        ..Default::default()
    })
    .await;
    w.wait_event(T, is("delivered", "before@rx.test")).await;
    w.wait_event(T, is("delivered", "after@rx.test")).await;
    drop(rx);
    engine.shutdown().await;
    drop(fs);
}
