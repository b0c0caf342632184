//! What a simulation is measured with and what it reports: the planned traffic
//! ([`Plan`]), the counts gathered on the way ([`Collector`]), the ideal that a sender who
//! knew every receiver exactly would reach, and the [`Report`] per receiver and overall,
//! as text, JSON or a per-minute CSV timeline.

use super::scenario::{Scenario, T0};
use crate::event::{Event, Kind};
use crate::time::Timestamp;
use crate::tools::receiver::Receiver;
use foldhash::{HashMap, HashMapExt};
use serde::Serialize;
use std::fmt::{self, Write};
use std::time::Duration;

/// Virtual time: microseconds since the start.
pub type Micros = u64;

/// One planned message.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// Its number in the whole traffic (its id and its recipients' addresses follow).
    pub number: u32,
    pub at: Micros,
    pub domain: u32,
    pub sender: u32,
    pub recipients: u32,
    pub size: u32,
    /// Which traffic it is part of (`[traffic]` 0, then each `[[flow]]`).
    pub traffic: u32,
}

/// The traffic of a scenario, drawn once, in order of arrival.
#[derive(Debug, Default)]
pub struct Plan {
    pub messages: Vec<Planned>,
    pub domains: Vec<String>,
    pub senders: Vec<String>,
    /// Per traffic: the mailboxes per domain its recipients are drawn from (every
    /// recipient its own when `None`), and its stream.
    pub mailboxes: Vec<Option<u64>>,
    pub streams: Vec<Option<String>>,
}

impl Plan {
    pub fn new(s: &Scenario) -> Plan {
        let mut plan = Plan::default();
        let mut index: HashMap<String, u32> = HashMap::new();
        for (k, (_, t)) in s.traffics().enumerate() {
            // Each traffic draws from its own generator: adding a flow changes no other.
            let seed = s.simulation.seed.wrapping_add(k as u64 * 0x9e37_79b9);
            plan.draw(s, t, k as u32, seed, &mut index);
        }
        // In order of arrival, `[traffic]` first at the same time; numbered in that order.
        plan.messages.sort_by_key(|m| (m.at, m.traffic));
        for (n, m) in plan.messages.iter_mut().enumerate() {
            m.number = n as u32;
        }
        plan
    }

    fn draw(
        &mut self,
        s: &Scenario,
        t: &super::scenario::Traffic,
        traffic: u32,
        seed: u64,
        index: &mut HashMap<String, u32>,
    ) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let first_sender = self.senders.len() as u32;
        self.senders.extend(t.senders.iter().cloned());
        self.mailboxes.push(t.mailboxes);
        self.streams.push(t.stream.clone());
        let mut domain_id = |plan: &mut Plan, d: &str| -> u32 {
            *index.entry(d.to_string()).or_insert_with(|| {
                plan.domains.push(d.to_string());
                plan.domains.len() as u32 - 1
            })
        };
        let size_total: u64 = t.sizes.iter().map(|s| s.weight).sum();
        let size = |rng: &mut fastrand::Rng| -> u32 {
            let mut pick = rng.u64(0..size_total);
            for s in &t.sizes {
                if pick < s.weight {
                    return s.bytes.min(u32::MAX as u64) as u32;
                }
                pick -= s.weight;
            }
            t.sizes[0].bytes as u32
        };
        let senders = t.senders.len() as u64;
        let sender = |n: u64| first_sender + (n % senders) as u32;
        if !t.arrivals.is_empty() {
            let mut arrivals = t.arrivals.clone();
            arrivals.sort_by(|a, b| a.at.total_cmp(&b.at));
            for (n, a) in arrivals.iter().enumerate() {
                let domain = domain_id(self, &a.domain.to_ascii_lowercase());
                self.messages.push(Planned {
                    number: 0,
                    at: (a.at * 1e6) as Micros,
                    domain,
                    sender: sender(n as u64),
                    recipients: a.recipients.max(1) as u32,
                    size: size(&mut rng),
                    traffic,
                });
            }
            return;
        }
        let destinations: Vec<(u64, Vec<u32>)> =
            t.to.iter()
                .map(|d| {
                    let names = s.domains_of(d, &d.receiver);
                    (d.weight, names.iter().map(|n| domain_id(self, n)).collect())
                })
                .collect();
        let weight_total: u64 = destinations.iter().map(|(w, _)| w).sum();
        let every = t.over.as_micros() as u64 / t.messages.max(1);
        for n in 0..t.messages {
            let mut pick = rng.u64(0..weight_total);
            let mut chosen = &destinations[0].1;
            for (w, domains) in &destinations {
                if pick < *w {
                    chosen = domains;
                    break;
                }
                pick -= w;
            }
            let domain = chosen[rng.usize(0..chosen.len())];
            self.messages.push(Planned {
                number: 0,
                at: n * every,
                domain,
                sender: sender(n),
                recipients: t.recipients as u32,
                size: size(&mut rng),
                traffic,
            });
        }
    }

    /// Recipient `k` of message `n`: every recipient its own mailbox, unless the traffic
    /// draws them from a pool of mailboxes per domain.
    pub fn address(&self, m: &Planned, k: u32, domain: &str) -> String {
        let n = m.number as usize;
        if let Some(m) = self.mailboxes.get(m.traffic as usize).copied().flatten() {
            let i = (n as u64 * 7919 + k as u64) % m;
            return format!("u{i}@{domain}");
        }
        match k {
            0 => format!("u{n}@{domain}"),
            k => format!("u{n}.{k}@{domain}"),
        }
    }

    pub fn recipients(&self) -> u64 {
        self.messages.iter().map(|m| m.recipients as u64).sum()
    }

    /// The part of the plan whose domains `keep` takes.
    pub fn part(&self, keep: impl Fn(&str) -> bool) -> Plan {
        Plan {
            messages: self
                .messages
                .iter()
                .filter(|m| keep(&self.domains[m.domain as usize]))
                .copied()
                .collect(),
            domains: self.domains.clone(),
            senders: self.senders.clone(),
            mailboxes: self.mailboxes.clone(),
            streams: self.streams.clone(),
        }
    }
}

/// One minute of one receiver's timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Minute {
    pub attempts: u64,
    pub refused: u64,
    pub delivered: u64,
    /// Connections tried (the ones turned away too).
    pub connections: u64,
    pub peak_connections: u64,
    pub arrived: u64,
    pub finished: u64,
}

/// What is counted of one receiver while the world runs.
#[derive(Debug, Default)]
struct Counts {
    provider: Option<String>,
    recipients: u64,
    first_arrival: Option<Micros>,
    delivered: u64,
    bounced: u64,
    expired: u64,
    attempts: u64,
    refused: u64,
    connections: u64,
    /// Connections turned away at the greeting while the receiver was up (its cap).
    turned_away: u64,
    /// Connections tried while the receiver was down.
    outage_connections: u64,
    /// Attempts whose slowest reply took many times the receiver's latency (a tarpit).
    slow: u64,
    /// Each outage (from, to), and the first delivery after its end.
    outages: Vec<(Micros, Micros, Option<Micros>)>,
    open: u64,
    peak: u64,
    last_final: Micros,
    ee: Vec<f32>,
    minutes: Vec<Minute>,
}

impl Counts {
    fn minute(&mut self, at: Micros) -> &mut Minute {
        let m = (at / 60_000_000) as usize;
        if self.minutes.len() <= m {
            self.minutes.resize(m + 1, Minute::default());
        }
        &mut self.minutes[m]
    }
}

/// What is counted of one stream while the world runs.
#[derive(Debug, Default, Clone)]
struct StreamCounts {
    recipients: u64,
    delivered: u64,
    bounced: u64,
    expired: u64,
    /// Attempts the receivers deferred (`deferred` events).
    deferred: u64,
    ee: Vec<f32>,
}

/// Gathers the counts, per receiver and per stream, while the world runs.
#[derive(Debug)]
pub struct Collector {
    names: Vec<String>,
    counts: Vec<Counts>,
    /// By stream name (`-` for mail without one).
    streams: std::collections::BTreeMap<String, StreamCounts>,
    pub recipients: u64,
    finished: u64,
    end: Micros,
    left: u64,
}

impl Collector {
    pub fn new(names: Vec<String>, recipients: u64) -> Collector {
        let counts = names.iter().map(|_| Counts::default()).collect();
        Collector {
            names,
            counts,
            streams: Default::default(),
            recipients,
            finished: 0,
            end: 0,
            left: 0,
        }
    }

    pub fn finished(&self) -> u64 {
        self.finished
    }

    pub fn arrived(&mut self, place: usize, stream: Option<&str>, recipients: u64, at: Micros) {
        self.stream(stream).recipients += recipients;
        let c = &mut self.counts[place];
        c.recipients += recipients;
        c.first_arrival.get_or_insert(at);
        c.minute(at).arrived += recipients;
    }

    pub fn attempted(&mut self, place: usize, attempts: u64, refused: u64, at: Micros) {
        let c = &mut self.counts[place];
        c.attempts += attempts;
        c.refused += refused;
        let m = c.minute(at);
        m.attempts += attempts;
        m.refused += refused;
    }

    /// The receiver's outages, from and to.
    pub fn outages(&mut self, place: usize, outages: impl Iterator<Item = (Micros, Micros)>) {
        self.counts[place].outages = outages.map(|(f, t)| (f, t, None)).collect();
    }

    /// A connection is tried (whether or not the receiver takes it); `down` while the
    /// receiver is in an outage.
    pub fn connecting(&mut self, place: usize, at: Micros, down: bool) {
        let c = &mut self.counts[place];
        c.connections += 1;
        c.outage_connections += u64::from(down);
        c.minute(at).connections += 1;
    }

    /// A connection was turned away at the greeting by the receiver's cap.
    pub fn turned_away(&mut self, place: usize) {
        self.counts[place].turned_away += 1;
    }

    /// An attempt's replies were held back (many times the receiver's latency).
    pub fn slow(&mut self, place: usize) {
        self.counts[place].slow += 1;
    }

    pub fn opened(&mut self, place: usize, at: Micros) {
        let c = &mut self.counts[place];
        c.open += 1;
        c.peak = c.peak.max(c.open);
        let open = c.open;
        let m = c.minute(at);
        m.peak_connections = m.peak_connections.max(open);
    }

    pub fn closed(&mut self, place: usize, at: Micros) {
        let c = &mut self.counts[place];
        c.open = c.open.saturating_sub(1);
        let open = c.open;
        let m = c.minute(at);
        m.peak_connections = m.peak_connections.max(open);
    }

    fn stream(&mut self, name: Option<&str>) -> &mut StreamCounts {
        self.streams
            .entry(name.unwrap_or("-").to_string())
            .or_default()
    }

    pub fn event(&mut self, place: usize, e: &Event, at: Micros) {
        let s = self.stream(e.stream.as_deref());
        match e.event {
            Kind::Delivered => {
                s.delivered += 1;
                s.ee.push(e.ee_seconds.unwrap_or(0.0) as f32);
            }
            Kind::Bounced => s.bounced += 1,
            Kind::Expired => s.expired += 1,
            Kind::Deferred => s.deferred += 1,
            _ => {}
        }
        let c = &mut self.counts[place];
        if c.provider.is_none() {
            c.provider = e.provider.clone();
        }
        let last = match e.event {
            Kind::Delivered => {
                for (_, to, first) in c.outages.iter_mut() {
                    if at >= *to && first.is_none() {
                        *first = Some(at);
                    }
                }
                c.delivered += 1;
                c.ee.push(e.ee_seconds.unwrap_or(0.0) as f32);
                c.minute(at).delivered += 1;
                true
            }
            Kind::Bounced => {
                c.bounced += 1;
                true
            }
            Kind::Expired => {
                c.expired += 1;
                true
            }
            _ => false,
        };
        if last {
            c.last_final = c.last_final.max(at);
            c.minute(at).finished += 1;
            self.finished += 1;
        }
    }

    pub fn end(&mut self, at: Micros, left: u64) {
        self.end = at;
        self.left = left;
    }

    /// Adds what another run of other receivers counted.
    pub fn merge(&mut self, other: Collector) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            if theirs.recipients > 0 {
                *mine = theirs;
            }
        }
        for (name, theirs) in other.streams {
            let mine = self.streams.entry(name).or_default();
            mine.recipients += theirs.recipients;
            mine.delivered += theirs.delivered;
            mine.bounced += theirs.bounced;
            mine.expired += theirs.expired;
            mine.deferred += theirs.deferred;
            mine.ee.extend(theirs.ee);
        }
        self.recipients += other.recipients;
        self.finished += other.finished;
        self.end = self.end.max(other.end);
        self.left += other.left;
    }
}

/// Seconds of a distribution.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Dist {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    fn of(mut v: Vec<f32>) -> Option<Dist> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f32::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64;
        Some(Dist {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: *v.last().expect("not empty") as f64,
        })
    }
}

/// One receiver's figures (or all together).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub receiver: String,
    /// The provider (destination) knock grouped its domains into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub recipients: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub expired: u64,
    /// Not final when the simulation ended.
    pub pending: u64,
    pub attempts: u64,
    /// Attempts the receiver did not accept (deferred, refused, turned away).
    pub refused: u64,
    pub refused_share: f64,
    pub attempts_per_recipient: f64,
    /// Connections tried (the ones turned away too).
    pub connections: u64,
    pub peak_connections: u64,
    /// Connections turned away at the greeting by the receiver's cap.
    pub turned_away: u64,
    /// Attempts whose replies were held back (over 4 × the receiver's latency), of all.
    pub slow_share: f64,
    /// Connections tried while the receiver was down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_connections: Option<u64>,
    /// From the end of an outage to the first delivery after it (the longest, over the
    /// receiver's outages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_seconds: Option<f64>,
    /// From the first arrival to the last recipient's final state.
    pub drain_seconds: f64,
    pub ideal_drain_seconds: f64,
    /// Accepted to delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_seconds: Option<Dist>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ideal_seconds: Option<Dist>,
}

/// One stream's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StreamFigures {
    pub stream: String,
    pub recipients: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub expired: u64,
    /// Attempts deferred by the receivers.
    pub deferred: u64,
    /// Accepted to delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_seconds: Option<Dist>,
}

/// A simulation's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub messages: u64,
    pub recipients: u64,
    pub seed: u64,
    /// The virtual time the run took.
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    /// Whether every recipient reached a final state.
    pub drained: bool,
    pub receivers: Vec<Figures>,
    pub total: Figures,
    /// By stream, when the traffic names one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamFigures>,
    #[serde(skip)]
    pub timeline: Vec<(String, Vec<Minute>)>,
}

/// What a sender who knew every receiver exactly would achieve: each recipient, in order of
/// arrival, accepted at the first moment its receiver's limits and outages allow (after
/// the greylisting window, when there is one). As many connections as it takes, unless the
/// receiver caps them: then each message waits for one of its connections, which carries a
/// transaction (MAIL, RCPT per recipient, the message) in turn, and is greeted anew past a
/// cap on messages per connection.
pub fn ideal(s: &Scenario, plan: &Plan, place_of: &HashMap<String, usize>) -> Vec<(Vec<f32>, f64)> {
    let mut receivers: Vec<Receiver> = s
        .receivers
        .values()
        .map(|m| Receiver::new(m.clone(), "ideal", T0, 0))
        .collect();
    let models: Vec<&crate::tools::receiver::ReceiverModel> = s.receivers.values().collect();
    let window: Vec<Duration> = models
        .iter()
        .map(|m| m.greylist.as_ref().map(|g| g.window).unwrap_or_default())
        .collect();
    // Each capped receiver's connections: when each is free, and what it has carried.
    let mut lines: Vec<Option<Vec<(Timestamp, u64)>>> = models
        .iter()
        .map(|m| m.connections.map(|c| vec![(T0, 0); c as usize]))
        .collect();
    let bandwidth = s.simulation.bandwidth.max(1);
    let mut out: Vec<(Vec<f32>, f64)> = s.receivers.keys().map(|_| (Vec::new(), 0.0)).collect();
    let mut first: Vec<Option<Micros>> = vec![None; s.receivers.len()];
    let client = &s.simulation.client;
    for m in &plan.messages {
        let domain = &plan.domains[m.domain as usize];
        let place = place_of[domain];
        let model = models[place];
        let arrival = T0 + Duration::from_micros(m.at);
        first[place].get_or_insert(m.at);
        let sender = &plan.senders[m.sender as usize];
        let latency = model.latency;
        let transfer = Duration::from_micros(m.size as u64 * 1_000_000 / bandwidth);
        // A whole transaction on a connection already open: a reply to MAIL, to each RCPT,
        // and to the message after DATA.
        let transaction = latency * (2 + m.recipients) + transfer;
        let line = lines[place].as_mut().map(|lines| {
            let (i, _) = lines
                .iter()
                .enumerate()
                .min_by_key(|(_, (free, _))| *free)
                .expect("a cap is at least 1");
            i
        });
        let mut from = arrival + window[place];
        if let (Some(i), Some(lines)) = (line, lines[place].as_mut()) {
            let (free, carried) = &mut lines[i];
            let reconnect = model
                .messages_per_connection
                .is_some_and(|cap| *carried > 0 && *carried % cap == 0);
            // The greeting before the first transaction of a new connection.
            from = from.max(*free + if reconnect { latency } else { Duration::ZERO });
        }
        let mut last = from;
        for k in 0..m.recipients {
            let r = &mut receivers[place];
            let rcpt = match r.counts_recipients() {
                true => plan.address(m, k, domain),
                false => String::new(),
            };
            let t = r.earliest(client, sender, &rcpt, from);
            r.accept(client, sender, &rcpt, t);
            last = last.max(t);
            let done = match line {
                Some(_) => t + transaction,
                None => t + latency * 4,
            };
            out[place].0.push(done.since(arrival).as_secs_f64() as f32);
            let drain = done.since(T0 + Duration::from_micros(first[place].unwrap_or(0)));
            out[place].1 = out[place].1.max(drain.as_secs_f64());
        }
        if let (Some(i), Some(lines)) = (line, lines[place].as_mut()) {
            lines[i].0 = last + transaction;
            lines[i].1 += 1;
        }
    }
    out
}

impl Report {
    pub fn new(
        s: &Scenario,
        plan: &Plan,
        collect: Collector,
        ideal: Vec<(Vec<f32>, f64)>,
        wall: Duration,
    ) -> Report {
        let mut total = Counts::default();
        let mut total_ideal: (Vec<f32>, f64) = (Vec::new(), 0.0);
        let mut receivers = Vec::new();
        let mut timeline = Vec::new();
        for ((name, c), (ideal_ee, ideal_drain)) in
            collect.names.iter().zip(collect.counts).zip(ideal)
        {
            if c.recipients == 0 {
                continue;
            }
            receivers.push(figures(name, &c, &ideal_ee, ideal_drain));
            total.recipients += c.recipients;
            total.delivered += c.delivered;
            total.bounced += c.bounced;
            total.expired += c.expired;
            total.attempts += c.attempts;
            total.refused += c.refused;
            total.connections += c.connections;
            total.peak += c.peak;
            total.first_arrival = total.first_arrival.min(c.first_arrival).or(c.first_arrival);
            total.last_final = total.last_final.max(c.last_final);
            total.ee.extend(&c.ee);
            total_ideal.0.extend(&ideal_ee);
            total_ideal.1 = total_ideal.1.max(ideal_drain);
            timeline.push((name.clone(), c.minutes));
        }
        let total = figures("all", &total, &total_ideal.0, total_ideal.1);
        let named = collect.streams.keys().any(|k| k != "-");
        let streams = match named {
            false => Vec::new(),
            true => collect
                .streams
                .into_iter()
                .map(|(stream, c)| StreamFigures {
                    stream,
                    recipients: c.recipients,
                    delivered: c.delivered,
                    bounced: c.bounced,
                    expired: c.expired,
                    deferred: c.deferred,
                    delivery_seconds: Dist::of(c.ee),
                })
                .collect(),
        };
        Report {
            messages: plan.messages.len() as u64,
            recipients: plan.recipients(),
            seed: s.simulation.seed,
            simulated_seconds: collect.end as f64 / 1e6,
            wall_seconds: wall.as_secs_f64(),
            drained: collect.left == 0,
            receivers,
            total,
            streams,
            timeline,
        }
    }

    /// The per-minute timeline as CSV.
    pub fn timeline_csv(&self) -> String {
        let mut out = String::from(
            "minute,receiver,arrived,attempts,refused,delivered,finished,connections,peak_connections,queued\n",
        );
        for (name, minutes) in &self.timeline {
            let mut queued: i64 = 0;
            for (i, m) in minutes.iter().enumerate() {
                queued += m.arrived as i64 - m.finished as i64;
                let _ = writeln!(
                    out,
                    "{i},{name},{},{},{},{},{},{},{},{queued}",
                    m.arrived,
                    m.attempts,
                    m.refused,
                    m.delivered,
                    m.finished,
                    m.connections,
                    m.peak_connections
                );
            }
        }
        out
    }
}

fn figures(name: &str, c: &Counts, ideal_ee: &[f32], ideal_drain: f64) -> Figures {
    let finals = c.delivered + c.bounced + c.expired;
    let drain = c
        .first_arrival
        .map(|f| c.last_final.saturating_sub(f) as f64 / 1e6)
        .unwrap_or(0.0);
    Figures {
        receiver: name.to_string(),
        provider: c.provider.clone(),
        recipients: c.recipients,
        delivered: c.delivered,
        bounced: c.bounced,
        expired: c.expired,
        pending: c.recipients.saturating_sub(finals),
        attempts: c.attempts,
        refused: c.refused,
        refused_share: ratio(c.refused, c.attempts),
        attempts_per_recipient: ratio(c.attempts, c.recipients),
        connections: c.connections,
        peak_connections: c.peak,
        turned_away: c.turned_away,
        slow_share: ratio(c.slow, c.attempts),
        outage_connections: (!c.outages.is_empty()).then_some(c.outage_connections),
        resumed_seconds: c
            .outages
            .iter()
            .filter_map(|(_, to, first)| first.map(|f| f.saturating_sub(*to) as f64 / 1e6))
            .reduce(f64::max),
        drain_seconds: drain,
        ideal_drain_seconds: ideal_drain,
        delivery_seconds: Dist::of(c.ee.clone()),
        ideal_seconds: Dist::of(ideal_ee.to_vec()),
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    match b {
        0 => 0.0,
        b => a as f64 / b as f64,
    }
}

/// A duration for people: `850ms`, `12.5s`, `3m 20s`, `2h 5m`.
pub fn human(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{:.0}ms", seconds * 1000.0);
    }
    if seconds < 60.0 {
        return format!("{seconds:.1}s");
    }
    let s = seconds.round() as u64;
    match s {
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn dist(d: Option<Dist>) -> String {
    d.map(|d| format!("{} / {} / {}", human(d.p50), human(d.p95), human(d.max)))
        .unwrap_or_else(|| "-".into())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} messages ({} recipients), seed {}: {} simulated in {:.2} s{}",
            self.messages,
            self.recipients,
            self.seed,
            human(self.simulated_seconds),
            self.wall_seconds,
            if self.drained {
                ""
            } else {
                " (stopped with mail still queued)"
            }
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<16} {:>9} {:>7} {:>7} {:>8} {:>9} {:>8} {:>6} {:>5}  {:>9} {:>9}  {:<28} IDEAL p50 / p95 / max",
            "RECEIVER",
            "DELIVERED",
            "BOUNCED",
            "EXPIRED",
            "PENDING",
            "ATT/RCPT",
            "REFUSED",
            "CONNS",
            "PEAK",
            "DRAIN",
            "IDEAL",
            "DELIVERY p50 / p95 / max",
        )?;
        for r in self.receivers.iter().chain([&self.total]) {
            writeln!(
                f,
                "{:<16} {:>9} {:>7} {:>7} {:>8} {:>9.2} {:>7.1}% {:>6} {:>5}  {:>9} {:>9}  {:<28} {}",
                r.receiver,
                r.delivered,
                r.bounced,
                r.expired,
                r.pending,
                r.attempts_per_recipient,
                r.refused_share * 100.0,
                r.connections,
                r.peak_connections,
                human(r.drain_seconds),
                human(r.ideal_drain_seconds),
                dist(r.delivery_seconds),
                dist(r.ideal_seconds),
            )?;
        }
        if !self.streams.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "{:<16} {:>10} {:>9} {:>7} {:>7} {:>8}  DELIVERY p50 / p95 / p99 / max",
                "STREAM", "RECIPIENTS", "DELIVERED", "BOUNCED", "EXPIRED", "DEFERRED"
            )?;
            for st in &self.streams {
                let d = st
                    .delivery_seconds
                    .map(|d| {
                        format!(
                            "{} / {} / {} / {}",
                            human(d.p50),
                            human(d.p95),
                            human(d.p99),
                            human(d.max)
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    f,
                    "{:<16} {:>10} {:>9} {:>7} {:>7} {:>8}  {d}",
                    st.stream, st.recipients, st.delivered, st.bounced, st.expired, st.deferred
                )?;
            }
        }
        for r in &self.receivers {
            if r.slow_share > 0.0 {
                writeln!(
                    f,
                    "{}: {:.1} % of attempts answered slowly (held back)",
                    r.receiver,
                    r.slow_share * 100.0
                )?;
            }
            let connections = |n: u64| match n {
                1 => "1 connection".to_string(),
                n => format!("{n} connections"),
            };
            if r.turned_away > 0 {
                writeln!(
                    f,
                    "{}: {} turned away at the greeting",
                    r.receiver,
                    connections(r.turned_away)
                )?;
            }
            if let Some(n) = r.outage_connections {
                let resumed = r.resumed_seconds.map(human).unwrap_or_else(|| "-".into());
                writeln!(
                    f,
                    "{}: {} while down; flow resumed {resumed} after the outage",
                    r.receiver,
                    connections(n)
                )?;
            }
        }
        Ok(())
    }
}

/// Two reports of one scenario under two configurations, side by side.
pub fn compare(a: (&str, &Report), b: (&str, &Report)) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:>14} {:>14}\n",
        "RECEIVER", "FIGURE", a.0, b.0
    );
    let rows = |r: &Figures| -> Vec<(&'static str, String)> {
        vec![
            ("delivered", r.delivered.to_string()),
            ("expired", r.expired.to_string()),
            ("attempts/rcpt", format!("{:.2}", r.attempts_per_recipient)),
            ("refused", format!("{:.1} %", r.refused_share * 100.0)),
            ("connections", r.connections.to_string()),
            ("drain", human(r.drain_seconds)),
            (
                "delivery p95",
                r.delivery_seconds
                    .map(|d| human(d.p95))
                    .unwrap_or("-".into()),
            ),
        ]
    };
    let all_a = a.1.receivers.iter().chain([&a.1.total]);
    for ra in all_a {
        let rb =
            b.1.receivers
                .iter()
                .chain([&b.1.total])
                .find(|r| r.receiver == ra.receiver);
        let Some(rb) = rb else { continue };
        for ((name, va), (_, vb)) in rows(ra).into_iter().zip(rows(rb)) {
            let _ = writeln!(out, "{:<16} {:<12} {va:>14} {vb:>14}", ra.receiver, name);
        }
    }
    out
}
