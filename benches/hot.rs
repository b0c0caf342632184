//! The hot pure functions: what runs per command, per reply and per message.
//! `cargo bench --bench hot`; figures in docs/benchmarks.md.

use criterion::{Criterion, criterion_group, criterion_main};
use knock::policy::classify::Classifier;
use knock::policy::schedule::Schedule;
use knock::policy::shaping::{Limits, Report, Shaping, Tuning};
use knock::reply::Reply;
use knock::time::Timestamp;
use std::hint::black_box;
use std::time::Duration;

fn smtp(c: &mut Criterion) {
    let commands: [&[u8]; 4] = [
        b"MAIL FROM:<sender@example.com> SIZE=5120 BODY=8BITMIME\r\n",
        b"RCPT TO:<recipient@example.org>\r\n",
        b"EHLO client.example.net\r\n",
        b"DATA\r\n",
    ];
    c.bench_function("smtp: parse a command line", |b| {
        b.iter(|| {
            for line in commands {
                let _ = black_box(smtp_proto::Request::parse(&mut black_box(line).iter()));
            }
        })
    });
    let replies: [&[u8]; 3] = [
        b"250 2.0.0 Ok: queued as 4Xyz\r\n",
        b"450 4.2.0 <a@b.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/b.test.html\r\n",
        b"421-4.7.28 Gmail has detected an unusual rate of mail originating\r\n421 4.7.28 from your IP address.\r\n",
    ];
    c.bench_function("smtp: parse a reply", |b| {
        b.iter(|| {
            for r in replies {
                let _ = black_box(Reply::parse(black_box(r)));
            }
        })
    });
    let body = knock::tools::bench::make_message("a@b.test", "c@d.test", 5 * 1024, 1);
    let mut out = Vec::with_capacity(6 * 1024);
    c.bench_function("smtp: dot-stuff a 5 KiB message", |b| {
        b.iter(|| {
            out.clear();
            knock::net::smtp::dot_stuff(black_box(&body), &mut out);
        })
    });
}

fn classify(c: &mut Criterion) {
    let classifier = Classifier::default();
    let lines = [
        "250 2.0.0 Ok",
        "450 4.2.0 <a@b.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/b.test.html",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
        "550 5.1.1 The email account that you tried to reach does not exist.",
        "451 Temporary local problem - please try later",
    ];
    let replies: Vec<Reply> = lines
        .iter()
        .map(|l| Reply::parse(format!("{l}\r\n").as_bytes()).unwrap())
        .collect();
    c.bench_function("classify: five replies", |b| {
        b.iter(|| {
            for r in &replies {
                black_box(classifier.reply(black_box(r)));
            }
        })
    });
}

fn schedule(c: &mut Criterion) {
    let s = Schedule::new(
        vec![Duration::from_secs(300), Duration::from_secs(900)],
        Duration::from_secs(72 * 3600),
        0.1,
    );
    let t0 = Timestamp(1_700_000_000_000);
    c.bench_function("schedule: next attempt", |b| {
        b.iter(|| {
            black_box(s.next(
                black_box(t0),
                black_box(t0 + Duration::from_secs(60)),
                2,
                0.5,
            ))
        })
    });
}

fn shaping(c: &mut Criterion) {
    let limits = Limits {
        rate: Some("100000/s".parse().unwrap()),
        max_connections: 10,
        initial_connections: 1,
        messages_per_connection: 100,
    };
    let mut now = Timestamp(1_700_000_000_000);
    let mut s = Shaping::new(limits, Tuning::default(), now);
    let report = Report {
        accepted: 1,
        connected: true,
        latency: Some(Duration::from_millis(3)),
        ..Default::default()
    };
    c.bench_function("shaping: admit and report one delivery", |b| {
        b.iter(|| {
            now += Duration::from_millis(1);
            let _ = black_box(s.admit(now, 0, true));
            s.report(now, black_box(&report));
        })
    });
}

criterion_group!(benches, smtp, classify, schedule, shaping);
criterion_main!(benches);
