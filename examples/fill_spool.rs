//! Fills a spool with deferred messages, for the queue-scale benchmark
//! (`scripts/bench-queue`, docs/benchmarks.md): each has one recipient at one of
//! `domains` domains, one greylisting attempt on record, and its next attempt a day away.
//!
//! ```sh
//! cargo run --release --example fill_spool -- DIR COUNT [DOMAINS] [BODY_BYTES]
//! ```

use knock::engine::spool::{Op, RedbSpool, Spool};
use knock::message::{Attempt, Envelope, Group, NewMessage, Recipient, State, new_id};
use knock::outcome::Class;
use knock::reply::Enhanced;
use knock::time::Timestamp;
use std::time::{Duration, Instant};

const BATCH: usize = 5_000;

fn message(n: usize, domains: usize, body: &bytes::Bytes, now: Timestamp) -> NewMessage {
    let domain = format!("d{}.test", n % domains);
    let address = format!("user{n}@{domain}");
    let received_at = Timestamp(now.millis() - 3_600_000);
    let attempt = Attempt {
        at: Timestamp(now.millis() - 3_000_000),
        mx: Some(format!("mx.{domain}")),
        source: None,
        local_ip: Some("192.0.2.10".into()),
        code: Some(450),
        enhanced: Some(Enhanced::new(4, 2, 0)),
        text: format!("<{address}>: Recipient address rejected: Greylisted, try again later"),
        class: Some(Class::Greylist),
        failure: None,
        tls: None,
        down: false,
        tried: Vec::new(),
    };
    NewMessage {
        envelope: Envelope {
            id: new_id(),
            from: "sender@knock.test".into(),
            received_at,
            size: body.len() as u64,
            source: "smtp 127.0.0.1:40000".into(),
            stream: None,
            done_at: None,
            params: Default::default(),
        },
        groups: vec![Group {
            domain,
            recipients: vec![Recipient {
                attempts: vec![attempt],
                ..Recipient::new(address, State::Deferred)
            }],
            next_attempt: Some(now + Duration::from_secs(86_400)),
        }],
        body: body.clone(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, count, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: fill_spool DIR COUNT [DOMAINS] [BODY_BYTES]");
    };
    let count: usize = count.parse()?;
    let domains: usize = rest.first().map(|d| d.parse()).transpose()?.unwrap_or(100);
    let size: usize = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let mut body = b"Subject: queued\r\n\r\n".to_vec();
    body.resize(size.max(body.len()), b'x');
    let body = bytes::Bytes::from(body);
    let spool = RedbSpool::open(std::path::Path::new(dir))?;
    let started = Instant::now();
    let now = Timestamp::now();
    let mut n = 0;
    while n < count {
        let ops = (n..(n + BATCH).min(count))
            .map(|i| Op::Store(message(i, domains, &body, now)))
            .collect::<Vec<_>>();
        n += ops.len();
        spool.commit(ops).await?;
    }
    eprintln!(
        "stored {count} deferred messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
