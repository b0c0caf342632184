//! What the CLI prints for people: the queue, the destinations, one message, the queue
//! listed and its shape, an event, a classified reply line. (A diagnosis prints itself:
//! `surface::diagnose::Diagnosis` is `Display`.)

use crate::engine::scheduler::{QueueShape, ShapeBy};
use crate::event::Event;
use crate::surface::api::{DestinationsView, ListView, MessageView, QueueView};
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
        if let Some(until) = v.blocked_until {
            state.push(format!("source blocked until {until}"));
        }
        if let Some(why) = &v.waiting_for_connection {
            state.push(format!("waiting for a connection: {why}"));
        }
        if let Some(w) = v.warmup.as_ref().filter(|w| !w.done) {
            state.push(format!("warm-up day {}", w.day));
        }
        for l in &v.limits {
            state.push(format!(
                "{}/{} used of {}",
                l.used,
                l.period.unit(),
                l.limit
            ));
        }
        if v.ready_by_stream.len() > 1 || v.ready_by_stream.keys().any(|k| k != "bulk") {
            let by: Vec<String> = v
                .ready_by_stream
                .iter()
                .map(|(stream, n)| format!("{stream} {n}"))
                .collect();
            state.push(format!("ready {}", by.join(", ")));
        }
        let conns = format!("{}/{}", v.connections_open, s.connections);
        let name = match &v.source {
            Some(source) => format!("{} via {source}", v.destination),
            None => v.destination.clone(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>7} {:>11} {:>12}  {}",
            name,
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

/// Rows under a header, each column as wide as its widest cell; the columns in `right`
/// aligned right (numbers), the last column never padded.
pub(super) fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len() - 1;
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            match (i == last, right.contains(&i)) {
                (_, true) => {
                    let _ = write!(line, "{cell:>w$}");
                }
                (true, false) => line.push_str(cell),
                (false, false) => {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            if i != last {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An age in its two largest units: `42s`, `5m12s`, `3h05m`, `2d04h`.
pub fn short_age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// One line on the fleet, under `knock queue` and above `knock diagnose` while Redis is away.
pub fn fleet_line(f: &crate::engine::fleet::FleetView) -> String {
    let shared = format!("each limit shared by {} node{}", f.share, plural(f.share));
    match f.redis_up {
        true => format!(
            "fleet: node {} of {}, Redis up, {shared}",
            f.node,
            f.nodes.len()
        ),
        false => format!(
            "fleet: node {}, Redis DOWN ({}): {shared} (the last size it said) until it answers",
            f.node,
            f.error.as_deref().unwrap_or("no answer")
        ),
    }
}

/// `knock fleet`: the line, then a row per node alive.
pub fn fleet(f: &crate::engine::fleet::FleetView, now: Timestamp) -> String {
    let mut out = fleet_line(f);
    out.push('\n');
    if !f.nodes.is_empty() {
        let _ = writeln!(out, "{:<20} {:<22} {:<22} up", "node", "smtp", "http");
        for n in &f.nodes {
            let me = if n.node == f.node { " (this node)" } else { "" };
            let _ = writeln!(
                out,
                "{:<20} {:<22} {:<22} {}{me}",
                n.node,
                n.smtp.as_deref().unwrap_or("-"),
                n.http.as_deref().unwrap_or("-"),
                short_age(now.since(n.started).as_secs())
            );
        }
    }
    out
}

/// `knock queue list`: a row per listed recipient under its message's id and age (given
/// once per message), the last reply last; then how many, and how to see more.
pub fn list(page: &ListView, now: Timestamp) -> String {
    if page.messages.is_empty() {
        return "no queued message matches\n".into();
    }
    let dash = || "-".to_string();
    let mut rows = Vec::new();
    for m in &page.messages {
        for (i, r) in m.recipients.iter().enumerate() {
            let (id, age) = match i {
                0 => (m.id.clone(), short_age(m.age_seconds)),
                _ => (String::new(), String::new()),
            };
            let next = match (r.in_flight, r.next_attempt) {
                (true, _) => "delivering".to_string(),
                (false, Some(t)) if t > now => {
                    format!("in {}", short_age(t.since(now).as_secs().max(1)))
                }
                (false, Some(_)) => "due".to_string(),
                (false, None) => dash(),
            };
            let reply = r
                .last_attempt
                .as_ref()
                .map(|a| {
                    let mut line = a
                        .class
                        .map(|c| format!("{}: ", c.as_str()))
                        .unwrap_or_default();
                    if let Some(code) = a.code {
                        let _ = write!(line, "{code} ");
                    }
                    if let Some(e) = a.enhanced {
                        let _ = write!(line, "{e} ");
                    }
                    line.push_str(&a.text);
                    line
                })
                .unwrap_or_else(dash);
            rows.push(vec![
                id,
                age,
                r.address.clone(),
                r.provider.clone().unwrap_or_else(dash),
                r.state.as_str().to_string(),
                r.attempts.to_string(),
                next,
                reply,
            ]);
        }
    }
    let mut out = table(
        &[
            "ID",
            "AGE",
            "RECIPIENT",
            "PROVIDER",
            "STATE",
            "TRIES",
            "NEXT",
            "LAST REPLY",
        ],
        &rows,
        &[1, 5],
    );
    let recipients: usize = page.messages.iter().map(|m| m.recipients.len()).sum();
    let _ = writeln!(
        out,
        "\n{} message{}, {recipients} recipient{}",
        page.messages.len(),
        plural(page.messages.len()),
        plural(recipients)
    );
    if let Some(next) = &page.next {
        let _ = writeln!(out, "more: the same with --after {next} (or --all)");
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `knock queue shape`: Postfix's qshape: a row per domain (or provider), the TOTAL row
/// first, pending recipients by how long they have waited.
pub fn shape(s: &QueueShape) -> String {
    let first = match s.by {
        ShapeBy::Domain => "DOMAIN",
        ShapeBy::Provider => "PROVIDER",
    };
    let mut header = vec![first, "TOTAL"];
    header.extend(s.buckets.iter().map(|b| b.label.as_str()));
    let rows: Vec<Vec<String>> = std::iter::once(&s.total)
        .chain(&s.rows)
        .map(|r| {
            let mut row = vec![r.name.clone(), r.total.to_string()];
            row.extend(r.counts.iter().map(u64::to_string));
            row
        })
        .collect();
    let right: Vec<usize> = (1..header.len()).collect();
    table(&header, &rows, &right)
}

/// `knock events`: one line per event: time, kind, message id, recipient, provider, class,
/// and the reply (or what knock saw), `-` for what the event does not have.
pub fn event(e: &Event) -> String {
    let dash = "-";
    let mut line = format!(
        "{} {:<10} {} {} {} {}",
        e.timestamp,
        e.event.as_str(),
        e.message_id,
        e.recipient,
        e.provider.as_deref().unwrap_or(dash),
        e.class.map(|c| c.as_str()).unwrap_or(dash),
    );
    let mut reply = Vec::new();
    if let Some(code) = e.code {
        reply.push(code.to_string());
    }
    if let Some(enhanced) = e.enhanced {
        reply.push(enhanced.to_string());
    }
    if let Some(text) = e.text.as_deref().filter(|t| !t.is_empty()) {
        reply.push(text.to_string());
    }
    if !reply.is_empty() {
        let _ = write!(line, " {}", reply.join(" "));
    }
    if e.internal {
        line.push_str(" (knock's own limit)");
    }
    if let Some(actor) = &e.actor {
        let _ = write!(line, " (by {actor})");
    }
    line
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
            source: None,
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

    #[test]
    fn ages_read_in_their_two_largest_units() {
        let table = [
            (0, "0s"),
            (42, "42s"),
            (312, "5m12s"),
            (3600, "1h00m"),
            (3 * 3600 + 5 * 60 + 9, "3h05m"),
            (2 * 86_400 + 4 * 3600, "2d04h"),
        ];
        let seen: Vec<(u64, String)> = table.iter().map(|&(s, _)| (s, short_age(s))).collect();
        let expected: Vec<(u64, String)> = table.iter().map(|&(s, a)| (s, a.into())).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn the_listing_is_a_row_per_recipient_with_the_id_once() {
        use crate::surface::api::{ListedMessage, ListedRecipient};
        let now = Timestamp(1_800_000_000_000);
        let rcpt = |address: &str, last: Option<Attempt>, in_flight| ListedRecipient {
            address: address.into(),
            domain: "rx.test".into(),
            provider: Some("google".into()),
            state: match last {
                Some(_) => State::Deferred,
                None => State::Queued,
            },
            in_flight,
            attempts: usize::from(last.is_some()),
            next_attempt: Some(Timestamp(now.0 + 300_000)),
            last_attempt: last,
        };
        let page = ListView {
            messages: vec![ListedMessage {
                id: "01a20765-b5e3-77c1-9a3b-f54f15e7b095".into(),
                from: "s@tx.test".into(),
                received_at: Timestamp(now.0 - 312_000),
                age_seconds: 312,
                size: 316,
                recipients: vec![
                    rcpt(
                        "a@rx.test",
                        Some(attempt(0, "mx", Some(451), "4.3.0", "try later")),
                        false,
                    ),
                    rcpt("b@rx.test", None, true),
                ],
            }],
            next: Some("01a20765-b5e3-77c1-9a3b-f54f15e7b095".into()),
        };
        let out = list(&page, now);
        let lines: Vec<&str> = out.lines().collect();
        let head = lines[0];
        for name in [
            "ID",
            "AGE",
            "RECIPIENT",
            "PROVIDER",
            "STATE",
            "TRIES",
            "NEXT",
            "LAST REPLY",
        ] {
            assert!(head.contains(name), "{name}: {out}");
        }
        assert!(
            lines[1].starts_with("01a20765-b5e3-77c1-9a3b-f54f15e7b095  5m12s  a@rx.test"),
            "{out}"
        );
        let col = |label: &str| head.find(label).unwrap();
        assert_eq!(&lines[1][col("NEXT")..col("NEXT") + 5], "in 5m");
        assert_eq!(
            &lines[1][col("LAST REPLY")..],
            "network: 451 4.3.0 try later"
        );
        assert!(
            lines[2].trim_start().starts_with("b@rx.test"),
            "the id once: {out}"
        );
        assert_eq!(&lines[2][col("NEXT")..col("NEXT") + 10], "delivering");
        assert!(out.contains("1 message, 2 recipients"), "{out}");
        assert!(
            out.contains("--after 01a20765-b5e3-77c1-9a3b-f54f15e7b095"),
            "{out}"
        );
        let empty = ListView {
            messages: Vec::new(),
            next: None,
        };
        assert_eq!(list(&empty, now), "no queued message matches\n");
    }

    #[test]
    fn the_shape_is_a_table_with_the_total_first() {
        use crate::engine::scheduler::{Bucket, ShapeRow};
        let row = |name: &str, counts: Vec<u64>| ShapeRow {
            name: name.into(),
            total: counts.iter().sum(),
            counts,
        };
        let view = QueueShape {
            by: ShapeBy::Domain,
            buckets: vec![
                Bucket {
                    label: "5m".into(),
                    max_seconds: Some(300),
                },
                Bucket {
                    label: "5m+".into(),
                    max_seconds: None,
                },
            ],
            total: row("TOTAL", vec![10, 1203]),
            rows: vec![row("gmail.com", vec![9, 1200]), row("rx.test", vec![1, 3])],
        };
        let out = shape(&view);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec!["DOMAIN", "TOTAL", "5m", "5m+"],
                vec!["TOTAL", "1213", "10", "1203"],
                vec!["gmail.com", "1209", "9", "1200"],
                vec!["rx.test", "4", "1", "3"],
            ]
        );
        // Numbers are right-aligned under their labels.
        let ends: Vec<usize> = out.lines().map(|l| l.len()).collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{out}");
    }

    #[test]
    fn an_event_is_one_readable_line() {
        let mut e = Event::new(
            crate::event::Kind::Deferred,
            Timestamp(0),
            "01a20765-b5e3-77c1-9a3b-f54f15e7b095".into(),
            "a@rx.test".into(),
            "rx.test".into(),
            "s@tx.test".into(),
        );
        e.provider = Some("google".into());
        e.class = Some(crate::outcome::Class::Greylist);
        e.code = Some(450);
        e.enhanced = crate::reply::Enhanced::parse("4.2.0");
        e.text = Some("Greylisted".into());
        assert_eq!(
            event(&e),
            "1970-01-01T00:00:00.000Z deferred   01a20765-b5e3-77c1-9a3b-f54f15e7b095 a@rx.test google greylist 450 4.2.0 Greylisted"
        );
        let processed = Event::new(
            crate::event::Kind::Processed,
            Timestamp(0),
            "id".into(),
            "a@rx.test".into(),
            "rx.test".into(),
            String::new(),
        );
        assert_eq!(
            event(&processed),
            "1970-01-01T00:00:00.000Z processed  id a@rx.test - -"
        );
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
