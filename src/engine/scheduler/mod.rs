//! The scheduler: the one task that owns queue state and timing. It keeps every pending
//! (message, domain) group in a due-time index; when a group is due it goes to the ready
//! queue of its *destination* (the domain's provider, found from its MX hosts once and
//! cached), and the destination's shaping decides when and over how many connections it
//! is delivered. Workers and the API talk to it only through [`Command`]s on its channel.
//!
//! Nothing polls: the task sleeps until the earliest of the next due group, the end of a
//! destination's pause or rate wait, and the next expiry sweep.
//!
//! Memory: a waiting group costs a small fixed entry (ids, times, counts; domain names are
//! shared). Its envelope and recipients ([`Held`]) stay in memory only while they are
//! needed: a new message until its first attempt, a group from an attempt until its new
//! state is committed. Otherwise the spool is the one copy, and the worker that gets the
//! group reads it back. An entry is about 150 bytes; with a million deferred messages the
//! whole process stays under 400 MiB (docs/benchmarks.md).
//!
//! Not owned here: durability (workers commit to the spool before they report) and what an
//! outcome means (classification and dispatch).

use crate::engine::dispatch::Dispatcher;
use crate::engine::spool::Waiting;
use crate::message::{Envelope, Group, MessageId};
use crate::policy::provider::Providers;
use crate::policy::shaping::{Gate, Report, Shaping, ShapingView};
use crate::time::Timestamp;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A group's envelope and recipients, while they are held in memory.
#[derive(Debug, Clone)]
pub struct Held {
    pub envelope: Arc<Envelope>,
    pub group: Group,
    /// The message, when still in memory; workers read the spool otherwise.
    pub body: Option<Bytes>,
}

/// A group as it enters the queue: what the scheduler keeps of it (as the spool's
/// recovery reads it too), and what is held in memory, if anything.
#[derive(Debug, Clone)]
pub struct Queued {
    pub waiting: Waiting,
    pub held: Option<Held>,
}

impl Queued {
    /// A group whose envelope and state are in hand (a new message, a DSN); `None` when
    /// nothing is left to deliver (every recipient suppressed).
    pub fn held(envelope: Arc<Envelope>, group: Group, body: Option<Bytes>) -> Option<Queued> {
        let next_attempt = group.next_attempt.filter(|_| !group.is_done())?;
        let (pending, deferred) = group.counts();
        Some(Queued {
            waiting: Waiting {
                id: envelope.id,
                domain: group.domain.clone(),
                received_at: envelope.received_at,
                null_sender: envelope.is_null_sender(),
                pending,
                deferred,
                next_attempt,
            },
            held: Some(Held {
                envelope,
                group,
                body,
            }),
        })
    }
}

impl From<Waiting> for Queued {
    /// A group recovered from the spool, which keeps its envelope and state.
    fn from(waiting: Waiting) -> Queued {
        Queued {
            waiting,
            held: None,
        }
    }
}

/// One group handed to a worker, with what the destination says about delivering it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: MessageId,
    pub domain: Arc<str>,
    /// `None`: the worker reads the envelope and group from the spool.
    pub held: Option<Held>,
    pub destination: Arc<str>,
    pub messages_per_connection: usize,
    /// The greylist delay learned for this destination, if any.
    pub greylist_delay: Option<Duration>,
}

pub enum Command {
    /// New or recovered groups, due at their `next_attempt`.
    Enqueue(Vec<Queued>),
    /// The provider of a domain, found from its MX hosts.
    Provider { domain: String, provider: String },
    /// A worker for `destination` is free: its next job, or `None` and the worker ends.
    Next {
        destination: Arc<str>,
        reply: oneshot::Sender<Option<Job>>,
    },
    /// A worker has finished a job, submitted its new state to the spool, and reports
    /// what it saw (the group comes back with its new state, body dropped).
    Done {
        held: Held,
        destination: Arc<str>,
        report: Report,
    },
    /// A group's state after `attempts` attempts is on disk: the memory copy may go.
    Committed {
        id: MessageId,
        domain: String,
        attempts: usize,
    },
    /// A group left the queue without an attempt (expired while waiting, or no longer in
    /// the spool).
    Forget { id: MessageId, domain: String },
    /// A worker could not read a group from the spool: try it again at `at`.
    Later {
        id: MessageId,
        domain: String,
        at: Timestamp,
    },
    Summary {
        reply: oneshot::Sender<Vec<DomainSummary>>,
    },
    Destinations {
        reply: oneshot::Sender<Vec<DestinationView>>,
    },
}

/// What `knock queue` shows for one domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainSummary {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub queued: usize,
    pub deferred: usize,
    pub in_flight: usize,
    pub oldest_age_seconds: u64,
    pub next_attempt: Option<Timestamp>,
}

/// One destination's queue and shaping, for `GET /api/v1/destinations`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestinationView {
    pub destination: String,
    pub domains: Vec<String>,
    /// Groups due and waiting for the destination's shaping.
    pub ready: usize,
    pub connections_open: usize,
    pub shaping: ShapingView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greylist_delay_seconds: Option<u64>,
    /// Recipients waiting for this destination (queued, deferred or in flight).
    pub pending: usize,
    /// How long the queue takes to drain at the current rate, when a rate is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<f64>,
    /// Recipients that would expire before their turn at that rate.
    pub expiring_before_drain: usize,
}

/// The handle everyone else holds.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SchedulerHandle {
    pub fn enqueue(&self, groups: Vec<Queued>) {
        let _ = self.tx.send(Command::Enqueue(groups));
    }

    pub fn provider(&self, domain: String, provider: String) {
        let _ = self.tx.send(Command::Provider { domain, provider });
    }

    pub async fn next_job(&self, destination: &Arc<str>) -> Option<Job> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Next {
                destination: destination.clone(),
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    pub fn done(&self, held: Held, destination: Arc<str>, report: Report) {
        let _ = self.tx.send(Command::Done {
            held,
            destination,
            report,
        });
    }

    pub fn committed(&self, id: MessageId, domain: String, attempts: usize) {
        let _ = self.tx.send(Command::Committed {
            id,
            domain,
            attempts,
        });
    }

    pub fn forget(&self, id: MessageId, domain: String) {
        let _ = self.tx.send(Command::Forget { id, domain });
    }

    pub fn later(&self, id: MessageId, domain: String, at: Timestamp) {
        let _ = self.tx.send(Command::Later { id, domain, at });
    }

    pub async fn summary(&self) -> Vec<DomainSummary> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Summary { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub async fn destinations(&self) -> Vec<DestinationView> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Destinations { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

pub fn channel() -> (SchedulerHandle, mpsc::UnboundedReceiver<Command>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (SchedulerHandle { tx }, rx)
}

/// How the scheduler shapes and learns; from the config.
pub struct Policy {
    pub providers: Providers,
    /// The shaping of a new destination.
    pub shaping: Box<dyn Fn(&str) -> Shaping + Send>,
    /// Learned greylist delays stay within these bounds.
    pub greylist_floor: Duration,
    pub greylist_ceiling: Duration,
    /// How long a recipient may live; waiting groups past it are expired.
    pub max_age: Duration,
}

/// A group: its message and its (shared) domain name.
type Key = (MessageId, Arc<str>);

struct Entry {
    /// Boxed: most entries hold nothing, and stay small.
    held: Option<Box<Held>>,
    received_at: Timestamp,
    null_sender: bool,
    pending: u32,
    deferred: u32,
    due: Timestamp,
    in_flight: bool,
}

struct Destination {
    name: Arc<str>,
    ready: VecDeque<Key>,
    workers: usize,
    /// Workers holding a connection open, until the rate lets them go on or the next
    /// message comes, but no longer than their `until`.
    idle: VecDeque<Idle>,
    shaping: Shaping,
    greylist_delay: Option<Duration>,
}

/// A worker waits with its connection open for at most this long for the rate; longer,
/// it closes.
const IDLE_HOLD: Duration = Duration::from_secs(5);
/// With nothing left to send, a worker keeps its connection this long for the next message
/// (Postfix's `smtp_connection_cache_time_limit`): a steady trickle reuses connections
/// instead of opening one, and shaking hands for TLS, per message.
const KEEP_OPEN: Duration = Duration::from_secs(2);

struct Idle {
    reply: oneshot::Sender<Option<Job>>,
    until: Instant,
}
/// Providers are looked up again after this long.
const PROVIDER_TTL: Duration = Duration::from_secs(3600);

/// How a destination's queue would drain.
struct Drain {
    pending: usize,
    seconds: Option<f64>,
    expiring: usize,
}

pub struct Scheduler {
    rx: mpsc::UnboundedReceiver<Command>,
    dispatcher: Dispatcher,
    policy: Policy,
    entries: HashMap<Key, Entry>,
    due: BTreeSet<(Timestamp, Key)>,
    /// Every domain name in the queue, once.
    domains: HashSet<Arc<str>>,
    destinations: HashMap<Arc<str>, Destination>,
    provider_of: HashMap<String, (Arc<str>, Instant)>,
    awaiting_provider: HashMap<String, Vec<Key>>,
    /// When gated destinations may start again (rate waits, pauses); a destination may be
    /// listed more than once, which costs only a spare look.
    wakes: BTreeSet<(Instant, Arc<str>)>,
    next_sweep: Instant,
    stopping: bool,
}

impl Scheduler {
    pub fn new(
        rx: mpsc::UnboundedReceiver<Command>,
        dispatcher: Dispatcher,
        policy: Policy,
    ) -> Self {
        Scheduler {
            rx,
            dispatcher,
            next_sweep: Instant::now() + sweep_interval(policy.max_age),
            policy,
            entries: HashMap::new(),
            due: BTreeSet::new(),
            domains: HashSet::new(),
            destinations: HashMap::new(),
            provider_of: HashMap::new(),
            awaiting_provider: HashMap::new(),
            wakes: BTreeSet::new(),
            stopping: false,
        }
    }

    /// Runs until `shutdown`, then until the running workers have reported (at most
    /// `grace`); whatever is left stays in the spool for the next start.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake), if !self.stopping => self.tick(),
                _ = shutdown.cancelled(), if !self.stopping => self.stop(),
            }
            if self.stopping {
                break;
            }
        }
        // Let running workers finish and report, but not forever.
        let deadline = Instant::now() + grace;
        while self.destinations.values().any(|d| d.workers > 0) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(cmd)) => self.handle(cmd),
                _ => return,
            }
        }
    }

    fn stop(&mut self) {
        self.stopping = true;
        for d in self.destinations.values_mut() {
            d.ready.clear();
            for w in d.idle.drain(..) {
                let _ = w.reply.send(None);
                d.workers -= 1;
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let due = self.due.first().map(|(at, _)| now + at.until_now());
        let destinations = self.wakes.first().map(|(t, _)| *t);
        due.into_iter()
            .chain(destinations)
            .chain([self.next_sweep])
            .min()
            .unwrap_or(self.next_sweep)
    }

    fn tick(&mut self) {
        self.release_due();
        let now = Instant::now();
        while self.wakes.first().is_some_and(|(t, _)| *t <= now) {
            let (_, name) = self.wakes.pop_first().expect("first exists");
            self.start_workers(&name);
        }
        if now >= self.next_sweep {
            self.sweep_expired();
            // Domain names no group refers to any more.
            self.domains.retain(|d| Arc::strong_count(d) > 1);
            self.next_sweep = now + sweep_interval(self.policy.max_age);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue(groups) => {
                for q in groups {
                    self.insert(q);
                }
                self.release_due();
            }
            Command::Provider { domain, provider } => self.provider_found(domain, provider),
            Command::Next { destination, reply } => self.next_for_worker(&destination, reply),
            Command::Done {
                held,
                destination,
                report,
            } => {
                self.learn(&destination, &report);
                self.finish(held);
                self.release_due();
                self.start_workers(&destination);
            }
            Command::Committed {
                id,
                domain,
                attempts,
            } => {
                let key = (id, self.intern(&domain));
                if let Some(e) = self.entries.get_mut(&key)
                    && !e.in_flight
                    && e.held
                        .as_ref()
                        .is_some_and(|h| h.group.attempts() == attempts)
                {
                    e.held = None;
                }
            }
            Command::Forget { id, domain } => {
                let key = (id, self.intern(&domain));
                self.entries.remove(&key);
            }
            Command::Later { id, domain, at } => {
                let key = (id, self.intern(&domain));
                if let Some(e) = self.entries.get_mut(&key) {
                    e.in_flight = false;
                    e.due = at;
                    self.due.insert((at, key));
                }
            }
            Command::Summary { reply } => {
                let _ = reply.send(self.summary());
            }
            Command::Destinations { reply } => {
                let _ = reply.send(self.destination_views());
            }
        }
    }

    fn intern(&mut self, domain: &str) -> Arc<str> {
        if let Some(d) = self.domains.get(domain) {
            return d.clone();
        }
        let d: Arc<str> = domain.into();
        self.domains.insert(d.clone());
        d
    }

    fn insert(&mut self, q: Queued) {
        let Queued { waiting: w, held } = q;
        let due = w.next_attempt;
        let key = (w.id, self.intern(&w.domain));
        self.due.insert((due, key.clone()));
        self.entries.insert(
            key,
            Entry {
                held: held.map(Box::new),
                received_at: w.received_at,
                null_sender: w.null_sender,
                pending: w.pending,
                deferred: w.deferred,
                due,
                in_flight: false,
            },
        );
    }

    /// Moves every group whose time has come towards its destination.
    fn release_due(&mut self) {
        if self.stopping {
            return;
        }
        let now = Timestamp::now();
        let mut touched = BTreeSet::new();
        while self.due.first().is_some_and(|(at, _)| *at <= now) {
            let (_, key) = self.due.pop_first().expect("first exists");
            if let Some(dest) = self.route(key) {
                touched.insert(dest);
            }
        }
        for dest in touched {
            self.start_workers(&dest);
        }
    }

    /// Puts a due group in its destination's ready queue, or waits for its provider.
    fn route(&mut self, key: Key) -> Option<Arc<str>> {
        let domain = key.1.clone();
        let known = self
            .provider_of
            .get(&*domain)
            .filter(|(_, at)| at.elapsed() < PROVIDER_TTL)
            .map(|(p, _)| p.clone());
        let provider = known.or_else(|| {
            let name: Arc<str> = self.policy.providers.by_domain(&domain)?.into();
            self.provider_of
                .insert(domain.to_string(), (name.clone(), Instant::now()));
            Some(name)
        });
        match provider {
            Some(p) => {
                self.destination(&p).ready.push_back(key);
                Some(p)
            }
            None => {
                let waiting = self
                    .awaiting_provider
                    .entry(domain.to_string())
                    .or_default();
                waiting.push(key);
                if waiting.len() == 1 {
                    self.dispatcher.find_provider(domain.to_string());
                }
                None
            }
        }
    }

    fn provider_found(&mut self, domain: String, provider: String) {
        let provider: Arc<str> = provider.into();
        self.provider_of
            .insert(domain.clone(), (provider.clone(), Instant::now()));
        let waiting = self.awaiting_provider.remove(&domain).unwrap_or_default();
        if self.stopping {
            return;
        }
        let d = self.destination(&provider);
        d.ready.extend(waiting);
        self.start_workers(&provider);
    }

    fn destination(&mut self, name: &Arc<str>) -> &mut Destination {
        let policy = &self.policy;
        self.destinations
            .entry(name.clone())
            .or_insert_with(|| Destination {
                name: name.clone(),
                ready: VecDeque::new(),
                workers: 0,
                idle: VecDeque::new(),
                shaping: (policy.shaping)(name),
                greylist_delay: None,
            })
    }

    /// Hands ready jobs to idle workers or new ones, as far as the shaping allows.
    fn start_workers(&mut self, name: &Arc<str>) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        loop {
            let Some(d) = self.destinations.get_mut(name) else {
                return;
            };
            if d.ready.is_empty() {
                // Idle workers past their time close their connections.
                let (done, keep): (VecDeque<Idle>, VecDeque<Idle>) =
                    d.idle.drain(..).partition(|w| w.until <= now);
                d.idle = keep;
                for w in done {
                    let _ = w.reply.send(None);
                    d.workers -= 1;
                }
                return;
            }
            let spawn = d.idle.is_empty();
            if spawn && d.workers >= d.shaping.connection_limit() {
                return;
            }
            let charge = !front_is_null_sender(d, &self.entries);
            let d = self.destinations.get_mut(name).expect("exists");
            match d.shaping.admit(now, charge) {
                Ok(()) => {}
                Err(Gate::Until(t)) => {
                    self.wakes.insert((t, name.clone()));
                    return;
                }
                Err(Gate::Probing) => return,
            }
            let Some(job) = self.take_ready(name) else {
                return;
            };
            let d = self.destinations.get_mut(name).expect("exists");
            if spawn {
                d.workers += 1;
                self.dispatcher.spawn_worker(job);
            } else if let Some(w) = d.idle.pop_front()
                && let Err(Some(job)) = w.reply.send(Some(job))
            {
                // The worker is gone: its job goes back to the front.
                d.workers -= 1;
                d.shaping.start_lost();
                self.requeue(job);
            }
        }
    }

    /// A worker is free: give it the next job, keep it waiting a moment, or let it go.
    fn next_for_worker(&mut self, name: &Arc<str>, reply: oneshot::Sender<Option<Job>>) {
        let now = Instant::now();
        let Some(d) = self.destinations.get_mut(name) else {
            let _ = reply.send(None);
            return;
        };
        if self.stopping || d.workers > d.shaping.connection_limit() {
            d.workers -= 1;
            let _ = reply.send(None);
            return;
        }
        if d.ready.is_empty() {
            let until = now + KEEP_OPEN;
            d.idle.push_back(Idle { reply, until });
            self.wakes.insert((until, name.clone()));
            return;
        }
        let charge = !front_is_null_sender(d, &self.entries);
        let d = self.destinations.get_mut(name).expect("exists");
        match d.shaping.admit(now, charge) {
            Ok(()) => {
                let job = self.take_ready(name);
                let d = self.destinations.get_mut(name).expect("exists");
                match job {
                    Some(job) => {
                        if let Err(Some(job)) = reply.send(Some(job)) {
                            d.workers -= 1;
                            d.shaping.start_lost();
                            self.requeue(job);
                        }
                    }
                    None => {
                        d.workers -= 1;
                        let _ = reply.send(None);
                    }
                }
            }
            Err(Gate::Until(t)) if t.duration_since(now) <= IDLE_HOLD => {
                d.idle.push_back(Idle {
                    reply,
                    until: now + IDLE_HOLD,
                });
                self.wakes.insert((t, name.clone()));
                self.wakes.insert((now + IDLE_HOLD, name.clone()));
            }
            Err(_) => {
                d.workers -= 1;
                let _ = reply.send(None);
            }
        }
    }

    fn take_ready(&mut self, name: &Arc<str>) -> Option<Job> {
        let d = self.destinations.get_mut(name)?;
        while let Some(key) = d.ready.pop_front() {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.in_flight = true;
                return Some(Job {
                    id: key.0,
                    // The worker returns what it holds with its report.
                    held: entry.held.take().map(|h| *h),
                    domain: key.1,
                    destination: name.clone(),
                    messages_per_connection: d.shaping.messages_per_connection(),
                    greylist_delay: d.greylist_delay,
                });
            }
        }
        None
    }

    fn requeue(&mut self, job: Job) {
        let key = (job.id, job.domain);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.in_flight = false;
            entry.held = job.held.map(Box::new);
            self.destination(&job.destination).ready.push_front(key);
        }
    }

    fn learn(&mut self, name: &Arc<str>, report: &Report) {
        let (floor, ceiling) = (self.policy.greylist_floor, self.policy.greylist_ceiling);
        let d = self.destination(name);
        d.shaping.report(Instant::now(), Timestamp::now(), report);
        if let Some(cleared) = report.greylist_cleared {
            // Never above the normal schedule's first step, which wins over the floor.
            let learned = cleared.clamp(floor.min(ceiling), ceiling);
            d.greylist_delay = Some(d.greylist_delay.map_or(learned, |g| g.min(learned)));
        }
    }

    /// A group is back from its attempt; it stays held until its state is committed.
    fn finish(&mut self, held: Held) {
        let key = (held.envelope.id, self.intern(&held.group.domain));
        match held.group.next_attempt.filter(|_| !held.group.is_done()) {
            Some(due) => {
                if let Some(entry) = self.entries.get_mut(&key) {
                    (entry.pending, entry.deferred) = held.group.counts();
                    entry.held = Some(Box::new(Held { body: None, ..held }));
                    entry.in_flight = false;
                    entry.due = due;
                    self.due.insert((due, key));
                }
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    /// Expires groups that outlived `max_age` waiting in a ready queue (a paused or
    /// throttled destination), without spending an attempt on them.
    fn sweep_expired(&mut self) {
        let now = Timestamp::now();
        let max_age = self.policy.max_age;
        let mut expired = Vec::new();
        for d in self.destinations.values_mut() {
            let entries = &self.entries;
            d.ready.retain(|key| match entries.get(key) {
                Some(e) if !e.in_flight && e.received_at + max_age <= now => {
                    expired.push(key.clone());
                    false
                }
                Some(_) => true,
                None => false,
            });
        }
        for key in expired {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.in_flight = true;
                let held = entry.held.take().map(|h| *h);
                self.dispatcher.spawn_expire(key.0, key.1.to_string(), held);
            }
        }
    }

    fn summary(&self) -> Vec<DomainSummary> {
        let now = Timestamp::now();
        let mut by_domain: BTreeMap<&str, DomainSummary> = BTreeMap::new();
        for ((_, domain), entry) in &self.entries {
            let s = by_domain.entry(&**domain).or_insert_with(|| DomainSummary {
                domain: domain.to_string(),
                provider: self.provider_of.get(&**domain).map(|(p, _)| p.to_string()),
                queued: 0,
                deferred: 0,
                in_flight: 0,
                oldest_age_seconds: 0,
                next_attempt: None,
            });
            s.deferred += entry.deferred as usize;
            s.queued += (entry.pending - entry.deferred) as usize;
            if entry.in_flight {
                s.in_flight += entry.pending as usize;
            }
            s.oldest_age_seconds = s
                .oldest_age_seconds
                .max(now.since(entry.received_at).as_secs());
            if !entry.in_flight {
                s.next_attempt = Some(s.next_attempt.map_or(entry.due, |t| t.min(entry.due)));
            }
        }
        by_domain.into_values().collect()
    }

    fn destination_views(&self) -> Vec<DestinationView> {
        let now = Instant::now();
        // One pass over the queue and one over the providers, whatever their number.
        let mut waiting: HashMap<&str, Vec<(Timestamp, usize)>> = HashMap::new();
        for ((_, domain), e) in &self.entries {
            if let Some((p, _)) = self.provider_of.get(&**domain) {
                waiting
                    .entry(p)
                    .or_default()
                    .push((e.received_at, e.pending as usize));
            }
        }
        let mut domains: HashMap<&str, Vec<String>> = HashMap::new();
        for (domain, (p, _)) in &self.provider_of {
            domains.entry(p).or_default().push(domain.clone());
        }
        let mut views: Vec<DestinationView> = self
            .destinations
            .values()
            .map(|d| {
                let drain = self.drain(d, waiting.remove(&*d.name).unwrap_or_default(), now);
                let mut domains = domains.remove(&*d.name).unwrap_or_default();
                domains.sort();
                DestinationView {
                    destination: d.name.to_string(),
                    domains,
                    ready: d.ready.len(),
                    connections_open: d.workers,
                    shaping: d.shaping.view(now),
                    greylist_delay_seconds: d.greylist_delay.map(|g| g.as_secs()),
                    pending: drain.pending,
                    drain_seconds: drain.seconds,
                    expiring_before_drain: drain.expiring,
                }
            })
            .collect();
        views.sort_by(|a, b| a.destination.cmp(&b.destination));
        views
    }

    /// The queue of one destination: how many wait, how long it takes to drain at the
    /// current rate, and how many would expire first (oldest go first).
    fn drain(&self, d: &Destination, mut received: Vec<(Timestamp, usize)>, now: Instant) -> Drain {
        received.sort();
        let pending = received.iter().map(|(_, n)| n).sum();
        let rate = d.shaping.drain_rate(now).filter(|r| *r > 0.0);
        let mut expiring = 0;
        if let Some(rate) = rate {
            let start = Timestamp::now();
            let mut ahead = 0usize;
            for (at, n) in &received {
                ahead += n;
                let turn = start + Duration::from_secs_f64(ahead as f64 / rate);
                if *at + self.policy.max_age < turn {
                    expiring += n;
                }
            }
        }
        Drain {
            pending,
            seconds: rate.map(|r| pending as f64 / r),
            expiring,
        }
    }
}

/// Whether the next ready job is from the null sender (a DSN): it spends no rate token.
fn front_is_null_sender(d: &Destination, entries: &HashMap<Key, Entry>) -> bool {
    d.ready
        .front()
        .and_then(|k| entries.get(k))
        .is_some_and(|e| e.null_sender)
}

/// How often waiting groups are checked for expiry: often enough that expiry is late by at
/// most a tenth of the lifetime, and at least every minute.
fn sweep_interval(max_age: Duration) -> Duration {
    (max_age / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}
