//! The scheduler: the core of the engine as a state machine. It owns *when* and *how
//! fast*: every pending (message, domain) group in a due-time index; when a group is due it
//! goes to the ready queue of its *destination* (the domain's provider, found from its MX
//! hosts once and cached), whose shaping decides when and over how many connections it is
//! delivered; each outcome is classified and turned into the next state of each recipient
//! (`policy::react`).
//!
//! It does no I/O and reads no clock: [`Scheduler::handle`] takes an [`Input`] (a message
//! queued, an outcome reported, a worker idle, a clock tick, ...) with the time, and hands
//! back the [`Effect`]s that follow (start a delivery on destination X, look a provider up,
//! persist a new state with its events, ...). [`Scheduler::next_wake`] says when it wants to
//! be told the time again. The engine drives it on wall time with real sockets and a spool
//! (`engine::driver`); `knock simulate` drives the very same code on virtual time against
//! modelled receivers; the tests drive it input by input.
//!
//! Memory: a waiting group costs a small fixed entry (ids, times, counts; domain names are
//! shared). Its envelope and recipients ([`Held`]) stay in memory only while they are
//! needed: a new message until its first attempt (unless it waits far back in a ready
//! queue), a group from an attempt until its new state is committed. Otherwise the spool is
//! the one copy, and the worker that gets the group reads it back.

mod destination;
mod egress;
mod mailbox;
mod ready;
mod shape;
mod steer;

pub use destination::Destination;
use mailbox::{Admit, Mailboxes};
pub use ready::{Placed, ReadyQueue};
pub use shape::{BUCKET_MINUTES, Bucket, QueueShape, ShapeBy, ShapeCounter, ShapeRow};

use crate::config::Config;
use crate::engine::spool::Waiting;
use crate::message::{Envelope, Group, MessageId, NewMessage};
use crate::outcome::Observed;
use crate::policy::classify::Classifier;
use crate::policy::egress::{Egress, Rotation, SourceIx};
use crate::policy::provider::Providers;
use crate::policy::react::{self, Attempted, Seen, Updated, Where};
use crate::policy::schedule::Schedule;
use crate::policy::shaping::{Gate, Limits, Shaping, ShapingView, Start, Tuning};
use crate::policy::stream::{LaneWait, StreamIx, Streams};
use crate::policy::warmup::{Step, WarmupState};
use crate::time::Timestamp;
use bytes::Bytes;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A group: its message and its (shared) domain name.
pub type Key = (MessageId, Arc<str>);

/// A delivery worker (one connection), as the scheduler names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// A group's envelope and recipients, while they are held in memory.
#[derive(Debug, Clone)]
pub struct Held {
    pub envelope: Arc<Envelope>,
    pub group: Group,
    /// The message, when in memory; workers read the spool otherwise.
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
                mailbox: group.mailbox(),
                not_before: group.greylisted_until(),
                stream: envelope.stream.clone(),
            },
            held: Some(Held {
                envelope,
                group,
                body,
            }),
        })
    }

    /// A new message's groups, body kept in memory for the first attempt.
    pub fn new_message(m: NewMessage) -> Vec<Queued> {
        let envelope = Arc::new(m.envelope);
        m.groups
            .into_iter()
            .filter_map(|group| Queued::held(envelope.clone(), group, Some(m.body.clone())))
            .collect()
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

/// One group handed to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: MessageId,
    pub domain: Arc<str>,
    /// `None`: the worker reads the envelope and group from the spool.
    pub held: Option<Held>,
    pub destination: Arc<str>,
    /// The source it goes out of, by index and as the transport binds it.
    pub source: SourceIx,
    pub from: Arc<crate::net::transport::Source>,
    pub messages_per_connection: usize,
}

/// What a worker reports after an attempt at a group.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub worker: WorkerId,
    pub destination: Arc<str>,
    /// The job's source.
    pub source: SourceIx,
    /// The group as it was tried (with the body, for a DSN, when it was read).
    pub held: Held,
    /// When the attempt started.
    pub started: Timestamp,
    /// What was observed for each pending recipient, in order.
    pub results: Vec<(Observed, Where)>,
    pub seen: Seen,
}

/// Why a job came back without an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// It never reached its worker (the worker was gone): back to the front of the queue.
    NotStarted,
    /// Its worker was dropped mid-delivery (a panic, a cancelled task): tried again soon.
    Abandoned,
}

/// What happened, told to the scheduler.
#[derive(Debug)]
pub enum Input {
    /// New or recovered groups, due at their `next_attempt`.
    Queued(Vec<Queued>),
    /// The MX hosts of a domain (empty when DNS could not say), for its provider.
    MxHosts { domain: String, hosts: Vec<String> },
    /// A worker finished an attempt; it asks for its next job with [`Input::Idle`].
    Delivered(Box<Delivery>),
    /// A worker is free for its next job.
    Idle { worker: WorkerId },
    /// A worker's new connection was greeted: its destination may open one more (the slow
    /// start does not wait for the first delivery to finish).
    Greeted { worker: WorkerId },
    /// A job came back without an outcome.
    Returned {
        worker: WorkerId,
        job: Job,
        why: Return,
    },
    /// A worker ended (its task finished, panicked or was cancelled).
    WorkerGone { worker: WorkerId },
    /// A group is no longer in the spool (or is final): it leaves the queue.
    Gone {
        worker: Option<WorkerId>,
        id: MessageId,
        domain: String,
    },
    /// A group could not be read from the spool: it is tried again later.
    Unreadable {
        worker: Option<WorkerId>,
        id: MessageId,
        domain: String,
    },
    /// A group read back from the spool, to expire it ([`Effect::Load`]).
    Loaded(Held),
    /// A group's state after `attempts` attempts is on disk: the memory copy may go.
    Committed {
        id: MessageId,
        domain: String,
        attempts: usize,
    },
    /// Another node of the fleet was refused as too fast by `provider`'s receivers
    /// (`engine::fleet`): this node's destinations of it slow down as for their own.
    PeerRefused { provider: String },
    /// The time has come ([`Scheduler::next_wake`]).
    Tick,
    /// Stop: start nothing more; running workers finish and report.
    Shutdown,
}

/// What the scheduler asks for.
#[derive(Debug)]
pub enum Effect {
    /// Start a worker (a new connection) with its first job.
    Start { worker: WorkerId, job: Job },
    /// Give an idle worker its next job.
    Assign { worker: WorkerId, job: Job },
    /// Let a worker go: it closes its connection and ends.
    Dismiss { worker: WorkerId },
    /// Find the MX hosts of a domain ([`Input::MxHosts`]).
    LookUp { domain: String },
    /// Read a group back from the spool to expire it ([`Input::Loaded`]).
    Load { id: MessageId, domain: String },
    /// Write a group's new state (with its DSN and suppressions), then tell its events.
    Persist(Box<Persist>),
    /// Keep a source's state with a provider: its warm-up moved a step, or a start was
    /// counted against its hourly and daily limits.
    SaveSource(crate::engine::spool::SourceRecord),
}

/// A group's new state to write. Persists of one group come in the order they are to be
/// written.
#[derive(Debug)]
pub struct Persist {
    pub envelope: Arc<Envelope>,
    pub updated: Updated,
    /// The message, when in hand, for a DSN.
    pub body: Option<Bytes>,
    /// When the group is still pending: its attempts, to acknowledge with
    /// [`Input::Committed`] once on disk.
    pub pending: Option<usize>,
}

/// Makes the shaping of a new destination, by its name, at a time.
pub type ShapingOf = Box<dyn Fn(&str, Timestamp) -> Shaping + Send + Sync>;

/// How the scheduler shapes, learns and reacts; from the config.
pub struct Policy {
    pub classifier: Arc<Classifier>,
    /// The streams, each with its retry rules and lifetime.
    pub streams: Streams,
    /// The sources and the pools streams send from.
    pub egress: Egress,
    pub providers: Providers,
    /// The shaping of a new destination.
    pub shaping: ShapingOf,
    /// How long a source a provider blocked is not used for it (when its pool has others).
    pub block_pause: Duration,
    /// Connections open at once, all destinations together (`[delivery] total_connections`).
    pub total_connections: Option<usize>,
    /// Learned greylist delays stay within these bounds.
    pub greylist_floor: Duration,
    pub greylist_ceiling: Duration,
    /// Groups at the front of a ready queue that may stay held in memory.
    pub ready_hot: usize,
    /// Seeds the jitter; `None` seeds it at random.
    pub seed: Option<u64>,
    /// The sources' states kept in the spool (warm-ups, the hour's and day's counts), to
    /// go on from.
    pub sources: Vec<crate::engine::spool::SourceRecord>,
}

/// Groups at the front of each ready queue kept in memory with their message.
pub const READY_HOT: usize = 10_000;

impl Policy {
    pub fn from_config(config: &Config) -> anyhow::Result<Policy> {
        let schedule = Schedule::from_config(&config.retry);
        let shaping = config.clone();
        Ok(Policy {
            classifier: Arc::new(Classifier::from_config(&config.classify)?),
            greylist_ceiling: schedule.delay(1),
            streams: Streams::from_config(config),
            egress: Egress::from_config(config),
            providers: Providers::new(config.providers.clone()),
            shaping: Box::new(move |provider, now| {
                Shaping::new(
                    Limits::for_provider(&shaping, provider),
                    Tuning::from_config(&shaping.adapt),
                    now,
                )
            }),
            greylist_floor: config.greylist.floor,
            block_pause: config.adapt.block_pause,
            total_connections: config.delivery.total_connections,
            ready_hot: READY_HOT,
            seed: None,
            sources: Vec::new(),
        })
    }
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
    /// Recipients waiting because an operator suspended their provider or domain or held
    /// their message.
    #[serde(default)]
    pub suspended: usize,
    pub oldest_age_seconds: u64,
    pub next_attempt: Option<Timestamp>,
}

/// What the queue listing needs from the scheduler that the spool does not hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueIndex {
    /// Each domain's provider, where it is known.
    pub providers: std::collections::HashMap<String, String>,
    /// The groups with a worker now (Postfix's "active" mail).
    pub in_flight: std::collections::HashSet<(MessageId, String)>,
}

/// A source's warm-up with a provider, for `GET /api/v1/destinations`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmupView {
    /// The day of the ramp (1 for the first); the limits are that day's.
    pub day: u32,
    /// The ramp reached the source's own limits.
    pub done: bool,
    pub attempts_today: u32,
    pub deferrals_today: u32,
    /// How the ramp moved at the last midnight, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// One destination's queue and shaping, for `GET /api/v1/destinations`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestinationView {
    pub destination: String,
    /// The `[[source]]` it is reached from, when sources are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The provider blocked this source: its mail goes out of the pool's other sources
    /// until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_until: Option<Timestamp>,
    /// The source's own limits for this provider, and how much of each is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<crate::policy::quota::QuotaView>,
    /// Mail is ready but no connection may open: the source's `max_connections` or
    /// `[delivery] total_connections` is reached (which, and how many); it goes when one
    /// closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_connection: Option<String>,
    /// The source's warm-up with this provider, when it has a plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupView>,
    pub domains: Vec<String>,
    /// Groups due and waiting for the destination's shaping.
    pub ready: usize,
    /// The same by stream, for the streams with any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ready_by_stream: BTreeMap<String, usize>,
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

struct Entry {
    /// Boxed: most entries hold nothing, and stay small.
    held: Option<Box<Held>>,
    received_at: Timestamp,
    null_sender: bool,
    pending: u32,
    deferred: u32,
    due: Timestamp,
    /// Its one pending recipient's mailbox, if it has one only.
    mailbox: Option<u64>,
    /// With a worker, or being read back to expire.
    in_flight: bool,
    /// The attempts of a new state handed out to persist and not yet acknowledged: until
    /// then the memory copy is the only current one.
    uncommitted: Option<usize>,
    /// Greylisted at its last attempt: an operator's retry comes no earlier than this.
    not_before: Option<Timestamp>,
    stream: StreamIx,
    /// The source its last attempt went out of: a deadline stream tries another next.
    last_source: Option<SourceIx>,
}

struct Worker {
    /// Its destination's index.
    destination: usize,
    job: Option<Key>,
    /// Its connection was greeted (it has had a session).
    greeted: bool,
    /// When its job was handed out: what the shaping counts as the start (the worker's own
    /// clock reads later, after the job reached it, and a delivery let out before a
    /// reaction must count as before it).
    handed_at: Timestamp,
}

/// A worker waits with its connection open for at most this long for the rate; longer,
/// it closes.
const IDLE_HOLD: Duration = Duration::from_secs(5);
/// With nothing left to send, a worker keeps its connection this long for the next message
/// (Postfix's `smtp_connection_cache_time_limit`): a steady trickle reuses connections
/// instead of opening one, and shaking hands for TLS, per message.
const KEEP_OPEN: Duration = Duration::from_secs(2);
/// Providers are looked up again after this long.
const PROVIDER_TTL: Duration = Duration::from_secs(3600);
/// A domain whose MX hosts DNS could not give is looked up again after this long.
const UNKNOWN_PROVIDER_TTL: Duration = Duration::from_secs(60);
/// When a group the spool could not give back is tried again.
const READ_RETRY: Duration = Duration::from_secs(60);
/// When a group whose worker was lost mid-delivery is tried again.
const RETURN_RETRY: Duration = Duration::from_secs(1);

/// How a destination's queue would drain.
struct Drain {
    pending: usize,
    seconds: Option<f64>,
    expiring: usize,
}

pub struct Scheduler {
    policy: Policy,
    rng: fastrand::Rng,
    entries: HashMap<Key, Entry>,
    due: BTreeSet<(Timestamp, Key)>,
    /// Every domain name in the queue, once.
    domains: HashSet<Arc<str>>,
    /// Destinations by index, and the index of each by name.
    destinations: Vec<Destination>,
    destination_ix: HashMap<(Arc<str>, SourceIx), usize>,
    /// Per provider and pool, which source the next group goes out of.
    rotations: HashMap<(Arc<str>, usize), Rotation>,
    /// Sources a provider blocked, and until when they are not used for it.
    blocked: HashMap<(Arc<str>, SourceIx), Timestamp>,
    /// Each domain's provider, and until when it holds.
    provider_of: HashMap<Arc<str>, (Arc<str>, Timestamp)>,
    awaiting_provider: HashMap<Arc<str>, Vec<Key>>,
    workers: HashMap<WorkerId, Worker>,
    next_worker: u64,
    /// When gated destinations may start again (rate waits, pauses, idle workers' time); a
    /// destination may be listed more than once, which costs only a spare look.
    wakes: BTreeSet<(Timestamp, usize)>,
    /// Mailboxes refused for their own rate, and the groups they hold back.
    mailboxes: Mailboxes,
    next_sweep: Option<Timestamp>,
    /// What operators suspended (providers, domains, held messages), and the groups
    /// parked for it: out of the due index and the ready queues until resumed.
    suspensions: BTreeMap<crate::control::Target, crate::control::Suspension>,
    parked: HashSet<Key>,
    /// Groups an operator is cancelling or bouncing, waiting for their attempt to report
    /// or to be read back; and who asked.
    ending: HashMap<Key, (crate::control::Ending, String)>,
    /// Groups being read back to be held by a source's own limit: until when, why, and
    /// the destination.
    deferring: HashMap<Key, (Timestamp, String, usize)>,
    /// Destinations with mail ready that could not open a connection for their source's
    /// cap or the total's; they try again when a connection closes.
    awaiting_slot: BTreeSet<usize>,
    /// A connection closed while handling this input.
    freed: bool,
    stopping: bool,
    out: Vec<Effect>,
}

impl Scheduler {
    pub fn new(policy: Policy) -> Scheduler {
        let rng = match policy.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Scheduler {
            policy,
            rng,
            entries: HashMap::new(),
            due: BTreeSet::new(),
            domains: HashSet::new(),
            destinations: Vec::new(),
            destination_ix: HashMap::new(),
            rotations: HashMap::new(),
            blocked: HashMap::new(),
            provider_of: HashMap::new(),
            awaiting_provider: HashMap::new(),
            workers: HashMap::new(),
            next_worker: 0,
            wakes: BTreeSet::new(),
            mailboxes: Mailboxes::new(),
            next_sweep: None,
            suspensions: BTreeMap::new(),
            parked: HashSet::new(),
            ending: HashMap::new(),
            deferring: HashMap::new(),
            awaiting_slot: BTreeSet::new(),
            freed: false,
            stopping: false,
            out: Vec::new(),
        }
    }

    /// Takes what happened at `now` and returns what to do about it. `now` never goes
    /// backwards from one call to the next.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Effect> {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + sweep_interval(&self.policy.streams));
        }
        match input {
            Input::Queued(groups) => {
                for q in groups {
                    self.insert(q);
                }
                self.release_due(now);
            }
            Input::MxHosts { domain, hosts } => {
                let provider = self.policy.providers.name_for(&domain, &hosts);
                // With no MX answer the domain is named after itself; that must not keep it
                // away from its real provider's shaping for long.
                let ttl = match hosts.is_empty() {
                    true => UNKNOWN_PROVIDER_TTL,
                    false => PROVIDER_TTL,
                };
                self.provider_found(&domain, provider, now + ttl, now);
            }
            Input::Delivered(delivery) => self.delivered(*delivery, now),
            Input::Idle { worker } => self.idle(worker, now),
            Input::Greeted { worker } => self.greeted(worker, now),
            Input::Returned { worker, job, why } => self.returned(worker, job, why, now),
            Input::WorkerGone { worker } => self.worker_gone(worker, now),
            Input::Gone { worker, id, domain } => {
                self.job_over(worker);
                let key = (id, self.intern(&domain));
                self.probe_lost(&key);
                self.entries.remove(&key);
                self.parked.remove(&key);
                self.ending.remove(&key);
                self.deferring.remove(&key);
            }
            Input::Unreadable { worker, id, domain } => {
                self.job_over(worker);
                let key = (id, self.intern(&domain));
                self.probe_lost(&key);
                self.deferring.remove(&key);
                self.reschedule(key, now + READ_RETRY);
            }
            Input::Loaded(held) => {
                let key = (held.envelope.id, self.intern(&held.group.domain));
                if self.entries.get(&key).is_some_and(|e| e.in_flight) {
                    if self.ending.contains_key(&key) {
                        self.end_loaded(held, now);
                    } else if let Some((until, reason, ix)) = self.deferring.remove(&key) {
                        self.defer_loaded(held, ix, until, &reason, now);
                    } else {
                        self.expire_loaded(held, now);
                    }
                }
            }
            Input::Committed {
                id,
                domain,
                attempts,
            } => self.committed(id, &domain, attempts),
            Input::PeerRefused { provider } => {
                for d in self
                    .destinations
                    .iter_mut()
                    .filter(|d| *d.name == *provider)
                {
                    d.shaping.peer_refused(now);
                }
            }
            Input::Tick => self.tick(now),
            Input::Shutdown => self.stop(),
        }
        if std::mem::take(&mut self.freed) && !self.awaiting_slot.is_empty() {
            for ix in std::mem::take(&mut self.awaiting_slot) {
                self.start_workers(ix, now);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Takes a reloaded policy: the classifier, the retry rules, greylisting bounds,
    /// `max_age` and each destination's configured shaping (what it learned stays), and
    /// closes idle connections. The provider table is kept: moving domains between
    /// destinations needs a restart.
    pub fn reconfigure(&mut self, policy: Policy, now: Timestamp) {
        let Policy {
            classifier,
            streams,
            egress: _,
            providers: _,
            shaping,
            greylist_floor,
            greylist_ceiling,
            block_pause,
            total_connections,
            ready_hot: _,
            seed: _,
            sources: _,
        } = policy;
        self.policy.block_pause = block_pause;
        self.policy.total_connections = total_connections;
        for d in self.destinations.iter_mut() {
            d.shaping.adopt(shaping(&d.name, now));
        }
        self.policy.classifier = classifier;
        // Queued groups keep their streams' indexes: a new set of streams waits for a
        // restart (the reload says so), their rules apply now.
        let same_streams = streams.len() == self.policy.streams.len()
            && streams
                .iter()
                .zip(self.policy.streams.iter())
                .all(|(a, b)| a.name == b.name);
        if same_streams {
            let mut streams = streams;
            streams.keep_pools(&self.policy.streams);
            self.policy.streams = streams;
        }
        self.policy.shaping = shaping;
        self.policy.greylist_floor = greylist_floor;
        self.policy.greylist_ceiling = greylist_ceiling;
        // Idle connections were opened under the old routes and TLS policy: they close, and
        // the next deliveries connect afresh (connections busy now finish their job first).
        for ix in 0..self.destinations.len() {
            let idle: Vec<WorkerId> = self.destinations[ix]
                .idle
                .drain(..)
                .map(|(w, _)| w)
                .collect();
            for worker in idle {
                self.dismiss(worker, ix);
            }
            self.start_workers(ix, now);
        }
    }

    /// When the scheduler wants [`Input::Tick`]: the next due group, the end of a
    /// destination's wait, or the next expiry sweep. `None` once stopping.
    pub fn next_wake(&self) -> Option<Timestamp> {
        if self.stopping {
            return None;
        }
        let due = self.due.first().map(|(at, _)| *at);
        let wake = self.wakes.first().map(|(t, _)| *t);
        [due, wake, self.next_sweep].into_iter().flatten().min()
    }

    /// Workers alive (busy or idle); after [`Input::Shutdown`], the engine waits for this
    /// to reach zero.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Groups handed to workers (or being read back) and not returned yet.
    pub fn in_flight(&self) -> usize {
        self.entries.values().filter(|e| e.in_flight).count()
    }

    /// Groups in the queue, in flight or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn stop(&mut self) {
        self.stopping = true;
        for d in self.destinations.iter_mut() {
            d.clear_ready();
            for (worker, _) in d.idle.drain(..) {
                self.out.push(Effect::Dismiss { worker });
                self.workers.remove(&worker);
                d.workers -= 1;
                self.freed = true;
            }
        }
    }

    fn tick(&mut self, now: Timestamp) {
        self.release_due(now);
        while self.wakes.first().is_some_and(|(t, _)| *t <= now) {
            let (_, ix) = self.wakes.pop_first().expect("first exists");
            self.start_workers(ix, now);
        }
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.sweep_expired(now);
            self.mailboxes.sweep(now);
            // Domain names no group refers to any more.
            self.domains.retain(|d| Arc::strong_count(d) > 1);
            self.next_sweep = Some(now + sweep_interval(&self.policy.streams));
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
        if self.entries.contains_key(&key) {
            // Already queued (a recovery racing a live copy): the live copy is the newer.
            return;
        }
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
                mailbox: w.mailbox,
                in_flight: false,
                uncommitted: None,
                not_before: w.not_before,
                stream: self.policy.streams.ix(w.stream.as_deref()),
                last_source: None,
            },
        );
    }

    /// Puts a group back in the due index at `at`.
    fn reschedule(&mut self, key: Key, at: Timestamp) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.in_flight = false;
            entry.due = at;
            self.due.insert((at, key));
        }
    }

    /// Moves every group whose time has come towards its destination.
    fn release_due(&mut self, now: Timestamp) {
        if self.stopping {
            return;
        }
        let mut touched = BTreeSet::new();
        while self.due.first().is_some_and(|(at, _)| *at <= now) {
            let (at, key) = self.due.pop_first().expect("first exists");
            // Only the group's current place in the index counts.
            let Some(entry) = self
                .entries
                .get(&key)
                .filter(|e| e.due == at && !e.in_flight)
            else {
                continue;
            };
            // A mailbox over its own rate holds its groups back (parked ones come back
            // when its probe reports).
            if let Some(m) = entry.mailbox {
                match self.mailboxes.admit(m, &key, now) {
                    Admit::Go => {}
                    Admit::Until(t) => {
                        self.reschedule(key, t.max(now + Duration::from_millis(1)));
                        continue;
                    }
                    Admit::Parked => continue,
                }
            }
            if let Some(ix) = self.route(key, now) {
                touched.insert(ix);
            }
        }
        for ix in touched {
            self.start_workers(ix, now);
        }
    }

    /// Puts a due group in its destination's ready queue, or waits for its provider.
    fn route(&mut self, key: Key, now: Timestamp) -> Option<usize> {
        let domain = key.1.clone();
        let known = self
            .provider_of
            .get(&domain)
            .filter(|(_, until)| now < *until)
            .map(|(p, _)| p.clone());
        let provider = known.or_else(|| {
            let name: Arc<str> = self.policy.providers.by_domain(&domain)?.into();
            self.provider_of
                .insert(domain.clone(), (name.clone(), now + PROVIDER_TTL));
            Some(name)
        });
        match provider {
            Some(p) => {
                let ix = self.destination_for(&p, &key, now);
                self.make_ready(ix, key);
                Some(ix)
            }
            None => {
                let waiting = self.awaiting_provider.entry(domain.clone()).or_default();
                waiting.push(key);
                if waiting.len() == 1 {
                    self.out.push(Effect::LookUp {
                        domain: domain.to_string(),
                    });
                }
                None
            }
        }
    }

    /// Appends a group to a ready queue; far back in the queue, its memory copy goes if
    /// the spool has its current state.
    fn make_ready(&mut self, ix: usize, key: Key) {
        if self.suspended(&key, Some(&self.destinations[ix].name)) {
            self.park(key);
            return;
        }
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let placed = self.destinations[ix].push_back(entry.stream, key);
        if placed == Placed::Cold && entry.uncommitted.is_none() {
            entry.held = None;
        }
    }

    fn provider_found(&mut self, domain: &str, provider: String, until: Timestamp, now: Timestamp) {
        let provider: Arc<str> = provider.into();
        let domain = self.intern(domain);
        self.provider_of
            .insert(domain.clone(), (provider.clone(), until));
        let waiting = self.awaiting_provider.remove(&domain).unwrap_or_default();
        if self.stopping {
            return;
        }
        let mut touched = BTreeSet::new();
        for key in waiting {
            let ix = self.destination_for(&provider, &key, now);
            self.make_ready(ix, key);
            touched.insert(ix);
        }
        for ix in touched {
            self.start_workers(ix, now);
        }
    }

    /// The index of the destination `name` × `source`, made when new.
    fn destination(&mut self, name: &Arc<str>, source: SourceIx, now: Timestamp) -> usize {
        if let Some(&ix) = self.destination_ix.get(&(name.clone(), source)) {
            return ix;
        }
        let policy = &self.policy;
        let mut d = Destination::new(
            name.clone(),
            source,
            (policy.shaping)(name, now),
            policy.egress.quota(source),
            policy.ready_hot,
            policy.streams.len(),
        );
        let source_name = &policy.egress.source(source).name;
        let kept = policy
            .sources
            .iter()
            .find(|r| *r.source == **source_name && *r.provider == **name)
            .map(|r| &r.state);
        if let Some(ramp) = policy.egress.ramp(source) {
            let state = kept
                .and_then(|k| k.warmup.clone())
                .unwrap_or_else(|| WarmupState::new(now));
            let (hourly, daily) = ramp.limits(state.day);
            d.quota.set(hourly, daily);
            d.warmup = Some((ramp.clone(), state));
        }
        if let Some(k) = kept {
            d.quota.restore(&k.used);
        }
        self.destinations.push(d);
        self.destination_ix
            .insert((name.clone(), source), self.destinations.len() - 1);
        self.destinations.len() - 1
    }

    /// Hands ready jobs to idle workers or new ones, as far as the shaping allows.
    fn start_workers(&mut self, ix: usize, now: Timestamp) {
        if self.stopping {
            return;
        }
        // Idle workers past their time close their connections, whether or not mail waits
        // (it may wait for a pause far longer than a connection should be held).
        let d = &mut self.destinations[ix];
        while let Some(&(worker, until)) = d.idle.front() {
            if until > now {
                break;
            }
            d.idle.pop_front();
            d.workers -= 1;
            self.workers.remove(&worker);
            self.freed = true;
            self.out.push(Effect::Dismiss { worker });
        }
        loop {
            // Each start counts against the source's own limits.
            if self.hold_back(ix, now) {
                return;
            }
            let lane = match self.next_lane(ix, now) {
                Ok(lane) => lane,
                Err(LaneWait::Empty) => return,
                Err(LaneWait::Until(t)) => {
                    self.wakes.insert((t, ix));
                    return;
                }
            };
            let d = &mut self.destinations[ix];
            let spawn = d.idle.is_empty();
            if spawn && d.workers >= d.shaping.connection_limit() {
                return;
            }
            if spawn && self.slot_cap(self.destinations[ix].source).is_some() {
                // The source's cap or the total: it waits for a connection to close.
                self.awaiting_slot.insert(ix);
                return;
            }
            let d = &mut self.destinations[ix];
            let charge = !front_is_null_sender(d, lane, &self.entries);
            let busy = d.workers - d.idle.len();
            let start = match d.shaping.admit(now, busy, charge) {
                Ok(start) => start,
                Err(Gate::Until(t)) => {
                    self.wakes.insert((t, ix));
                    return;
                }
                Err(Gate::AwaitReport) => return,
            };
            let job = self.take_ready(ix, lane, start, now);
            let d = &mut self.destinations[ix];
            if spawn {
                d.workers += 1;
                let worker = WorkerId(self.next_worker);
                self.next_worker += 1;
                self.workers.insert(
                    worker,
                    Worker {
                        destination: ix,
                        job: Some((job.id, job.domain.clone())),
                        greeted: false,
                        handed_at: now,
                    },
                );
                self.out.push(Effect::Start { worker, job });
            } else {
                let (worker, _) = d.idle.pop_front().expect("not empty");
                self.assign(worker, job, now);
            }
        }
    }

    /// The stream whose group goes next at destination `ix`, with a group that can go at
    /// the front of its queue (groups gone or in flight since they were queued are
    /// dropped on the way).
    fn next_lane(&mut self, ix: usize, now: Timestamp) -> Result<StreamIx, LaneWait> {
        let d = &mut self.destinations[ix];
        loop {
            let lane = d.pick(&self.policy.streams, now)?;
            while let Some(key) = d.front_of(lane) {
                if self.entries.get(key).is_some_and(|e| !e.in_flight) {
                    return Ok(lane);
                }
                d.pop_from(lane);
            }
        }
    }

    fn assign(&mut self, worker: WorkerId, job: Job, now: Timestamp) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.job = Some((job.id, job.domain.clone()));
            w.handed_at = now;
        }
        self.out.push(Effect::Assign { worker, job });
    }

    /// Lets a worker go: it is no longer counted.
    fn dismiss(&mut self, worker: WorkerId, ix: usize) {
        if self.workers.remove(&worker).is_some() {
            self.destinations[ix].workers -= 1;
            self.freed = true;
        }
        self.out.push(Effect::Dismiss { worker });
    }

    /// A worker's connection was greeted: the destination counts it, and may open one more.
    fn greeted(&mut self, worker: WorkerId, now: Timestamp) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.greeted = true;
        let ix = w.destination;
        let greeted = self.greeted_at(ix);
        self.destinations[ix].shaping.greeted(greeted);
        self.start_workers(ix, now);
    }

    /// Workers of destination `ix` whose connection was greeted.
    fn greeted_at(&self, ix: usize) -> usize {
        self.workers
            .values()
            .filter(|w| w.destination == ix && w.greeted)
            .count()
    }

    /// A worker is free: give it the next job, keep it waiting a moment, or let it go.
    fn idle(&mut self, worker: WorkerId, now: Timestamp) {
        let Some(ix) = self.workers.get(&worker).map(|w| w.destination) else {
            self.out.push(Effect::Dismiss { worker });
            return;
        };
        let d = &mut self.destinations[ix];
        if self.stopping || d.workers > d.shaping.connection_limit() {
            self.dismiss(worker, ix);
            return;
        }
        // This worker's job is over: it is not in flight.
        let busy = (d.workers - d.idle.len()).saturating_sub(1);
        self.hold_back(ix, now);
        let admitted = match self.next_lane(ix, now) {
            Err(LaneWait::Empty) => {
                let until = now + KEEP_OPEN;
                self.destinations[ix].idle.push_back((worker, until));
                self.wakes.insert((until, ix));
                return;
            }
            Err(LaneWait::Until(t)) => Err(Gate::Until(t)),
            Ok(lane) => {
                let d = &mut self.destinations[ix];
                let charge = !front_is_null_sender(d, lane, &self.entries);
                d.shaping
                    .admit(now, busy, charge)
                    .map(|start| (start, lane))
            }
        };
        let d = &mut self.destinations[ix];
        match admitted {
            Ok((start, lane)) => {
                let job = self.take_ready(ix, lane, start, now);
                self.assign(worker, job, now);
            }
            Err(Gate::Until(t)) if t.since(now) <= IDLE_HOLD => {
                d.idle.push_back((worker, now + IDLE_HOLD));
                self.wakes.insert((t, ix));
                self.wakes.insert((now + IDLE_HOLD, ix));
            }
            Err(Gate::Until(t)) => {
                // A long wait (a pause, an outage's backoff): the connection goes, and the
                // destination starts again when the wait is over.
                self.wakes.insert((t, ix));
                self.dismiss(worker, ix);
            }
            Err(Gate::AwaitReport) => self.dismiss(worker, ix),
        }
    }

    /// Hands out the group at the front of stream `lane`'s queue ([`Scheduler::next_lane`]
    /// found it there, ready to go).
    fn take_ready(&mut self, ix: usize, lane: StreamIx, start: Start, now: Timestamp) -> Job {
        let d = &mut self.destinations[ix];
        let key = d.pop_from(lane).expect("next_lane found a group");
        d.started(&self.policy.streams, lane, now);
        let limited = !d.quota.is_empty();
        d.quota.count(now);
        if limited {
            // Counted exactly across a restart too: kept with the attempt's own writes.
            self.save_source(ix);
        }
        let d = &mut self.destinations[ix];
        let entry = self
            .entries
            .get_mut(&key)
            .expect("next_lane checked the entry");
        entry.in_flight = true;
        if start == Start::Probe {
            // The one start the shaping lets through to learn (an outage's probe, the
            // allowance's): its report says so.
            d.probe = Some(key.clone());
        }
        Job {
            id: key.0,
            // The worker returns what it holds with its report.
            held: entry.held.take().map(|h| *h),
            domain: key.1,
            destination: d.name.clone(),
            source: d.source,
            from: self.policy.egress.source(d.source).clone(),
            messages_per_connection: d.shaping.messages_per_connection(),
        }
    }

    /// The worker's job is over (reported, returned, or found gone).
    fn job_over(&mut self, worker: Option<WorkerId>) {
        if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
            w.job = None;
        }
    }

    /// The group `key` will not report: if it was its destination's probe, another may go.
    fn probe_lost(&mut self, key: &Key) {
        if let Some(d) = self
            .destinations
            .iter_mut()
            .find(|d| d.probe.as_ref() == Some(key))
        {
            d.probe = None;
            d.shaping.start_lost();
        }
    }

    fn returned(&mut self, worker: WorkerId, job: Job, why: Return, now: Timestamp) {
        self.job_over(Some(worker));
        let key = (job.id, job.domain);
        let ix = self.destination(&job.destination, job.source, now);
        // An outage probe that never reported lets another go.
        self.probe_lost(&key);
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.held = job.held.map(Box::new);
        match why {
            Return::NotStarted => {
                entry.in_flight = false;
                if !self.stopping {
                    self.destinations[ix].push_front(entry.stream, key);
                    self.start_workers(ix, now);
                }
            }
            Return::Abandoned => {
                self.mailbox_lost(&key, now);
                self.reschedule(key, now + RETURN_RETRY);
            }
        }
    }

    /// The group `key` will not report: a mailbox's groups parked behind it are due now.
    fn mailbox_lost(&mut self, key: &Key, now: Timestamp) {
        let Some(m) = self.entries.get(key).and_then(|e| e.mailbox) else {
            return;
        };
        for parked in self.mailboxes.lost(m, key) {
            self.reschedule(parked, now);
        }
    }

    fn worker_gone(&mut self, worker: WorkerId, now: Timestamp) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.freed = true;
        let d = &mut self.destinations[w.destination];
        d.workers -= 1;
        d.forget_idle(worker);
        if let Some(key) = w.job {
            // Its job never came back: the spool holds the group's state.
            self.probe_lost(&key);
            self.mailbox_lost(&key, now);
            self.reschedule(key, now + RETURN_RETRY);
        }
        self.start_workers(w.destination, now);
    }

    /// An attempt is over: classify, react, learn, and persist the group's new state.
    fn delivered(&mut self, d: Delivery, now: Timestamp) {
        self.job_over(Some(d.worker));
        let Delivery {
            destination,
            held,
            started,
            results,
            seen,
            ..
        } = d;
        let classifier = self.policy.classifier.clone();
        let mut results = results;
        let pending = held.group.pending().count();
        // A recipient without an observation would be left out of every state: it is
        // deferred as knock's own protocol failure instead.
        results.truncate(pending);
        while results.len() < pending {
            let f = crate::outcome::Failure::new(
                crate::outcome::FailureKind::Protocol,
                "no outcome was reported for this recipient",
            );
            results.push((Observed::from(f), Where::default()));
        }
        let outcomes: Vec<(crate::outcome::Outcome, Where)> = results
            .into_iter()
            .map(|(observed, at)| (classifier.outcome(&observed), at))
            .collect();
        let mut report =
            react::destination_report(&held.group, outcomes.iter().map(|(o, _)| o), seen, now);
        // As the shaping let it out (see `Worker::handed_at`).
        report.started = self
            .workers
            .get(&d.worker)
            .map_or(started, |w| w.handed_at.min(started));
        let ix = self.destination(&destination, d.source, now);
        if let Some(w) = self.workers.get_mut(&d.worker) {
            w.greeted = seen.connected;
        }
        report.greeted = self.greeted_at(ix);
        let key = (held.envelope.id, self.intern(&held.group.domain));
        if self.destinations[ix].probe.as_ref() == Some(&key) {
            self.destinations[ix].probe = None;
            report.probe = true;
        }
        // What the recipient's mailbox says about its rate, if the group was that one
        // recipient's.
        let mut ready_at = now;
        let mut mailbox_ready = None;
        if let Some(m) = self.entries.get(&key).and_then(|e| e.mailbox)
            && let [(o, _)] = outcomes.as_slice()
        {
            let accepted = o.disposition == crate::outcome::Disposition::Delivered;
            let over = o.class == Some(crate::outcome::Class::Throttle)
                && o.enhanced.is_some_and(react::is_mailbox_rate);
            let d = &mut self.destinations[ix];
            d.limits_mailboxes |= over;
            if accepted && d.limits_mailboxes {
                self.mailboxes.remember(m, now);
            }
            // Only a taken recipient or a refusal for the mailbox's rate says anything
            // about it (a connection that failed, a greylisting, a bounce do not): else
            // the delivery is as good as lost to its gate.
            let parked = match accepted || over {
                true => self
                    .mailboxes
                    .report(m, ix, &key, now, report.started, accepted, over),
                false => self.mailboxes.lost(m, &key),
            };
            for parked in parked {
                self.reschedule(parked, now);
            }
            if let Some(t) = self.mailboxes.ready_at(m, now) {
                ready_at = ready_at.max(t);
                mailbox_ready = Some(t);
            }
        }
        let learned = self.destinations[ix].greylist_delay;
        let (floor, ceiling) = (self.policy.greylist_floor, self.policy.greylist_ceiling);
        self.destinations[ix].learn(&report, now, floor, ceiling);
        let stream = self.entries.get(&key).map_or(0, |e| e.stream);
        // A provider that blocks this source: another source of the pool takes its mail
        // for a while, if the pool has one the provider does not block.
        let blocked = outcomes
            .iter()
            .any(|(o, _)| o.class == Some(crate::outcome::Class::Block));
        let elsewhere = blocked && self.block_source(ix, stream, now);
        if self.destinations[ix].warmup.is_some() {
            self.warmup_roll(ix, now);
            if let Some((_, state)) = &mut self.destinations[ix].warmup {
                for (o, _) in &outcomes {
                    let blocked = o.class == Some(crate::outcome::Class::Block);
                    state.record(o.is_transient() && !report.unreachable, blocked);
                }
            }
        }
        if !elsewhere {
            ready_at = ready_at.max(self.destinations[ix].shaping.ready_at(now));
        }
        let rng = &mut self.rng;
        let updated = react::apply(
            &self.policy.streams.get(stream).rules,
            &Attempted {
                envelope: &held.envelope,
                provider: &destination,
                source: &self.policy.egress.source(d.source).name,
                started,
                now,
                learned_greylist: learned,
                down: report.unreachable,
                ready_at,
                mailbox_ready,
                elsewhere,
            },
            held.group,
            outcomes,
            || rng.f64(),
        );
        let updated = self.end_after_attempt(&key, &held.envelope, updated, now);
        let pending = self.finish(&held.envelope, &updated.group);
        if let Some(e) = self.entries.get_mut(&key) {
            e.last_source = Some(d.source);
        }
        self.out.push(Effect::Persist(Box::new(Persist {
            envelope: held.envelope,
            updated,
            body: held.body,
            pending,
        })));
        self.release_due(now);
        self.start_workers(ix, now);
    }

    /// A group is back from its attempt; it stays held until its state is committed.
    /// Returns its attempts when it is still pending.
    fn finish(&mut self, envelope: &Arc<Envelope>, group: &Group) -> Option<usize> {
        let key = (envelope.id, self.intern(&group.domain));
        match group.next_attempt.filter(|_| !group.is_done()) {
            Some(due) => {
                let attempts = group.attempts();
                let entry = self.entries.get_mut(&key)?;
                (entry.pending, entry.deferred) = group.counts();
                entry.mailbox = group.mailbox();
                entry.not_before = group.greylisted_until();
                entry.held = Some(Box::new(Held {
                    envelope: envelope.clone(),
                    group: group.clone(),
                    body: None,
                }));
                entry.uncommitted = Some(attempts);
                self.reschedule(key, due);
                Some(attempts)
            }
            None => {
                self.entries.remove(&key);
                None
            }
        }
    }

    fn committed(&mut self, id: MessageId, domain: &str, attempts: usize) {
        let key = (id, self.intern(domain));
        if let Some(e) = self.entries.get_mut(&key)
            && e.uncommitted == Some(attempts)
        {
            e.uncommitted = None;
            if !e.in_flight {
                e.held = None;
            }
        }
    }

    /// Expires groups that outlived `max_age` waiting in a ready queue (a paused or
    /// throttled destination), without spending an attempt on them.
    fn sweep_expired(&mut self, now: Timestamp) {
        let streams = &self.policy.streams;
        let expires = |e: &Entry| e.received_at + streams.get(e.stream).lifetime() <= now;
        let mut expired = Vec::new();
        for d in self.destinations.iter_mut() {
            let entries = &self.entries;
            d.retain_ready(|key| match entries.get(key) {
                Some(e) if !e.in_flight && expires(e) => {
                    expired.push(key.clone());
                    false
                }
                Some(_) => true,
                None => false,
            });
        }
        // Suspended groups expire as waiting ones do.
        let parked: Vec<Key> = self
            .parked
            .iter()
            .filter(|k| {
                self.entries
                    .get(*k)
                    .is_some_and(|e| !e.in_flight && expires(e))
            })
            .cloned()
            .collect();
        for key in &parked {
            self.parked.remove(key);
        }
        expired.extend(parked);
        for key in expired {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            entry.in_flight = true;
            match entry.held.take() {
                Some(held) => self.expire_loaded(*held, now),
                None => self.out.push(Effect::Load {
                    id: key.0,
                    domain: key.1.to_string(),
                }),
            }
        }
    }

    fn expire_loaded(&mut self, held: Held, now: Timestamp) {
        let key = (held.envelope.id, self.intern(&held.group.domain));
        let stream = self.entries.remove(&key).map_or(0, |e| e.stream);
        let rules = &self.policy.streams.get(stream).rules;
        let updated = react::expire(rules, &held.envelope, held.group, now);
        self.out.push(Effect::Persist(Box::new(Persist {
            envelope: held.envelope,
            updated,
            body: held.body,
            pending: None,
        })));
    }

    pub fn summary(&self, now: Timestamp) -> Vec<DomainSummary> {
        let mut by_domain: BTreeMap<&str, DomainSummary> = BTreeMap::new();
        for (key, entry) in &self.entries {
            let domain = &key.1;
            let s = by_domain.entry(&**domain).or_insert_with(|| DomainSummary {
                domain: domain.to_string(),
                provider: self.provider_of.get(domain).map(|(p, _)| p.to_string()),
                queued: 0,
                deferred: 0,
                in_flight: 0,
                suspended: 0,
                oldest_age_seconds: 0,
                next_attempt: None,
            });
            s.deferred += entry.deferred as usize;
            s.queued += (entry.pending - entry.deferred) as usize;
            if entry.in_flight {
                s.in_flight += entry.pending as usize;
            }
            // Parked, or to be parked when it comes due.
            let parked = self.parked.contains(key) || self.suspended(key, None);
            if parked {
                s.suspended += entry.pending as usize;
            }
            s.oldest_age_seconds = s
                .oldest_age_seconds
                .max(now.since(entry.received_at).as_secs());
            if !entry.in_flight && !parked {
                s.next_attempt = Some(s.next_attempt.map_or(entry.due, |t| t.min(entry.due)));
            }
        }
        by_domain.into_values().collect()
    }

    /// How long the pending recipients have waited, per domain or provider (`knock queue
    /// shape`). A domain whose provider is not known yet counts under its own name.
    pub fn shape(&self, by: ShapeBy, now: Timestamp) -> QueueShape {
        let mut counter = shape::ShapeCounter::default();
        for ((_, domain), entry) in &self.entries {
            let name: &str = match by {
                ShapeBy::Domain => domain,
                ShapeBy::Provider => self.provider_of.get(domain).map_or(domain, |(p, _)| p),
            };
            counter.add(name, now.since(entry.received_at), u64::from(entry.pending));
        }
        counter.finish(by)
    }

    /// The providers of the domains in the queue and the groups in flight, for listing
    /// the queue from the spool.
    pub fn index(&self) -> QueueIndex {
        QueueIndex {
            providers: self
                .provider_of
                .iter()
                .map(|(d, (p, _))| (d.to_string(), p.to_string()))
                .collect(),
            in_flight: self
                .entries
                .iter()
                .filter(|(_, e)| e.in_flight)
                .map(|((id, d), _)| (*id, d.to_string()))
                .collect(),
        }
    }

    pub fn destination_views(&self, now: Timestamp) -> Vec<DestinationView> {
        // One pass over the queue and one over the providers, whatever their number.
        let mut waiting: HashMap<&str, Vec<(Timestamp, usize, Timestamp)>> = HashMap::new();
        for ((_, domain), e) in &self.entries {
            if let Some((p, _)) = self.provider_of.get(domain) {
                // By when it expires: the oldest by its stream's lifetime goes first.
                let expires = e.received_at + self.policy.streams.get(e.stream).lifetime();
                waiting
                    .entry(p)
                    .or_default()
                    .push((expires, e.pending as usize, e.due));
            }
        }
        let mut domains: HashMap<&str, Vec<String>> = HashMap::new();
        for (domain, (p, _)) in &self.provider_of {
            domains.entry(p).or_default().push(domain.to_string());
        }
        // A provider reached from several sources drains at their rates together; each of
        // its destinations shows the provider's queue.
        let mut rates: HashMap<&str, Option<f64>> = HashMap::new();
        for d in &self.destinations {
            let rate = d.shaping.drain_rate().filter(|r| *r > 0.0);
            rates
                .entry(&d.name)
                .and_modify(|sum| {
                    *sum = match (*sum, rate) {
                        (Some(a), Some(b)) => Some(a + b),
                        _ => None,
                    }
                })
                .or_insert(rate);
        }
        let mut views: Vec<DestinationView> = self
            .destinations
            .iter()
            .enumerate()
            .map(|(ix, d)| {
                let rate = rates.get(&*d.name).copied().flatten();
                let queue = waiting.get(&*d.name).cloned().unwrap_or_default();
                let drain = self.drain(rate, queue, now);
                let mut domains = domains.get(&*d.name).cloned().unwrap_or_default();
                domains.sort();
                DestinationView {
                    destination: d.name.to_string(),
                    source: self
                        .policy
                        .egress
                        .has_several()
                        .then(|| self.policy.egress.source(d.source).name.to_string()),
                    blocked_until: self
                        .blocked
                        .get(&(d.name.clone(), d.source))
                        .copied()
                        .filter(|until| *until > now),
                    limits: d.quota.view(now),
                    waiting_for_connection: self
                        .awaiting_slot
                        .contains(&ix)
                        .then(|| self.slot_cap(d.source))
                        .flatten(),
                    warmup: d.warmup.as_ref().map(|(ramp, state)| WarmupView {
                        day: state.day,
                        done: ramp.done(state.day),
                        attempts_today: state.attempts,
                        deferrals_today: state.deferrals,
                        last_step: state.last.as_ref().map(|(step, _)| *step),
                        why: state.last.as_ref().map(|(_, why)| why.clone()),
                    }),
                    domains,
                    ready: d.ready_len(),
                    ready_by_stream: d
                        .ready_by_stream()
                        .enumerate()
                        .filter(|(_, n)| *n > 0)
                        .map(|(i, n)| (self.policy.streams.get(i as StreamIx).name.to_string(), n))
                        .collect(),
                    connections_open: d.workers,
                    shaping: d.shaping.view(now),
                    greylist_delay_seconds: d.greylist_delay.map(|g| g.as_secs()),
                    pending: drain.pending,
                    drain_seconds: drain.seconds,
                    expiring_before_drain: drain.expiring,
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.destination, &a.source).cmp(&(&b.destination, &b.source)));
        views
    }

    /// The queue of one destination: how many wait, how long it takes to drain (at the
    /// rate the destination allows, and no sooner than each group's next attempt), and how
    /// many would expire first (oldest go first).
    fn drain(
        &self,
        rate: Option<f64>,
        mut received: Vec<(Timestamp, usize, Timestamp)>,
        now: Timestamp,
    ) -> Drain {
        received.sort();
        let pending = received.iter().map(|(_, n, _)| n).sum();
        let mut expiring = 0;
        let mut last = now;
        let mut ahead = 0usize;
        for (expires, n, due) in &received {
            ahead += n;
            let turn = match rate {
                Some(rate) => now + Duration::from_secs_f64(ahead as f64 / rate),
                None => now,
            };
            let turn = turn.max(*due);
            last = last.max(turn);
            if *expires < turn {
                expiring += n;
            }
        }
        Drain {
            pending,
            seconds: (rate.is_some() || last > now).then(|| last.since(now).as_secs_f64()),
            expiring,
        }
    }
}

/// Whether the next job of stream `lane` is from the null sender (a DSN): it spends no
/// rate token.
fn front_is_null_sender(d: &Destination, lane: StreamIx, entries: &HashMap<Key, Entry>) -> bool {
    d.front_of(lane)
        .and_then(|k| entries.get(k))
        .is_some_and(|e| e.null_sender)
}

/// How often waiting groups are checked for expiry: often enough that expiry is late by at
/// most a tenth of the shortest lifetime, and at least every minute.
fn sweep_interval(streams: &Streams) -> Duration {
    (streams.shortest_lifetime() / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

#[cfg(test)]
mod tests;
