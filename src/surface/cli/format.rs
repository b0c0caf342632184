//! What the CLI prints for people: the queue, the destinations, one message, a classified
//! reply line. (A diagnosis prints itself: `surface::diagnose::Diagnosis` is `Display`.)

use crate::surface::api::{DestinationsView, MessageView, QueueView};
use crate::time::Timestamp;
use std::fmt::Write;
use std::time::Duration;

fn age(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn relative(t: Timestamp) -> String {
    let now = Timestamp::now();
    if t <= now {
        format!("{t} (due)")
    } else {
        format!("{t} (in {})", age(t.since(now).as_secs().max(1)))
    }
}

/// `knock queue`: one line per domain.
pub fn queue(q: &QueueView) -> String {
    if q.domains.is_empty() {
        return "queue is empty\n".into();
    }
    let mut out = format!(
        "{:<32} {:>7} {:>9} {:>9} {:>12}  {}\n",
        "DOMAIN", "QUEUED", "DEFERRED", "IN FLIGHT", "OLDEST", "NEXT ATTEMPT"
    );
    for d in &q.domains {
        let next = d.next_attempt.map(relative).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>9} {:>9} {:>12}  {next}",
            d.domain,
            d.queued,
            d.deferred,
            d.in_flight,
            age(d.oldest_age_seconds)
        );
    }
    out
}

/// The destinations' shaping, under the per-domain table.
pub fn destinations(d: &DestinationsView) -> String {
    if d.destinations.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<32} {:>7} {:>7} {:>11} {:>12}  {}\n",
        "DESTINATION", "PENDING", "READY", "CONNECTIONS", "RATE", "STATE"
    );
    for v in &d.destinations {
        let s = &v.shaping;
        let rate = s
            .rate_per_minute
            .map(|r| format!("{r:.0}/min"))
            .unwrap_or_else(|| "-".into());
        let mut state = Vec::new();
        if let Some(since) = s.outage_since {
            state.push(format!(
                "outage since {since}, probing every {} s",
                s.outage_backoff_seconds.unwrap_or(0)
            ));
        } else if let Some(p) = s.paused_for_seconds {
            state.push(format!("paused {p:.1} s"));
        }
        if let (Some(l), Some(b)) = (s.latency_ms, s.latency_baseline_ms) {
            state.push(format!("latency {l:.0} ms (baseline {b:.0})"));
        }
        if let Some(g) = v.greylist_delay_seconds {
            state.push(format!("greylist {g} s"));
        }
        if let Some(a) = s.allowance.describe() {
            state.push(a);
        }
        if let Some(c) = s.connection_ceiling {
            state.push(format!("at most {c} connections (turned away above)"));
        }
        if let Some(c) = s.recent_classes.last() {
            state.push(format!("last deferral {}", c.as_str()));
        }
        let conns = format!("{}/{}", v.connections_open, s.connections);
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>7} {:>11} {:>12}  {}",
            v.destination,
            v.pending,
            v.ready,
            conns,
            rate,
            state.join(", ")
        );
    }
    out
}

/// `knock queue show ID`: the message, each recipient and its attempts.
pub fn message(m: &MessageView) -> String {
    let from = if m.from.is_empty() { "<>" } else { &m.from };
    let mut out = format!(
        "message {}\n  from {from}, {} bytes, via {}\n  received {}\n",
        m.id, m.size, m.source, m.received_at
    );
    if let Some(done) = m.done_at {
        let _ = writeln!(out, "  finished {done}");
    }
    for r in &m.recipients {
        let _ = write!(out, "\n  {} [{}]", r.address, r.state.as_str());
        if let Some(next) = r.next_attempt {
            let _ = write!(out, " next attempt {}", relative(next));
        }
        out.push('\n');
        for (i, a) in r.attempts.iter().enumerate() {
            let code = a
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "---".into());
            let enhanced = a.enhanced.map(|e| e.to_string()).unwrap_or_default();
            let class = a
                .class
                .map(|c| {
                    format!(
                        " [{}]",
                        serde_json::to_value(c)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}. {} {} {} {code} {enhanced} {}{class}",
                i + 1,
                a.at,
                a.mx.as_deref().unwrap_or("-"),
                a.local_ip.as_deref().unwrap_or("-"),
                a.text
            );
            if let Some(tls) = &a.tls {
                let _ = writeln!(out, "       over {tls}");
            }
        }
    }
    out
}

/// `knock classify`: the class, the disposition, what the line was read as, and the line.
pub fn classified(
    outcome: &crate::outcome::Outcome,
    read: &crate::policy::logline::Line,
    line: &str,
) -> String {
    let class = outcome.class.map(|c| c.as_str()).unwrap_or("-");
    let disposition = disposition(outcome.disposition);
    let read_as = read.read_as();
    format!("{class:<10} {disposition:<9}  {read_as:<12}  {line}")
}

/// `knock classify --json`: one object per line, with what the line was read as and the
/// parts classification used (`code` and `enhanced` are null where the line had none;
/// `failure` is the kind a sending MTA's diagnostic stands for).
pub fn classified_json(
    outcome: &crate::outcome::Outcome,
    read: &crate::policy::logline::Line,
    line: &str,
) -> serde_json::Value {
    serde_json::json!({
        "line": line,
        "read_as": read.read_as(),
        "class": outcome.class.map(|c| c.as_str()),
        "disposition": disposition(outcome.disposition),
        "transient": outcome.is_transient(),
        "code": outcome.code,
        "enhanced": outcome.enhanced.map(|e| e.to_string()),
        "text": outcome.text,
        "failure": outcome.failure.map(|k| k.as_str()),
    })
}

fn disposition(d: crate::outcome::Disposition) -> &'static str {
    match d {
        crate::outcome::Disposition::Delivered => "delivered",
        crate::outcome::Disposition::Transient => "transient",
        crate::outcome::Disposition::Permanent => "permanent",
    }
}
