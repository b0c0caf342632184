//! A scenario from a recorded event log (`knock simulate --replay events.jsonl`): the
//! traffic exactly as it arrived (each message's domain and recipients, at its time), and
//! per provider a receiver that behaves as the log says that provider behaved: how long its
//! greylisting held mail back, how much it accepted per minute while it refused for rate,
//! when it was down, and what share of attempts it deferred or refused otherwise, with the
//! reply texts it sent. Messages keep the stream they came in (one `[traffic]` or
//! `[[flow]]` per stream), so streams' shares and retries replay too. Replaying last week's traffic against a new configuration then
//! shows what the change would have done.

use super::scenario::{Arrival, Destination, Domains, Scenario, Simulation, Traffic};
use crate::event::{Event, Kind};
use crate::outcome::{Class, FailureKind};
use crate::time::Timestamp;
use crate::tools::receiver::{
    Greylisting, Limit, Outage, OutageKind, ReceiverModel, Replies, Scope, Shape, Stage,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// Outage events closer together than this are one outage.
const OUTAGE_GAP: Duration = Duration::from_secs(300);

/// The scenario the event log at `path` describes. The log is read strictly: a line that
/// is not an event stops it, with the line's number and what is wrong.
pub fn scenario(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--replay: reading {}: {e}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event = Event::parse_line(line)
            .map_err(|e| anyhow::anyhow!("--replay {}: line {}: {e}", path.display(), n + 1))?;
        events.push(event);
    }
    from_events(&events).map_err(|e| anyhow::anyhow!("--replay {}: {e}", path.display()))
}

/// The scenario a list of events describes.
pub fn from_events(events: &[Event]) -> anyhow::Result<Scenario> {
    let start = events
        .iter()
        .map(|e| e.timestamp)
        .min()
        .ok_or_else(|| anyhow::anyhow!("the log holds no events"))?;
    // Which provider each domain went to, as knock found it.
    let mut provider_of: HashMap<&str, &str> = HashMap::new();
    for e in events {
        if let Some(p) = &e.provider {
            provider_of.insert(&e.domain, p);
        }
    }
    let provider = |domain: &str| -> String {
        provider_of
            .get(domain)
            .map(|p| p.to_string())
            .unwrap_or_else(|| domain.to_string())
    };
    let arrivals = arrivals(events, start);
    if arrivals.is_empty() {
        anyhow::bail!("the log holds no message that was accepted (no `processed` events)");
    }
    let mut by_provider: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    let mut domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, a) in &arrivals {
        let list = domains
            .entry(receiver_name(&provider(&a.domain)))
            .or_default();
        if !list.contains(&a.domain) {
            list.push(a.domain.clone());
        }
    }
    for e in events.iter().filter(|e| e.event != Kind::Processed) {
        by_provider
            .entry(receiver_name(&provider(&e.domain)))
            .or_default()
            .push(e);
    }
    let mut receivers = BTreeMap::new();
    for name in domains.keys() {
        let seen = by_provider.get(name).map(Vec::as_slice).unwrap_or(&[]);
        receivers.insert(name.clone(), model(seen, start));
    }
    let to: Vec<Destination> = domains
        .into_iter()
        .map(|(receiver, names)| Destination {
            receiver,
            weight: 1,
            domains: Domains::Names(names),
        })
        .collect();
    // One traffic per stream the messages came in (those without one first).
    let mut by_stream: BTreeMap<Option<String>, Vec<Arrival>> = BTreeMap::new();
    for (stream, a) in arrivals {
        by_stream.entry(stream).or_default().push(a);
    }
    let mut traffics = by_stream.into_iter().map(|(stream, arrivals)| Traffic {
        messages: arrivals.len() as u64,
        over: Duration::ZERO,
        recipients: 1,
        sizes: vec![super::scenario::Size {
            bytes: 5 * 1024,
            weight: 1,
        }],
        senders: vec!["sender@knock.example".into()],
        to: to.clone(),
        mailboxes: None,
        arrivals,
        stream,
    });
    let traffic = traffics.next().expect("some arrivals");
    Ok(Scenario {
        simulation: Simulation::default(),
        traffic,
        flows: traffics.collect(),
        receivers,
    })
}

/// A provider's name as a receiver's (a TOML key without dots or `+`).
fn receiver_name(provider: &str) -> String {
    provider
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// Each accepted message's domains, with their recipients, at the time they came, and
/// the stream each came in.
fn arrivals(events: &[Event], start: Timestamp) -> Vec<(Option<String>, Arrival)> {
    type Key<'a> = (Timestamp, &'a str, &'a str, Option<&'a str>);
    let mut by_message: BTreeMap<Key, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == Kind::Processed) {
        *by_message
            .entry((e.timestamp, &e.message_id, &e.domain, e.stream.as_deref()))
            .or_default() += 1;
    }
    by_message
        .into_iter()
        .map(|((at, _, domain, stream), recipients)| {
            let arrival = Arrival {
                at: at.since(start).as_secs_f64(),
                domain: domain.to_string(),
                recipients,
            };
            (stream.map(str::to_string), arrival)
        })
        .collect()
}

/// The most frequent reply (code, enhanced code and text) among `events`.
fn most_said(events: &[&Event]) -> Option<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in events {
        let (Some(code), Some(text)) = (e.code, &e.text) else {
            continue;
        };
        let line = match e.enhanced {
            Some(en) => format!("{code} {en} {text}"),
            None => format!("{code} {text}"),
        };
        *counts.entry(line).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(line, _)| line)
}

/// A receiver that behaves as `events` (one provider's attempts) say it did.
fn model(events: &[&Event], start: Timestamp) -> ReceiverModel {
    let attempts: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| matches!(e.event, Kind::Delivered | Kind::Deferred | Kind::Bounced))
        .collect();
    let of_class = |c: Class| -> Vec<&Event> {
        attempts
            .iter()
            .copied()
            .filter(|e| e.event != Kind::Delivered && e.class == Some(c))
            .collect()
    };
    let mut model = ReceiverModel {
        latency: Duration::from_millis(20),
        ..Default::default()
    };
    // Greylisting: how long after a recipient's first greylisting it was let through.
    let greylisted = of_class(Class::Greylist);
    if !greylisted.is_empty() {
        let mut first: HashMap<&str, Timestamp> = HashMap::new();
        for e in &greylisted {
            let t = first.entry(&e.recipient).or_insert(e.timestamp);
            *t = (*t).min(e.timestamp);
        }
        let cleared = attempts
            .iter()
            .filter(|e| e.event == Kind::Delivered)
            .filter_map(|e| {
                first
                    .get(e.recipient.as_str())
                    .map(|f| e.timestamp.since(*f))
            })
            .min();
        model.greylist = Some(Greylisting {
            // It held for at most that long; a little less is what it asked for.
            window: cleared.map_or(Duration::from_secs(300), |c| c.mul_f64(0.95)),
            reply: most_said(&greylisted),
        });
    }
    // Throttling: what it took per minute in the minutes it refused for rate.
    let throttled = of_class(Class::Throttle);
    if !throttled.is_empty() {
        let minute = |e: &Event| e.timestamp.since(start).as_secs() / 60;
        let mut per_minute: HashMap<u64, (u64, u64)> = HashMap::new();
        for e in &attempts {
            let m = per_minute.entry(minute(e)).or_default();
            match (e.event, e.class) {
                (Kind::Delivered, _) => m.0 += 1,
                (_, Some(Class::Throttle)) => m.1 += 1,
                _ => {}
            }
        }
        let accepted = per_minute
            .values()
            .filter(|(_, refused)| *refused > 0)
            .map(|(accepted, _)| *accepted)
            .max()
            .unwrap_or(1)
            .max(1);
        model.limits.push(Limit {
            shape: Shape::FixedWindow,
            rate: crate::config::Rate {
                count: accepted as u32,
                per: Duration::from_secs(60),
            },
            burst: None,
            strict: false,
            per: Scope::Client,
            at: Stage::Mail,
            delay: None,
            reply: most_said(&throttled),
        });
    }
    model.outages = outages(&attempts, start);
    // Everything else it deferred or refused, as shares of the attempts.
    let n = attempts.len().max(1) as f64;
    let other: Vec<&Event> = attempts
        .iter()
        .copied()
        .filter(|e| e.event == Kind::Deferred)
        .filter(|e| {
            !matches!(
                e.class,
                Some(Class::Greylist | Class::Throttle | Class::Network)
            )
        })
        .collect();
    let bounced: Vec<&Event> = attempts
        .iter()
        .copied()
        .filter(|e| e.event == Kind::Bounced)
        .collect();
    model.defer_share = (other.len() as f64 / n).min(1.0);
    model.bounce_share = (bounced.len() as f64 / n).min(1.0);
    model.replies = Replies {
        defer: most_said(&other).unwrap_or(Replies::default().defer),
        bounce: most_said(&bounced).unwrap_or(Replies::default().bounce),
        ..Replies::default()
    };
    model
}

/// When the provider could not be reached: runs of connection failures with no delivery
/// between them.
fn outages(attempts: &[&Event], start: Timestamp) -> Vec<Outage> {
    let mut sorted: Vec<&&Event> = attempts.iter().collect();
    sorted.sort_by_key(|e| e.timestamp);
    let mut out: Vec<(Timestamp, Timestamp, OutageKind)> = Vec::new();
    let mut current: Option<(Timestamp, Timestamp, OutageKind)> = None;
    for e in sorted {
        let down = match e.failure {
            Some(FailureKind::ConnectFailed | FailureKind::NoMailExchanger) => {
                Some(OutageKind::Refused)
            }
            Some(FailureKind::ConnectTimeout | FailureKind::Timeout) => Some(OutageKind::Timeout),
            _ if e.event == Kind::Deferred
                && e.code == Some(421)
                && e.local_ip.is_none()
                && e.class != Some(Class::Throttle) =>
            {
                Some(OutageKind::Greeting)
            }
            _ => None,
        };
        match (down, current.as_mut()) {
            (Some(_), Some(c)) if e.timestamp.since(c.1) <= OUTAGE_GAP => c.1 = e.timestamp,
            (Some(kind), _) => {
                out.extend(current.take());
                current = Some((e.timestamp, e.timestamp, kind));
            }
            (None, _) if e.event == Kind::Delivered => out.extend(current.take()),
            (None, _) => {}
        }
    }
    out.extend(current);
    out.into_iter()
        .map(|(from, to, kind)| Outage {
            from: from.since(start),
            // The last failure was still down; a moment after it, up again.
            to: to.since(start) + Duration::from_secs(1),
            kind,
        })
        .collect()
}
