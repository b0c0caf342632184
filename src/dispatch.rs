//! Delivery workers. The scheduler starts one per connection a domain may have; a worker
//! delivers a job, asks the scheduler for the next job of the same domain, and reuses its
//! connection while it can. Each delivery is named steps: body → connect → send →
//! outcome per recipient → commit → tell (events, DSN, scheduler).
//!
//! A worker reports by committing the group's new state and sending `Done`; it never edits
//! queue state itself. If a worker dies mid-delivery the spool still holds the old state,
//! so the recipients are tried again after a restart (at least once, never lost).

use crate::classify::Classifier;
use crate::dsn;
use crate::event::{Event, Events, Kind};
use crate::message::{Attempt, Envelope, Group, NewMessage, State};
use crate::outcome::{Disposition, Observed};
use crate::reply::Enhanced;
use crate::schedule::{Next, Schedule};
use crate::scheduler::{Job, SchedulerHandle};
use crate::spool::{Op, Spool};
use crate::time::Timestamp;
use crate::transport::{Connection, Transport};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub transport: Arc<dyn Transport>,
    pub classifier: Arc<Classifier>,
    pub spool: Arc<dyn Spool>,
    pub events: Events,
    pub schedule: Schedule,
    pub scheduler: SchedulerHandle,
    pub hostname: String,
    pub messages_per_connection: usize,
    pub max_recipients_per_transaction: usize,
}

impl Dispatcher {
    pub fn new(inner: Inner) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(inner),
        }
    }

    /// Starts a worker for `domain` with its first job. Must not block: called by the
    /// scheduler task.
    pub fn spawn_worker(&self, domain: String, job: Job) {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.work(domain, job).await });
    }
}

/// An open connection and how many messages it has carried.
struct Open {
    conn: Box<dyn Connection>,
    sent: usize,
}

/// What one recipient's attempt came to.
struct Result1 {
    observed: Observed,
    mx: Option<String>,
    local_ip: Option<String>,
}

impl Inner {
    async fn work(&self, domain: String, first: Job) {
        let mut open: Option<Open> = None;
        let mut job = Some(first);
        while let Some(j) = job {
            self.deliver(&mut open, j).await;
            job = self.scheduler.next_job(&domain).await;
        }
        if let Some(open) = open {
            open.conn.quit().await;
        }
    }

    async fn deliver(&self, open: &mut Option<Open>, job: Job) {
        let Job {
            envelope,
            group,
            body,
        } = job;
        // Even past max_age the attempt is made: expiry applies when it fails again, as
        // with Postfix's maximal_queue_lifetime, so a receiver that is back still gets it.
        let now = Timestamp::now();
        let (results, body) = match self.body(&envelope, body) {
            Ok(body) => (
                self.attempt(open, &envelope, &group, &body).await,
                Some(body),
            ),
            Err(observed) => (same_for_all(&group, &observed, None), None),
        };
        let updated = self.apply(&envelope, group, results, now);
        self.finish(&envelope, updated, body).await;
    }

    fn body(&self, envelope: &Envelope, body: Option<Bytes>) -> Result<Bytes, Observed> {
        if let Some(body) = body {
            return Ok(body);
        }
        match self.spool.body(envelope.id) {
            Ok(Some(body)) => Ok(body),
            Ok(None) => {
                tracing::error!(id = %envelope.id, "message body missing from the spool");
                Err(Observed::local(
                    Enhanced::new(5, 3, 0),
                    "message body missing from the spool",
                ))
            }
            Err(e) => Err(Observed::local(
                Enhanced::new(4, 3, 0),
                format!("reading the spool: {e}"),
            )),
        }
    }

    /// One attempt at every pending recipient of the group: reuse or open a connection,
    /// then one transaction per batch of recipients.
    async fn attempt(
        &self,
        open: &mut Option<Open>,
        envelope: &Envelope,
        group: &Group,
        body: &[u8],
    ) -> Vec<Result1> {
        let pending: Vec<&str> = group.pending().map(|r| r.address.as_str()).collect();
        if let Some(o) =
            open.take_if(|o| !o.conn.is_reusable() || o.sent >= self.messages_per_connection)
        {
            o.conn.quit().await;
        }
        if open.is_none() {
            match self.transport.connect(&group.domain).await {
                Ok(conn) => *open = Some(Open { conn, sent: 0 }),
                Err(e) => return same_for_all(group, &e.observed, e.mx),
            }
        }
        let o = open.as_mut().expect("opened above");
        let mx = o.conn.mx().to_string();
        let local_ip = o.conn.local_ip();
        let mut results = Vec::with_capacity(pending.len());
        for chunk in pending.chunks(self.max_recipients_per_transaction) {
            let replies = if o.conn.is_reusable() {
                o.conn.send(&envelope.from, chunk, body).await.per_recipient
            } else {
                chunk
                    .iter()
                    .map(|_| Err("connection closed by the server".to_string()))
                    .collect()
            };
            o.sent += 1;
            for reply in replies {
                let observed = match reply {
                    Ok(reply) => Observed::Reply(reply),
                    Err(text) => Observed::network(format!("{mx}: {text}")),
                };
                results.push(Result1 {
                    observed,
                    mx: Some(mx.clone()),
                    local_ip: Some(local_ip.clone()),
                });
            }
        }
        results
    }

    /// Records each pending recipient's attempt and moves it to its next state.
    fn apply(
        &self,
        envelope: &Envelope,
        mut group: Group,
        results: Vec<Result1>,
        now: Timestamp,
    ) -> Updated {
        let mut events = Vec::new();
        let mut failed = Vec::new();
        let mut next_attempt: Option<Timestamp> = None;
        let pending = group.recipients.iter_mut().filter(|r| !r.state.is_final());
        for (rcpt, result) in pending.zip(results) {
            let o = &self.classifier.outcome(&result.observed);
            rcpt.attempts.push(Attempt {
                at: now,
                mx: result.mx.clone(),
                local_ip: result.local_ip.clone(),
                code: o.code,
                enhanced: o.enhanced,
                text: o.text.clone(),
                class: o.class,
            });
            let attempt = rcpt.attempts.len() as u32;
            let (state, retry_at) = match o.disposition {
                Disposition::Delivered => (State::Delivered, None),
                Disposition::Permanent => (State::Bounced, None),
                Disposition::Transient => {
                    match self
                        .schedule
                        .next(envelope.received_at, now, attempt, fastrand::f64())
                    {
                        Next::RetryAt(at) => (State::Deferred, Some(at)),
                        Next::Expire => (State::Expired, None),
                    }
                }
            };
            rcpt.state = state;
            let mut event = Event::new(
                Kind::from(state),
                envelope.id.to_string(),
                rcpt.address.clone(),
                group.domain.clone(),
                envelope.from.clone(),
            );
            event.attempt = Some(attempt);
            event.mx = result.mx.clone();
            event.local_ip = result.local_ip.clone();
            event.code = o.code;
            event.enhanced = o.enhanced;
            event.text = Some(o.text.clone());
            event.class = o.class;
            event.next_attempt = retry_at;
            match state {
                State::Delivered => {
                    event.ee_seconds = Some(now.since(envelope.received_at).as_secs_f64());
                }
                State::Deferred => {
                    // The group goes when its last deferred recipient may: never early.
                    next_attempt = next_attempt.max(retry_at);
                }
                State::Bounced | State::Expired => failed.push(dsn::Failure {
                    recipient: rcpt.address.clone(),
                    outcome: o.clone(),
                    mx: result.mx.clone(),
                    state,
                }),
                State::Queued => unreachable!("an attempt never leaves a recipient queued"),
            }
            events.push(event);
        }
        group.next_attempt = next_attempt;
        Updated {
            group,
            events,
            failed,
        }
    }

    /// Commits the new state (with the DSN, in the same transaction), then tells everyone.
    async fn finish(&self, envelope: &Envelope, updated: Updated, body: Option<Bytes>) {
        let Updated {
            group,
            events,
            failed,
        } = updated;
        let mut ops = vec![Op::Update {
            id: envelope.id,
            group: group.clone(),
        }];
        let bounce = if failed.is_empty() || envelope.is_null_sender() {
            None
        } else {
            let original = body
                .or_else(|| self.spool.body(envelope.id).ok().flatten())
                .unwrap_or_default();
            dsn::build(&self.hostname, envelope, &original, &failed)
        };
        if let Some(b) = &bounce {
            ops.push(Op::Store(b.clone()));
        }
        if let Err(e) = self.spool.commit(ops).await {
            tracing::error!(id = %envelope.id, error = %e, "could not record a delivery outcome; it will be retried after a restart");
        }
        for event in events {
            self.events.emit(event).await;
        }
        if let Some(b) = bounce {
            emit_processed(&self.events, &b).await;
            self.scheduler.enqueue(jobs_for(b));
        }
        self.scheduler.done(envelope.id, group);
    }
}

/// The same outcome for every pending recipient: nothing was said to any of them apart.
fn same_for_all(group: &Group, observed: &Observed, mx: Option<String>) -> Vec<Result1> {
    group
        .pending()
        .map(|_| Result1 {
            observed: observed.clone(),
            mx: mx.clone(),
            local_ip: None,
        })
        .collect()
}

/// A new message's groups as scheduler jobs, body kept in memory for the first attempt.
pub fn jobs_for(m: NewMessage) -> Vec<Job> {
    let envelope = Arc::new(m.envelope);
    m.groups
        .into_iter()
        .map(|group| Job {
            envelope: envelope.clone(),
            group,
            body: Some(m.body.clone()),
        })
        .collect()
}

/// One `processed` event per recipient of a newly accepted message.
pub async fn emit_processed(events: &Events, m: &NewMessage) {
    for g in &m.groups {
        for r in &g.recipients {
            let e = Event::new(
                Kind::Processed,
                m.envelope.id.to_string(),
                r.address.clone(),
                g.domain.clone(),
                m.envelope.from.clone(),
            );
            events.emit(e).await;
        }
    }
}

struct Updated {
    group: Group,
    events: Vec<Event>,
    failed: Vec<dsn::Failure>,
}
