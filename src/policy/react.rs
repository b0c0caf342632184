//! Reacting to an outcome: the class picks the knob, never the other way round.
//!
//! | outcome | knob |
//! | --- | --- |
//! | delivered | done; the destination counts a clean delivery |
//! | permanent | bounce now, a DSN to the sender; a `hard` bounce also suppresses the address |
//! | transient `greylist` (first in a row) | wait out the receiver's window: stated in the reply, else learned for the provider, else `[greylist] window`; never earlier |
//! | transient `throttle` | back to the ready queue at once without a backoff step; the destination slows down instead |
//! | any other transient | the recipient's own backoff (`[retry] schedule`, with jitter) |
//! | transient at or past `max_age` | expire, a DSN to the sender |
//! | a group that waited past `max_age` | expire every pending recipient without an attempt |
//!
//! What the *destination* learns from a delivery (too fast, too many connections, down,
//! slow) is [`destination_report`]; shaping applies it.
//!
//! Everything here is a pure function of the outcome, the recipient's history, the time
//! and a random roll, all passed in: the scheduler core calls it on wall time in the
//! engine and on virtual time in `knock simulate`.

use crate::control::Ending;
use crate::dsn::{self, Action};
use crate::event::{Event, Kind};
use crate::message::{Attempt, Envelope, Group, Recipient, State};
use crate::outcome::{Class, Disposition, Outcome};
use crate::policy::classify::stated_delay;
use crate::policy::schedule::{Next, Schedule};
use crate::policy::shaping::Report;
use crate::policy::suppress::Suppression;
use crate::reply::Enhanced;
use crate::time::Timestamp;
use std::time::Duration;

/// The rules reactions follow, from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub schedule: Schedule,
    /// The greylist wait when the reply states none and nothing was learned.
    pub greylist_window: Duration,
    /// A recipient whose sender asked `NOTIFY=DELAY` and that is still deferred this long
    /// after acceptance gets one delay warning; `None`: never.
    pub delay_warning: Option<Duration>,
}

/// The knob one outcome turns for its recipient.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub enum Knob {
    /// Delivered.
    Done,
    /// Refused for good: bounce now; `suppress` when the address itself is bad.
    Bounce { suppress: bool },
    /// Greylisted: retry once the window has passed, at this time.
    GreylistWait(Timestamp),
    /// Throttled: the rate is the problem, not this message; it may go again at once and the
    /// destination's pace decides when.
    Pace(Timestamp),
    /// Any other temporary failure: the recipient's own backoff.
    Backoff(Timestamp),
    /// Out of time: give up and tell the sender.
    Expire,
}

impl Knob {
    /// The recipient's state after the knob is turned.
    pub fn state(self) -> State {
        match self {
            Knob::Done => State::Delivered,
            Knob::Bounce { .. } => State::Bounced,
            Knob::GreylistWait(_) | Knob::Pace(_) | Knob::Backoff(_) => State::Deferred,
            Knob::Expire => State::Expired,
        }
    }

    /// When the recipient is tried again, if it is.
    pub fn retry_at(self) -> Option<Timestamp> {
        match self {
            Knob::GreylistWait(t) | Knob::Pace(t) | Knob::Backoff(t) => Some(t),
            _ => None,
        }
    }
}

/// What a recipient's earlier attempts say about the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct History {
    /// The class of the last attempt, if any.
    pub previous: Option<Class>,
    /// Temporary failures so far that count against the backoff (throttles, and attempts
    /// while the destination was down, do not).
    pub failures: u32,
    /// The recipient's own rate refusals in a row (a mailbox receiving too fast).
    pub mailbox_throttles: u32,
}

impl History {
    pub fn of(rcpt: &Recipient) -> History {
        History {
            previous: rcpt.attempts.last().and_then(|a| a.class),
            failures: rcpt
                .attempts
                .iter()
                .filter(|a| a.class != Some(Class::Throttle) && !a.down)
                .count() as u32,
            mailbox_throttles: rcpt
                .attempts
                .iter()
                .rev()
                .take_while(|a| {
                    a.class == Some(Class::Throttle) && a.enhanced.is_some_and(is_mailbox_rate)
                })
                .count() as u32,
        }
    }
}

/// The moment of a reaction: when the message came, now, the greylist delay learned for
/// the destination, whether the destination was down (every MX unreachable), and a roll in
/// `[0, 1)` for the jitter.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub received: Timestamp,
    pub now: Timestamp,
    pub learned_greylist: Option<Duration>,
    pub down: bool,
    /// When the recipient's mailbox takes mail again, when knock holds it to a rate of its
    /// own (it was refused for that rate): its own growing wait is not needed then.
    pub mailbox_ready: Option<Timestamp>,
    /// The earliest the destination starts another delivery: under a deadline, a retry
    /// that could not start before it is not waited for.
    pub ready_at: Timestamp,
    /// Another source of the pool may be used for this provider: a source the provider
    /// blocks defers its recipients to it instead of bouncing them.
    pub elsewhere: bool,
    pub roll: f64,
}

/// A throttle whose enhanced code is about the mailbox (`4.2.x`: "the user you are trying to
/// contact is receiving mail at a rate that prevents additional messages"): that recipient
/// is over its own rate, not the sender over the provider's.
pub fn is_mailbox_rate(e: Enhanced) -> bool {
    e.class == 4 && e.subject == 2
}

/// A refusal that says the server is busy ("Server busy. Please try again later"): load,
/// not a limit on this client.
pub fn is_server_busy(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("server busy") || t.contains("server is busy") || t.contains("system busy")
}

/// How long a recipient over its own mailbox's rate waits, by how many times in a row it
/// was refused so: it grows, as the destination's probes do, but only for that recipient.
const MAILBOX_WAITS: [u64; 8] = [30, 60, 120, 300, 600, 1200, 1800, 3600];

/// The knob for one outcome.
pub fn react(rules: &Rules, o: &Outcome, history: History, at: Moment) -> Knob {
    match o.disposition {
        Disposition::Delivered => Knob::Done,
        // The provider refuses this source, not the recipient: another source tries.
        _ if o.class == Some(Class::Block) && at.elsewhere => Knob::Pace(at.now),
        Disposition::Permanent => Knob::Bounce {
            suppress: o.class == Some(Class::Hard),
        },
        Disposition::Transient => transient(rules, o, history, at),
    }
}

fn transient(rules: &Rules, o: &Outcome, history: History, at: Moment) -> Knob {
    let schedule = &rules.schedule;
    let retry = |wait: Duration, knob: fn(Timestamp) -> Knob| {
        let wait = match schedule.is_strict() {
            true => wait.max(at.ready_at.since(at.now)),
            false => wait,
        };
        match schedule.after(at.received, at.now, wait) {
            Next::RetryAt(t) => knob(t),
            Next::Expire => Knob::Expire,
        }
    };
    match o.class {
        // The destination was down: the recipient goes again when a probe gets through,
        // and the attempt is not charged to it.
        _ if at.down => retry(Duration::ZERO, Knob::Pace),
        Some(Class::Throttle) if o.enhanced.is_some_and(is_mailbox_rate) => {
            if let Some(t) = at.mailbox_ready {
                return retry(t.since(at.now), Knob::Pace);
            }
            let k = (history.mailbox_throttles as usize).min(MAILBOX_WAITS.len() - 1);
            retry(Duration::from_secs(MAILBOX_WAITS[k]), Knob::Pace)
        }
        Some(Class::Throttle) => retry(Duration::ZERO, Knob::Pace),
        // Wait out the window once; a second greylisting in a row is an ordinary failure.
        Some(Class::Greylist) if history.previous != Some(Class::Greylist) => {
            let window = stated_delay(&o.text)
                .or(at.learned_greylist)
                .unwrap_or(rules.greylist_window);
            retry(greylist_wait(window), Knob::GreylistWait)
        }
        _ => {
            let mut wait = schedule.wait(history.failures + 1, at.roll);
            // A first retry before a greylisting the destination is known for would
            // only restart its clock.
            if history.failures == 0
                && let Some(window) = at.learned_greylist
            {
                wait = wait.max(greylist_wait(window));
            }
            retry(wait, Knob::Backoff)
        }
    }
}

/// A greylist wait with a margin, so the retry lands after the window, never on its edge.
pub fn greylist_wait(window: Duration) -> Duration {
    window + (window / 20).max(Duration::from_millis(200))
}

/// What one attempt at a recipient saw, beside the outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Where {
    pub mx: Option<String>,
    pub local_ip: Option<String>,
    pub tls: Option<crate::net::tls::TlsInfo>,
    /// MX hosts tried before (or instead of) `mx` that would not do, and what each did.
    pub tried: Vec<crate::message::HostTried>,
    /// The receiver offered DSN, so the sender's NOTIFY went on with the mail: success is
    /// the receiver's to report from there.
    pub dsn: bool,
}

/// What a delivery saw of the destination beyond the replies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Seen {
    /// A session was had (a probe that gets one ends an outage).
    pub connected: bool,
    /// Every MX host was tried and none would talk.
    pub unreachable: bool,
    /// Time to connect and greeting, and the slowest command reply.
    pub latency: Option<Duration>,
    /// Transactions the connection had carried before this attempt.
    pub carried: usize,
}

/// A group after an attempt or an expiry: its new state, the events that tell it, what
/// a DSN reports (failures, delays and success, as each sender asked) and the addresses to
/// suppress.
#[derive(Debug, Clone)]
pub struct Updated {
    pub group: Group,
    pub events: Vec<Event>,
    pub reports: Vec<dsn::Report>,
    pub suppress: Vec<(String, Suppression)>,
}

/// The attempt being applied: whose envelope, to which destination (`provider`, named in
/// the events), when it started, when it was reported, the greylist delay learned for the
/// destination, whether the destination was down, and the earliest time the destination
/// will start another delivery (its pause, window or probe).
pub struct Attempted<'a> {
    pub envelope: &'a Envelope,
    pub provider: &'a str,
    /// The source it went out of.
    pub source: &'a str,
    pub started: Timestamp,
    pub now: Timestamp,
    pub learned_greylist: Option<Duration>,
    pub down: bool,
    pub ready_at: Timestamp,
    /// See [`Moment::mailbox_ready`].
    pub mailbox_ready: Option<Timestamp>,
    /// See [`Moment::elsewhere`].
    pub elsewhere: bool,
}

/// Applies one attempt's outcomes to the group: the next state of each pending recipient
/// (in order), its attempt record, its event, and what the sender and the suppression list
/// are to be told. `roll` gives each recipient its jitter, in `[0, 1)`.
pub fn apply(
    rules: &Rules,
    a: &Attempted<'_>,
    mut group: Group,
    outcomes: Vec<(Outcome, Where)>,
    mut roll: impl FnMut() -> f64,
) -> Updated {
    let envelope = a.envelope;
    let mut events = Vec::with_capacity(outcomes.len());
    let mut reports = Vec::new();
    let mut suppress = Vec::new();
    let mut next_attempt: Option<Timestamp> = None;
    let id = envelope.id.to_string();
    let pending = group.recipients.iter_mut().filter(|r| !r.state.is_final());
    for (rcpt, (o, at)) in pending.zip(outcomes) {
        let moment = Moment {
            received: envelope.received_at,
            now: a.now,
            learned_greylist: a.learned_greylist,
            down: a.down,
            mailbox_ready: a.mailbox_ready,
            ready_at: a.ready_at,
            elsewhere: a.elsewhere,
            roll: roll(),
        };
        let knob = react(rules, &o, History::of(rcpt), moment);
        let (state, retry_at) = (knob.state(), knob.retry_at());
        rcpt.attempts.push(Attempt {
            at: a.started,
            mx: at.mx.clone(),
            source: Some(a.source.to_string()),
            local_ip: at.local_ip.clone(),
            code: o.code,
            enhanced: o.enhanced,
            text: o.text.clone(),
            class: o.class,
            failure: o.failure,
            tls: at.tls.clone(),
            down: a.down && o.is_transient(),
            tried: at.tried.clone(),
        });
        rcpt.state = state;
        let mut event = Event::about(
            Kind::from(state),
            a.now,
            envelope,
            rcpt.address.clone(),
            group.domain.clone(),
        );
        event.provider = Some(a.provider.to_string());
        event.source = Some(a.source.to_string());
        event.attempt = Some(rcpt.attempts.len() as u32);
        event.local_ip = at.local_ip;
        event.tls = at.tls.as_ref().map(|t| t.to_string());
        event.code = o.code;
        event.enhanced = o.enhanced;
        event.text = Some(o.text.clone());
        event.class = o.class;
        event.failure = o.failure;
        event.next_attempt = retry_at;
        if o.class == Some(Class::Auth) {
            event.reason = Some(auth_reason(&o.text, &envelope.from));
        }
        if a.elsewhere && o.class == Some(Class::Block) {
            event.reason = Some(format!(
                "{} blocks source {}: tried again from another source of the pool",
                a.provider, a.source
            ));
        }
        let report = |action: Action, o: Outcome, until: Option<Timestamp>| dsn::Report {
            recipient: rcpt.address.clone(),
            orcpt: rcpt.orcpt.clone(),
            action,
            outcome: o,
            mx: at.mx.clone(),
            state,
            operator: false,
            until,
        };
        match knob {
            Knob::Done => {
                event.ee_seconds = Some(a.now.since(envelope.received_at).as_secs_f64());
                // A receiver that offered DSN took NOTIFY on and reports success itself.
                if !at.dsn && Action::Relayed.wanted_for(rcpt) {
                    reports.push(report(Action::Relayed, o, None));
                }
            }
            // The group goes when its last deferred recipient may: never early.
            Knob::GreylistWait(t) | Knob::Pace(t) | Knob::Backoff(t) => {
                next_attempt = next_attempt.max(Some(t));
                let late = rules
                    .delay_warning
                    .is_some_and(|w| a.now.since(envelope.received_at) >= w);
                if late && !rcpt.warned && Action::Delayed.wanted_for(rcpt) {
                    rcpt.warned = true;
                    let until = rules.schedule.deadline(envelope.received_at);
                    reports.push(report(Action::Delayed, o, Some(until)));
                }
            }
            Knob::Bounce { .. } | Knob::Expire => {
                if knob == Knob::Expire {
                    event.reason = Some(expiry_reason(rules, envelope, a.now));
                }
                if let Knob::Bounce { suppress: true } = knob {
                    suppress.push((
                        rcpt.address.clone(),
                        Suppression {
                            added_at: a.now,
                            reason: o.diagnostic(),
                            message_id: Some(id.clone()),
                        },
                    ));
                }
                if Action::Failed.wanted_for(rcpt) {
                    reports.push(report(Action::Failed, o, None));
                }
            }
        }
        event.mx = at.mx;
        event.tried = at.tried;
        events.push(event);
    }
    // The group goes when its last deferred recipient may, and not before its destination
    // lets it: that is when each deferred recipient will really be tried.
    let tried_at = next_attempt.map(|t| t.max(a.ready_at).max(a.now));
    for e in events.iter_mut().filter(|e| e.next_attempt.is_some()) {
        e.next_attempt = tried_at;
    }
    group.next_attempt = next_attempt;
    Updated {
        group,
        events,
        reports,
        suppress,
    }
}

/// A limit knock imposes itself holds the group back until `until`: each pending recipient
/// gets a `deferred` event marked `internal`, with `reason`, and no attempt is recorded or
/// charged (its retry schedule is untouched).
pub fn defer_internal(
    envelope: &Envelope,
    mut group: Group,
    at: Imposed<'_>,
    until: Timestamp,
    reason: &str,
) -> Updated {
    let mut events = Vec::new();
    for rcpt in group.recipients.iter().filter(|r| !r.state.is_final()) {
        let mut event = Event::about(
            Kind::Deferred,
            at.now,
            envelope,
            rcpt.address.clone(),
            group.domain.clone(),
        );
        event.provider = Some(at.provider.to_string());
        event.source = Some(at.source.to_string());
        event.internal = true;
        event.reason = Some(reason.to_string());
        event.text = Some(reason.to_string());
        event.next_attempt = Some(until);
        events.push(event);
    }
    group.next_attempt = Some(until);
    Updated {
        group,
        events,
        reports: Vec::new(),
        suppress: Vec::new(),
    }
}

/// Where an internal deferral happens: the destination's provider and source, and when.
#[derive(Debug, Clone, Copy)]
pub struct Imposed<'a> {
    pub provider: &'a str,
    pub source: &'a str,
    pub now: Timestamp,
}

/// Why a recipient expired: its stream's deadline could not be met, or it outlived its
/// lifetime.
pub fn expiry_reason(rules: &Rules, envelope: &Envelope, now: Timestamp) -> String {
    let lifetime = humantime::format_duration(rules.schedule.max_age());
    let age = humantime::format_duration(Duration::from_secs(
        now.since(envelope.received_at).as_secs(),
    ));
    match rules.schedule.is_strict() {
        true => format!(
            "its delivery deadline ({lifetime} after acceptance) cannot be met; given up after {age}"
        ),
        false => {
            format!("it outlived its lifetime ({lifetime}) in the queue; given up after {age}")
        }
    }
}

/// Expires every pending recipient of a group that waited past its lifetime without an
/// attempt; the last reply, if any, stays the diagnostic, and the reason says which
/// lifetime.
pub fn expire(rules: &Rules, envelope: &Envelope, mut group: Group, now: Timestamp) -> Updated {
    let mut events = Vec::new();
    let mut failed = Vec::new();
    let age = humantime::format_duration(Duration::from_secs(
        now.since(envelope.received_at).as_secs(),
    ));
    let reason = expiry_reason(rules, envelope, now);
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
                failure: a.failure,
            },
            None => Outcome {
                disposition: Disposition::Transient,
                class: None,
                code: None,
                enhanced: Some(Enhanced::new(4, 4, 7)),
                text: format!("message expired after {age} in the queue"),
                failure: None,
            },
        };
        let mx = last.and_then(|a| a.mx.clone());
        let mut event = Event::about(
            Kind::Expired,
            now,
            envelope,
            rcpt.address.clone(),
            group.domain.clone(),
        );
        event.reason = Some(reason.clone());
        event.attempt = Some(rcpt.attempts.len() as u32);
        event.mx = mx.clone();
        event.code = outcome.code;
        event.enhanced = outcome.enhanced;
        event.text = Some(outcome.text.clone());
        event.class = outcome.class;
        event.failure = outcome.failure;
        events.push(event);
        if Action::Failed.wanted_for(rcpt) {
            failed.push(dsn::Report {
                recipient: rcpt.address.clone(),
                orcpt: rcpt.orcpt.clone(),
                action: Action::Failed,
                mx,
                outcome,
                operator: false,
                state: State::Expired,
                until: None,
            });
        }
    }
    group.next_attempt = None;
    Updated {
        group,
        events,
        reports: failed,
        suppress: Vec::new(),
    }
}

/// Ends every pending recipient of `group` as the operator asked (`actor` did it): each
/// gets its event, and a bounce with `dsn` its DSN entry.
pub fn end_by_operator(
    envelope: &Envelope,
    mut group: Group,
    how: &Ending,
    actor: &str,
    now: Timestamp,
) -> Updated {
    let mut events = Vec::new();
    let mut failed = Vec::new();
    for rcpt in group.recipients.iter_mut().filter(|r| !r.state.is_final()) {
        let (state, kind, enhanced, text) = match how {
            Ending::Cancel => (
                State::Cancelled,
                Kind::Cancelled,
                None,
                format!("cancelled by the operator ({actor})"),
            ),
            Ending::Bounce { .. } => (
                State::Bounced,
                Kind::Bounced,
                Some(Enhanced::new(5, 0, 0)),
                format!("bounced by the operator ({actor})"),
            ),
        };
        rcpt.state = state;
        let mut event = Event::about(
            kind,
            now,
            envelope,
            rcpt.address.clone(),
            group.domain.clone(),
        );
        event.attempt = Some(rcpt.attempts.len() as u32);
        event.enhanced = enhanced;
        event.text = Some(text.clone());
        event.actor = Some(actor.to_string());
        events.push(event);
        if matches!(how, Ending::Bounce { dsn: true }) && Action::Failed.wanted_for(rcpt) {
            failed.push(dsn::Report {
                recipient: rcpt.address.clone(),
                orcpt: rcpt.orcpt.clone(),
                action: Action::Failed,
                until: None,
                outcome: Outcome {
                    disposition: Disposition::Permanent,
                    class: None,
                    code: None,
                    enhanced,
                    text,
                    failure: None,
                },
                mx: None,
                state,
                operator: true,
            });
        }
    }
    group.next_attempt = None;
    Updated {
        group,
        events,
        reports: failed,
        suppress: Vec::new(),
    }
}

/// What the destination's shaping learns from one delivery of `group` (its pending
/// recipients, before the attempt) with these outcomes.
pub fn destination_report<'a>(
    group: &Group,
    outcomes: impl Iterator<Item = &'a Outcome> + Clone,
    seen: Seen,
    now: Timestamp,
) -> Report {
    let greylist_cleared = group
        .pending()
        .zip(outcomes.clone())
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
    // A mailbox over its own rate defers that recipient only; a receiver that says it is
    // busy is under load from everyone, not limiting this client (RECEIVERS.md: "server
    // busy"): neither is a rate to learn.
    let throttles = outcomes.clone().filter(|o| {
        o.class == Some(Class::Throttle)
            && !o.enhanced.is_some_and(is_mailbox_rate)
            && !is_server_busy(&o.text)
    });
    let throttle = throttles.clone().next().is_some();
    let session_cap = throttles.clone().any(|o| {
        let text = o.text.to_ascii_lowercase();
        text.contains("session") || text.contains("connection")
    });
    Report {
        started: now,
        greeted: 0,
        carried: seen.carried,
        session_cap,
        accepted: outcomes
            .clone()
            .filter(|o| o.disposition == Disposition::Delivered)
            .count(),
        throttled: throttle && seen.connected,
        turned_away: throttle && !seen.connected,
        unreachable: seen.unreachable && !throttle,
        connected: seen.connected,
        latency: seen.latency,
        classes: outcomes.filter_map(|o| o.class).collect(),
        greylist_cleared,
        // The scheduler knows which delivery was the probe.
        probe: false,
    }
}

/// The record an authentication failure's reply names, as people call it: DMARC before the
/// SPF and DKIM a DMARC failure also mentions; both SPF and DKIM when the reply asks for
/// either (Gmail's 5.7.26); reverse DNS for a missing PTR (Gmail's 5.7.25).
pub fn auth_record(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    let spf = t.contains("spf") || t.contains("sender policy");
    let dkim = t.contains("dkim");
    Some(if t.contains("dmarc") {
        "DMARC"
    } else if spf && dkim {
        "SPF and DKIM"
    } else if dkim {
        "DKIM"
    } else if spf {
        "SPF"
    } else if t.contains("ptr") || t.contains("reverse dns") || t.contains("rdns") {
        "reverse DNS (PTR)"
    } else {
        return None;
    })
}

/// What an `auth`-class reply asks of the sender, in words: the record it names and where
/// to check it.
pub fn auth_reason(text: &str, from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("", |(_, d)| d);
    let check = match domain.is_empty() {
        true => "the sending domain".to_string(),
        false => format!("{domain} (knock check-domain {domain})"),
    };
    match auth_record(text) {
        Some(record) => format!("the receiver names {record}: check the {record} of {check}"),
        None => format!(
            "the receiver refuses unauthenticated mail: check SPF, DKIM and DMARC of {check}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auth_reply_points_at_the_record_it_names() {
        for (text, record) in [
            (
                "5.7.26 Unauthenticated email from tx.test is not accepted due to domain's DMARC policy",
                Some("DMARC"),
            ),
            (
                "5.7.26 This mail is unauthenticated. The sender must authenticate with at least one of SPF or DKIM",
                Some("SPF and DKIM"),
            ),
            (
                "5.7.23 The message was rejected because of Sender Policy Framework violation",
                Some("SPF"),
            ),
            (
                "5.7.9 Message not accepted for policy reasons: DKIM signature invalid",
                Some("DKIM"),
            ),
            (
                "5.7.25 The IP address sending this message does not have a PTR record setup",
                Some("reverse DNS (PTR)"),
            ),
            ("5.7.1 Message rejected", None),
        ] {
            assert_eq!(auth_record(text), record, "{text}");
        }
        assert_eq!(
            auth_reason("5.7.23 SPF check failed", "news@tx.test"),
            "the receiver names SPF: check the SPF of tx.test (knock check-domain tx.test)"
        );
    }

    const MIN: Duration = Duration::from_secs(60);

    fn rules() -> Rules {
        Rules {
            schedule: Schedule::new(vec![5 * MIN, 15 * MIN, 30 * MIN], 72 * 60 * MIN, 0.1),
            greylist_window: 5 * MIN,
            delay_warning: Some(240 * MIN),
        }
    }

    fn outcome(disposition: Disposition, class: Option<Class>, text: &str) -> Outcome {
        Outcome {
            disposition,
            class,
            code: None,
            enhanced: None,
            text: text.into(),
            failure: None,
        }
    }

    /// class, text, previous class, failures so far, learned greylist, age of the message
    /// → the knob (times as seconds after now; `None` for knobs with no time).
    #[test]
    fn the_class_picks_the_knob() {
        use Disposition::*;
        use Knob as K;
        let t0 = Timestamp(1_000_000_000_000);
        let old = 72 * 60 * MIN;
        type Row = (
            Disposition,
            Option<Class>,
            &'static str,
            Option<Class>,
            u32,
            Option<u64>,
            Duration,
            &'static str,
            Option<u64>,
        );
        // disposition, class, text, previous class, failures so far, learned greylist (s),
        // age of the message -> the knob, and its wait in seconds
        #[rustfmt::skip]
        let table: &[Row] = &[
            (Delivered, None, "Ok", None, 0, None, MIN, "done", None),
            (Permanent, Some(Class::Hard), "5.1.1 no such user", None, 0, None, MIN, "bounce+suppress", None),
            (Permanent, Some(Class::Block), "blocked", None, 0, None, MIN, "bounce", None),
            (Permanent, Some(Class::Policy), "refused", Some(Class::Greylist), 1, None, MIN, "bounce", None),
            // greylist: the configured window, then the learned one, then the stated; 5 % margin
            (Transient, Some(Class::Greylist), "Greylisted", None, 0, None, MIN, "greylist", Some(315)),
            (Transient, Some(Class::Greylist), "Greylisted", None, 0, Some(60), MIN, "greylist", Some(63)),
            (Transient, Some(Class::Greylist), "Greylisted for 120 seconds", None, 0, Some(60), MIN, "greylist", Some(126)),
            // a second greylisting in a row is an ordinary failure: the backoff's 2nd step
            (Transient, Some(Class::Greylist), "Greylisted", Some(Class::Greylist), 1, None, MIN, "backoff", Some(900)),
            // throttle: at once, no step spent
            (Transient, Some(Class::Throttle), "too much mail", Some(Class::Throttle), 0, None, MIN, "pace", Some(0)),
            // everything else: the schedule by failures
            (Transient, Some(Class::Mailbox), "mailbox full", None, 0, None, MIN, "backoff", Some(300)),
            // a first retry waits out a greylisting the destination is known for; later ones do not
            (Transient, Some(Class::Mailbox), "mailbox full", None, 0, Some(600), MIN, "backoff", Some(630)),
            (Transient, Some(Class::Mailbox), "mailbox full", None, 1, Some(600), MIN, "backoff", Some(900)),
            (Transient, Some(Class::Network), "timeout", Some(Class::Network), 2, None, MIN, "backoff", Some(1800)),
            (Transient, Some(Class::System), "busy", None, 9, None, MIN, "backoff", Some(1800)),
            // out of time
            (Transient, Some(Class::Mailbox), "mailbox full", None, 3, None, old, "expire", None),
            (Transient, Some(Class::Throttle), "too much mail", None, 0, None, old, "expire", None),
            (Transient, Some(Class::Greylist), "Greylisted", None, 0, None, old, "expire", None),
        ];
        for &(disposition, class, text, previous, failures, learned, age, knob, wait) in table {
            let at = Moment {
                received: Timestamp(t0.0 - age.as_millis() as u64),
                now: t0,
                learned_greylist: learned.map(Duration::from_secs),
                down: false,
                mailbox_ready: None,
                ready_at: t0,
                elsewhere: false,
                roll: 0.0,
            };
            let history = History {
                previous,
                failures,
                mailbox_throttles: 0,
            };
            let got = react(&rules(), &outcome(disposition, class, text), history, at);
            let name = match got {
                K::Done => "done",
                K::Bounce { suppress: true } => "bounce+suppress",
                K::Bounce { suppress: false } => "bounce",
                K::GreylistWait(_) => "greylist",
                K::Pace(_) => "pace",
                K::Backoff(_) => "backoff",
                K::Expire => "expire",
            };
            let after = got.retry_at().map(|t| t.since(t0).as_secs());
            assert_eq!(
                (name, after),
                (knob, wait),
                "{disposition:?} {class:?} {text:?} after {previous:?} x{failures}"
            );
        }
    }

    #[test]
    fn a_retry_never_lands_past_the_deadline_and_jitter_only_lengthens() {
        let t0 = Timestamp(1_000_000_000_000);
        let received = Timestamp(t0.0 - (72 * 60 - 2) * 60_000);
        let o = outcome(Disposition::Transient, Some(Class::Mailbox), "full");
        let at = |roll| Moment {
            received,
            now: t0,
            learned_greylist: None,
            down: false,
            mailbox_ready: None,
            ready_at: t0,
            elsewhere: false,
            roll,
        };
        let history = History::default();
        assert_eq!(
            react(&rules(), &o, history, at(0.0)).retry_at(),
            Some(received + 72 * 60 * MIN),
            "the last try falls on the deadline"
        );
        let fresh = |roll| Moment {
            received: t0,
            ..at(roll)
        };
        for i in 0..10 {
            let roll = i as f64 / 10.0;
            let wait = react(&rules(), &o, history, fresh(roll))
                .retry_at()
                .unwrap()
                .since(t0);
            assert!(
                wait >= 5 * MIN && wait <= (5 * MIN).mul_f64(1.1),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn throttles_spend_no_backoff_step() {
        let attempt = |class| Attempt {
            at: Timestamp(0),
            mx: None,
            source: None,
            local_ip: None,
            code: Some(450),
            enhanced: None,
            text: String::new(),
            class: Some(class),
            failure: None,
            tls: None,
            down: false,
            tried: Vec::new(),
        };
        let rcpt = Recipient {
            attempts: vec![
                attempt(Class::Throttle),
                attempt(Class::Mailbox),
                attempt(Class::Throttle),
            ],
            ..Recipient::new("a@b.test", State::Deferred)
        };
        assert_eq!(
            History::of(&rcpt),
            History {
                previous: Some(Class::Throttle),
                failures: 1,
                mailbox_throttles: 0,
            }
        );
    }

    #[test]
    fn the_destination_hears_too_fast_too_many_down_and_cleared() {
        let t0 = Timestamp(1_000_000);
        let group = |class: Option<Class>| Group {
            domain: "b.test".into(),
            recipients: vec![Recipient {
                attempts: vec![Attempt {
                    at: t0,
                    mx: None,
                    source: None,
                    local_ip: None,
                    code: Some(450),
                    enhanced: None,
                    text: String::new(),
                    class,
                    failure: None,
                    tls: None,
                    down: false,
                    tried: Vec::new(),
                }],
                ..Recipient::new("a@b.test", State::Deferred)
            }],
            next_attempt: Some(t0),
        };
        let throttle = outcome(Disposition::Transient, Some(Class::Throttle), "slow down");
        let network = outcome(Disposition::Transient, Some(Class::Network), "refused");
        let ok = outcome(Disposition::Delivered, None, "Ok");
        let connected = Seen {
            connected: true,
            ..Default::default()
        };
        let down = Seen {
            unreachable: true,
            ..Default::default()
        };
        let later = t0 + Duration::from_secs(90);
        let r = destination_report(&group(None), [&throttle].into_iter(), connected, later);
        assert!(r.throttled && !r.turned_away && !r.unreachable);
        let r = destination_report(
            &group(None),
            [&throttle].into_iter(),
            Seen::default(),
            later,
        );
        assert!(r.turned_away && !r.throttled, "throttled at the greeting");
        let r = destination_report(&group(None), [&network].into_iter(), down, later);
        assert!(r.unreachable && !r.connected);
        let r = destination_report(
            &group(Some(Class::Greylist)),
            [&ok].into_iter(),
            connected,
            later,
        );
        assert_eq!(
            (r.accepted, r.greylist_cleared),
            (1, Some(Duration::from_secs(90)))
        );
    }

    /// One attempt at a group of three recipients who asked different things of DSNs
    /// (NOTIFY=DELAY,FAILURE; NEVER; not said), `age` after acceptance, each getting
    /// `o`; `dsn` whether the receiver offered DSN. Returns the reports' (recipient,
    /// action) and the group after.
    fn reports_after(
        group: Group,
        o: &Outcome,
        age: Duration,
        dsn: bool,
    ) -> (Vec<(String, Action)>, Group) {
        let envelope = Envelope {
            id: crate::message::new_id(),
            from: "s@tx.test".into(),
            received_at: Timestamp(1_000_000_000),
            size: 10,
            source: "test".into(),
            stream: None,
            done_at: None,
            params: Default::default(),
        };
        let now = envelope.received_at + age;
        let a = Attempted {
            envelope: &envelope,
            provider: "b.test",
            source: "default",
            started: now,
            now,
            learned_greylist: None,
            down: false,
            ready_at: now,
            mailbox_ready: None,
            elsewhere: false,
        };
        let n = group.pending().count();
        let at = Where {
            dsn,
            ..Default::default()
        };
        let outcomes = (0..n).map(|_| (o.clone(), at.clone())).collect();
        let u = apply(&rules(), &a, group, outcomes, || 0.0);
        let reports = u
            .reports
            .iter()
            .map(|r| (r.recipient.clone(), r.action))
            .collect();
        (reports, u.group)
    }

    fn three() -> Group {
        use crate::message::Notify;
        let with = |address: &str, notify: Option<Notify>| Recipient {
            notify,
            ..Recipient::new(address, State::Queued)
        };
        Group {
            domain: "b.test".into(),
            recipients: vec![
                with(
                    "delay@b.test",
                    Some(Notify {
                        delay: true,
                        failure: true,
                        success: false,
                    }),
                ),
                with("never@b.test", Some(Notify::default())),
                with("unsaid@b.test", None),
            ],
            next_attempt: None,
        }
    }

    #[test]
    fn a_delay_warning_goes_once_and_only_to_who_asked() {
        let deferred = outcome(Disposition::Transient, Some(Class::Mailbox), "later");
        // Before [retry] delay_warning (4 h): nothing.
        let (reports, group) = reports_after(three(), &deferred, 60 * MIN, false);
        assert!(reports.is_empty(), "{reports:?}");
        // Past it: the one who asked for DELAY, once.
        let (reports, group) = reports_after(group, &deferred, 300 * MIN, false);
        assert_eq!(reports, [("delay@b.test".to_string(), Action::Delayed)]);
        assert!(group.recipients[0].warned);
        let (reports, group) = reports_after(group, &deferred, 400 * MIN, false);
        assert!(reports.is_empty(), "warned already: {reports:?}");
        // Then it bounces: NEVER hears nothing, the others the failure.
        let bounce = outcome(Disposition::Permanent, Some(Class::Hard), "no such user");
        let (reports, _) = reports_after(group, &bounce, 500 * MIN, false);
        assert_eq!(
            reports,
            [
                ("delay@b.test".to_string(), Action::Failed),
                ("unsaid@b.test".to_string(), Action::Failed)
            ]
        );
    }

    #[test]
    fn success_is_reported_as_relayed_only_when_asked_and_not_passed_on() {
        use crate::message::Notify;
        let ok = outcome(Disposition::Delivered, None, "Ok");
        let mut group = three();
        group.recipients[1].notify = Some(Notify {
            success: true,
            ..Notify::default()
        });
        let (reports, _) = reports_after(group.clone(), &ok, MIN, false);
        assert_eq!(reports, [("never@b.test".to_string(), Action::Relayed)]);
        // A receiver that offered DSN got NOTIFY=SUCCESS and reports it itself.
        let (reports, _) = reports_after(group, &ok, MIN, true);
        assert!(reports.is_empty(), "{reports:?}");
    }
}
