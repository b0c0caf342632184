//! Delivery workers: they deliver and report, nothing else. The scheduler starts one per
//! connection a destination may have; a worker takes a job, reads the group and the message
//! from the spool when they are not in hand (on the blocking pool), reuses its connection
//! when it may (`policy::shaping::ConnectionUse`) or opens one, sends, and reports what it
//! observed for each recipient. Classification, the next state of each recipient, and what
//! the destination learns are the scheduler's (`policy::react`); writing the outcome is the
//! scheduler task's.
//!
//! Nothing is lost to a worker that dies: its job sits in a [`JobGuard`] whose `Drop`
//! hands the group back to the scheduler, and the worker itself in a [`WorkerGuard`] whose
//! `Drop` frees its connection slot. A panic or a cancelled task costs a retry, never a
//! message or a destination's capacity.

use crate::engine::handle::SchedulerHandle;
use crate::engine::scheduler::{Delivery, Held, Input, Job, Return, WorkerId};
use crate::engine::spool::{Spool, SpoolError};
use crate::message::{Group, MessageId};
use crate::net::smtp::client::{OutRcpt, Transaction};
use crate::net::transport::{Connection, Transport};
use crate::outcome::{Failure, FailureKind, Observed};
use crate::policy::react::{Seen, Where};
use crate::policy::shaping::ConnectionUse;
use crate::time::WallClock;
use bytes::Bytes;
use std::sync::Arc;

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub transport: Arc<dyn Transport>,
    pub spool: Arc<dyn Spool>,
    pub scheduler: SchedulerHandle,
    pub max_recipients_per_transaction: usize,
    /// The outbound STARTTLS policy, per destination.
    /// The outbound TLS policy per destination; a reload replaces it.
    pub tls: Arc<std::sync::RwLock<crate::config::TlsConfig>>,
    /// Outcomes reported and not yet on disk, at most [`MAX_UNCOMMITTED`]: if the disk
    /// stalls, workers stop instead of delivering on with nothing recorded (which a crash
    /// would turn into that many duplicates).
    pub uncommitted: Arc<tokio::sync::Semaphore>,
    pub clock: WallClock,
    /// Where workers run, so that shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
}

/// How many delivery outcomes may wait for the spool at once.
pub const MAX_UNCOMMITTED: usize = 1024;

impl Dispatcher {
    pub fn new(inner: Inner) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(inner),
        }
    }

    /// Starts a worker with its first job. Must not block: called by the scheduler task.
    pub fn spawn(&self, worker: WorkerId, job: Job) {
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { inner.work(worker, job).await });
    }
}

/// Holds a worker's job until its outcome is reported; dropped before that (a panic, a
/// cancelled task), it hands the job back to the scheduler.
pub struct JobGuard {
    worker: WorkerId,
    job: Option<Job>,
    scheduler: SchedulerHandle,
}

impl JobGuard {
    pub fn new(worker: WorkerId, job: Job, scheduler: SchedulerHandle) -> JobGuard {
        JobGuard {
            worker,
            job: Some(job),
            scheduler,
        }
    }

    pub fn job(&self) -> &Job {
        self.job.as_ref().expect("held until disarmed")
    }

    pub fn job_mut(&mut self) -> &mut Job {
        self.job.as_mut().expect("held until disarmed")
    }

    /// The job, now accounted for otherwise.
    pub fn disarm(mut self) -> Job {
        self.job.take().expect("held until disarmed")
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.scheduler.input(Input::Returned {
                worker: self.worker,
                job,
                why: Return::Abandoned,
            });
        }
    }
}

/// Holds a worker's connection slot; dropped, it tells the scheduler the worker is gone.
pub struct WorkerGuard {
    worker: WorkerId,
    scheduler: SchedulerHandle,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.scheduler.input(Input::WorkerGone {
            worker: self.worker,
        });
    }
}

/// An open connection and what it has carried.
struct Open {
    conn: Box<dyn Connection>,
    used: ConnectionUse,
    /// The TLS policy it was opened under.
    policy: crate::net::tls::Policy,
}

impl Inner {
    async fn work(&self, worker: WorkerId, first: Job) {
        let _alive = WorkerGuard {
            worker,
            scheduler: self.scheduler.clone(),
        };
        let mut open: Option<Open> = None;
        let mut job = Some(first);
        while let Some(j) = job {
            job = self.deliver(worker, &mut open, j).await;
        }
        if let Some(open) = open {
            open.conn.quit().await;
        }
    }

    /// Delivers one job and reports it; returns the next job, if any.
    async fn deliver(&self, worker: WorkerId, open: &mut Option<Open>, job: Job) -> Option<Job> {
        let mut guard = JobGuard::new(worker, job, self.scheduler.clone());
        if guard.job().held.is_none() {
            let (id, domain) = (guard.job().id, guard.job().domain.to_string());
            let spool = self.spool.clone();
            let read =
                tokio::task::spawn_blocking(move || read_back(spool.as_ref(), id, &domain)).await;
            let domain = guard.job().domain.to_string();
            match read {
                Ok(Ok(Some(held))) => guard.job_mut().held = Some(held),
                Ok(Ok(None)) => {
                    guard.disarm();
                    let gone = Input::Gone {
                        worker: Some(worker),
                        id,
                        domain,
                    };
                    return self.scheduler.next(worker, gone).await;
                }
                Ok(Err(e)) => {
                    tracing::error!(%id, %domain, error = %e, "reading a queued group from the spool failed; trying again later");
                    guard.disarm();
                    let unreadable = Input::Unreadable {
                        worker: Some(worker),
                        id,
                        domain,
                    };
                    return self.scheduler.next(worker, unreadable).await;
                }
                // The read panicked: the guard returns the job.
                Err(_) => return None,
            }
        }
        // Even past max_age the attempt is made: expiry applies when it fails again, as
        // with Postfix's maximal_queue_lifetime, so a receiver that is back still gets it.
        let started = self.clock.now();
        let held = guard.job().held.as_ref().expect("loaded above");
        let (envelope, body) = (held.envelope.clone(), held.body.clone());
        let body = match body {
            Some(body) => Ok(body),
            None => self.body(envelope.id).await,
        };
        let (results, seen) = match &body {
            Ok(body) => self.attempt(worker, open, guard.job(), body).await,
            Err(failure) => (
                same_for_all(
                    &held_group(&guard),
                    &failure.clone().into(),
                    None,
                    Vec::new(),
                ),
                Seen::default(),
            ),
        };
        if let Some(o) = open.as_mut() {
            o.used.deferrals += results.iter().filter(|(o, _)| o.is_transient()).count();
        }
        // The outcome takes its place in the commit order when it is reported; the worker
        // goes on to the next message while it is written. The spool holds the old state
        // until then, so a crash in between means another attempt, never a lost message.
        let permit = self.uncommitted.clone().acquire_owned().await.ok()?;
        let job = guard.disarm();
        let held = job.held.expect("loaded above");
        let delivery = Delivery {
            worker,
            destination: job.destination,
            source: job.source,
            held: Held {
                body: body.ok(),
                ..held
            },
            started,
            results,
            seen,
        };
        self.scheduler.delivered(delivery, permit).await
    }

    /// The message from the spool, read on the blocking pool.
    async fn body(&self, id: crate::message::MessageId) -> Result<Bytes, Failure> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.body(id)).await {
            Ok(Ok(Some(body))) => Ok(body),
            Ok(Ok(None)) => {
                tracing::error!(%id, "message body missing from the spool");
                Err(Failure::new(
                    FailureKind::SpoolMissing,
                    "message body missing from the spool",
                ))
            }
            Ok(Err(e)) => Err(Failure::new(
                FailureKind::SpoolUnreadable,
                format!("reading the spool: {e}"),
            )),
            Err(e) => Err(Failure::new(
                FailureKind::SpoolUnreadable,
                format!("reading the spool: {e}"),
            )),
        }
    }

    /// Whether the open connection may carry a group for `domain` under `policy`: it is
    /// alive and has room, and it was opened for that domain, or under the same TLS policy
    /// to an address that is the domain's first choice (every domain routed to one smart
    /// host, domains hosted on one provider's MX), as Postfix's connection cache looks up
    /// by address.
    async fn may_carry(
        &self,
        o: &mut Open,
        domain: &str,
        policy: crate::net::tls::Policy,
        messages_per_connection: usize,
    ) -> bool {
        if !o.conn.is_reusable() || !o.used.has_room(messages_per_connection) {
            return false;
        }
        if o.used.domain == domain {
            return true;
        }
        // Taken out before the lookup: a connection is not `Sync`, so no `&Open` may be
        // held across it (`&mut` is fine).
        let (same_policy, peer) = (o.policy == policy, o.conn.peer());
        same_policy && self.transport.first_choice(domain).await.contains(&peer)
    }

    /// One attempt at every pending recipient of the group: reuse or open a connection,
    /// then one transaction per batch of recipients.
    async fn attempt(
        &self,
        worker: WorkerId,
        open: &mut Option<Open>,
        job: &Job,
        body: &[u8],
    ) -> (Vec<(Observed, Where)>, Seen) {
        let held = job.held.as_ref().expect("loaded");
        let group = &held.group;
        let mut seen = Seen::default();
        let policy = self
            .tls
            .read()
            .expect("tls policy lock")
            .policy_for(&group.domain, &job.destination);
        if let Some(mut o) = open.take() {
            if self
                .may_carry(&mut o, &group.domain, policy, job.messages_per_connection)
                .await
            {
                *open = Some(o);
            } else {
                o.conn.quit().await;
            }
        }
        if open.is_none() {
            match self
                .transport
                .connect(&group.domain, policy, &job.from)
                .await
            {
                Ok(conn) => {
                    crate::metrics::connections_refused(&job.destination, conn.passed_over().len());
                    self.scheduler.input(Input::Greeted { worker });
                    *open = Some(Open {
                        conn,
                        used: ConnectionUse::new(&group.domain),
                        policy,
                    })
                }
                Err(e) => {
                    crate::metrics::connections_refused(&job.destination, e.tried.len());
                    seen.unreachable = e.unreachable;
                    return (same_for_all(group, &e.observed, e.mx, e.tried), seen);
                }
            }
        }
        let fresh = open.as_ref().is_some_and(|o| o.used.sent == 0);
        let o = open.as_mut().expect("opened above");
        seen.carried = o.used.sent;
        let at = Where {
            mx: Some(o.conn.mx().to_string()),
            local_ip: Some(o.conn.local_ip()),
            tls: o.conn.tls(),
            // Only the attempt that opened the connection passed hosts over.
            tried: match fresh {
                true => o.conn.passed_over().to_vec(),
                false => Vec::new(),
            },
            dsn: o.conn.offers_dsn(),
        };
        let mx = o.conn.mx().to_string();
        let pending: Vec<OutRcpt<'_>> = group
            .pending()
            .map(|r| OutRcpt {
                address: &r.address,
                notify: r.notify,
                orcpt: r.orcpt.as_deref(),
            })
            .collect();
        let mut results = Vec::with_capacity(pending.len());
        for chunk in pending.chunks(self.max_recipients_per_transaction) {
            let replies = if o.conn.is_reusable() {
                let tx = Transaction {
                    from: &held.envelope.from,
                    params: &held.envelope.params,
                    rcpts: chunk,
                    body,
                };
                o.conn.send(&tx).await
            } else {
                let closed = Failure::new(FailureKind::Closed, "connection closed by the server");
                chunk.iter().map(|_| Err(closed.clone())).collect()
            };
            o.used.sent += 1;
            for reply in replies {
                let observed = match reply {
                    Ok(reply) => Observed::Reply(reply),
                    Err(failure) => Observed::Failure(failure.at(&mx)),
                };
                results.push((observed, at.clone()));
            }
        }
        seen.latency = o.conn.take_slowest_reply();
        // The receiver is there if it greeted this connection or answered on it; a reused
        // connection that had gone stale says nothing about it.
        seen.connected = fresh || results.iter().any(|(o, _)| matches!(o, Observed::Reply(_)));
        (results, seen)
    }
}

/// A group's envelope and state as the spool has them; `None` when the group is gone or
/// final. Blocking: call it on the blocking pool.
pub fn read_back(
    spool: &dyn Spool,
    id: MessageId,
    domain: &str,
) -> Result<Option<Held>, SpoolError> {
    let Some((envelope, groups)) = spool.record(id)? else {
        return Ok(None);
    };
    let group = groups
        .into_iter()
        .find(|g| g.domain == domain && !g.is_done());
    Ok(group.map(|group| Held {
        envelope: Arc::new(envelope),
        group,
        body: None,
    }))
}

fn held_group(guard: &JobGuard) -> Group {
    guard.job().held.as_ref().expect("loaded").group.clone()
}

/// The same observation for every pending recipient: nothing was said to any of them apart.
fn same_for_all(
    group: &Group,
    observed: &Observed,
    mx: Option<String>,
    tried: Vec<crate::message::HostTried>,
) -> Vec<(Observed, Where)> {
    group
        .pending()
        .map(|_| {
            (
                observed.clone(),
                Where {
                    mx: mx.clone(),
                    tried: tried.clone(),
                    ..Default::default()
                },
            )
        })
        .collect()
}
