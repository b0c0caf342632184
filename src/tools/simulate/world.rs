//! The simulated world: knock's scheduler core, fed on virtual time by a discrete-event
//! loop, against modelled receivers. Workers are played here: each job's connection and
//! transaction are worked out against the receiver's model command by command, with the
//! model's delays, and the outcome is reported to the core when its time comes, exactly as
//! the engine's workers report. Everything else (classification, reaction, shaping,
//! retries, expiry) is the engine's own code.

use super::report::{Collector, Plan};
use super::scenario::{Scenario, T0};
use crate::config::Config;
use crate::engine::scheduler::{
    Delivery, Effect, Held, Input, Job, Policy, Queued, Scheduler, WorkerId,
};
use crate::event::{Event, Kind};
use crate::message::{Envelope, Group, Recipient, State};
use crate::outcome::{Failure, FailureKind, Observed};
use crate::policy::react::{Seen, Where};
use crate::policy::shaping::ConnectionUse;
use crate::reply::Reply;
use crate::time::Timestamp;
use crate::tools::receiver::{Greeting, Receiver, Session};
use foldhash::{HashMap, HashMapExt};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

/// Virtual time: microseconds since [`T0`].
type Micros = u64;

fn us(d: Duration) -> Micros {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The core's time for a virtual moment (it counts milliseconds).
fn ts(t: Micros) -> Timestamp {
    T0 + Duration::from_micros(t)
}

enum Ev {
    /// The next planned message arrives.
    Arrive,
    /// The core asked to be woken.
    Wake,
    /// A worker's next command is due.
    Step(WorkerId),
    /// A worker with nothing to report asks for its next job.
    Idle(WorkerId),
    /// A worker's attempt is over.
    Done(Box<Delivery>),
    /// An MX lookup answers.
    Looked(String),
    /// A worker's new connection is greeted.
    Greeted(WorkerId),
}

struct Timed {
    at: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A modelled receiver and the MX name knock finds for its domains.
struct Place {
    receiver: Receiver,
    mx: String,
}

/// An open connection a worker holds.
struct Conn {
    place: usize,
    session: Session,
    used: ConnectionUse,
    broken: bool,
}

#[derive(Default)]
struct Worker {
    conn: Option<Conn>,
    attempt: Option<Attempt>,
}

pub struct World<'a> {
    scenario: &'a Scenario,
    config: &'a Config,
    core: Scheduler,
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<Timed>>,
    /// When a wake is already queued.
    wake_at: Option<Micros>,
    places: Vec<Place>,
    place_of: HashMap<String, usize>,
    workers: HashMap<WorkerId, Worker>,
    plan: &'a Plan,
    next: usize,
    pub collect: Collector,
    /// Where the events go as JSON lines, as knock's own log, when asked.
    log: Option<Box<dyn std::io::Write + Send + 'a>>,
}

impl<'a> World<'a> {
    pub fn new(
        scenario: &'a Scenario,
        config: &'a Config,
        plan: &'a Plan,
        collect: Collector,
        log: Option<Box<dyn std::io::Write + Send + 'a>>,
    ) -> anyhow::Result<World<'a>> {
        let mut policy = Policy::from_config(config)?;
        policy.seed = Some(scenario.simulation.seed);
        // Everything is in memory here: no group is ever read back from a spool.
        policy.ready_hot = usize::MAX;
        let mut places = Vec::new();
        let mut place_of = HashMap::new();
        for (i, (name, model)) in scenario.receivers.iter().enumerate() {
            let mx = format!("mx.{name}.sim");
            let seed = scenario.simulation.seed.wrapping_add(i as u64 + 1);
            places.push(Place {
                receiver: Receiver::new(model.clone(), &mx, T0, seed),
                mx,
            });
            for d in scenario.destinations().filter(|d| &d.receiver == name) {
                for domain in scenario.domains_of(d, name) {
                    place_of.insert(domain, i);
                }
            }
        }
        for a in scenario.traffics().flat_map(|(_, t)| &t.arrivals) {
            if !place_of.contains_key(&a.domain) {
                anyhow::bail!(
                    "traffic.arrivals: domain {} belongs to no receiver (traffic.to)",
                    a.domain
                );
            }
        }
        let mut collect = collect;
        for (i, model) in scenario.receivers.values().enumerate() {
            let us = |d: std::time::Duration| d.as_micros() as Micros;
            collect.outages(i, model.outages.iter().map(|o| (us(o.from), us(o.to))));
        }
        let mut world = World {
            scenario,
            config,
            core: Scheduler::new(policy),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            wake_at: None,
            places,
            place_of,
            workers: HashMap::new(),
            plan,
            next: 0,
            collect,
            log,
        };
        if !plan.messages.is_empty() {
            world.push(plan.messages[0].at, Ev::Arrive);
        }
        Ok(world)
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Timed {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    /// Runs until every message is final, or `until`.
    pub fn run(mut self, until: Duration, mut progress: impl FnMut(u64, u64)) -> Collector {
        let until = us(until);
        let mut events = 0u64;
        while let Some(Reverse(Timed { at, ev, .. })) = self.queue.pop() {
            if at > until {
                self.now = until;
                break;
            }
            self.now = at;
            match ev {
                Ev::Arrive => self.arrive(),
                Ev::Wake => {
                    self.wake_at = None;
                    match self.core.next_wake().is_some_and(|w| w <= ts(self.now)) {
                        true => self.feed(Input::Tick),
                        // The core's next wake moved later since this one was set.
                        false => self.arm(),
                    }
                }
                Ev::Idle(worker) => self.feed(Input::Idle { worker }),
                Ev::Greeted(worker) => self.feed(Input::Greeted { worker }),
                Ev::Step(worker) => {
                    if let Some(input) = self.step(worker) {
                        self.feed(input);
                    }
                }
                Ev::Done(delivery) => {
                    let worker = delivery.worker;
                    self.feed(Input::Delivered(delivery));
                    self.feed(Input::Idle { worker });
                }
                Ev::Looked(domain) => {
                    let hosts = self
                        .place_of
                        .get(&domain)
                        .map(|&p| vec![self.places[p].mx.clone()])
                        .unwrap_or_default();
                    self.feed(Input::MxHosts { domain, hosts });
                }
            }
            events += 1;
            if events.is_multiple_of(8192) {
                progress(self.collect.finished(), self.collect.recipients);
            }
            if self.next >= self.plan.messages.len() && self.core.is_empty() {
                break;
            }
        }
        progress(self.collect.finished(), self.collect.recipients);
        if let Some(log) = self.log.as_mut() {
            let _ = log.flush();
        }
        let end = self.now;
        let mut collect = self.collect;
        collect.end(end, self.core.len() as u64);
        collect
    }

    /// The message(s) due now join the queue, and the next arrival is set.
    fn arrive(&mut self) {
        let mut batch = Vec::new();
        while let Some(p) = self.plan.messages.get(self.next) {
            if p.at > self.now {
                self.push(p.at, Ev::Arrive);
                break;
            }
            batch.push(self.message(self.next));
            self.next += 1;
        }
        self.feed(Input::Queued(batch));
    }

    /// The `i`th message of the plan, as the intake would queue it.
    fn message(&mut self, i: usize) -> Queued {
        let p = &self.plan.messages[i];
        let n = p.number as usize;
        let domain = &self.plan.domains[p.domain as usize];
        let received = ts(p.at);
        let envelope = Envelope {
            id: uuid::Uuid::from_u128(n as u128 + 1),
            from: self.plan.senders[p.sender as usize].clone(),
            received_at: received,
            size: p.size as u64,
            source: "simulate".into(),
            stream: self.plan.streams[p.traffic as usize].clone(),
            done_at: None,
            params: Default::default(),
        };
        let recipients = (0..p.recipients)
            .map(|k| Recipient::new(self.plan.address(p, k, domain), State::Queued))
            .collect();
        let group = Group {
            domain: domain.clone(),
            recipients,
            next_attempt: Some(received),
        };
        self.collect.arrived(
            self.place_of[domain],
            envelope.stream.as_deref(),
            p.recipients as u64,
            p.at,
        );
        if self.log.is_some() {
            for r in &group.recipients {
                let e = Event::about(
                    Kind::Processed,
                    received,
                    &envelope,
                    r.address.clone(),
                    group.domain.clone(),
                );
                self.write(&e);
            }
        }
        Queued::held(Arc::new(envelope), group, None).expect("a new group is pending")
    }

    /// Tells the core, and carries out what follows.
    fn feed(&mut self, input: Input) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for effect in self.core.handle(input, ts(self.now)) {
                if let Some(more) = self.effect(effect) {
                    inputs.push(more);
                }
            }
        }
        self.arm();
    }

    /// Queues a wake for when the core next wants one, unless one no later is queued.
    fn arm(&mut self) {
        if let Some(wake) = self.core.next_wake() {
            let at = us(wake.since(T0));
            if self.wake_at.is_none_or(|w| at < w) {
                self.wake_at = Some(at);
                self.push(at, Ev::Wake);
            }
        }
    }

    fn effect(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Start { worker, job } => {
                self.workers.insert(worker, Worker::default());
                self.deliver(worker, job)
            }
            Effect::Assign { worker, job } => self.deliver(worker, job),
            Effect::Dismiss { worker } => {
                if let Some(w) = self.workers.remove(&worker) {
                    self.close(w.conn);
                }
                None
            }
            Effect::LookUp { domain } => {
                let at = self.now + us(self.scenario.simulation.dns_latency);
                self.push(at, Ev::Looked(domain));
                None
            }
            // Groups stay in memory here, so the core never needs one read back.
            Effect::Load { id, domain } => Some(Input::Gone {
                worker: None,
                id,
                domain,
            }),
            // Nothing outlives a simulation.
            Effect::SaveSource(_) => None,
            Effect::Persist(p) => {
                for e in &p.updated.events {
                    if let Some(&place) = self.place_of.get(&e.domain) {
                        self.collect.event(place, e, self.now);
                    }
                    self.write(e);
                }
                None
            }
        }
    }

    fn write(&mut self, e: &Event) {
        if let Some(log) = self.log.as_mut()
            && serde_json::to_writer(&mut *log, e).is_ok()
        {
            let _ = log.write_all(b"\n");
        }
    }

    fn close(&mut self, conn: Option<Conn>) {
        if let Some(c) = conn {
            self.places[c.place].receiver.disconnect(&c.session.client);
            self.collect.closed(c.place, self.now);
        }
    }

    /// Starts one attempt at `job`: the connection first (reused when it may carry the
    /// job), then the transaction command by command, each at its own time
    /// ([`World::step`]).
    fn deliver(&mut self, worker: WorkerId, job: Job) -> Option<Input> {
        let Some(held) = job.held else {
            // Cannot happen with every group in memory; never lose it silently, and the
            // worker asks for its next job as an engine worker would.
            self.push(self.now, Ev::Idle(worker));
            return Some(Input::Gone {
                worker: Some(worker),
                id: job.id,
                domain: job.domain.to_string(),
            });
        };
        let domain = held.group.domain.clone();
        let place = self.place_of[&domain];
        // The source's address, as the receivers count clients; the scenario's when the
        // source binds none.
        let client = match job.from.ip {
            Some(ip) => ip.to_string(),
            None => self.scenario.simulation.client.clone(),
        };
        let mx = self.places[place].mx.clone();
        let rcpts: Vec<String> = held.group.pending().map(|r| r.address.clone()).collect();
        let mut a = Attempt {
            destination: job.destination,
            source: job.source,
            held,
            place,
            started: self.now,
            rcpts,
            results: Vec::new(),
            chunk: Vec::new(),
            at: Where {
                mx: Some(mx.clone()),
                local_ip: Some(client.clone()),
                ..Default::default()
            },
            slowest: Duration::ZERO,
            step: Step::Mail,
            fresh: false,
            carried: 0,
        };
        let mut w = self.workers.remove(&worker).unwrap_or_default();
        let keep = w.conn.as_ref().is_some_and(|c| {
            // The domain it was opened for, with room. The engine also lets a connection
            // carry another domain whose first-choice address it is open to; modelled
            // that way the tarpit's drain came out 20 % longer than end to end, so the
            // simulator keeps the stricter rule (docs/simulate.md).
            !c.broken
                && c.place == place
                && c.used.domain == domain
                && c.used.has_room(job.messages_per_connection)
        });
        if !keep {
            let old = w.conn.take();
            self.close(old);
        }
        if let Some(c) = &w.conn {
            a.carried = c.used.sent;
            w.attempt = Some(a);
            self.workers.insert(worker, w);
            self.push(self.now, Ev::Step(worker));
            return None;
        }
        let down = self.places[place].receiver.outage(ts(self.now)).is_some();
        self.collect.connecting(place, self.now, down);
        let greeting = self.places[place].receiver.connect(&client, ts(self.now));
        let (failed, after) = match greeting {
            Greeting::Accept { delay } => {
                w.conn = Some(Conn {
                    place,
                    session: Session {
                        client,
                        ..Default::default()
                    },
                    used: ConnectionUse::new(&domain),
                    broken: false,
                });
                self.collect.opened(place, self.now);
                self.push(self.now + us(delay), Ev::Greeted(worker));
                a.slowest = delay;
                a.fresh = true;
                (None, delay)
            }
            Greeting::Refuse => {
                let text = format!("connect to {mx}:25 failed: Connection refused");
                let f = Failure::new(FailureKind::ConnectFailed, text).at(&mx);
                (Some(Observed::from(f)), Duration::from_micros(100))
            }
            Greeting::Hang => {
                let text = "timed out waiting for the reply to greeting";
                let f = Failure::new(FailureKind::Timeout, text).at(&mx);
                (
                    Some(Observed::from(f)),
                    self.config.delivery.timeouts.greeting,
                )
            }
            Greeting::TurnAway { reply, delay } => {
                if !down {
                    self.collect.turned_away(place);
                }
                (Some(Observed::Reply(reply)), delay)
            }
        };
        if let Some(observed) = failed {
            // Nothing was said to any recipient apart: the same for all, and no session.
            let only_mx = Where {
                mx: Some(mx),
                ..Default::default()
            };
            a.results = a
                .rcpts
                .iter()
                .map(|_| (observed.clone(), only_mx.clone()))
                .collect();
            a.step = Step::Unreachable;
        }
        w.attempt = Some(a);
        self.workers.insert(worker, w);
        self.push(self.now + us(after), Ev::Step(worker));
        None
    }

    /// The next command of a worker's attempt, at its time; the receiver answers after its
    /// delay, when the step after is due.
    fn step(&mut self, worker: WorkerId) -> Option<Input> {
        let mut w = self.workers.remove(&worker)?;
        let Some(mut a) = w.attempt.take() else {
            self.workers.insert(worker, w);
            return None;
        };
        if a.step == Step::Unreachable {
            return self.report(worker, w, a, false, self.now);
        }
        let conn = w.conn.as_mut().expect("a session for every step");
        let chunk_size = self.config.delivery.max_recipients_per_transaction.max(1);
        let timeout = self.config.delivery.timeouts.command;
        let receiver = &mut self.places[a.place].receiver;
        let now = ts(self.now);
        let from = a.held.envelope.from.clone();
        let first = a.results.len();
        let rcpts_here = a.rcpts.len().min(first + chunk_size) - first;
        // What the receiver answers now, and how long it takes.
        let answered = match a.step {
            Step::Unreachable => unreachable!("handled above"),
            Step::Mail if conn.broken => None,
            Step::Mail => {
                let r = receiver.mail(&mut conn.session, &from, now);
                Some((r.reply, r.delay))
            }
            Step::Rcpt(i) => {
                let r = receiver.rcpt(&mut conn.session, &from, &a.rcpts[first + i], now);
                Some((r.reply, r.delay))
            }
            Step::Data => {
                let r = receiver.data(&conn.session, now);
                Some((r.reply, r.delay))
            }
        };
        let Some((reply, delay)) = answered else {
            // The connection broke in an earlier transaction of this attempt.
            let closed = Failure::new(FailureKind::Closed, "connection closed by the server");
            let observed = Observed::from(closed.at(a.at.mx.as_deref().unwrap_or_default()));
            a.chunk = vec![Err(observed); rcpts_here];
            return self.end_chunk(worker, w, a, Duration::ZERO);
        };
        a.slowest = a.slowest.max(delay);
        if delay > timeout {
            conn.broken = true;
            let f = Failure::new(FailureKind::Timeout, "timed out waiting for a reply");
            let observed = Observed::from(f.at(a.at.mx.as_deref().unwrap_or_default()));
            a.chunk.resize(rcpts_here, Err(observed.clone()));
            for r in a.chunk.iter_mut() {
                if matches!(r, Ok(reply) if reply.is_positive()) {
                    *r = Err(observed.clone());
                }
            }
            return self.end_chunk(worker, w, a, timeout);
        }
        conn.broken |= reply.code == 421;
        match a.step {
            Step::Mail if !reply.is_positive() => {
                a.chunk = vec![Ok(reply); rcpts_here];
                return self.end_chunk(worker, w, a, delay);
            }
            Step::Mail => a.step = Step::Rcpt(0),
            Step::Rcpt(i) => {
                let closing = reply.code == 421;
                a.chunk.push(Ok(reply.clone()));
                if closing {
                    a.chunk.resize(rcpts_here, Ok(reply));
                    return self.end_chunk(worker, w, a, delay);
                }
                if i + 1 < rcpts_here {
                    a.step = Step::Rcpt(i + 1);
                } else if a
                    .chunk
                    .iter()
                    .any(|r| matches!(r, Ok(r) if r.is_positive()))
                {
                    // The message travels before the end of data is answered.
                    let size = a.held.envelope.size;
                    let transfer = size * 1_000_000 / self.scenario.simulation.bandwidth.max(1);
                    a.step = Step::Data;
                    w.attempt = Some(a);
                    self.workers.insert(worker, w);
                    self.push(self.now + us(delay) + transfer, Ev::Step(worker));
                    return None;
                } else {
                    return self.end_chunk(worker, w, a, delay);
                }
            }
            Step::Data => {
                for r in a.chunk.iter_mut() {
                    if matches!(r, Ok(r) if r.is_positive()) {
                        *r = Ok(reply.clone());
                    }
                }
                return self.end_chunk(worker, w, a, delay);
            }
            Step::Unreachable => unreachable!("handled above"),
        }
        w.attempt = Some(a);
        self.workers.insert(worker, w);
        self.push(self.now + us(delay), Ev::Step(worker));
        None
    }

    /// A transaction is over after `delay`: its replies join the attempt's, and the next
    /// transaction starts, or the attempt is reported.
    fn end_chunk(
        &mut self,
        worker: WorkerId,
        mut w: Worker,
        mut a: Attempt,
        delay: Duration,
    ) -> Option<Input> {
        let conn = w.conn.as_mut().expect("a session");
        conn.used.sent += 1;
        for r in a.chunk.drain(..) {
            let observed = match r {
                Ok(reply) => Observed::Reply(reply),
                Err(observed) => observed,
            };
            a.results.push((observed, a.at.clone()));
        }
        if a.results.len() < a.rcpts.len() {
            a.step = Step::Mail;
            w.attempt = Some(a);
            self.workers.insert(worker, w);
            self.push(self.now + us(delay), Ev::Step(worker));
            return None;
        }
        conn.used.deferrals += a.results.iter().filter(|(o, _)| o.is_transient()).count();
        // Reported when the last reply is in.
        self.report(worker, w, a, true, self.now + us(delay))
    }

    /// The attempt is over at `done`: counted, and reported to the core then.
    fn report(
        &mut self,
        worker: WorkerId,
        w: Worker,
        a: Attempt,
        connected: bool,
        done: Micros,
    ) -> Option<Input> {
        let refused = a
            .results
            .iter()
            .filter(|(o, _)| !matches!(o, Observed::Reply(r) if r.is_positive()))
            .count();
        self.collect
            .attempted(a.place, a.results.len() as u64, refused as u64, a.started);
        let latency = self.places[a.place].receiver.model().latency;
        if connected && a.slowest > latency * 4 + Duration::from_millis(1) {
            self.collect.slow(a.place);
        }
        // As a worker judges it: a stale reused connection says nothing of the receiver.
        let answered = a.fresh
            || a.results
                .iter()
                .any(|(o, _)| matches!(o, Observed::Reply(_)));
        let seen = Seen {
            connected: connected && answered,
            unreachable: !connected,
            carried: a.carried,
            latency: Some(match connected {
                true => a.slowest,
                false => Duration::from_micros(done - a.started),
            }),
        };
        self.workers.insert(worker, w);
        let delivery = Delivery {
            worker,
            destination: a.destination,
            source: a.source,
            held: a.held,
            started: ts(a.started),
            results: a.results,
            seen,
        };
        self.push(done.max(a.started + 1), Ev::Done(Box::new(delivery)));
        None
    }
}

/// Where an attempt is in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// No session was had: report what was observed.
    Unreachable,
    Mail,
    /// The `i`th recipient of the current transaction.
    Rcpt(usize),
    Data,
}

/// A worker's attempt in progress.
struct Attempt {
    destination: Arc<str>,
    source: crate::policy::egress::SourceIx,
    held: Held,
    place: usize,
    started: Micros,
    /// The pending recipients, in order.
    rcpts: Vec<String>,
    /// The outcomes of the transactions done.
    results: Vec<(Observed, Where)>,
    /// The replies of the transaction under way.
    chunk: Vec<Result<Reply, Observed>>,
    at: Where,
    slowest: Duration,
    step: Step,
    /// The connection was opened for this attempt (the receiver greeted it).
    fresh: bool,
    /// Transactions its connection carried before it.
    carried: usize,
}
