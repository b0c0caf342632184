//! Diagnosis: per provider, what is behind the deferrals and bounces, from the event log
//! and the live destination state. Greylisting (greylist deferrals that clear on retry),
//! throttling (rate and connection texts that grow with volume), authentication, reputation
//! and blocklists, outages (connection failures), mailbox problems. Each verdict comes with
//! the figures that led to it, what knock is doing about it, what the operator can do, the
//! time the provider's queue takes to drain at the allowed rate, and an honest confidence.

use crate::engine::scheduler::DestinationView;
use crate::event::{Event, Kind};
use crate::outcome::Class;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// How much of the event log diagnosis reads, from its end.
pub const READ_AT_MOST: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    Healthy,
    Greylisting,
    Throttling,
    Authentication,
    Reputation,
    Outage,
    Mailbox,
    System,
    Policy,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopReply {
    pub reply: String,
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub attempts: usize,
    pub deferrals: usize,
    pub deferral_rate: f64,
    pub delivered: usize,
    pub bounced: usize,
    pub expired: usize,
    /// Deferrals and bounces by class.
    pub failures_by_class: BTreeMap<String, usize>,
    pub top_replies: Vec<TopReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_per_delivery: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ee_p50_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ee_p95_seconds: Option<f64>,
    /// Greylisted recipients later delivered, of all greylisted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greylist_cleared: Option<f64>,
    /// How throttling deferrals follow volume: correlation of attempts and throttle
    /// deferrals per minute, -1 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_volume_correlation: Option<f64>,
    pub queue_depth: usize,
    /// `growing`, `shrinking` or `steady`, from arrivals and completions in the window.
    pub queue_trend: String,
    /// Recipients knock deferred itself (a source's own limit), not counted above.
    #[serde(default)]
    pub held_back: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diagnosis {
    pub provider: String,
    pub cause: Cause,
    pub confidence: Confidence,
    /// The verdict in a sentence, with the figures that led to it.
    pub summary: String,
    pub figures: Figures,
    /// What knock is doing about it.
    pub knock_is: String,
    /// What the operator can do, when something can be done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_can: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<f64>,
    pub expiring_before_drain: usize,
}

/// Diagnoses every provider seen in `records` or in `destinations` (or only `only`).
pub fn diagnose(
    records: &[Event],
    destinations: &[DestinationView],
    only: Option<&str>,
    window: Duration,
) -> Vec<Diagnosis> {
    let mut provider_of: HashMap<&str, &str> = HashMap::new();
    for r in records {
        if let Some(p) = &r.provider {
            provider_of.insert(r.domain.as_str(), p.as_str());
        }
    }
    for d in destinations {
        for domain in &d.domains {
            provider_of.insert(domain.as_str(), d.destination.as_str());
        }
    }
    let mut by_provider: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    // Deferrals knock imposed itself are no attempts: they say nothing of the provider
    // and are counted apart.
    let mut held_back: HashMap<&str, usize> = HashMap::new();
    for r in records {
        if let Some(p) = r
            .provider
            .as_deref()
            .or_else(|| provider_of.get(r.domain.as_str()).copied())
        {
            match r.internal {
                true => *held_back.entry(p).or_default() += 1,
                false => by_provider.entry(p).or_default().push(r),
            }
        }
    }
    for d in destinations {
        by_provider.entry(d.destination.as_str()).or_default();
    }
    by_provider
        .into_iter()
        .filter(|(p, _)| only.is_none_or(|o| o == *p))
        .map(|(p, recs)| {
            let mut d = one(
                p,
                &recs,
                destinations.iter().find(|d| d.destination == p),
                window,
            );
            d.figures.held_back = held_back.get(p).copied().unwrap_or(0);
            for v in destinations.iter().filter(|d| d.destination == p) {
                if let Some(w) = v.warmup.as_ref().filter(|w| !w.done) {
                    let source = v.source.as_deref().unwrap_or("default");
                    let limits: Vec<String> = v
                        .limits
                        .iter()
                        .map(|l| format!("{}/{}", l.limit, l.period.unit()))
                        .collect();
                    let step = match (&w.last_step, &w.why) {
                        (Some(step), Some(why)) => {
                            format!("; at the last midnight it {} ({why})", step.as_str())
                        }
                        _ => String::new(),
                    };
                    d.knock_is.push_str(&format!(
                        " Source {source} is on day {} of its warm-up here ({}){step}.",
                        w.day,
                        limits.join(", ")
                    ));
                }
            }
            if d.figures.held_back > 0 {
                d.knock_is.push_str(&format!(
                    " It held back {} recipients itself under a source's own hourly or daily limit (internal deferrals, no attempts).",
                    d.figures.held_back
                ));
            }
            d
        })
        .collect()
}

fn one(
    provider: &str,
    recs: &[&Event],
    dest: Option<&DestinationView>,
    window: Duration,
) -> Diagnosis {
    let figures = figures(recs, dest);
    let (cause, share) = cause(&figures);
    let confidence = confidence(cause, share, &figures);
    let summary = summary(cause, share, &figures, window);
    let (knock_is, operator_can) = response(cause, dest, &figures);
    Diagnosis {
        provider: provider.to_string(),
        cause,
        confidence,
        summary,
        figures,
        knock_is,
        operator_can,
        drain_seconds: dest.and_then(|d| d.drain_seconds),
        expiring_before_drain: dest.map(|d| d.expiring_before_drain).unwrap_or(0),
    }
}

fn figures(recs: &[&Event], dest: Option<&DestinationView>) -> Figures {
    let count = |kind: Kind| recs.iter().filter(|r| r.event == kind).count();
    let deferred: Vec<&&Event> = recs.iter().filter(|r| r.event == Kind::Deferred).collect();
    let (delivered, bounced, expired) = (
        count(Kind::Delivered),
        count(Kind::Bounced),
        count(Kind::Expired),
    );
    let attempts = deferred.len()
        + delivered
        + bounced
        + recs
            .iter()
            .filter(|r| r.event == Kind::Expired && r.code.is_some())
            .count();
    // Deferrals and refusals together: a provider that refuses everything is not healthy.
    let mut by_class: BTreeMap<String, usize> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| matches!(r.event, Kind::Deferred | Kind::Bounced))
    {
        *by_class
            .entry(r.class.map(|c| c.as_str()).unwrap_or("unknown").to_string())
            .or_default() += 1;
    }
    let mut replies: HashMap<String, (usize, Option<Class>)> = HashMap::new();
    for r in recs
        .iter()
        .filter(|r| matches!(r.event, Kind::Deferred | Kind::Bounced | Kind::Expired))
    {
        let e = replies.entry(reply_line(r)).or_insert((0, r.class));
        e.0 += 1;
    }
    let mut top: Vec<TopReply> = replies
        .into_iter()
        .map(|(reply, (count, class))| TopReply {
            reply,
            count,
            class,
        })
        .collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then(a.reply.cmp(&b.reply)));
    top.truncate(3);
    let delivered_attempts: Vec<u32> = recs
        .iter()
        .filter(|r| r.event == Kind::Delivered)
        .filter_map(|r| r.attempt)
        .collect();
    let mut ee: Vec<f64> = recs.iter().filter_map(|r| r.ee_seconds).collect();
    ee.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| (!ee.is_empty()).then(|| ee[((ee.len() - 1) as f64 * q).round() as usize]);
    Figures {
        attempts,
        deferrals: deferred.len(),
        deferral_rate: if attempts == 0 {
            0.0
        } else {
            deferred.len() as f64 / attempts as f64
        },
        delivered,
        bounced,
        expired,
        failures_by_class: by_class,
        top_replies: top,
        attempts_per_delivery: (!delivered_attempts.is_empty()).then(|| {
            delivered_attempts.iter().map(|&a| a as f64).sum::<f64>()
                / delivered_attempts.len() as f64
        }),
        ee_p50_seconds: pct(0.5),
        ee_p95_seconds: pct(0.95),
        greylist_cleared: greylist_cleared(recs),
        throttle_volume_correlation: throttle_correlation(recs),
        queue_depth: dest.map(|d| d.pending).unwrap_or(0),
        queue_trend: trend(recs),
        held_back: 0,
    }
}

fn reply_line(r: &Event) -> String {
    let text: String = generic(r.text.as_deref().unwrap_or(""))
        .chars()
        .take(100)
        .collect();
    match (r.code, &r.enhanced) {
        (Some(c), Some(e)) => format!("{c} {e} {text}"),
        (Some(c), None) => format!("{c} {text}"),
        (None, Some(e)) => format!("{e} {text}"),
        (None, None) => text,
    }
}

/// A reply text with what differs from one recipient or message to the next (addresses,
/// queue ids) replaced, so that one receiver's one reply is counted as one.
fn generic(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(char::is_whitespace) {
        let edge = |c: char| "<>[](){},;:\"'".contains(c) || c.is_whitespace();
        let core = word.trim_matches(edge);
        let start = word.find(core).unwrap_or(0);
        let (before, after) = (&word[..start], &word[start + core.len()..]);
        let digits = core.chars().filter(char::is_ascii_digit).count();
        let id_like = core.len() >= 8
            && digits > 0
            && core.chars().any(|c| c.is_ascii_alphabetic())
            && core
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let numeric_id = core.len() >= 6 && digits == core.len();
        let replaced = match () {
            _ if core.contains('@') => "<address>",
            _ if id_like || numeric_id => "<id>",
            _ => core,
        };
        out.push_str(before);
        out.push_str(replaced);
        out.push_str(after);
    }
    out
}

/// Of the recipients greylisted in the window, the share delivered later.
fn greylist_cleared(recs: &[&Event]) -> Option<f64> {
    let greylisted: HashSet<(&str, &str)> = recs
        .iter()
        .filter(|r| r.event == Kind::Deferred && r.class == Some(Class::Greylist))
        .map(|r| (r.message_id.as_str(), r.recipient.as_str()))
        .collect();
    if greylisted.is_empty() {
        return None;
    }
    let cleared = recs
        .iter()
        .filter(|r| {
            r.event == Kind::Delivered
                && greylisted.contains(&(r.message_id.as_str(), r.recipient.as_str()))
        })
        .count();
    Some(cleared as f64 / greylisted.len() as f64)
}

/// Pearson correlation, per minute, between attempts and throttle deferrals.
fn throttle_correlation(recs: &[&Event]) -> Option<f64> {
    let mut minutes: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| matches!(r.event, Kind::Deferred | Kind::Delivered | Kind::Bounced))
    {
        let m = minutes.entry(r.timestamp.millis() / 60_000).or_default();
        m.0 += 1.0;
        if r.class == Some(Class::Throttle) {
            m.1 += 1.0;
        }
    }
    if minutes.len() < 3 || minutes.values().all(|m| m.1 == 0.0) {
        return None;
    }
    let n = minutes.len() as f64;
    let (mx, my) = minutes
        .values()
        .fold((0.0, 0.0), |a, m| (a.0 + m.0 / n, a.1 + m.1 / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in minutes.values() {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Arrivals minus completions in the second half of the window against the first.
fn trend(recs: &[&Event]) -> String {
    let (Some(first), Some(last)) = (
        recs.iter().map(|r| r.timestamp).min(),
        recs.iter().map(|r| r.timestamp).max(),
    ) else {
        return "steady".into();
    };
    let mid = Timestamp(first.millis() + (last.millis() - first.millis()) / 2);
    let net = |half: &dyn Fn(&Event) -> bool| -> i64 {
        recs.iter()
            .filter(|r| half(r))
            .map(|r| match r.event {
                Kind::Processed => 1,
                Kind::Delivered | Kind::Bounced | Kind::Expired | Kind::Suppressed => -1,
                _ => 0,
            })
            .sum()
    };
    let second = net(&|r: &Event| r.timestamp >= mid);
    let total = recs.len().max(1) as i64;
    match second {
        n if n * 10 > total => "growing".into(),
        n if n * 10 < -total => "shrinking".into(),
        _ => "steady".into(),
    }
}

/// The dominant cause among the failures (deferrals and bounces), with its share.
fn cause(f: &Figures) -> (Cause, f64) {
    let total: usize = f.failures_by_class.values().sum();
    let failure_rate = if f.attempts == 0 {
        0.0
    } else {
        total as f64 / f.attempts as f64
    };
    if total == 0 || (failure_rate < 0.02 && !f.failures_by_class.contains_key("block")) {
        return (
            if f.attempts == 0 {
                Cause::Unknown
            } else {
                Cause::Healthy
            },
            1.0,
        );
    }
    let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
    for (class, n) in &f.failures_by_class {
        let cause = match class.as_str() {
            "greylist" => "greylisting",
            "throttle" => "throttling",
            "auth" => "authentication",
            "reputation" | "block" => "reputation",
            "network" => "outage",
            "mailbox" | "hard" => "mailbox",
            "system" => "system",
            "policy" => "policy",
            _ => "unknown",
        };
        *causes.entry(cause).or_default() += n;
    }
    // A block is never hidden behind a more frequent, milder cause: it is the one that
    // needs the operator.
    let (name, n) = match f.failures_by_class.contains_key("block") {
        true => ("reputation", causes["reputation"]),
        false => causes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .expect("not empty"),
    };
    let cause = match name {
        "greylisting" => Cause::Greylisting,
        "throttling" => Cause::Throttling,
        "authentication" => Cause::Authentication,
        "reputation" => Cause::Reputation,
        "outage" => Cause::Outage,
        "mailbox" => Cause::Mailbox,
        "system" => Cause::System,
        "policy" => Cause::Policy,
        _ => Cause::Unknown,
    };
    (cause, n as f64 / total as f64)
}

/// High needs a clear majority of enough failures, and the signature of the cause where
/// there is one (greylisting clears on retry; throttling follows volume).
fn confidence(cause: Cause, share: f64, f: &Figures) -> Confidence {
    let failures: usize = f.failures_by_class.values().sum();
    if matches!(cause, Cause::Healthy) {
        return if f.attempts >= 20 {
            Confidence::High
        } else {
            Confidence::Low
        };
    }
    let signature = match cause {
        Cause::Greylisting => f.greylist_cleared.is_some_and(|c| c >= 0.5),
        Cause::Throttling => f.throttle_volume_correlation.is_none_or(|c| c > 0.3),
        _ => true,
    };
    if share >= 0.7 && failures >= 20 && signature {
        Confidence::High
    } else if share > 0.5 && failures >= 5 {
        Confidence::Medium
    } else {
        Confidence::Low
    }
}

fn summary(cause: Cause, share: f64, f: &Figures, window: Duration) -> String {
    let window = humantime::format_duration(window);
    let bounced = match f.bounced {
        0 => String::new(),
        n => format!(" and {n} bounced"),
    };
    let base = format!(
        "{} of {} attempts deferred ({:.1} %){bounced} in the last {window}",
        f.deferrals,
        f.attempts,
        f.deferral_rate * 100.0
    );
    let pct = share * 100.0;
    match cause {
        Cause::Unknown if f.attempts == 0 => format!("no attempts in the last {window}"),
        Cause::Healthy => format!("{base}: nothing to act on"),
        Cause::Greylisting => format!(
            "{base}; {pct:.0} % of failures are greylisting{}",
            f.greylist_cleared
                .map(|c| format!(
                    ", and {:.0} % of greylisted recipients were delivered on retry",
                    c * 100.0
                ))
                .unwrap_or_default()
        ),
        Cause::Throttling => format!(
            "{base}; {pct:.0} % of failures are rate or connection limits{}",
            f.throttle_volume_correlation
                .map(|c| format!(", rising with volume (correlation {c:.2})"))
                .unwrap_or_default()
        ),
        Cause::Authentication => format!("{base}; {pct:.0} % of failures name SPF, DKIM or DMARC"),
        Cause::Reputation => {
            format!("{base}; {pct:.0} % of failures are about reputation or blocklists")
        }
        Cause::Outage => {
            format!("{base}; {pct:.0} % of failures are connection failures or timeouts")
        }
        Cause::Mailbox => {
            format!(
                "{base}; {pct:.0} % of failures are about recipients' mailboxes (full, unavailable, unknown)"
            )
        }
        Cause::System => format!(
            "{base}; {pct:.0} % of failures are the receiver's own trouble (capacity, storage)"
        ),
        Cause::Policy => format!("{base}; {pct:.0} % of failures are the receiver's policy"),
        Cause::Unknown => format!("{base}; the replies match no known cause"),
    }
}

const RETRYING: &str = "retrying on the normal schedule";
const RETRYING_DEFERRED: &str = "retrying the deferred ones on the normal schedule";

/// What knock does with recipients that failed, for causes where a deferral waits its
/// schedule: those refused for good were bounced, not retried. `all` says it when nothing
/// bounced, `deferred` the part about the deferred ones when some did.
fn failed(f: &Figures, all: &str, deferred: &str) -> String {
    let bounced = match f.bounced {
        0 => return all.to_string(),
        1 => "bouncing the recipient refused for good".to_string(),
        n => format!("bouncing the {n} recipients refused for good"),
    };
    let suppressed = match f.failures_by_class.contains_key("hard") {
        true => " (addresses that do not exist go on the suppression list)",
        false => "",
    };
    match f.deferrals {
        0 => format!("{bounced}{suppressed}"),
        _ => format!("{bounced}{suppressed}, {deferred}"),
    }
}

fn response(cause: Cause, dest: Option<&DestinationView>, f: &Figures) -> (String, Option<String>) {
    let pacing = dest
        .map(|d| {
            let s = &d.shaping;
            let pacing = match s.rate_per_minute {
                Some(r) => format!(
                    "pacing at {r:.0}/min over at most {} connections",
                    s.connections
                ),
                None => format!(
                    "sending without a rate limit over at most {} connections",
                    s.connections
                ),
            };
            match s.allowance.describe() {
                Some(a) => format!("{pacing} ({a})"),
                None => pacing,
            }
        })
        .unwrap_or_else(|| "not sending to it now".into());
    let operator = |s: &str| Some(s.to_string());
    match cause {
        Cause::Healthy | Cause::Unknown => (pacing, None),
        Cause::Greylisting => (
            format!(
                "retrying each greylisted recipient once its window has passed{}; {pacing}",
                dest.and_then(|d| d.greylist_delay_seconds)
                    .map(|s| format!(" ({s} s learned)"))
                    .unwrap_or_default()
            ),
            None,
        ),
        Cause::Throttling => (
            format!("{pacing}; throttled mail goes back to the queue without spending a retry"),
            operator(
                "set the limit with [shaping.\"<provider>\"] rate if it is known, and spread volume over time or IPs",
            ),
        ),
        Cause::Authentication => {
            // The record the receiver's auth replies name most.
            let named = f
                .top_replies
                .iter()
                .filter(|r| r.class == Some(Class::Auth))
                .filter_map(|r| crate::policy::react::auth_record(&r.reply).map(|w| (w, r.count)))
                .fold(BTreeMap::<&str, usize>::new(), |mut m, (w, n)| {
                    *m.entry(w).or_default() += n;
                    m
                })
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(w, _)| w);
            let check = match named {
                Some(record) => format!(
                    "the receiver names {record}: check the {record} of the sending domains"
                ),
                None => "check SPF, DKIM and DMARC for the sending domain".to_string(),
            };
            (
                format!("{}; {pacing}", failed(f, RETRYING, RETRYING_DEFERRED)),
                Some(format!(
                    "{check} (knock check-domain DOMAIN); retries will not fix this"
                )),
            )
        }
        Cause::Reputation => (
            format!("{}; {pacing}", failed(f, RETRYING, RETRYING_DEFERRED)),
            operator(
                "check the sending IPs on blocklists (Spamhaus, Barracuda, …) and the provider's postmaster tools; hold volume, clean the list",
            ),
        ),
        Cause::Outage => (
            match dest.and_then(|d| d.shaping.outage_backoff_seconds) {
                Some(b) => format!("holding the queue and probing with one message every {b} s"),
                None => format!("sending again now that the destination answers; {pacing}"),
            },
            operator(
                "wait, and if it lasts, check the provider's status and knock's own network and DNS",
            ),
        ),
        Cause::Mailbox => (
            format!(
                "{}; {pacing}",
                failed(
                    f,
                    "letting each recipient back off on its own schedule",
                    "letting each deferred one back off on its own schedule"
                )
            ),
            None,
        ),
        Cause::System | Cause::Policy => (
            format!("{}; {pacing}", failed(f, RETRYING, RETRYING_DEFERRED)),
            None,
        ),
    }
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cause = serde_json::to_value(self.cause)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let confidence = serde_json::to_value(self.confidence)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(f, "{}: {cause} ({confidence} confidence)", self.provider)?;
        writeln!(f, "  {}", self.summary)?;
        let g = &self.figures;
        for r in &g.top_replies {
            writeln!(f, "  {:>5} × {}", r.count, r.reply)?;
        }
        let mut line = Vec::new();
        if let Some(a) = g.attempts_per_delivery {
            line.push(format!("{a:.2} attempts per delivery"));
        }
        if let (Some(p50), Some(p95)) = (g.ee_p50_seconds, g.ee_p95_seconds) {
            line.push(format!("EE time p50 {p50:.1} s, p95 {p95:.1} s"));
        }
        line.push(format!(
            "queue {} recipients, {}",
            g.queue_depth, g.queue_trend
        ));
        writeln!(f, "  {}", line.join("; "))?;
        writeln!(f, "  knock is {}", self.knock_is)?;
        if let Some(op) = &self.operator_can {
            writeln!(f, "  you can {op}")?;
        }
        match self.drain_seconds {
            Some(s) => writeln!(
                f,
                "  drains in {} (at the allowed rate, each waiting recipient at its next attempt); {} recipient(s) would expire first",
                humantime::format_duration(Duration::from_secs(s.ceil() as u64)),
                self.expiring_before_drain
            ),
            None if g.queue_depth > 0 => writeln!(f, "  drain time unknown: no rate measured yet"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: &str, t: u64, id: &str, class: Option<Class>, text: &str) -> Event {
        let kind: Kind = serde_json::from_value(serde_json::json!(event)).unwrap();
        let mut e = Event::new(
            kind,
            Timestamp(1_700_000_000_000 + t * 1000),
            id.into(),
            format!("{id}@x.test"),
            "x.test".into(),
            "s@y.test".into(),
        );
        e.provider = Some("p".into());
        e.attempt = Some(1);
        e.code = class.map(|_| 450);
        e.text = Some(text.into());
        e.class = class;
        e.ee_seconds = (kind == Kind::Delivered).then_some(1.0);
        e
    }

    #[test]
    fn greylisting_that_clears_is_a_confident_verdict() {
        let mut recs = Vec::new();
        for i in 0..30 {
            let id = format!("m{i}");
            recs.push(rec("deferred", i, &id, Some(Class::Greylist), "Greylisted"));
            recs.push(rec("delivered", i + 300, &id, None, "Ok"));
        }
        let d = diagnose(&recs, &[], None, Duration::from_secs(3600));
        assert_eq!(
            (d[0].cause, d[0].confidence),
            (Cause::Greylisting, Confidence::High)
        );
        assert_eq!(d[0].figures.greylist_cleared, Some(1.0));
        assert!(
            d[0].summary
                .contains("100 % of greylisted recipients were delivered"),
            "{}",
            d[0].summary
        );
    }

    #[test]
    fn authentication_failures_name_the_record_the_receiver_names() {
        let mut recs = Vec::new();
        for i in 0..20 {
            recs.push(rec(
                "bounced",
                i,
                &format!("a{i}"),
                Some(Class::Auth),
                "550 5.7.26 Unauthenticated email from tx.test is not accepted due to domain's DMARC policy",
            ));
        }
        let d = &diagnose(&recs, &[], Some("p"), Duration::from_secs(3600))[0];
        assert_eq!(d.cause, Cause::Authentication);
        let can = d.operator_can.as_deref().unwrap();
        assert!(
            can.contains("names DMARC") && can.contains("knock check-domain"),
            "{can}"
        );
    }

    #[test]
    fn mixed_or_thin_evidence_is_not_confident() {
        let mut recs = Vec::new();
        for i in 0..3 {
            recs.push(rec(
                "deferred",
                i,
                &format!("a{i}"),
                Some(Class::Auth),
                "DKIM",
            ));
            recs.push(rec(
                "deferred",
                i,
                &format!("b{i}"),
                Some(Class::Network),
                "timeout",
            ));
        }
        let d = diagnose(&recs, &[], None, Duration::from_secs(3600));
        assert_eq!(d[0].confidence, Confidence::Low);
        let none = diagnose(&[], &[], None, Duration::from_secs(3600));
        assert!(none.is_empty());
    }

    #[test]
    fn throttling_names_the_knob_and_the_operator_action() {
        let mut recs = Vec::new();
        for i in 0..40 {
            recs.push(rec(
                "deferred",
                i * 20,
                &format!("t{i}"),
                Some(Class::Throttle),
                "421 4.7.0 too many connections",
            ));
            recs.push(rec("delivered", i * 20, &format!("d{i}"), None, "Ok"));
        }
        let d = &diagnose(&recs, &[], Some("p"), Duration::from_secs(3600))[0];
        assert_eq!(d.cause, Cause::Throttling);
        assert!(d.operator_can.as_deref().unwrap().contains("[shaping"));
        assert_eq!(d.figures.top_replies[0].count, 40);
    }

    #[test]
    fn replies_that_differ_only_by_address_or_queue_id_are_one() {
        let mut recs = Vec::new();
        for i in 0..12 {
            let text = format!(
                "<u{i}@x.test>: Recipient address rejected: mailbox full (queue id 4F{i}A2B9C1)"
            );
            recs.push(rec(
                "deferred",
                i,
                &format!("m{i}"),
                Some(Class::Mailbox),
                &text,
            ));
        }
        let d = &diagnose(&recs, &[], None, Duration::from_secs(3600))[0];
        assert_eq!(
            d.figures.top_replies.len(),
            1,
            "{:?}",
            d.figures.top_replies
        );
        assert_eq!(d.figures.top_replies[0].count, 12);
        assert!(
            d.figures.top_replies[0].reply.contains("<address>"),
            "{}",
            d.figures.top_replies[0].reply
        );
        assert_eq!(d.cause, Cause::Mailbox);
        assert!(
            d.knock_is.starts_with("letting each recipient back off"),
            "{}",
            d.knock_is
        );
    }

    /// Bounces are failures, not deferrals: the verdict counts them apart and does not say
    /// they will be retried.
    #[test]
    fn bounces_are_not_called_deferrals() {
        let unknown = |i: u64| {
            let mut e = rec(
                "bounced",
                i,
                &format!("u{i}"),
                Some(Class::Hard),
                "User unknown",
            );
            e.code = Some(550);
            e
        };
        let only_bounces: Vec<Event> = (0..10).map(unknown).collect();
        let d = &diagnose(&only_bounces, &[], None, Duration::from_secs(3600))[0];
        assert_eq!(d.cause, Cause::Mailbox);
        assert!(
            d.summary
                .starts_with("0 of 10 attempts deferred (0.0 %) and 10 bounced in the last 1h"),
            "{}",
            d.summary
        );
        assert!(
            d.knock_is
                .starts_with("bouncing the 10 recipients refused for good (addresses that do not exist go on the suppression list);"),
            "{}",
            d.knock_is
        );
        assert!(!d.knock_is.contains("back off"), "{}", d.knock_is);

        let mut mixed: Vec<Event> = (0..4).map(unknown).collect();
        for i in 0..6 {
            mixed.push(rec(
                "deferred",
                i,
                &format!("f{i}"),
                Some(Class::Mailbox),
                "Mailbox full",
            ));
        }
        let d = &diagnose(&mixed, &[], None, Duration::from_secs(3600))[0];
        assert!(
            d.knock_is.starts_with(
                "bouncing the 4 recipients refused for good (addresses that do not exist go on the suppression list), letting each deferred one back off on its own schedule;"
            ),
            "{}",
            d.knock_is
        );

        let mut blocked = vec![rec(
            "bounced",
            1,
            "b",
            Some(Class::Block),
            "554 5.7.1 blocked",
        )];
        blocked.push(rec(
            "deferred",
            2,
            "r",
            Some(Class::Reputation),
            "451 4.7.1 try later",
        ));
        let d = &diagnose(&blocked, &[], None, Duration::from_secs(3600))[0];
        assert_eq!(d.cause, Cause::Reputation);
        assert!(
            d.knock_is.starts_with(
                "bouncing the recipient refused for good, retrying the deferred ones on the normal schedule;"
            ),
            "{}",
            d.knock_is
        );
    }

    #[test]
    fn a_block_is_not_hidden_behind_a_more_frequent_milder_cause() {
        let mut recs = Vec::new();
        for i in 0..30 {
            let id = format!("g{i}");
            recs.push(rec("deferred", i, &id, Some(Class::Greylist), "Greylisted"));
        }
        recs.push(rec(
            "bounced",
            40,
            "b",
            Some(Class::Block),
            "554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
        ));
        let d = &diagnose(&recs, &[], None, Duration::from_secs(3600))[0];
        assert_eq!(d.cause, Cause::Reputation);
    }
}
