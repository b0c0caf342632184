//! The scheduler driven input by input on virtual time: no sockets, no sleeps, no clock.

use super::*;
use crate::control::{Ending, Selector, Steer, Suspension, Target};
use crate::message::{Recipient, State};
use crate::outcome::{Failure, FailureKind};
use crate::policy::provider::ProviderDef;
use crate::reply::Reply;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const T0: Timestamp = Timestamp(1_800_000_000_000);

/// A scheduler on virtual time, and what it asked for.
struct Harness {
    core: Scheduler,
    now: Timestamp,
}

/// `a.test` and `b.test` belong to providers `pa` and `pb`; every other domain is looked up.
fn policy(configure: impl FnOnce(&mut Config)) -> Policy {
    let mut config = Config::default();
    config.retry.schedule = vec![5 * MIN, 15 * MIN, 30 * MIN];
    config.retry.max_age = 72 * 60 * MIN;
    config.retry.jitter = 0.0;
    config.delivery.max_connections = 3;
    // The slow start has its own test; the others start at full width.
    config.delivery.initial_connections = 3;
    for (name, domain) in [("pa", "a.test"), ("pb", "b.test")] {
        config.providers.push(ProviderDef {
            name: name.into(),
            domains: vec![domain.into()],
            mx: vec![],
        });
    }
    configure(&mut config);
    let mut policy = Policy::from_config(&config).unwrap();
    policy.seed = Some(7);
    policy
}

impl Harness {
    fn new(policy: Policy) -> Harness {
        Harness {
            core: Scheduler::new(policy),
            now: T0,
        }
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        self.core.handle(input, self.now)
    }

    /// A new message from `s@x.test` to `rcpts` (all of one domain), with its body.
    fn queue(&mut self, n: u128, rcpts: &[&str]) -> Vec<Effect> {
        let q = message(n, rcpts, self.now);
        self.input(Input::Queued(vec![q]))
    }

    /// Moves the clock forward by `by`, ticking whenever the scheduler asked to be woken.
    fn advance(&mut self, by: Duration) -> Vec<Effect> {
        let end = self.now + by;
        let mut effects = Vec::new();
        while let Some(wake) = self.core.next_wake().filter(|w| *w <= end) {
            self.now = self.now.max(wake);
            effects.extend(self.input(Input::Tick));
        }
        self.now = end;
        effects
    }

    /// A worker's report of `job`: one reply per pending recipient (or one for all), then
    /// its request for the next job.
    fn report(&mut self, worker: WorkerId, job: Job, replies: &[&str]) -> Vec<Effect> {
        let held = job.held.expect("tests keep groups held");
        let pending = held.group.pending().count();
        let results = (0..pending)
            .map(|i| {
                let line = replies[i.min(replies.len() - 1)];
                let reply = Reply::parse(format!("{line}\r\n").as_bytes()).unwrap();
                (Observed::Reply(reply), Where::default())
            })
            .collect();
        self.delivered(worker, (job.destination, job.source), held, results, true)
    }

    fn delivered(
        &mut self,
        worker: WorkerId,
        (destination, source): (Arc<str>, crate::policy::egress::SourceIx),
        held: Held,
        results: Vec<(Observed, Where)>,
        connected: bool,
    ) -> Vec<Effect> {
        let delivery = Delivery {
            worker,
            destination,
            source,
            held,
            started: self.now,
            results,
            seen: Seen {
                connected,
                unreachable: !connected,
                latency: None,
                carried: 0,
            },
        };
        let mut effects = self.input(Input::Delivered(Box::new(delivery)));
        effects.extend(self.input(Input::Idle { worker }));
        effects
    }

    /// Reports `job` refused at connect: every MX down.
    fn unreachable(&mut self, worker: WorkerId, job: Job) -> Vec<Effect> {
        let held = job.held.expect("held");
        let failure = Failure::new(FailureKind::ConnectFailed, "connection refused");
        let results = held
            .group
            .pending()
            .map(|_| (Observed::from(failure.clone()), Where::default()))
            .collect();
        self.delivered(worker, (job.destination, job.source), held, results, false)
    }
}

fn message(n: u128, rcpts: &[&str], now: Timestamp) -> Queued {
    let domain = rcpts[0].split('@').nth(1).unwrap().to_string();
    let envelope = Envelope {
        id: uuid::Uuid::from_u128(n),
        from: "s@x.test".into(),
        received_at: now,
        size: 5,
        source: "test".into(),
        stream: None,
        done_at: None,
        params: Default::default(),
    };
    let group = Group {
        domain,
        recipients: rcpts
            .iter()
            .map(|r| Recipient::new(r.to_string(), State::Queued))
            .collect(),
        next_attempt: Some(now),
    };
    Queued::held(
        Arc::new(envelope),
        group,
        Some(Bytes::from_static(b"hello")),
    )
    .unwrap()
}

/// The jobs handed out (started or assigned), with their workers.
fn jobs(effects: Vec<Effect>) -> Vec<(WorkerId, Job)> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Start { worker, job } | Effect::Assign { worker, job } => Some((worker, job)),
            _ => None,
        })
        .collect()
}

fn persists(effects: &[Effect]) -> Vec<&Persist> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(p) => Some(&**p),
            _ => None,
        })
        .collect()
}

/// The one job among `effects`.
fn one_job(effects: Vec<Effect>) -> (WorkerId, Job) {
    let mut jobs = jobs(effects);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs.pop().unwrap()
}

fn dismissed(effects: &[Effect]) -> Vec<WorkerId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dismiss { worker } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// The single event of a persist, and when its recipient is due next.
fn deferred_until(effects: &[Effect]) -> Timestamp {
    let p = persists(effects);
    let event = &p[0].updated.events[0];
    assert_eq!(event.event, crate::event::Kind::Deferred, "{event:?}");
    event.next_attempt.unwrap()
}

#[test]
fn a_new_message_starts_at_once_and_a_delivery_is_persisted_with_its_event() {
    let mut h = Harness::new(policy(|_| {}));
    let (worker, job) = one_job(h.queue(1, &["u@a.test"]));
    assert_eq!(&*job.destination, "pa");
    assert!(
        job.held.as_ref().unwrap().body.is_some(),
        "the body goes along"
    );
    h.now += Duration::from_millis(30);
    let effects = h.report(worker, job, &["250 2.0.0 Ok"]);
    let p = persists(&effects);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].pending, None, "done: nothing to acknowledge");
    let e = &p[0].updated.events[0];
    assert_eq!(e.event, crate::event::Kind::Delivered);
    assert_eq!(e.ee_seconds, Some(0.03));
    assert_eq!(e.provider.as_deref(), Some("pa"));
    assert!(h.core.is_empty());
    // Nothing else to do: the worker keeps its connection for the next message a moment.
    assert!(dismissed(&effects).is_empty());
    let later = h.advance(3 * SEC);
    assert_eq!(dismissed(&later), vec![worker]);
    assert_eq!(h.core.workers(), 0);
}

#[test]
fn greylisting_waits_the_stated_then_learned_then_configured_window() {
    let mut h = Harness::new(policy(|c| c.greylist.window = 4 * MIN));
    // Configured: the reply states nothing and nothing is learned.
    let (w, job) = one_job(h.queue(1, &["u@a.test"]));
    let effects = h.report(w, job, &["450 4.2.0 Greylisted, see http://postgrey/help"]);
    let due = deferred_until(&effects);
    assert_eq!(due, T0 + react::greylist_wait(4 * MIN));
    // Nothing starts before then: the receiver's clock must not be reset.
    assert!(jobs(h.advance(due.since(h.now) - SEC)).is_empty());
    let (w, job) = one_job(h.advance(SEC));
    h.now += 10 * SEC;
    h.report(w, job, &["250 2.0.0 Ok"]);
    // Learned: it cleared after 4m22s, within the floor (1 min) and the first step (5 min).
    let learned = h.core.destination_views(h.now)[0].greylist_delay_seconds;
    assert_eq!(learned, Some(react::greylist_wait(4 * MIN).as_secs() + 10));
    let start = h.now;
    let (w, job) = one_job(h.queue(2, &["v@a.test"]));
    let effects = h.report(w, job, &["450 4.2.0 Greylisted, see http://postgrey/help"]);
    let wait = Duration::from_secs(learned.unwrap());
    assert_eq!(deferred_until(&effects), start + react::greylist_wait(wait));
    // Stated: the reply's own words win.
    let start = h.now;
    let (w, job) = one_job(h.queue(3, &["x@a.test"]));
    let effects = h.report(
        w,
        job,
        &["451 4.7.1 Greylisted, please try again in 90 seconds"],
    );
    assert_eq!(
        deferred_until(&effects),
        start + react::greylist_wait(90 * SEC)
    );
}

#[test]
fn a_static_rate_spaces_the_starts() {
    let mut h = Harness::new(policy(|c| {
        c.shaping.insert(
            "pa".into(),
            crate::config::ShapingConfig {
                rate: Some("10/s".parse().unwrap()),
                max_connections: Some(100),
                ..Default::default()
            },
        );
        c.delivery.initial_connections = 100;
    }));
    let mut starts = Vec::new();
    let mut all = Vec::new();
    for n in 0..30 {
        all.extend(h.queue(n, &[&format!("u{n}@a.test")]));
    }
    starts.extend(jobs(all).into_iter().map(|_| h.now));
    for _ in 0..40 {
        let effects = h.advance(Duration::from_millis(100));
        starts.extend(jobs(effects).into_iter().map(|_| h.now));
    }
    assert_eq!(starts.len(), 30);
    let spread = starts[29].since(starts[0]);
    assert!(
        (2800..=3000).contains(&spread.as_millis()),
        "30 starts at 10/s over {spread:?}"
    );
}

#[test]
fn a_throttle_requeues_without_a_step_and_holds_the_destination_for_one_probe() {
    let mut h = Harness::new(policy(|_| {}));
    let mut handed = Vec::new();
    for n in 0..3 {
        handed.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
    }
    assert_eq!(handed.len(), 3, "three connections");
    for n in 100..140 {
        let (w, job) = handed.remove(0);
        h.now += Duration::from_millis(50);
        handed.extend(jobs(h.queue(n, &[&format!("r{n}@a.test")])));
        handed.extend(jobs(h.report(w, job, &["250 2.0.0 Ok"])));
    }
    let (w, job) = handed.remove(0);
    let id = job.id;
    let refused_at = h.now;
    let effects = h.report(
        w,
        job,
        &["421 4.7.0 mx Error: too much mail from 192.0.2.1"],
    );
    let p = persists(&effects);
    let event = &p[0].updated.events[0];
    assert_eq!(event.class, Some(crate::outcome::Class::Throttle));
    assert_eq!(
        event.next_attempt,
        Some(refused_at + SEC),
        "no backoff step; the event says when the destination's probe goes"
    );
    let view = &h.core.destination_views(h.now)[0];
    assert_eq!(view.shaping.connections, 1, "one connection while probing");
    assert!(view.shaping.allowance.probing_since.is_some());
    // In flight when knock reacted: their reports change nothing.
    let mut later = Vec::new();
    for (w, job) in handed {
        later.extend(jobs(h.report(w, job, &["250 2.0.0 Ok"])));
    }
    later.extend(jobs(h.advance(SEC - Duration::from_millis(1))));
    assert!(later.is_empty(), "nothing before the probe: {later:?}");
    let probe = jobs(h.advance(Duration::from_millis(1)));
    assert_eq!(probe.len(), 1, "one probe");
    assert!(jobs(h.advance(10 * SEC)).is_empty(), "nothing beside it");
    // Accepted: the window is learned and mail flows again.
    let (w, job) = probe.into_iter().next().unwrap();
    assert_eq!(job.id, id, "the throttled group went first");
    let mut flowing = jobs(h.report(w, job, &["250 2.0.0 Ok"]));
    for n in 200..203 {
        flowing.extend(jobs(h.queue(n, &[&format!("s{n}@a.test")])));
    }
    // As soon as the learned window lets the next one go (it counts what was accepted
    // before the refusal).
    flowing.extend(jobs(h.advance(5 * SEC)));
    assert!(!flowing.is_empty());
    let view = &h.core.destination_views(h.now)[0];
    assert_eq!(view.shaping.allowance.windows.len(), 1, "{view:?}");
}

#[test]
fn an_outage_probes_one_at_a_time_and_waits_longer_the_longer_it_lasts() {
    let mut h = Harness::new(policy(|c| {
        c.adapt.outage_backoff = 5 * SEC;
        c.adapt.outage_backoff_max = 120 * SEC;
    }));
    let mut handed = Vec::new();
    for n in 0..10 {
        handed.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
    }
    assert_eq!(handed.len(), 3);
    let mut after = Vec::new();
    for (w, job) in handed.drain(..) {
        after.extend(h.unreachable(w, job));
    }
    assert!(jobs(after).is_empty(), "the destination as a whole waits");
    // Probes at 5, 10, 15 and 20 s (the shortest wait), then a third of the time down.
    let mut probes_at = Vec::new();
    while h.now < T0 + 60 * SEC {
        let mut probes = jobs(h.advance(Duration::from_millis(100)));
        if let Some((w, job)) = probes.pop() {
            assert!(probes.is_empty(), "one probe at a time");
            probes_at.push(h.now.since(T0).as_millis() / 100);
            assert!(jobs(h.unreachable(w, job)).is_empty());
        }
    }
    assert_eq!(probes_at, [50, 100, 150, 200, 267, 356, 475]);
    let (w, job) = one_job(h.advance(20 * SEC));
    let flowing = jobs(h.report(w, job, &["250 2.0.0 Ok"]));
    assert_eq!(
        flowing.len(),
        3,
        "flow resumes at once, on every connection"
    );
    assert!(
        h.core.destination_views(h.now)[0]
            .shaping
            .outage_since
            .is_none()
    );
}

#[test]
fn the_retry_schedule_then_expiry_with_a_dsn() {
    let mut h = Harness::new(policy(|c| {
        c.retry.schedule = vec![10 * MIN, 20 * MIN];
        c.retry.max_age = 45 * MIN;
    }));
    let (w, job) = one_job(h.queue(1, &["u@a.test"]));
    let effects = h.report(w, job, &["452 4.2.2 Mailbox full"]);
    assert_eq!(deferred_until(&effects), T0 + 10 * MIN);
    let (w, job) = one_job(h.advance(10 * MIN));
    let effects = h.report(w, job, &["452 4.2.2 Mailbox full"]);
    assert_eq!(deferred_until(&effects), T0 + 30 * MIN);
    let (w, job) = one_job(h.advance(20 * MIN));
    let effects = h.report(w, job, &["452 4.2.2 Mailbox full"]);
    // The last step would pass the deadline: the last try falls on it.
    assert_eq!(deferred_until(&effects), T0 + 45 * MIN);
    let (w, job) = one_job(h.advance(15 * MIN));
    let effects = h.report(w, job, &["452 4.2.2 Mailbox full"]);
    let p = persists(&effects);
    assert_eq!(p[0].updated.events[0].event, crate::event::Kind::Expired);
    assert_eq!(p[0].updated.reports.len(), 1, "the sender hears of it");
    assert!(h.core.is_empty());
}

#[test]
fn a_group_waiting_past_its_lifetime_in_a_paused_destination_expires_without_an_attempt() {
    let mut h = Harness::new(policy(|c| {
        c.retry.max_age = 10 * MIN;
        c.adapt.outage_backoff = 30 * MIN;
        c.adapt.outage_backoff_max = 30 * MIN;
        c.delivery.max_connections = 1;
    }));
    let (w, job) = one_job(h.queue(1, &["u@a.test"]));
    h.queue(2, &["v@a.test"]);
    h.unreachable(w, job);
    let effects = h.advance(11 * MIN);
    assert!(jobs(h.advance(SEC)).is_empty(), "no attempt while paused");
    let p = persists(&effects);
    let mut expired: Vec<(&str, Option<u32>)> = p
        .iter()
        .flat_map(|p| &p.updated.events)
        .inspect(|e| assert_eq!(e.event, crate::event::Kind::Expired))
        .map(|e| (e.recipient.as_str(), e.attempt))
        .collect();
    expired.sort();
    // u was tried once before the outage, v never: neither is tried to expire.
    assert_eq!(expired, [("u@a.test", Some(1)), ("v@a.test", Some(0))]);
    assert!(h.core.is_empty());
}

#[test]
fn a_busy_destination_does_not_hold_up_another() {
    let mut h = Harness::new(policy(|c| {
        c.shaping.insert(
            "pa".into(),
            crate::config::ShapingConfig {
                rate: Some("1/s".parse().unwrap()),
                ..Default::default()
            },
        );
    }));
    let groups = (0..10_000)
        .map(|n| message(n, &[&format!("u{n}@a.test")], h.now))
        .collect();
    assert_eq!(jobs(h.input(Input::Queued(groups))).len(), 1, "pa at 1/s");
    let (_, job) = one_job(h.queue(20_000, &["w@b.test"]));
    assert_eq!(&*job.destination, "pb", "pb goes at once");
    let views = h.core.destination_views(h.now);
    assert_eq!(views[0].ready, 9_999);
}

#[test]
fn far_back_in_a_ready_queue_groups_are_not_kept_in_memory() {
    let mut p = policy(|c| c.delivery.max_connections = 1);
    p.ready_hot = 10;
    let mut h = Harness::new(p);
    let messages: Vec<Queued> = (0..100)
        .map(|n| message(n, &[&format!("u{n}@a.test")], h.now))
        .collect();
    let mut next = jobs(h.input(Input::Queued(messages.clone())));
    let in_memory = h.core.entries.values().filter(|e| e.held.is_some()).count();
    assert_eq!(
        in_memory, 9,
        "the first ten of the queue, one of them with its worker"
    );
    let mut with_message = 0;
    for _ in 0..100 {
        let (w, mut job) = next.pop().expect("one worker, always busy");
        with_message += usize::from(job.held.is_some());
        // What a worker reads back from the spool when the job comes without it.
        job.held
            .get_or_insert_with(|| messages[job.id.as_u128() as usize].held.clone().unwrap());
        next = jobs(h.report(w, job, &["250 2.0.0 Ok"]));
    }
    assert_eq!(with_message, 10);
    assert!(h.core.is_empty());
}

#[test]
fn shutdown_starts_nothing_and_every_group_comes_back() {
    let mut h = Harness::new(policy(|_| {}));
    let mut handed = Vec::new();
    for n in 0..5 {
        handed.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
    }
    assert_eq!(handed.len(), 3);
    assert_eq!(h.core.in_flight(), 3);
    let effects = h.input(Input::Shutdown);
    assert!(jobs(effects).is_empty());
    assert_eq!(h.core.next_wake(), None, "no more ticks");
    // One reports, one is abandoned (its task was cancelled), one's worker dies.
    let (w1, j1) = handed.remove(0);
    let effects = h.report(w1, j1, &["451 4.3.0 try later"]);
    assert_eq!(persists(&effects).len(), 1, "its outcome is still written");
    assert_eq!(dismissed(&effects), vec![w1]);
    let (w2, j2) = handed.remove(0);
    h.input(Input::Returned {
        worker: w2,
        job: j2,
        why: Return::Abandoned,
    });
    h.input(Input::WorkerGone { worker: w2 });
    let (w3, _) = handed.remove(0);
    h.input(Input::WorkerGone { worker: w3 });
    assert_eq!(h.core.workers(), 0);
    assert_eq!(h.core.in_flight(), 0, "every group came back");
    assert_eq!(h.core.len(), 5, "and stays queued (the spool has it)");
}

#[test]
fn a_worker_lost_mid_delivery_frees_its_slot_and_its_group_goes_again() {
    let mut h = Harness::new(policy(|c| c.delivery.max_connections = 1));
    let (w, job) = one_job(h.queue(1, &["u@a.test"]));
    h.queue(2, &["v@a.test"]);
    // The worker panics: its guards hand the job back and free the slot.
    h.input(Input::Returned {
        worker: w,
        job,
        why: Return::Abandoned,
    });
    let (w2, job2) = one_job(h.input(Input::WorkerGone { worker: w }));
    assert_eq!(job2.id, uuid::Uuid::from_u128(2), "the slot is free again");
    let retried = jobs(h.report(w2, job2, &["250 2.0.0 Ok"]));
    let retried: Vec<_> = retried
        .into_iter()
        .chain(jobs(h.advance(2 * SEC)))
        .collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        retried[0].1.id,
        uuid::Uuid::from_u128(1),
        "the lost group goes again"
    );
    assert!(retried[0].1.held.is_some(), "with what the worker held");
}

#[test]
fn providers_are_looked_up_once_per_domain() {
    let mut h = Harness::new(policy(|_| {}));
    let effects = h.queue(1, &["u@c.test"]);
    h.queue(2, &["v@c.test"]);
    let lookups: Vec<_> = effects
        .iter()
        .filter(|e| matches!(e, Effect::LookUp { .. }))
        .collect();
    assert_eq!(lookups.len(), 1);
    let started = jobs(h.input(Input::MxHosts {
        domain: "c.test".into(),
        hosts: vec!["mx1.hoster.test".into()],
    }));
    assert_eq!(started.len(), 2);
    assert!(
        started
            .iter()
            .all(|(_, j)| &*j.destination == "mx1.hoster.test")
    );
}

#[test]
fn a_throttle_before_anything_was_accepted_still_pauses() {
    let mut h = Harness::new(policy(|_| {}));
    let (w, job) = one_job(h.queue(1, &["u@a.test"]));
    let effects = h.report(
        w,
        job,
        &["421 4.7.0 mx Error: too much mail from 192.0.2.1"],
    );
    assert!(
        jobs(effects).is_empty(),
        "not straight back at the receiver"
    );
    // The first probe goes a second after the refusal.
    assert!(jobs(h.advance(SEC - Duration::from_millis(1))).is_empty());
    assert_eq!(jobs(h.advance(Duration::from_millis(1))).len(), 1);
}

#[test]
fn a_probe_whose_group_cannot_be_read_lets_another_go() {
    let mut h = Harness::new(policy(|c| {
        c.delivery.max_connections = 1;
        c.adapt.outage_backoff = 30 * SEC;
    }));
    let mut handed = jobs(h.queue(1, &["u@a.test"]));
    h.queue(2, &["v@a.test"]);
    h.queue(3, &["x@a.test"]);
    let (w, job) = handed.pop().unwrap();
    h.unreachable(w, job);
    let (w, probe) = one_job(h.advance(30 * SEC));
    // Its worker cannot read it from the spool (say, while the spool reopens).
    h.input(Input::Unreadable {
        worker: Some(w),
        id: probe.id,
        domain: probe.domain.to_string(),
    });
    let next = jobs(h.input(Input::Idle { worker: w }));
    let next = match next.is_empty() {
        true => jobs(h.advance(SEC)),
        false => next,
    };
    assert_eq!(next.len(), 1, "another probe goes out");
    assert_ne!(next[0].1.id, probe.id);
}

#[test]
fn idle_connections_close_while_mail_waits_behind_a_pause() {
    let mut h = Harness::new(policy(|c| c.delivery.max_connections = 2));
    let mut handed = jobs(h.queue(1, &["u@a.test"]));
    handed.extend(jobs(h.queue(2, &["v@a.test"])));
    let (w1, j1) = handed.remove(0);
    let (w2, j2) = handed.remove(0);
    h.report(w1, j1, &["250 2.0.0 Ok"]);
    h.unreachable(w2, j2);
    h.queue(3, &["x@a.test"]);
    let effects = h.advance(3 * SEC);
    assert_eq!(
        dismissed(&effects),
        vec![w1],
        "kept 2 s for the next message, no longer"
    );
}

#[test]
fn a_domain_dns_cannot_place_is_looked_up_again_soon() {
    let mut h = Harness::new(policy(|_| {}));
    h.queue(1, &["u@c.test"]);
    let (w, job) = one_job(h.input(Input::MxHosts {
        domain: "c.test".into(),
        hosts: vec![],
    }));
    h.report(w, job, &["250 2.0.0 Ok"]);
    h.advance(61 * SEC);
    let effects = h.queue(2, &["v@c.test"]);
    assert!(
        effects.iter().any(|e| matches!(e, Effect::LookUp { .. })),
        "looked up again: {effects:?}"
    );
}

#[test]
fn a_recipient_without_an_observation_is_deferred_not_lost() {
    let mut h = Harness::new(policy(|_| {}));
    let (w, job) = one_job(h.queue(1, &["u@a.test", "v@a.test"]));
    let held = job.held.unwrap();
    let ok = Reply::parse(b"250 2.0.0 Ok\r\n").unwrap();
    let effects = h.delivered(
        w,
        (job.destination, job.source),
        held,
        vec![(Observed::Reply(ok), Where::default())],
        true,
    );
    let p = persists(&effects);
    let events: Vec<_> = p[0]
        .updated
        .events
        .iter()
        .map(|e| (e.recipient.as_str(), e.event))
        .collect();
    assert_eq!(
        events,
        [
            ("u@a.test", crate::event::Kind::Delivered),
            ("v@a.test", crate::event::Kind::Deferred)
        ]
    );
    assert_eq!(h.core.len(), 1, "v stays queued");
}

#[test]
fn a_mailbox_over_its_own_rate_holds_its_groups_back_and_no_other() {
    let mut h = Harness::new(policy(|_| {}));
    const MAILBOX_RATE: &str = "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered";
    // Two messages to one mailbox are taken, the third is refused for the mailbox's rate.
    for n in 0..2 {
        let (w, job) = one_job(h.queue(n, &["busy@a.test"]));
        h.now += 100 * Duration::from_millis(1);
        h.report(w, job, &["250 2.0.0 Ok"]);
    }
    let (w, job) = one_job(h.queue(2, &["busy@a.test"]));
    let effects = h.report(w, job, &[MAILBOX_RATE]);
    let probe_at = deferred_until(&effects);
    assert!(
        probe_at > h.now,
        "the event says when the mailbox's probe goes"
    );
    // More mail to that mailbox waits; mail to another goes at once: the destination was
    // not slowed.
    let mut held = Vec::new();
    for n in 3..8 {
        held.extend(jobs(h.queue(n, &["busy@a.test"])));
    }
    assert!(held.is_empty(), "{held:?}");
    let (w, job) = one_job(h.queue(9, &["other@a.test"]));
    h.report(w, job, &["250 2.0.0 Ok"]);
    // At the probe's time, one goes (the refused group or a newer one), and the rest
    // waits for its report.
    let probe = jobs(h.advance(probe_at.since(h.now)));
    assert_eq!(probe.len(), 1, "one probe: {probe:?}");
    assert!(jobs(h.advance(SEC / 2)).is_empty(), "nothing beside it");
    // Accepted: the mailbox's window is known; more goes, but not all at once.
    let (w, job) = probe.into_iter().next().unwrap();
    let mut after = jobs(h.report(w, job, &["250 2.0.0 Ok"]));
    after.extend(jobs(h.advance(SEC)));
    assert!(after.len() < 5, "the window holds: {}", after.len());
}

#[test]
fn a_mailbox_probe_that_says_nothing_of_the_rate_lets_another_go() {
    let mut h = Harness::new(policy(|_| {}));
    const MAILBOX_RATE: &str = "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered";
    let (w, job) = one_job(h.queue(0, &["busy@a.test"]));
    h.now += 100 * Duration::from_millis(1);
    h.report(w, job, &["250 2.0.0 Ok"]);
    let (w, job) = one_job(h.queue(1, &["busy@a.test"]));
    let probe_at = deferred_until(&h.report(w, job, &[MAILBOX_RATE]));
    for n in 2..5 {
        assert!(jobs(h.queue(n, &["busy@a.test"])).is_empty());
    }
    let probe = jobs(h.advance(probe_at.since(h.now)));
    assert_eq!(probe.len(), 1, "{probe:?}");
    // The probe is greylisted: it taught nothing about the mailbox's rate, and the groups
    // parked behind it must not wait for a report that will never come.
    let (w, job) = probe.into_iter().next().unwrap();
    let mut next = jobs(h.report(
        w,
        job,
        &["450 4.2.0 Greylisted, see https://postgrey.schweikert.ch/"],
    ));
    next.extend(jobs(h.advance(SEC)));
    assert_eq!(next.len(), 1, "another probe: {next:?}");
}

fn suspension() -> Suspension {
    Suspension {
        reason: "maintenance".into(),
        actor: "ops".into(),
        since: T0,
    }
}

#[test]
fn a_suspended_provider_sends_nothing_keeps_its_mail_and_resumes_at_its_pace() {
    let mut h = Harness::new(policy(|c| {
        c.shaping.insert(
            "pa".into(),
            crate::config::ShapingConfig {
                rate: Some("1/s".parse().unwrap()),
                ..Default::default()
            },
        );
    }));
    let s = h.core.steer(
        Steer::Suspend {
            target: Target::Provider("pa".into()),
            suspension: suspension(),
        },
        h.now,
    );
    assert_eq!(s.groups, 0);
    // New mail for the provider waits; another provider's goes.
    let mut started = jobs(h.queue(1, &["u@a.test"]));
    for n in 2..=5 {
        started.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
    }
    assert!(started.is_empty(), "{started:?}");
    assert_eq!(jobs(h.queue(9, &["u@b.test"])).len(), 1);
    assert!(jobs(h.advance(MIN)).is_empty());
    let summary = h.core.summary(h.now);
    let a = summary.iter().find(|s| s.domain == "a.test").unwrap();
    assert_eq!((a.suspended, a.next_attempt), (5, None));
    // A dry run counts; a resume lets them go at the configured rate, not at once.
    let dry = h.core.steer(
        Steer::Retry {
            selector: Selector {
                provider: Some("pa".into()),
                ..Default::default()
            },
            dry_run: true,
        },
        h.now,
    );
    assert_eq!(dry.groups, 0, "suspended mail is not retried");
    let s = h.core.steer(
        Steer::Resume {
            target: Target::Provider("pa".into()),
        },
        h.now,
    );
    assert_eq!((s.groups, s.recipients), (5, 5));
    // Each delivery reported as it starts: when each start came, in seconds after resume.
    let resumed = h.now;
    let mut starts = Vec::new();
    let mut pending = jobs(h.core.take_effects());
    while starts.len() < 5 {
        for (w, mut job) in std::mem::take(&mut pending) {
            starts.push(h.now.since(resumed).as_secs());
            // Parked, its memory copy went: the worker would read it from the spool.
            assert!(job.held.is_none());
            let n = job.id.as_u128();
            let rcpt = match n {
                1 => "u@a.test".to_string(),
                n => format!("u{n}@a.test"),
            };
            job.held = message(n, &[&rcpt], T0).held;
            pending.extend(jobs(h.report(w, job, &["250 2.0.0 Ok"])));
        }
        pending.extend(jobs(h.advance(SEC / 10)));
        assert!(h.now < resumed + MIN, "not all resumed: {starts:?}");
    }
    assert_eq!(
        starts,
        vec![0, 1, 2, 3, 4],
        "one at once, then one a second"
    );
}

#[test]
fn suspended_mail_still_expires() {
    let mut h = Harness::new(policy(|c| c.retry.max_age = 30 * MIN));
    h.core.steer(
        Steer::Suspend {
            target: Target::Domain("a.test".into()),
            suspension: suspension(),
        },
        h.now,
    );
    assert!(jobs(h.queue(1, &["u@a.test"])).is_empty());
    let effects = h.advance(40 * MIN);
    // Parked, its memory copy went (the spool has it): it is read back to expire.
    assert!(
        matches!(effects.as_slice(), [Effect::Load { domain, .. }] if domain == "a.test"),
        "{effects:?}"
    );
    let held = message(1, &["u@a.test"], T0).held.unwrap();
    let effects = h.input(Input::Loaded(held));
    let p = persists(&effects);
    assert_eq!(p.len(), 1, "{effects:?}");
    assert_eq!(p[0].updated.events[0].event, crate::event::Kind::Expired);
    assert!(h.core.is_empty());
}

#[test]
fn a_held_message_waits_and_the_others_of_its_domain_go() {
    let mut h = Harness::new(policy(|_| {}));
    h.core.steer(
        Steer::Suspend {
            target: Target::Message(uuid::Uuid::from_u128(1)),
            suspension: suspension(),
        },
        h.now,
    );
    assert!(jobs(h.queue(1, &["u@a.test"])).is_empty());
    assert_eq!(jobs(h.queue(2, &["v@a.test"])).len(), 1);
    h.core.steer(
        Steer::Resume {
            target: Target::Message(uuid::Uuid::from_u128(1)),
        },
        h.now,
    );
    let (_, job) = one_job(h.core.take_effects());
    assert_eq!(job.id, uuid::Uuid::from_u128(1));
}

#[test]
fn retry_now_goes_through_the_shaping_and_never_before_a_greylisting() {
    let mut h = Harness::new(policy(|_| {}));
    let (w, job) = one_job(h.queue(1, &["u@a.test"]));
    h.report(w, job, &["451 4.3.0 Temporary failure"]);
    let (w, job) = one_job(h.queue(2, &["v@a.test"]));
    let greylisted =
        deferred_until(&h.report(w, job, &["450 4.2.0 Greylisted, see http://postgrey/help"]));
    h.now += 10 * SEC;
    let all = Selector::default();
    let dry = h.core.steer(
        Steer::Retry {
            selector: all.clone(),
            dry_run: true,
        },
        h.now,
    );
    assert_eq!(
        (dry.groups, dry.greylisted, dry.not_before),
        (2, 1, Some(greylisted))
    );
    assert!(
        h.core.take_effects().is_empty(),
        "a dry run changes nothing"
    );
    h.core.steer(
        Steer::Retry {
            selector: all,
            dry_run: false,
        },
        h.now,
    );
    let (_, job) = one_job(h.core.take_effects());
    assert_eq!(job.id, uuid::Uuid::from_u128(1), "the greylisted one waits");
}

#[test]
fn cancel_and_bounce_end_waiting_groups_at_once_and_in_flight_ones_after_their_attempt() {
    let mut h = Harness::new(policy(|_| {}));
    let (w, job) = one_job(h.queue(1, &["u@a.test", "v@a.test"]));
    h.report(w, job, &["451 4.3.0 Temporary failure"]);
    let (_, in_flight) = one_job(h.queue(2, &["w@b.test"]));
    let dry = h.core.steer(
        Steer::End {
            selector: Selector::default(),
            how: Ending::Cancel,
            actor: "ops".into(),
            dry_run: true,
        },
        h.now,
    );
    assert_eq!((dry.groups, dry.recipients, dry.in_flight), (2, 3, 1));
    assert!(h.core.take_effects().is_empty());
    // The waiting group is cancelled at once (it is held in memory: no read).
    let s = h.core.steer(
        Steer::End {
            selector: Selector {
                domain: Some("a.test".into()),
                ..Default::default()
            },
            how: Ending::Cancel,
            actor: "ops".into(),
            dry_run: false,
        },
        h.now,
    );
    assert_eq!(s.recipients, 2);
    let effects = h.core.take_effects();
    let p = persists(&effects);
    assert_eq!(p.len(), 1);
    assert!(p[0].updated.group.is_done());
    assert!(p[0].updated.reports.is_empty(), "a cancel sends no DSN");
    let kinds: Vec<_> = p[0]
        .updated
        .events
        .iter()
        .map(|e| (e.event, e.actor.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![(crate::event::Kind::Cancelled, Some("ops".into())); 2]
    );
    // The one in flight is bounced (with a DSN) once its attempt reports a deferral.
    h.core.steer(
        Steer::End {
            selector: Selector {
                messages: vec![uuid::Uuid::from_u128(2)],
                ..Default::default()
            },
            how: Ending::Bounce { dsn: true },
            actor: "ops".into(),
            dry_run: false,
        },
        h.now,
    );
    assert!(persists(&h.core.take_effects()).is_empty());
    let effects = h.report(WorkerId(1), in_flight, &["451 4.3.0 Temporary failure"]);
    let p = persists(&effects);
    let kinds: Vec<_> = p[0].updated.events.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        vec![crate::event::Kind::Deferred, crate::event::Kind::Bounced]
    );
    assert_eq!(p[0].updated.reports.len(), 1, "the DSN's entry");
    assert!(p[0].updated.reports[0].operator);
    assert!(h.core.is_empty());
}

#[test]
fn the_shape_counts_pending_recipients_by_age_per_domain_or_provider() {
    let mut h = Harness::new(policy(|_| {}));
    let started = jobs(h.queue(1, &["a1@a.test", "a2@a.test"]));
    h.now += 7 * MIN;
    h.queue(2, &["b@b.test"]);
    h.queue(3, &["c@c.test"]);
    h.now += MIN;
    let counts = |shape: &QueueShape| -> Vec<(String, u64, Vec<u64>)> {
        shape
            .rows
            .iter()
            .map(|r| (r.name.clone(), r.total, r.counts[..3].to_vec()))
            .collect()
    };
    let by_domain = h.core.shape(ShapeBy::Domain, h.now);
    assert_eq!(
        counts(&by_domain),
        [
            ("a.test".to_string(), 2, vec![0, 2, 0]),
            ("b.test".to_string(), 1, vec![1, 0, 0]),
            ("c.test".to_string(), 1, vec![1, 0, 0]),
        ]
    );
    assert_eq!(by_domain.total.total, 4);
    assert_eq!(by_domain.total.counts[..2], [2, 2]);
    // c.test's provider is being looked up: it counts under its own name.
    let by_provider = h.core.shape(ShapeBy::Provider, h.now);
    let names: Vec<&str> = by_provider.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["pa", "c.test", "pb"]);

    let index = h.core.index();
    assert_eq!(
        index.providers.get("a.test").map(String::as_str),
        Some("pa")
    );
    assert!(!index.providers.contains_key("c.test"));
    let (_, job) = started.into_iter().next().expect("a.test was started");
    assert!(index.in_flight.contains(&(job.id, "a.test".to_string())));
    assert!(
        !index
            .in_flight
            .contains(&(uuid::Uuid::from_u128(3), "c.test".to_string()))
    );
}

#[test]
fn a_source_past_its_hourly_limit_defers_internally_and_sends_when_the_hour_turns() {
    let config = |c: &mut crate::config::Config| {
        c.sources = vec![crate::config::SourceConfig {
            ip: Some("192.0.2.7".parse().unwrap()),
            hourly: Some(3),
            ..crate::config::SourceConfig::named("new-ip")
        }];
    };
    let mut h = Harness::new(policy(config));
    // 10:59:30 UTC.
    let hour = Duration::from_secs(3600);
    h.now = Timestamp(T0.0 - T0.0 % 3_600_000) + (hour - 30 * SEC);
    let turn = h.now + 30 * SEC;
    let mut effects = Vec::new();
    for n in 0..5 {
        effects.extend(h.queue(n, &[&format!("u{n}@a.test")]));
    }
    // Three start; the fourth and fifth are held by knock itself, an event each.
    let held: usize = persists(&effects)
        .iter()
        .filter(|p| p.updated.events.iter().all(|e| e.internal))
        .count();
    assert_eq!(held, 2);
    // Each start counted is kept in the spool: the last says three.
    let kept: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::SaveSource(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(kept.len(), 3);
    let last = kept.last().unwrap().clone();
    assert_eq!((&*last.source, &*last.provider), ("new-ip", "pa"));
    assert_eq!(last.state.used[0].used, 3);
    let started = jobs(effects);
    assert_eq!(started.len(), 3, "{started:?}");
    for (w, job) in started {
        h.report(w, job, &["250 2.0.0 Ok"]);
    }
    let views = h.core.destination_views(h.now);
    assert_eq!(views[0].limits[0].used, 3);
    // Nothing more before the hour, not a single attempt.
    let before = h.advance(turn.since(h.now) - Duration::from_millis(1));
    assert!(jobs(before).is_empty());
    let after = h.advance(Duration::from_millis(1));
    assert_eq!(
        jobs(after).len(),
        2,
        "the fourth and fifth go when the hour turns"
    );
    // A restart within the hour goes on from the three kept: a fourth still waits for it.
    let mut p = policy(config);
    p.sources = vec![last];
    let mut h2 = Harness::new(p);
    h2.now = Timestamp(turn.0 - 10_000);
    assert!(jobs(h2.queue(9, &["later@a.test"])).is_empty());
    assert_eq!(h2.core.destination_views(h2.now)[0].limits[0].used, 3);
    assert_eq!(jobs(h2.advance(10 * SEC)).len(), 1);
}

#[test]
fn internal_deferrals_are_events_without_an_attempt() {
    let mut h = Harness::new(policy(|c| {
        c.sources = vec![crate::config::SourceConfig {
            hourly: Some(1),
            ..crate::config::SourceConfig::named("new-ip")
        }];
    }));
    let first = h.queue(1, &["u1@a.test"]);
    assert_eq!(jobs(first).len(), 1);
    let held = h.queue(2, &["u2@a.test", "v2@a.test"]);
    let p = persists(&held);
    assert_eq!(p.len(), 1, "{held:?}");
    let events = &p[0].updated.events;
    assert_eq!(events.len(), 2);
    for e in events {
        assert_eq!(e.event, crate::event::Kind::Deferred);
        assert!(e.internal);
        assert_eq!(e.attempt, None);
        assert_eq!(e.source.as_deref(), Some("new-ip"));
        assert_eq!(
            e.reason.as_deref(),
            Some("source new-ip reached its limit of 1/h for pa")
        );
        let turn = Timestamp(h.now.0 - h.now.0 % 3_600_000 + 3_600_000);
        assert_eq!(e.next_attempt, Some(turn));
    }
    assert!(
        p[0].updated
            .group
            .recipients
            .iter()
            .all(|r| r.attempts.is_empty()),
        "no attempt is recorded"
    );
}

#[test]
fn transactional_mail_overtakes_a_bulk_backlog_at_the_same_destination() {
    let mut h = Harness::new(policy(|c| {
        c.delivery.max_connections = 1;
        c.delivery.initial_connections = 1;
    }));
    let mut handed = Vec::new();
    for n in 0..20 {
        handed.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
    }
    assert_eq!(handed.len(), 1, "one connection");
    // A password reset arrives behind 19 bulk messages.
    let q = message_in(100, "reset@a.test", "transactional", h.now);
    assert!(jobs(h.input(Input::Queued(vec![q]))).is_empty());
    let (w, job) = handed.remove(0);
    let (_, next) = one_job(h.report(w, job, &["250 2.0.0 Ok"]));
    assert_eq!(
        next.id.as_u128(),
        100,
        "the reset goes next, not the 2nd bulk message"
    );
}

#[test]
fn a_warm_up_climbs_on_good_days_steps_back_on_bad_ones_and_keeps_its_day() {
    let config = |c: &mut Config| {
        c.sources = vec![crate::config::SourceConfig {
            hourly: Some(100),
            daily: Some(1000),
            warmup: Some(crate::config::WarmupConfig {
                hourly: 2,
                daily: 3,
                growth: 2.0,
                max_deferral_rate: 0.1,
            }),
            ..crate::config::SourceConfig::named("new-ip")
        }];
    };
    let mut h = Harness::new(policy(config));
    let day = Duration::from_secs(86_400);
    let midnight = Timestamp(T0.0 - T0.0 % 86_400_000) + day;
    h.now = midnight + Duration::from_secs(3600);
    // Day 1: 2 an hour, 3 a day. Four messages: two go, two are held by knock itself.
    let mut effects = Vec::new();
    for n in 0..4 {
        effects.extend(h.queue(n, &[&format!("u{n}@a.test")]));
    }
    let held: Vec<_> = persists(&effects)
        .iter()
        .flat_map(|p| p.updated.events.clone())
        .collect();
    assert_eq!(held.len(), 2);
    assert_eq!(
        held[0].reason.as_deref(),
        Some("source new-ip reached its warm-up limit (day 1 of its ramp) of 2/h for pa")
    );
    for (w, job) in jobs(effects) {
        h.report(w, job, &["250 2.0.0 Ok"]);
    }
    // The next hour: one more (the day's third); the fourth waits for the next day.
    let next_hour = h.advance(Duration::from_secs(3600));
    let handed = jobs(next_hour);
    assert_eq!(handed.len(), 1);
    for (w, job) in handed {
        h.report(w, job, &["250 2.0.0 Ok"]);
    }
    // Midnight: a good day (no deferrals), so day 2 (4 an hour, 6 a day), kept in the
    // spool; the fourth goes.
    let at_midnight = h.advance((midnight + day).since(h.now) + Duration::from_millis(1));
    // Kept when the day moved, and again when the fourth's start was counted.
    let saved: Vec<_> = at_midnight
        .iter()
        .filter_map(|e| match e {
            Effect::SaveSource(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 2, "{at_midnight:?}");
    for r in &saved {
        let day = r.state.warmup.as_ref().unwrap().day;
        assert_eq!((day, r.provider.as_str()), (2, "pa"));
    }
    assert_eq!(jobs(at_midnight).len(), 1);
    let view = h.core.destination_views(h.now)[0].clone();
    assert_eq!((view.limits[0].limit, view.limits[1].limit), (4, 6));
    // Day 2 goes badly: three of four deferred. The next midnight steps it back.
    let mut handed = Vec::new();
    for n in 10..14 {
        handed.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
    }
    for (i, (w, job)) in handed.into_iter().enumerate() {
        let reply = match i {
            0 => "250 2.0.0 Ok",
            _ => "451 4.7.1 Try again later",
        };
        h.report(w, job, &[reply]);
    }
    let mut next = h.advance((midnight + day * 2).since(h.now) + Duration::from_millis(1));
    // The day is judged when the destination next has something to do.
    next.extend(h.queue(20, &["later@a.test"]));
    let saved: Vec<_> = next
        .into_iter()
        .filter_map(|e| match e {
            Effect::SaveSource(r) => Some(r),
            _ => None,
        })
        .collect();
    // The last kept (the step, then starts counted after it) says day 1.
    let last = saved.last().expect("kept").clone();
    let warmup = last.state.warmup.clone().unwrap();
    assert_eq!(warmup.day, 1);
    let (step, why) = warmup.last.clone().unwrap();
    assert_eq!(step, crate::policy::warmup::Step::SteppedBack);
    assert!(why.contains("over twice"), "{why}");
    // A restart goes on from the kept day.
    let mut p = policy(config);
    p.sources = vec![last];
    let mut h2 = Harness::new(p);
    h2.now = h.now;
    jobs(h2.queue(99, &["x@a.test"]));
    assert_eq!(
        h2.core.destination_views(h2.now)[0]
            .warmup
            .as_ref()
            .unwrap()
            .day,
        1
    );
}

/// A new message of `stream` from `s@x.test` to `rcpt`.
fn message_in(n: u128, rcpt: &str, stream: &str, now: Timestamp) -> Queued {
    let mut q = message(n, &[rcpt], now);
    Arc::make_mut(&mut q.held.as_mut().unwrap().envelope).stream = Some(stream.into());
    q.waiting.stream = Some(stream.into());
    q
}

#[test]
fn a_suspended_stream_holds_its_mail_everywhere_and_no_other() {
    let mut h = Harness::new(policy(|_| {}));
    h.core.steer(
        Steer::Suspend {
            target: Target::Stream("bulk".into()),
            suspension: suspension(),
        },
        h.now,
    );
    let bulk = h.input(Input::Queued(vec![
        message_in(1, "u1@a.test", "bulk", h.now),
        message_in(2, "u2@b.test", "bulk", h.now),
    ]));
    assert!(jobs(bulk).is_empty(), "bulk waits at every destination");
    let tx = h.input(Input::Queued(vec![message_in(
        3,
        "u3@a.test",
        "transactional",
        h.now,
    )]));
    assert_eq!(jobs(tx).len(), 1, "transactional goes");
    let s = h.core.steer(
        Steer::Resume {
            target: Target::Stream("bulk".into()),
        },
        h.now,
    );
    assert_eq!(s.groups, 2);
    assert_eq!(jobs(h.core.take_effects()).len(), 2);
}

#[test]
fn mail_against_a_deadline_tries_another_source_after_a_deferral() {
    let mut h = Harness::new(policy(|c| {
        c.sources = ["a", "b"].map(crate::config::SourceConfig::named).to_vec();
        c.streams.0.insert(
            "otp".into(),
            crate::config::StreamConfig {
                deadline: Some(10 * MIN),
                retry: Some(vec![SEC]),
                ..Default::default()
            },
        );
    }));
    let mut sources = Vec::new();
    let (mut w, mut job) =
        one_job(h.input(Input::Queued(vec![message_in(1, "u@a.test", "otp", h.now)])));
    for _ in 0..4 {
        sources.push(job.source);
        h.report(w, job, &["451 4.3.0 Try again later"]);
        (w, job) = one_job(h.advance(2 * SEC));
    }
    assert_eq!(sources, [0, 1, 0, 1], "each retry from the other source");
}

#[test]
fn a_source_s_connection_cap_holds_across_providers_and_a_closed_one_lets_the_next_open() {
    let mut h = Harness::new(policy(|c| {
        c.sources = vec![crate::config::SourceConfig {
            max_connections: Some(2),
            ..crate::config::SourceConfig::named("only")
        }];
    }));
    let mut handed = Vec::new();
    for n in 0..3 {
        handed.extend(jobs(h.queue(n, &[&format!("u{n}@a.test")])));
        handed.extend(jobs(h.queue(10 + n, &[&format!("u{n}@b.test")])));
    }
    assert_eq!(
        handed.len(),
        2,
        "two connections from the source, whatever the provider"
    );
    // The destinations left waiting say why.
    let views = h.core.destination_views(h.now);
    let waiting: Vec<_> = views
        .iter()
        .filter_map(|v| v.waiting_for_connection.as_deref())
        .collect();
    assert!(!waiting.is_empty(), "{views:?}");
    assert!(
        waiting
            .iter()
            .all(|w| *w == "source only has its 2 connections open (max_connections)"),
        "{waiting:?}"
    );
    // One delivery over: its worker takes the next of its provider on its connection...
    let (w, job) = handed.remove(0);
    let next = jobs(h.report(w, job, &["250 2.0.0 Ok"]));
    assert_eq!(next.len(), 1);
    // ...and when a connection closes, a waiting destination opens one.
    let (w, _job) = handed.remove(0);
    let effects = h.input(Input::WorkerGone { worker: w });
    let opened: Vec<_> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Start { .. }))
        .collect();
    assert_eq!(opened.len(), 1, "{effects:?}");
}

#[test]
fn a_group_not_in_memory_is_read_back_to_be_deferred_internally() {
    let mut h = Harness::new(policy(|c| {
        c.sources = vec![crate::config::SourceConfig {
            hourly: Some(1),
            ..crate::config::SourceConfig::named("new-ip")
        }];
    }));
    assert_eq!(jobs(h.queue(1, &["u1@a.test"])).len(), 1);
    // A group recovered from the spool: only its entry is in memory.
    let recovered = message(2, &["u2@a.test"], h.now);
    let effects = h.input(Input::Queued(vec![Queued::from(recovered.waiting.clone())]));
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::Load { id, domain } => Some((*id, domain.clone())),
            _ => None,
        })
        .expect("read back");
    assert_eq!(load.0.as_u128(), 2);
    let effects = h.input(Input::Loaded(recovered.held.unwrap()));
    let p = persists(&effects);
    assert_eq!(p.len(), 1);
    let e = &p[0].updated.events[0];
    assert!(e.internal && e.reason.as_deref().unwrap().contains("limit of 1/h"));
    assert!(
        p[0].pending.is_some(),
        "still pending: acknowledged once on disk"
    );
    assert!(jobs(effects).is_empty());
}

#[test]
fn a_reload_that_changes_pools_keeps_the_running_ones() {
    let mut h = Harness::new(policy(|_| {}));
    let reloaded = policy(|c| {
        c.sources = ["a", "b"].map(crate::config::SourceConfig::named).to_vec();
        c.pools.insert(
            "x".into(),
            crate::config::PoolConfig {
                sources: vec![crate::config::PoolMember::Name("b".into())],
            },
        );
        c.streams.0.get_mut("bulk").unwrap().pool = Some("x".into());
        c.streams.0.get_mut("bulk").unwrap().share = 0.5;
    });
    h.core.reconfigure(reloaded, h.now);
    // Pools need a restart: the mail goes out of the running egress's one source.
    let (_, job) = one_job(h.queue(1, &["u@a.test"]));
    assert_eq!(&*job.from.name, "default");
}
