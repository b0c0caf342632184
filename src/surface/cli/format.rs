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
        // The classes of deferrals and bounces alike: "failure" is what both are.
        if let Some(c) = s.recent_classes.last() {
            state.push(format!("last failure {}", c.as_str()));
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
        attempts(&mut out, &r.attempts);
    }
    out
}

/// The columns of the attempt table before the reply's text, which comes last as it is long.
const ATTEMPT_COLUMNS: [&str; 7] = ["#", "AT", "MX", "LOCAL IP", "CODE", "ENHANCED", "CLASS"];

/// One recipient's attempts, a header row over a row each, the columns as wide as their
/// widest cell; the TLS a session ran over on a line of its own under the attempt.
fn attempts(out: &mut String, attempts: &[crate::message::Attempt]) {
    if attempts.is_empty() {
        return;
    }
    let dash = || "-".to_string();
    let rows: Vec<[String; 7]> = attempts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            [
                (i + 1).to_string(),
                a.at.to_string(),
                a.mx.clone().unwrap_or_else(dash),
                a.local_ip.clone().unwrap_or_else(dash),
                a.code.map(|c| c.to_string()).unwrap_or_else(dash),
                a.enhanced.map(|e| e.to_string()).unwrap_or_else(dash),
                a.class.map(|c| c.as_str().to_string()).unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = ATTEMPT_COLUMNS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: [&str; 7], last: &str| {
        out.push_str("    ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            match i {
                0 => {
                    let _ = write!(out, "{cell:>w$}  ");
                }
                _ => {
                    let _ = write!(out, "{cell:<w$}  ");
                }
            }
        }
        out.push_str(last);
        out.push('\n');
    };
    line(out, ATTEMPT_COLUMNS, "TEXT");
    for (row, a) in rows.iter().zip(attempts) {
        line(out, row.each_ref().map(String::as_str), &a.text);
        if let Some(tls) = &a.tls {
            let _ = writeln!(out, "    {:w$}  over {tls}", "", w = widths[0]);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Attempt, State};
    use crate::surface::api::RecipientView;

    fn attempt(at: u64, mx: &str, code: Option<u16>, enhanced: &str, text: &str) -> Attempt {
        Attempt {
            at: Timestamp(at),
            mx: Some(mx.into()),
            local_ip: Some("127.0.0.1".into()),
            code,
            enhanced: crate::reply::Enhanced::parse(enhanced),
            text: text.into(),
            class: Some(crate::outcome::Class::Network),
            failure: None,
            tls: None,
            down: false,
            tried: Vec::new(),
        }
    }

    /// The STATE column names the latest failure's class, which may be a bounce's (`hard`):
    /// not a "deferral".
    #[test]
    fn a_destination_s_last_failure_is_not_called_a_deferral() {
        let doc = include_str!("../../../docs/http-api.md");
        let start = doc
            .find("{\"destinations\": [{")
            .expect("the doc's example");
        let end = start + doc[start..].find("\n```").unwrap();
        let mut view: DestinationsView = serde_json::from_str(&doc[start..end]).unwrap();
        view.destinations[0].shaping.recent_classes =
            vec![crate::outcome::Class::Throttle, crate::outcome::Class::Hard];
        let out = destinations(&view);
        assert!(out.contains("last failure hard"), "{out}");
        assert!(!out.contains("deferral"), "{out}");
    }

    #[test]
    fn a_message_shows_its_attempts_under_labelled_columns() {
        let m = MessageView {
            id: "01a20765-b5e3-77c1-9a3b-f54f15e7b095".into(),
            from: "s@tx.test".into(),
            received_at: Timestamp(0),
            size: 316,
            source: "http".into(),
            done_at: None,
            recipients: vec![RecipientView {
                address: "a@rx.test".into(),
                domain: "rx.test".into(),
                state: State::Deferred,
                next_attempt: None,
                attempts: vec![
                    attempt(0, "mx.rx.test", None, "4.4.1", "connect failed"),
                    attempt(
                        1000,
                        "mx2.long-name.rx.test",
                        Some(451),
                        "4.3.0",
                        "try later",
                    ),
                ],
            }],
        };
        let out = message(&m);
        let lines: Vec<&str> = out.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("# "))
            .unwrap_or_else(|| panic!("no header row:\n{out}"));
        let head = lines[header];
        for name in ["AT", "MX", "LOCAL IP", "CODE", "ENHANCED", "CLASS", "TEXT"] {
            assert!(head.contains(name), "{name} in {head:?}");
        }
        let (first, second) = (lines[header + 1], lines[header + 2]);
        // Each value starts under its label.
        for (label, row, value) in [
            ("MX", first, "mx.rx.test"),
            ("MX", second, "mx2.long-name.rx.test"),
            ("CODE", first, "-"),
            ("CODE", second, "451"),
            ("ENHANCED", second, "4.3.0"),
            ("CLASS", first, "network"),
            ("TEXT", second, "try later"),
        ] {
            let col = head.find(label).unwrap();
            assert_eq!(&row[col..col + value.len()], value, "{label}:\n{out}");
        }
        assert!(
            first.trim_start().starts_with("1  1970-01-01T00:00:00"),
            "{first}"
        );
    }
}
