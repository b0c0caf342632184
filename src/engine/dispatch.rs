//! Delivery workers. The scheduler starts one per connection a destination may have; a
//! worker delivers a job, asks the scheduler for the destination's next job, and reuses its
//! connection for the same domain while it can. Each delivery is named steps: body →
//! connect → send → classify → next state per recipient → commit → tell (events, DSN, and
//! the scheduler, with a [`Report`] its shaping learns from).
//!
//! The class picks the knob here: a `throttle` deferral goes straight back to the ready
//! queue without a backoff step (the destination's shaping slows down instead); a
//! `greylist` deferral waits out the receiver's window (stated in the reply, learned for
//! the provider, or `[greylist] window`) and no longer; everything else transient takes the
//! recipient's own backoff.
//!
//! A worker reports by committing the group's new state and sending `Done`; it never edits
//! queue state itself. If a worker dies mid-delivery the spool still holds the old state,
//! so the recipients are tried again after a restart (at least once, never lost).

use crate::dsn;
use crate::engine::scheduler::{Held, Job, Queued, SchedulerHandle};
use crate::engine::spool::{Op, Spool, SpoolError};
use crate::event::{Event, Events, Kind};
use crate::message::{Attempt, Envelope, Group, MessageId, NewMessage, Recipient, State};
use crate::net::tls::TlsInfo;
use crate::net::transport::{Connection, Transport};
use crate::outcome::{Class, Disposition, Observed, Outcome};
use crate::policy::classify::{Classifier, stated_delay};
use crate::policy::provider::Providers;
use crate::policy::schedule::{Next, Schedule};
use crate::policy::shaping::Report;
use crate::policy::suppress::{self, Suppression, Suppressions};
use crate::reply::Enhanced;
use crate::time::Timestamp;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub transport: Arc<dyn Transport>,
    pub classifier: Arc<Classifier>,
    pub providers: Providers,
    pub spool: Arc<dyn Spool>,
    pub suppressions: Arc<Suppressions>,
    pub events: Events,
    pub schedule: Schedule,
    pub scheduler: SchedulerHandle,
    pub hostname: String,
    pub max_recipients_per_transaction: usize,
    /// The greylist wait when the reply states none and nothing was learned.
    pub greylist_window: Duration,
    /// The outbound STARTTLS policy, per destination.
    pub tls: crate::config::TlsConfig,
    /// Outcomes submitted and not yet on disk, at most [`MAX_UNCOMMITTED`]: if the disk
    /// stalls, workers stop instead of delivering on with nothing recorded (which a crash
    /// would turn into that many duplicates).
    pub uncommitted: Arc<tokio::sync::Semaphore>,
}

/// How many delivery outcomes may wait for the spool at once.
pub const MAX_UNCOMMITTED: usize = 1024;

/// Deferrals on one connection after which it is closed rather than reused: receivers
/// slow down and cut off error-heavy sessions.
const MAX_DEFERRALS_PER_CONNECTION: usize = 3;

impl Dispatcher {
    pub fn new(inner: Inner) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(inner),
        }
    }

    /// Starts a worker with its first job. Must not block: called by the scheduler task.
    pub fn spawn_worker(&self, job: Job) {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.work(job).await });
    }

    /// Finds `domain`'s provider from its MX hosts and tells the scheduler.
    pub fn find_provider(&self, domain: String) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let hosts = inner.transport.mx_hosts(&domain).await;
            let provider = inner.providers.name_for(&domain, &hosts);
            inner.scheduler.provider(domain, provider);
        });
    }

    /// Expires a group that outlived `max_age` while waiting, without an attempt.
    pub fn spawn_expire(&self, id: MessageId, domain: String, held: Option<Held>) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let held = match held {
                Some(held) => Some(held),
                None => match inner.read_back(id, &domain) {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::error!(%id, %domain, error = %e, "reading a group to expire failed; trying again later");
                        inner
                            .scheduler
                            .later(id, domain, Timestamp::now() + READ_RETRY);
                        return;
                    }
                },
            };
            if let Some(held) = held {
                let updated = inner.expire_waiting(&held.envelope, held.group, Timestamp::now());
                let (_, told) = inner.commit_and_tell(&held.envelope, updated, None);
                told.await;
            }
            inner.scheduler.forget(id, domain);
        });
    }
}

/// When a group the spool could not give back is tried again.
const READ_RETRY: Duration = Duration::from_secs(60);

/// A job with its envelope and group in hand.
struct Work {
    envelope: Arc<Envelope>,
    group: Group,
    body: Option<Bytes>,
    destination: Arc<str>,
    messages_per_connection: usize,
    greylist_delay: Option<Duration>,
}

/// An open connection: the domain it was opened for, and what it has carried.
struct Open {
    conn: Box<dyn Connection>,
    domain: String,
    sent: usize,
    deferrals: usize,
}

/// What one recipient's attempt came to.
struct Result1 {
    observed: Observed,
    mx: Option<String>,
    local_ip: Option<String>,
    tls: Option<TlsInfo>,
}

/// What an attempt saw beyond the replies, for the report.
#[derive(Default)]
struct Seen {
    connected: bool,
    unreachable: bool,
    latency: Option<Duration>,
}

struct Updated {
    group: Group,
    events: Vec<Event>,
    failed: Vec<dsn::Failure>,
}

impl Inner {
    async fn work(&self, first: Job) {
        let destination = first.destination.clone();
        let mut open: Option<Open> = None;
        let mut job = Some(first);
        while let Some(j) = job {
            self.deliver(&mut open, j).await;
            job = self.scheduler.next_job(&destination).await;
        }
        if let Some(open) = open {
            open.conn.quit().await;
        }
    }

    /// The job's envelope and group, held or read back from the spool; `None` when there
    /// is nothing to deliver (and the scheduler has been told).
    fn load(&self, job: Job) -> Option<Work> {
        let held = match job.held {
            Some(held) => held,
            None => match self.read_back(job.id, &job.domain) {
                Ok(Some(held)) => held,
                Ok(None) => {
                    self.scheduler.forget(job.id, job.domain.to_string());
                    return None;
                }
                Err(e) => {
                    tracing::error!(id = %job.id, domain = %job.domain, error = %e, "reading a queued group from the spool failed; trying again later");
                    let at = Timestamp::now() + READ_RETRY;
                    self.scheduler.later(job.id, job.domain.to_string(), at);
                    return None;
                }
            },
        };
        Some(Work {
            envelope: held.envelope,
            group: held.group,
            body: held.body,
            destination: job.destination,
            messages_per_connection: job.messages_per_connection,
            greylist_delay: job.greylist_delay,
        })
    }

    /// A group's envelope and state as the spool has them; `None` when the group is gone
    /// or final.
    fn read_back(&self, id: MessageId, domain: &str) -> Result<Option<Held>, SpoolError> {
        let Some((envelope, groups)) = self.spool.record(id)? else {
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

    async fn deliver(&self, open: &mut Option<Open>, job: Job) {
        let Some(job) = self.load(job) else {
            return;
        };
        // Even past max_age the attempt is made: expiry applies when it fails again, as
        // with Postfix's maximal_queue_lifetime, so a receiver that is back still gets it.
        let now = Timestamp::now();
        let (results, seen, body) = match self.body(&job.envelope, job.body.clone()) {
            Ok(body) => {
                let (results, seen) = self.attempt(open, &job, &body).await;
                (results, seen, Some(body))
            }
            Err(observed) => (
                same_for_all(&job.group, &observed, None),
                Seen::default(),
                None,
            ),
        };
        let outcomes: Vec<Outcome> = results
            .iter()
            .map(|r| self.classifier.outcome(&r.observed))
            .collect();
        let report = report(&job.group, &outcomes, &seen, now);
        if let Some(o) = open.as_mut() {
            o.deferrals += outcomes.iter().filter(|o| o.is_transient()).count();
        }
        let updated = self.apply(&job, results, outcomes, now);
        // The outcome takes its place in the commit order now; the worker goes on to the
        // next message while it is written. The spool holds the old state until then, so a
        // crash in between means another attempt (at least once), never a lost message.
        let permit = self.uncommitted.clone().acquire_owned().await;
        let (group, told) = self.commit_and_tell(&job.envelope, updated, body);
        let held = Held {
            envelope: job.envelope,
            group,
            body: None,
        };
        self.scheduler.done(held, job.destination, report);
        tokio::spawn(async move {
            told.await;
            drop(permit);
        });
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
        job: &Work,
        body: &[u8],
    ) -> (Vec<Result1>, Seen) {
        let group = &job.group;
        let mut seen = Seen::default();
        if let Some(o) = open.take_if(|o| {
            !o.conn.is_reusable()
                || o.domain != group.domain
                || o.sent >= job.messages_per_connection
                || o.deferrals >= MAX_DEFERRALS_PER_CONNECTION
        }) {
            o.conn.quit().await;
        }
        if open.is_none() {
            let policy = self.tls.policy_for(&group.domain, &job.destination);
            match self.transport.connect(&group.domain, policy).await {
                Ok(conn) => {
                    *open = Some(Open {
                        conn,
                        domain: group.domain.clone(),
                        sent: 0,
                        deferrals: 0,
                    })
                }
                Err(e) => {
                    seen.unreachable = e.unreachable;
                    return (same_for_all(group, &e.observed, e.mx), seen);
                }
            }
        }
        let o = open.as_mut().expect("opened above");
        seen.connected = true;
        let mx = o.conn.mx().to_string();
        let local_ip = o.conn.local_ip();
        let tls = o.conn.tls();
        let pending: Vec<&str> = group.pending().map(|r| r.address.as_str()).collect();
        let mut results = Vec::with_capacity(pending.len());
        for chunk in pending.chunks(self.max_recipients_per_transaction) {
            let replies = if o.conn.is_reusable() {
                o.conn
                    .send(&job.envelope.from, chunk, body)
                    .await
                    .per_recipient
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
                    tls: tls.clone(),
                });
            }
        }
        seen.latency = o.conn.take_slowest_reply();
        (results, seen)
    }

    /// Records each pending recipient's attempt and moves it to its next state.
    fn apply(
        &self,
        job: &Work,
        results: Vec<Result1>,
        outcomes: Vec<Outcome>,
        now: Timestamp,
    ) -> Updated {
        let envelope = &job.envelope;
        let mut group = job.group.clone();
        let mut events = Vec::new();
        let mut failed = Vec::new();
        let mut next_attempt: Option<Timestamp> = None;
        let pending = group.recipients.iter_mut().filter(|r| !r.state.is_final());
        for ((rcpt, result), o) in pending.zip(results).zip(outcomes) {
            let (state, retry_at) = match o.disposition {
                Disposition::Delivered => (State::Delivered, None),
                Disposition::Permanent => (State::Bounced, None),
                Disposition::Transient => {
                    match self.retry(envelope, rcpt, &o, job.greylist_delay, now) {
                        Next::RetryAt(at) => (State::Deferred, Some(at)),
                        Next::Expire => (State::Expired, None),
                    }
                }
            };
            rcpt.attempts.push(Attempt {
                at: now,
                mx: result.mx.clone(),
                local_ip: result.local_ip.clone(),
                code: o.code,
                enhanced: o.enhanced,
                text: o.text.clone(),
                class: o.class,
                tls: result.tls.clone(),
            });
            rcpt.state = state;
            let mut event = Event::new(
                Kind::from(state),
                envelope.id.to_string(),
                rcpt.address.clone(),
                group.domain.clone(),
                envelope.from.clone(),
            );
            event.provider = Some(job.destination.to_string());
            event.attempt = Some(rcpt.attempts.len() as u32);
            event.mx = result.mx.clone();
            event.local_ip = result.local_ip.clone();
            event.tls = result.tls.as_ref().map(|t| t.to_string());
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
                State::Queued | State::Suppressed => {
                    unreachable!("an attempt leaves a recipient deferred or final")
                }
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

    /// When a recipient that just failed temporarily is tried again: the class picks.
    fn retry(
        &self,
        envelope: &Envelope,
        rcpt: &Recipient,
        o: &Outcome,
        learned: Option<Duration>,
        now: Timestamp,
    ) -> Next {
        let received = envelope.received_at;
        let previous = rcpt.attempts.last().and_then(|a| a.class);
        match o.class {
            // The rate is the problem, not this message: back to the ready queue at once;
            // the destination's shaping decides when it goes.
            Some(Class::Throttle) => self.schedule.after(received, now, Duration::ZERO),
            // Wait out the window once; a second greylisting in a row is an ordinary failure.
            Some(Class::Greylist) if previous != Some(Class::Greylist) => {
                let window = stated_delay(&o.text)
                    .or(learned)
                    .unwrap_or(self.greylist_window);
                self.schedule.after(received, now, greylist_wait(window))
            }
            _ => {
                // Throttle deferrals spend no backoff step.
                let failures = rcpt
                    .attempts
                    .iter()
                    .filter(|a| a.class != Some(Class::Throttle))
                    .count() as u32
                    + 1;
                self.schedule.next(received, now, failures, fastrand::f64())
            }
        }
    }

    /// Expires every pending recipient of a group that waited past its lifetime; the last
    /// reply, if any, stays the reason.
    fn expire_waiting(&self, envelope: &Envelope, mut group: Group, now: Timestamp) -> Updated {
        let mut events = Vec::new();
        let mut failed = Vec::new();
        let age = humantime::format_duration(Duration::from_secs(
            now.since(envelope.received_at).as_secs(),
        ));
        for rcpt in group.recipients.iter_mut().filter(|r| !r.state.is_final()) {
            rcpt.state = State::Expired;
            let last = rcpt.attempts.last();
            let outcome = match last {
                Some(a) => Outcome {
                    disposition: Disposition::Transient,
                    class: a.class,
                    code: a.code,
                    enhanced: a.enhanced,
                    text: a.text.clone(),
                },
                None => Outcome {
                    disposition: Disposition::Transient,
                    class: None,
                    code: None,
                    enhanced: Some(Enhanced::new(4, 4, 7)),
                    text: format!("message expired after {age} in the queue"),
                },
            };
            let mx = last.and_then(|a| a.mx.clone());
            let mut event = Event::new(
                Kind::Expired,
                envelope.id.to_string(),
                rcpt.address.clone(),
                group.domain.clone(),
                envelope.from.clone(),
            );
            event.attempt = Some(rcpt.attempts.len() as u32);
            event.mx = mx.clone();
            event.code = outcome.code;
            event.enhanced = outcome.enhanced;
            event.text = Some(outcome.text.clone());
            event.class = outcome.class;
            events.push(event);
            failed.push(dsn::Failure {
                recipient: rcpt.address.clone(),
                mx,
                outcome,
                state: State::Expired,
            });
        }
        group.next_attempt = None;
        Updated {
            group,
            events,
            failed,
        }
    }

    /// Commits the new state (with the DSN, in the same transaction), then writes the
    /// events and queues the DSN.
    /// Submits the outcome to the spool (its DSN and suppressions with it) and returns the
    /// group's new state and what follows the commit: events, the suppression cache, the
    /// DSN's queueing. Submission happens before this returns, so outcomes of one group are
    /// written in order.
    fn commit_and_tell(
        &self,
        envelope: &Envelope,
        updated: Updated,
        body: Option<Bytes>,
    ) -> (Group, impl Future<Output = ()> + Send + 'static) {
        let mut ops = vec![Op::Update {
            id: envelope.id,
            group: updated.group.clone(),
        }];
        let bounce = if updated.failed.is_empty() || envelope.is_null_sender() {
            None
        } else {
            let original = body
                .or_else(|| self.spool.body(envelope.id).ok().flatten())
                .unwrap_or_default();
            dsn::build(&self.hostname, envelope, &original, &updated.failed)
        };
        if let Some(b) = &bounce {
            ops.push(Op::Store(b.clone()));
        }
        let hard: Vec<(String, Suppression)> = updated
            .failed
            .iter()
            .filter(|f| f.state == State::Bounced && f.outcome.class == Some(Class::Hard))
            .map(|f| {
                let entry = Suppression {
                    added_at: Timestamp::now(),
                    reason: f.outcome.diagnostic(),
                    message_id: Some(envelope.id.to_string()),
                };
                (f.recipient.clone(), entry)
            })
            .collect();
        ops.extend(hard.iter().map(|(address, entry)| Op::Suppress {
            address: suppress::key(address),
            entry: entry.clone(),
        }));
        let committing = self.spool.submit(ops);
        let (suppressions, events, scheduler) = (
            self.suppressions.clone(),
            self.events.clone(),
            self.scheduler.clone(),
        );
        let (id, told) = (envelope.id, updated.events);
        // Still pending: once on disk, the scheduler may let go of its memory copy.
        let pending = (!updated.group.is_done())
            .then(|| (updated.group.domain.clone(), updated.group.attempts()));
        let told = async move {
            match committing.await {
                Ok(()) => {
                    for (address, entry) in hard {
                        suppressions.insert(&address, entry);
                    }
                    if let Some((domain, attempts)) = pending {
                        scheduler.committed(id, domain, attempts);
                    }
                }
                Err(e) => {
                    tracing::error!(%id, error = %e, "could not record a delivery outcome; it will be retried after a restart");
                }
            }
            for event in told {
                events.emit(event).await;
            }
            if let Some(b) = bounce {
                emit_processed(&events, &b).await;
                scheduler.enqueue(queued(b));
            }
        };
        (updated.group, told)
    }
}

/// A greylist wait with a margin, so the retry lands after the window, never on its edge.
fn greylist_wait(window: Duration) -> Duration {
    window + (window / 20).max(Duration::from_millis(200))
}

/// What the destination's shaping learns from one delivery.
fn report(group: &Group, outcomes: &[Outcome], seen: &Seen, now: Timestamp) -> Report {
    let pending: Vec<&Recipient> = group.pending().collect();
    let greylist_cleared = pending
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.disposition == Disposition::Delivered)
        .filter_map(|(r, _)| {
            r.attempts
                .last()
                .filter(|a| a.class == Some(Class::Greylist))
                .map(|a| now.since(a.at))
        })
        .min();
    // A throttling reply at the greeting means too many connections; in a transaction,
    // too fast. Neither is an outage.
    let throttle = outcomes.iter().any(|o| o.class == Some(Class::Throttle));
    Report {
        accepted: outcomes
            .iter()
            .filter(|o| o.disposition == Disposition::Delivered)
            .count(),
        throttled: throttle && seen.connected,
        turned_away: throttle && !seen.connected,
        unreachable: seen.unreachable && !throttle,
        connected: seen.connected,
        latency: seen.latency,
        classes: outcomes.iter().filter_map(|o| o.class).collect(),
        greylist_cleared,
    }
}

/// The same observation for every pending recipient: nothing was said to any of them apart.
fn same_for_all(group: &Group, observed: &Observed, mx: Option<String>) -> Vec<Result1> {
    group
        .pending()
        .map(|_| Result1 {
            observed: observed.clone(),
            mx: mx.clone(),
            local_ip: None,
            tls: None,
        })
        .collect()
}

/// A new message's groups for the scheduler, body kept in memory for the first attempt.
pub fn queued(m: NewMessage) -> Vec<Queued> {
    let envelope = Arc::new(m.envelope);
    m.groups
        .into_iter()
        .filter_map(|group| Queued::held(envelope.clone(), group, Some(m.body.clone())))
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
