//! The scheduler: the one task that owns queue state and timing. It keeps every pending
//! (message, domain) group in a due-time index, moves due groups to their domain's ready
//! queue, and starts delivery workers up to the domain's connection limit. Workers and the
//! API talk to it only through [`Command`]s on its channel.
//!
//! Not owned here: durability (workers commit to the spool before they report) and what an
//! outcome means (dispatch and the retry schedule).

use crate::dispatch::Dispatcher;
use crate::message::{Envelope, Group, MessageId, State};
use crate::time::Timestamp;
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// One group handed to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub envelope: Arc<Envelope>,
    pub group: Group,
    /// The message, when still in memory; workers read the spool otherwise.
    pub body: Option<Bytes>,
}

pub enum Command {
    /// New or recovered groups, due at their `next_attempt`.
    Enqueue(Vec<Job>),
    /// A worker for `domain` is free: the next ready job, or `None` and the worker ends.
    Next {
        domain: String,
        reply: oneshot::Sender<Option<Job>>,
    },
    /// A worker has finished a job and committed its new state.
    Done { id: MessageId, group: Group },
    /// Per-domain summary for `knock queue`.
    Summary {
        reply: oneshot::Sender<Vec<DomainSummary>>,
    },
}

/// What `knock queue` shows for one domain.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DomainSummary {
    pub domain: String,
    pub queued: usize,
    pub deferred: usize,
    pub in_flight: usize,
    pub oldest_age_seconds: u64,
    pub next_attempt: Option<Timestamp>,
}

/// The handle everyone else holds.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SchedulerHandle {
    pub fn enqueue(&self, jobs: Vec<Job>) {
        let _ = self.tx.send(Command::Enqueue(jobs));
    }

    pub async fn next_job(&self, domain: &str) -> Option<Job> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Next {
                domain: domain.to_string(),
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    pub fn done(&self, id: MessageId, group: Group) {
        let _ = self.tx.send(Command::Done { id, group });
    }

    pub async fn summary(&self) -> Vec<DomainSummary> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Summary { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

pub fn channel() -> (SchedulerHandle, mpsc::UnboundedReceiver<Command>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (SchedulerHandle { tx }, rx)
}

type Key = (MessageId, String);

struct Entry {
    envelope: Arc<Envelope>,
    group: Group,
    body: Option<Bytes>,
    due: Timestamp,
    in_flight: bool,
}

pub struct Scheduler {
    rx: mpsc::UnboundedReceiver<Command>,
    dispatcher: Dispatcher,
    max_connections: usize,
    entries: HashMap<Key, Entry>,
    due: BTreeSet<(Timestamp, Key)>,
    ready: HashMap<String, VecDeque<Key>>,
    workers: HashMap<String, usize>,
    stopping: bool,
}

impl Scheduler {
    pub fn new(
        rx: mpsc::UnboundedReceiver<Command>,
        dispatcher: Dispatcher,
        max_connections: usize,
    ) -> Self {
        Scheduler {
            rx,
            dispatcher,
            max_connections,
            entries: HashMap::new(),
            due: BTreeSet::new(),
            ready: HashMap::new(),
            workers: HashMap::new(),
            stopping: false,
        }
    }

    /// Runs until `shutdown`, then until the running workers have reported (at most
    /// `grace`); whatever is left stays in the spool for the next start.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        loop {
            let wake = self.due.first().map(|(at, _)| *at);
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                _ = sleep_until(wake), if wake.is_some() && !self.stopping => self.release_due(),
                _ = shutdown.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    self.ready.clear();
                }
            }
            if self.stopping && self.workers.values().all(|&n| n == 0) {
                return;
            }
            if self.stopping {
                // Let running workers finish and report, but not forever.
                let deadline = tokio::time::Instant::now() + grace;
                while self.workers.values().any(|&n| n > 0) {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(cmd)) => self.handle(cmd),
                        _ => return,
                    }
                }
                return;
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue(jobs) => {
                for job in jobs {
                    self.insert(job);
                }
                self.release_due();
            }
            Command::Next { domain, reply } => match self.take_ready(&domain) {
                Some(job) => {
                    if let Err(Some(job)) = reply.send(Some(job)) {
                        // The worker is gone: its job goes back to be dispatched again.
                        self.worker_ended(&domain);
                        self.requeue(job);
                        self.start_workers(&domain);
                    }
                }
                None => {
                    self.worker_ended(&domain);
                    let _ = reply.send(None);
                }
            },
            Command::Done { id, group } => self.finish(id, group),
            Command::Summary { reply } => {
                let _ = reply.send(self.summary());
            }
        }
    }

    fn insert(&mut self, job: Job) {
        let Some(due) = job.group.next_attempt else {
            return;
        };
        if job.group.is_done() {
            return;
        }
        let key = (job.envelope.id, job.group.domain.clone());
        self.due.insert((due, key.clone()));
        self.entries.insert(
            key,
            Entry {
                envelope: job.envelope,
                group: job.group,
                body: job.body,
                due,
                in_flight: false,
            },
        );
    }

    /// Moves every group whose time has come to its domain's ready queue.
    fn release_due(&mut self) {
        if self.stopping {
            return;
        }
        let now = Timestamp::now();
        let mut touched = BTreeSet::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.due.pop_first().expect("first exists");
            touched.insert(key.1.clone());
            self.ready.entry(key.1.clone()).or_default().push_back(key);
        }
        for domain in touched {
            self.start_workers(&domain);
        }
    }

    fn start_workers(&mut self, domain: &str) {
        while !self.stopping {
            let running = self.workers.get(domain).copied().unwrap_or(0);
            if running >= self.max_connections {
                return;
            }
            let Some(job) = self.take_ready(domain) else {
                return;
            };
            *self.workers.entry(domain.to_string()).or_default() += 1;
            self.dispatcher.spawn_worker(domain.to_string(), job);
        }
    }

    fn take_ready(&mut self, domain: &str) -> Option<Job> {
        let queue = self.ready.get_mut(domain)?;
        while let Some(key) = queue.pop_front() {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.in_flight = true;
                return Some(Job {
                    envelope: entry.envelope.clone(),
                    group: entry.group.clone(),
                    body: entry.body.take(),
                });
            }
        }
        self.ready.remove(domain);
        None
    }

    fn requeue(&mut self, job: Job) {
        let key = (job.envelope.id, job.group.domain.clone());
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.in_flight = false;
            entry.body = job.body;
            self.ready.entry(key.1.clone()).or_default().push_front(key);
        }
    }

    fn worker_ended(&mut self, domain: &str) {
        if let Some(n) = self.workers.get_mut(domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.workers.remove(domain);
            }
        }
    }

    fn finish(&mut self, id: MessageId, group: Group) {
        let key = (id, group.domain.clone());
        match group.next_attempt.filter(|_| !group.is_done()) {
            Some(due) => {
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.group = group;
                    entry.in_flight = false;
                    entry.due = due;
                    entry.body = None;
                    self.due.insert((due, key));
                }
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    fn summary(&self) -> Vec<DomainSummary> {
        let now = Timestamp::now();
        let mut by_domain: BTreeMap<&str, DomainSummary> = BTreeMap::new();
        for ((_, domain), entry) in &self.entries {
            let s = by_domain
                .entry(domain.as_str())
                .or_insert_with(|| DomainSummary {
                    domain: domain.clone(),
                    queued: 0,
                    deferred: 0,
                    in_flight: 0,
                    oldest_age_seconds: 0,
                    next_attempt: None,
                });
            for r in entry.group.pending() {
                match r.state {
                    State::Deferred => s.deferred += 1,
                    _ => s.queued += 1,
                }
                if entry.in_flight {
                    s.in_flight += 1;
                }
            }
            s.oldest_age_seconds = s
                .oldest_age_seconds
                .max(now.since(entry.envelope.received_at).as_secs());
            if !entry.in_flight {
                s.next_attempt = Some(s.next_attempt.map_or(entry.due, |t| t.min(entry.due)));
            }
        }
        by_domain.into_values().collect()
    }
}

async fn sleep_until(at: Option<Timestamp>) {
    let wait = at
        .map(|t| t.until_now())
        .unwrap_or(Duration::from_secs(3600));
    tokio::time::sleep(wait).await;
}
