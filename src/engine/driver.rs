//! The scheduler task: runs the scheduler core on wall time. It is the one owner of the
//! [`Scheduler`]: it feeds it what the workers, the intake and the API send over the
//! channel (`engine::handle`) and the clock's ticks, and carries out its effects with
//! real I/O: workers started, jobs handed over, MX hosts looked up, groups read back on
//! the blocking pool, new states submitted to the spool in the order the core gave them,
//! and, once on disk, events written, suppressions kept and DSNs queued.

use crate::dsn;
use crate::engine::dispatch::{Dispatcher, read_back};
use crate::engine::handle::{Command, SchedulerHandle};
use crate::engine::scheduler::{Effect, Input, Job, Persist, Queued, Return, Scheduler, WorkerId};
use crate::engine::spool::{Op, Spool};
use crate::event::{self, Events};
use crate::net::transport::Transport;
use crate::policy::suppress::{self, Suppressions};
use crate::time::WallClock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the effects are carried out with.
pub struct Io {
    pub dispatcher: Dispatcher,
    pub transport: Arc<dyn Transport>,
    pub spool: Arc<dyn Spool>,
    pub events: Events,
    pub suppressions: Arc<Suppressions>,
    pub handle: SchedulerHandle,
    /// The name DSNs come from.
    pub hostname: String,
    /// Where effects run, so that shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
}

pub struct Driver {
    core: Scheduler,
    rx: mpsc::UnboundedReceiver<Command>,
    clock: WallClock,
    io: Io,
    /// Workers waiting for their next job, and where to send it.
    waiting: HashMap<WorkerId, oneshot::Sender<Option<Job>>>,
}

impl Driver {
    pub fn new(
        core: Scheduler,
        rx: mpsc::UnboundedReceiver<Command>,
        clock: WallClock,
        io: Io,
    ) -> Driver {
        Driver {
            core,
            rx,
            clock,
            io,
            waiting: HashMap::new(),
        }
    }

    /// Runs until `shutdown`, then until the running workers have reported (at most
    /// `grace`); whatever is left stays in the spool for the next start.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        loop {
            let wake = self.core.next_wake().map(|t| self.clock.instant(t));
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                _ = crate::time::sleep_until(wake) => self.feed(Input::Tick, None),
                _ = shutdown.cancelled() => break,
            }
        }
        self.feed(Input::Shutdown, None);
        // Let running workers finish and report, but not forever.
        let deadline = tokio::time::Instant::now() + grace;
        while self.core.workers() > 0 {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(cmd)) => self.command(cmd),
                _ => return,
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Input(input) => {
                if let Input::Returned {
                    job,
                    why: Return::Abandoned,
                    ..
                } = &input
                {
                    tracing::warn!(id = %job.id, domain = %job.domain, "a delivery was abandoned without an outcome (its worker panicked or was cancelled); trying again");
                }
                self.feed(input, None)
            }
            Command::Delivered {
                delivery,
                permit,
                next,
            } => {
                let worker = delivery.worker;
                self.waiting.insert(worker, next);
                self.feed(Input::Delivered(delivery), Some(permit));
                self.feed(Input::Idle { worker }, None);
            }
            Command::Next {
                input,
                worker,
                next,
            } => {
                self.waiting.insert(worker, next);
                self.feed(input, None);
                self.feed(Input::Idle { worker }, None);
            }
            Command::Summary { reply } => {
                let _ = reply.send(self.core.summary(self.clock.now()));
            }
            Command::Destinations { reply } => {
                let _ = reply.send(self.core.destination_views(self.clock.now()));
            }
            Command::Steer { op, reply } => {
                let steered = self.core.steer(op, self.clock.now());
                for effect in self.core.take_effects() {
                    if let Some(input) = self.effect(effect, &mut None) {
                        self.feed(input, None);
                    }
                }
                let _ = reply.send(steered);
            }
            Command::Suspensions { reply } => {
                let _ = reply.send(self.core.suspensions());
            }
            Command::Reconfigure(policy) => {
                self.core.reconfigure(*policy, self.clock.now());
                for effect in self.core.take_effects() {
                    if let Some(input) = self.effect(effect, &mut None) {
                        self.feed(input, None);
                    }
                }
            }
            Command::Shape { by, reply } => {
                let _ = reply.send(self.core.shape(by, self.clock.now()));
            }
            Command::Index { reply } => {
                let _ = reply.send(self.core.index());
            }
        }
    }

    /// Tells the core, and carries out what follows (which may tell it more).
    fn feed(&mut self, input: Input, mut permit: Option<OwnedSemaphorePermit>) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for effect in self.core.handle(input, self.clock.now()) {
                if let Some(input) = self.effect(effect, &mut permit) {
                    inputs.push(input);
                }
            }
        }
    }

    /// Carries out one effect; returns what the core must hear back at once, if anything.
    fn effect(
        &mut self,
        effect: Effect,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<Input> {
        match effect {
            Effect::Start { worker, job } => self.io.dispatcher.spawn(worker, job),
            Effect::Assign { worker, job } => {
                let sent = match self.waiting.remove(&worker) {
                    Some(next) => next.send(Some(job)),
                    None => Err(Some(job)),
                };
                if let Err(Some(job)) = sent {
                    // The worker is gone: its job goes back to the front.
                    return Some(Input::Returned {
                        worker,
                        job,
                        why: Return::NotStarted,
                    });
                }
            }
            Effect::Dismiss { worker } => {
                if let Some(next) = self.waiting.remove(&worker) {
                    let _ = next.send(None);
                }
            }
            Effect::LookUp { domain } => {
                let (transport, handle) = (self.io.transport.clone(), self.io.handle.clone());
                self.io.tasks.spawn(async move {
                    let hosts = transport.mx_hosts(&domain).await;
                    handle.input(Input::MxHosts { domain, hosts });
                });
            }
            Effect::Load { id, domain } => {
                let (spool, handle) = (self.io.spool.clone(), self.io.handle.clone());
                self.io.tasks.spawn(async move {
                    let read = {
                        let (spool, domain) = (spool.clone(), domain.clone());
                        tokio::task::spawn_blocking(move || read_back(spool.as_ref(), id, &domain))
                            .await
                    };
                    handle.input(match read {
                        Ok(Ok(Some(mut held))) => {
                            held.body = spool_body(&spool, id).await;
                            Input::Loaded(held)
                        }
                        Ok(Ok(None)) => Input::Gone {
                            worker: None,
                            id,
                            domain,
                        },
                        Ok(Err(e)) => {
                            tracing::error!(%id, %domain, error = %e, "reading a group to expire failed; trying again later");
                            Input::Unreadable {
                                worker: None,
                                id,
                                domain,
                            }
                        }
                        Err(_) => Input::Unreadable {
                            worker: None,
                            id,
                            domain,
                        },
                    });
                });
            }
            Effect::Persist(p) => self.persist(*p, permit.take()),
            Effect::SaveSource(r) => {
                let committing = self.io.spool.submit(vec![Op::Source(r)]);
                self.io.tasks.spawn(async move {
                    if let Err(e) = committing.await {
                        tracing::error!(error = %e, "a source's warm-up and counts could not be kept in the spool");
                    }
                });
            }
        }
        None
    }

    /// Submits a group's new state (with its DSN and suppressions, in one transaction),
    /// then, once it is on disk, writes the events, keeps the suppressions, queues the DSN
    /// and tells the core. Submission happens here, in the order the core gave, so the
    /// states of one group are written in order.
    fn persist(&self, p: Persist, permit: Option<OwnedSemaphorePermit>) {
        let needs_dsn = !p.updated.reports.is_empty() && !p.envelope.is_null_sender();
        if needs_dsn && p.body.is_none() {
            // Only a group expired while waiting comes without its message; it is final, so
            // nothing of it is submitted after this and the read may come first.
            let spool = self.io.spool.clone();
            let tell = self.teller();
            self.io.tasks.spawn(async move {
                let body = spool_body(&spool, p.envelope.id).await;
                tell.submit(Persist { body, ..p }, permit);
            });
            return;
        }
        self.teller().submit(p, permit);
    }

    fn teller(&self) -> Teller {
        Teller {
            spool: self.io.spool.clone(),
            events: self.io.events.clone(),
            suppressions: self.io.suppressions.clone(),
            handle: self.io.handle.clone(),
            hostname: self.io.hostname.clone(),
            clock: self.clock,
            tasks: self.io.tasks.clone(),
        }
    }
}

/// What a persisted state is told with.
struct Teller {
    spool: Arc<dyn Spool>,
    events: Events,
    suppressions: Arc<Suppressions>,
    handle: SchedulerHandle,
    hostname: String,
    clock: WallClock,
    tasks: tokio_util::task::TaskTracker,
}

impl Teller {
    fn submit(self, p: Persist, permit: Option<OwnedSemaphorePermit>) {
        let Persist {
            envelope,
            updated,
            body,
            pending,
        } = p;
        let (id, domain) = (envelope.id, updated.group.domain.clone());
        let bounce = dsn::build(
            &self.hostname,
            &envelope,
            body.as_deref().unwrap_or_default(),
            &updated.reports,
            self.clock.now(),
        );
        let mut ops = vec![Op::Update {
            id,
            group: updated.group,
        }];
        let mut events = updated.events;
        // The DSN's own acceptance, told (and outboxed) with it.
        let mut dsn_events = bounce
            .as_ref()
            .map(|b| event::processed(b, self.clock.now()))
            .unwrap_or_default();
        if let Some(b) = &bounce {
            ops.push(Op::Store(b.clone()));
        }
        ops.extend(self.events.outbox(&mut events).map(Op::Outbox));
        ops.extend(self.events.outbox(&mut dsn_events).map(Op::Outbox));
        ops.extend(
            updated
                .suppress
                .iter()
                .map(|(address, entry)| Op::Suppress {
                    address: suppress::key(address),
                    entry: entry.clone(),
                }),
        );
        // What to write again if this commit fails. A final state comes alone: nothing of
        // its group is submitted after it, so writing it later cannot undo a newer state. A
        // state still pending is written whole by the group's next attempt (the scheduler
        // keeps it in memory until it is committed); only its DSN and suppressions, which
        // that attempt will not carry, are written again.
        let again: Vec<Op> = match pending {
            None => ops.clone(),
            Some(_) => ops
                .iter()
                .filter(|op| !matches!(op, Op::Update { .. }))
                .cloned()
                .collect(),
        };
        let committing = self.spool.submit(ops);
        let suppressed = updated.suppress;
        let tasks = self.tasks.clone();
        tasks.spawn(async move {
            let stored = match committing.await {
                Ok(()) => {
                    if let Some(attempts) = pending {
                        self.handle.input(Input::Committed {
                            id,
                            domain,
                            attempts,
                        });
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(%id, error = %e, "could not record a delivery outcome; writing it again");
                    again.is_empty() || self.commit_again(id, again).await
                }
            };
            if stored {
                for (address, entry) in suppressed {
                    self.suppressions.insert(&address, entry);
                }
            }
            for e in events {
                self.events.emit(e).await;
            }
            if let Some(b) = bounce.filter(|_| stored) {
                for e in dsn_events {
                    self.events.emit(e).await;
                }
                self.handle.enqueue(Queued::new_message(b));
            }
            drop(permit);
        });
    }

    /// Commits `ops` again until the spool takes them (it reopens itself after a failed
    /// write), waiting longer each time; `false` once the spool is shut down, when the next
    /// start finds the old state and tries again.
    async fn commit_again(&self, id: crate::message::MessageId, ops: Vec<Op>) -> bool {
        let mut wait = Duration::from_millis(200);
        loop {
            tokio::time::sleep(wait).await;
            match self.spool.submit(ops.clone()).await {
                Ok(()) => return true,
                Err(crate::engine::spool::SpoolError::Closed) => return false,
                Err(e) => {
                    tracing::error!(%id, error = %e, "could not record a delivery outcome; trying again");
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The message body from the spool, read on the blocking pool; `None` when it cannot be
/// had.
async fn spool_body(spool: &Arc<dyn Spool>, id: crate::message::MessageId) -> Option<bytes::Bytes> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || spool.body(id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}
