//! The scheduler core's cost per input as the queue grows: one message queued, delivered
//! and reported (four inputs), and one clock tick, with 1,000 to 1,000,000 groups waiting.
//! `cargo bench --bench core`; figures in docs/benchmarks.md.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use knock::config::Config;
use knock::engine::scheduler::{Delivery, Effect, Input, Policy, Queued, Scheduler};
use knock::engine::spool::Waiting;
use knock::message::{Envelope, Group, Recipient, State};
use knock::outcome::Observed;
use knock::policy::react::{Seen, Where};
use knock::reply::Reply;
use knock::time::Timestamp;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const T0: Timestamp = Timestamp(1_800_000_000_000);

/// A scheduler with `n` deferred groups over 10,000 domains, due over the next day.
fn with_waiting(n: usize) -> Scheduler {
    let mut policy = Policy::from_config(&Config::default()).unwrap();
    policy.seed = Some(1);
    let mut core = Scheduler::new(policy);
    let groups: Vec<Queued> = (0..n)
        .map(|i| {
            Queued::from(Waiting {
                id: uuid::Uuid::from_u128(i as u128 + 1),
                domain: format!("d{}.test", i % 10_000),
                received_at: T0,
                null_sender: false,
                pending: 1,
                deferred: 1,
                next_attempt: T0 + Duration::from_secs(60 + (i as u64 * 86_400) / n as u64),
                mailbox: Some(i as u64),
                not_before: None,
                stream: None,
            })
        })
        .collect();
    let _ = core.handle(Input::Queued(groups), T0);
    core
}

fn new_message(i: u128) -> Queued {
    let envelope = Envelope {
        id: uuid::Uuid::from_u128(u128::MAX - i),
        from: "s@x.test".into(),
        received_at: T0,
        size: 5,
        source: "bench".into(),
        stream: None,
        done_at: None,
        params: Default::default(),
    };
    let group = Group {
        domain: "gmail.com".into(),
        recipients: vec![Recipient::new(format!("u{i}@gmail.com"), State::Queued)],
        next_attempt: Some(T0),
    };
    Queued::held(Arc::new(envelope), group, Some(Bytes::from_static(b"x"))).unwrap()
}

fn cycle(c: &mut Criterion) {
    let ok = Reply::parse(b"250 2.0.0 Ok: queued as 1\r\n").unwrap();
    let mut group = c.benchmark_group("scheduler: queue, start, deliver, report one message");
    for n in [0, 1_000, 100_000, 1_000_000] {
        let mut core = with_waiting(n);
        let mut i = 0u128;
        let now = T0 + Duration::from_secs(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let effects = core.handle(Input::Queued(vec![new_message(i)]), now);
                for e in effects {
                    let (worker, job) = match e {
                        Effect::Start { worker, job } | Effect::Assign { worker, job } => {
                            (worker, job)
                        }
                        _ => continue,
                    };
                    let delivery = Delivery {
                        worker,
                        destination: job.destination,
                        source: job.source,
                        held: job.held.unwrap(),
                        started: now,
                        results: vec![(Observed::Reply(ok.clone()), Where::default())],
                        seen: Seen {
                            connected: true,
                            ..Default::default()
                        },
                    };
                    black_box(core.handle(Input::Delivered(Box::new(delivery)), now));
                    black_box(core.handle(Input::Idle { worker }, now));
                }
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("scheduler: a tick with nothing due");
    for n in [0, 1_000, 100_000, 1_000_000] {
        let mut core = with_waiting(n);
        let now = T0 + Duration::from_secs(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(core.handle(Input::Tick, now)))
        });
    }
    group.finish();
}

criterion_group!(benches, cycle);
criterion_main!(benches);
