//! Real DNS: knock asks a dnsmasq on loopback (`[dns] servers`) for MX and address
//! records, delivers to the MX it names, and bounces a domain that does not exist.

use crate::world::*;
use knock::serve::Engine;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A dnsmasq answering for `.test` from its command line only: MX and address records as
/// given, NXDOMAIN for every other name under `.test`. Stopped when dropped.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    pub fn start(records: &[String]) -> Dnsmasq {
        // A free UDP port (released just before dnsmasq takes it).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--user=root",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local=/test/",
                &format!("--port={port}"),
            ])
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq must be installed (scripts/test installs it)");
        Dnsmasq {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mx_and_addresses_come_from_a_real_dns_server() {
    let rx = plain_sink().await;
    let dns = Dnsmasq::start(&[
        "--mx-host=rx.test,mx1.rx.test,10".into(),
        "--host-record=mx1.rx.test,127.0.0.1".into(),
    ]);
    let mut w = World::new(&["1s"], "1h");
    w.config.dns.servers = vec![dns.addr];
    w.config.dns.timeout = Duration::from_secs(1);
    w.config.delivery.port = rx.addr.port();
    let engine = Engine::start(w.config.clone()).await.unwrap();
    // dnsmasq may take a moment to listen; the first lookup is retried by the schedule.
    let replies = smtp_send(
        engine.smtp_addr,
        "s@tx.test",
        &["a@rx.test", "b@nowhere.test"],
        b"Subject: dns\r\n\r\nhi\r\n",
    )
    .await;
    assert!(replies[0].starts_with("250 "), "{replies:?}");

    let e = w.wait_event(T, is("delivered", "a@rx.test")).await;
    assert_eq!(e["mx"], "mx1.rx.test");
    assert_eq!(rx.received()[0].rcpts, vec!["a@rx.test"]);
    let e = w.wait_event(T, is("bounced", "b@nowhere.test")).await;
    assert_eq!(e["enhanced"], "5.1.2", "{e}");
    engine.shutdown().await;
}

/// A dnsmasq argument serving a TXT record, split into strings of 255 octets at most (a
/// DKIM key is longer).
pub fn txt_record(name: &str, value: &str) -> String {
    let parts: Vec<&str> = value
        .as_bytes()
        .chunks(255)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("--txt-record={name},{}", parts.join(","))
}
