//! Receiver models: how real receiving MTAs limit and defer (`../shared/RECEIVERS.md`), as
//! data ([`ReceiverModel`], read from a scenario file) and as a state machine on a clock it
//! is told ([`Receiver`]). `knock sink` plays a model on wall time over real SMTP;
//! `knock simulate` plays the same model on virtual time. Nothing here sleeps or does I/O:
//! a reply comes with the delay the receiver would wait before sending it.
//!
//! Shapes of limit ([`Shape`]): fixed windows (a counter that starts with the first request
//! and resets when the window has passed, as Postfix's anvil), sliding windows, token
//! buckets (rspamd), smoothed rates (Exim's `ratelimit`, optionally `strict` so refused
//! attempts count too); each counted per client, sender or recipient, at the greeting, MAIL
//! or RCPT, and either refusing or, silently, delaying every reply (a tarpit). Besides:
//! greylisting, a cap on concurrent connections, caps per connection, outages, random
//! deferrals and bounces, and slowness under load.
//!
//! Every limiter can also say when it would next accept ([`Receiver::earliest`]): what a
//! sender that knew the receiver exactly would do, the *ideal* that `knock simulate`
//! measures knock against.

use crate::config::Rate;
use crate::reply::Reply;
use crate::time::Timestamp;
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// A receiver as a scenario describes it (`[receiver.NAME]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverModel {
    /// How long each reply takes (the greeting too).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greylist: Option<Greylisting>,
    #[serde(rename = "limit", skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    /// Connections from one client at once; past it, `421` at the greeting.
    #[serde(
        deserialize_with = "positive_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub connections: Option<u64>,
    /// Messages in one session; past it, `421` and the session closes.
    #[serde(
        deserialize_with = "positive_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub messages_per_connection: Option<u64>,
    /// Recipients in one message; past it, `452 4.5.3`.
    #[serde(
        deserialize_with = "positive_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub recipients_per_message: Option<u64>,
    #[serde(rename = "outage", skip_serializing_if = "Vec::is_empty")]
    pub outages: Vec<Outage>,
    /// Share of recipients deferred at random (`451 4.7.500 Server busy`).
    #[serde(deserialize_with = "share")]
    pub defer_share: f64,
    /// Share of recipients refused at random as unknown (`550 5.1.1`).
    #[serde(deserialize_with = "share")]
    pub bounce_share: f64,
    /// Under load: past this many open sessions (from all clients), every reply waits
    /// `slow_delay` longer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_above: Option<usize>,
    #[serde(with = "humantime_serde")]
    pub slow_delay: Duration,
    /// Texts of the replies that no limit names.
    pub replies: Replies,
}

/// Greylisting (postgrey and its kind).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Greylisting {
    /// How long a new triplet is deferred.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The reply while a triplet waits; `{rcpt}`, `{domain}` and `{seconds}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
    /// Exim's smoothed rate: an exponentially weighted average over the period.
    Ewma,
}

/// Whose events a limit counts.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The connecting client (its IP address).
    #[default]
    Client,
    /// The envelope sender.
    Sender,
    /// The recipient: only that mailbox is deferred.
    Recipient,
}

/// Where a limit counts and answers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Connections, answered at the greeting.
    Connect,
    /// Messages, answered to MAIL.
    #[default]
    Mail,
    /// Recipients, answered to RCPT.
    Rcpt,
}

/// One limit (`[[receiver.NAME.limit]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub shape: Shape,
    /// So many per period, e.g. `"10/10s"`, `"500/h"`.
    #[serde(deserialize_with = "de_rate")]
    pub rate: Rate,
    /// A token bucket's size (its rate's count when left out).
    #[serde(
        default,
        deserialize_with = "positive_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub burst: Option<u64>,
    /// Refused attempts count too (Exim's `strict`); by default only what is let through.
    #[serde(default)]
    pub strict: bool,
    #[serde(default)]
    pub per: Scope,
    #[serde(default)]
    pub at: Stage,
    /// Silent: past the limit, nothing is refused but every reply to the client waits this
    /// long, times how far over the limit it is (a tarpit: the more offered, the slower).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// The refusal; `{client}`, `{host}`, `{sender}` and `{rcpt}` are filled in. A default
    /// in the style of the shape's usual users when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// The receiver is down from `from` to `to` (since the start of the run).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    #[serde(with = "humantime_serde")]
    pub from: Duration,
    #[serde(with = "humantime_serde")]
    pub to: Duration,
    pub kind: OutageKind,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutageKind {
    /// Connections are refused.
    Refused,
    /// `421 4.3.2` at the greeting.
    Greeting,
    /// Connections are taken and never answered.
    Timeout,
}

/// Reply texts for the cases no limit names; `{client}`, `{host}`, `{rcpt}` are filled in.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Replies {
    pub connections: String,
    pub outage: String,
    pub defer: String,
    pub bounce: String,
    pub messages_per_connection: String,
    pub recipients_per_message: String,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            connections: "421 4.7.0 {host} Error: too many connections from {client}".into(),
            outage: "421 4.3.2 Service not available, closing transmission channel".into(),
            defer: "451 4.7.500 Server busy. Please try again later.".into(),
            bounce: "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table".into(),
            messages_per_connection: "421 4.7.0 {host} Error: too many messages in one session"
                .into(),
            recipients_per_message: "452 4.5.3 Error: too many recipients".into(),
        }
    }
}

fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is not a share: it must be between 0 and 1"
        )));
    }
    Ok(v)
}

fn positive_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(Some(v))
}

fn de_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

impl ReceiverModel {
    /// Checks what serde cannot; errors name the key (relative to the receiver).
    pub fn validate(&self) -> Result<(), String> {
        for (i, o) in self.outages.iter().enumerate() {
            if o.to <= o.from {
                return Err(format!("outage[{i}].to: must be after `from`"));
            }
        }
        if self.slow_above.is_some() && self.slow_delay.is_zero() {
            return Err("slow_delay: needed with slow_above".into());
        }
        for (i, l) in self.limits.iter().enumerate() {
            if l.burst.is_some() && l.shape != Shape::TokenBucket {
                return Err(format!("limit[{i}].burst: only a token_bucket has a burst"));
            }
            if l.strict && l.shape != Shape::Ewma {
                return Err(format!("limit[{i}].strict: only an ewma counts strictly"));
            }
            if l.at == Stage::Connect && l.per != Scope::Client {
                return Err(format!(
                    "limit[{i}].per: at the greeting only the client is known"
                ));
            }
            if l.at == Stage::Mail && l.per == Scope::Recipient {
                return Err(format!(
                    "limit[{i}].per: a recipient limit is answered at rcpt, not mail"
                ));
            }
        }
        Ok(())
    }
}

/// A limiter's count for one key.
#[derive(Debug, Clone)]
enum Count {
    Fixed { start: Timestamp, n: u64 },
    Sliding(VecDeque<Timestamp>),
    Bucket { tokens: f64, at: Timestamp },
    Ewma { rate: f64, at: Timestamp },
}

impl Count {
    /// The time of the latest event counted (for a fixed window, its start at least).
    fn latest(&self) -> Timestamp {
        match self {
            Count::Fixed { start, .. } => *start,
            Count::Sliding(events) => events.back().copied().unwrap_or(Timestamp(0)),
            Count::Bucket { at, .. } | Count::Ewma { at, .. } => *at,
        }
    }
}

impl Limit {
    /// Whose count an event goes to.
    fn key<'k>(&self, client: &'k str, sender: &'k str, rcpt: &'k str) -> &'k str {
        match self.per {
            Scope::Client => client,
            Scope::Sender => sender,
            Scope::Recipient => rcpt,
        }
    }

    /// The count of `key`, started at `now` when it has none yet.
    fn count<'c>(
        &self,
        counts: &'c mut HashMap<String, Count>,
        key: &str,
        now: Timestamp,
    ) -> &'c mut Count {
        if !counts.contains_key(key) {
            counts.insert(key.to_string(), self.fresh(now));
        }
        counts.get_mut(key).expect("inserted above")
    }

    fn per_second(&self) -> f64 {
        self.rate.count as f64 / self.rate.per.as_secs_f64()
    }

    fn fresh(&self, now: Timestamp) -> Count {
        match self.shape {
            Shape::FixedWindow => Count::Fixed { start: now, n: 0 },
            Shape::SlidingWindow => Count::Sliding(VecDeque::new()),
            Shape::TokenBucket => Count::Bucket {
                tokens: self.burst.unwrap_or(self.rate.count as u64) as f64,
                at: now,
            },
            Shape::Ewma => Count::Ewma { rate: 0.0, at: now },
        }
    }

    /// Whether one more event at `now` is within the limit, and, when `record`, counts
    /// it (a refused event is counted by a fixed window, as anvil counts requests, by a
    /// strict smoothed rate, and by every shape when `always`: a tarpit lets it through).
    fn take(&self, c: &mut Count, now: Timestamp, record: bool, always: bool) -> bool {
        let limit = self.rate.count as u64;
        match c {
            Count::Fixed { start, n } => {
                if now.since(*start) >= self.rate.per {
                    *start = now;
                    *n = 0;
                }
                let ok = *n < limit;
                if record {
                    *n += 1;
                }
                ok
            }
            Count::Sliding(events) => {
                while events
                    .front()
                    .is_some_and(|t| now.since(*t) >= self.rate.per)
                {
                    events.pop_front();
                }
                let ok = (events.len() as u64) < limit;
                if (ok || always) && record {
                    events.push_back(now);
                }
                ok
            }
            Count::Bucket { tokens, at } => {
                let cap = self.burst.unwrap_or(limit) as f64;
                *tokens = (*tokens + now.since(*at).as_secs_f64() * self.per_second()).min(cap);
                *at = now.max(*at);
                let ok = *tokens >= 1.0 - 1e-9;
                if (ok || always) && record {
                    *tokens -= 1.0;
                }
                ok
            }
            Count::Ewma { rate, at } => {
                let next = ewma(*rate, now.since(*at), self.rate.per);
                let ok = next <= limit as f64;
                if record && (ok || self.strict || always) {
                    *rate = next;
                    *at = now.max(*at);
                }
                ok
            }
        }
    }

    /// The earliest time from `now` at which one more event would be let through. Never
    /// before the count's own latest event: the ideal sender asks in arrival order, and a
    /// count's clock does not go back.
    fn earliest(&self, c: &Count, now: Timestamp) -> Timestamp {
        let limit = self.rate.count as u64;
        let now = now.max(c.latest());
        match c {
            Count::Fixed { start, n } => {
                if now.since(*start) >= self.rate.per || *n < limit {
                    now
                } else {
                    *start + self.rate.per
                }
            }
            Count::Sliding(events) => {
                let live = events
                    .iter()
                    .filter(|t| now.since(**t) < self.rate.per)
                    .count() as u64;
                if live < limit {
                    return now;
                }
                // The oldest that must age out for one more to fit.
                let oldest = events
                    .iter()
                    .filter(|t| now.since(**t) < self.rate.per)
                    .nth((live - limit) as usize)
                    .copied()
                    .unwrap_or(now);
                oldest + self.rate.per
            }
            Count::Bucket { tokens, at } => {
                let cap = self.burst.unwrap_or(limit) as f64;
                let have = (tokens + now.since(*at).as_secs_f64() * self.per_second()).min(cap);
                if have >= 1.0 - 1e-9 {
                    now
                } else {
                    after(now, (1.0 - have) / self.per_second())
                }
            }
            Count::Ewma { rate, at } => {
                if ewma(*rate, now.since(*at), self.rate.per) <= limit as f64 {
                    return now;
                }
                // The smoothed rate only falls while nothing comes: search for the moment.
                let (mut lo, mut hi) = (0.0f64, self.rate.per.as_secs_f64() * 64.0);
                for _ in 0..50 {
                    let mid = (lo + hi) / 2.0;
                    let t = now + Duration::from_secs_f64(mid);
                    match ewma(*rate, t.since(*at), self.rate.per) <= limit as f64 {
                        true => hi = mid,
                        false => lo = mid,
                    }
                }
                after(now, hi)
            }
        }
    }

    /// How far over the limit a count is: 1 at the limit, 2 at twice the limit.
    fn overshoot(&self, c: &Count) -> f64 {
        let limit = self.rate.count as f64;
        let over = match c {
            Count::Fixed { n, .. } => *n as f64 / limit,
            Count::Sliding(events) => events.len() as f64 / limit,
            Count::Bucket { tokens, .. } => 1.0 - tokens.min(0.0) / limit,
            Count::Ewma { rate, .. } => rate / limit,
        };
        over.max(1.0)
    }

    fn refusal(&self) -> &str {
        if let Some(r) = &self.reply {
            return r;
        }
        match (self.at, self.per, self.shape) {
            (Stage::Connect, _, _) => "421 4.7.0 {host} Error: too many connections from {client}",
            (_, Scope::Recipient, _) => {
                "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered"
            }
            (Stage::Rcpt, _, _) => "450 4.7.1 Error: too many recipients from {client}",
            (_, _, Shape::FixedWindow) if self.rate.per >= Duration::from_secs(3600) => {
                "421 4.7.28 Our system has detected an unusual rate of mail originating from your IP address; mail sent from your IP address has been temporarily rate limited"
            }
            (_, _, Shape::FixedWindow) => "421 4.7.0 {host} Error: too much mail from {client}",
            (_, _, Shape::SlidingWindow) => "421 4.7.0 Too many messages from {client}, slow down",
            (_, _, Shape::TokenBucket) => "451 4.7.1 Ratelimit exceeded, try again later",
            (_, _, Shape::Ewma) => "451 4.7.1 Sender rate limit exceeded, try again later",
        }
    }
}

/// `secs` after `now`, rounded up to the clock's millisecond: never a moment too early.
fn after(now: Timestamp, secs: f64) -> Timestamp {
    now + Duration::from_millis((secs * 1000.0).ceil() as u64)
}

/// Exim's smoothed rate, in events per `period`, after one more event `dt` after the last.
fn ewma(rate: f64, dt: Duration, period: Duration) -> f64 {
    let i_over_p = (dt.as_secs_f64() / period.as_secs_f64()).max(1e-9);
    let a = (-i_over_p).exp();
    (1.0 - a) / i_over_p + a * rate
}

/// What a connection attempt meets.
#[derive(Debug, Clone, PartialEq)]
pub enum Greeting {
    /// A `220`: the session is on, after `delay`.
    Accept { delay: Duration },
    /// Connection refused.
    Refuse,
    /// Taken, and never answered.
    Hang,
    /// Turned away with this reply at the greeting, after `delay`.
    TurnAway { reply: Reply, delay: Duration },
}

/// What happened to one command, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Greylisted,
    /// Refused by the limit at this index.
    Limited(usize),
    /// Deferred at random.
    Deferred,
    /// Refused at random as unknown.
    Bounced,
    /// A magic recipient's scripted answer.
    Magic,
    /// Past a per-connection cap.
    Capped,
}

/// A reply and the delay before it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub reply: Reply,
    pub delay: Duration,
    pub verdict: Verdict,
}

/// One session's own counts.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub client: String,
    pub messages: u64,
    pub recipients: u64,
}

/// A receiver playing its model.
pub struct Receiver {
    model: ReceiverModel,
    host: String,
    started: Timestamp,
    counts: Vec<HashMap<String, Count>>,
    /// When each (client, sender, recipient) was first seen, by a hash of the three.
    triplets: HashMap<u64, Timestamp>,
    open: HashMap<String, usize>,
    sessions: usize,
    /// Until when each client is being tarpitted.
    slow_until: HashMap<String, (Timestamp, Duration)>,
    rng: fastrand::Rng,
    last: Timestamp,
}

impl Receiver {
    /// A receiver named `host` (in its replies), whose outages count from `started`.
    pub fn new(model: ReceiverModel, host: &str, started: Timestamp, seed: u64) -> Receiver {
        let counts = model.limits.iter().map(|_| HashMap::new()).collect();
        Receiver {
            model,
            host: host.to_string(),
            started,
            counts,
            triplets: HashMap::new(),
            open: HashMap::new(),
            sessions: 0,
            slow_until: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            last: started,
        }
    }

    pub fn model(&self) -> &ReceiverModel {
        &self.model
    }

    /// Open sessions, from all clients.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Time never goes back for the receiver, even when callers' clocks differ a little.
    fn tick(&mut self, now: Timestamp) -> Timestamp {
        self.last = self.last.max(now);
        self.last
    }

    /// The outage the receiver is in at `now`, if any.
    pub fn outage(&self, now: Timestamp) -> Option<OutageKind> {
        let since = now.since(self.started);
        self.model
            .outages
            .iter()
            .find(|o| o.from <= since && since < o.to)
            .map(|o| o.kind)
    }

    /// The delay before each reply to `client`: the latency, slowness under load, and a
    /// tarpit the client earned.
    fn delay(&self, client: &str, now: Timestamp) -> Duration {
        let mut d = self.model.latency;
        if self.model.slow_above.is_some_and(|n| self.sessions > n) {
            d += self.model.slow_delay;
        }
        if let Some((until, extra)) = self.slow_until.get(client)
            && *until > now
        {
            d += *extra;
        }
        d
    }

    /// A reply from a template: `{client}`, `{host}`, `{sender}`, `{rcpt}`, `{domain}` filled
    /// in, in one pass.
    fn fill(&self, template: &str, client: &str, sender: &str, rcpt: &str) -> Reply {
        let domain = rcpt.rsplit('@').next().unwrap_or("");
        let mut text = String::with_capacity(template.len() + 64);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            rest = &rest[open..];
            let close = rest.find('}').map(|c| c + 1).unwrap_or(rest.len());
            let value = match &rest[..close] {
                "{client}" => client,
                "{host}" => &self.host,
                "{sender}" => sender,
                "{rcpt}" => rcpt,
                "{domain}" => domain,
                other => other,
            };
            text.push_str(value);
            rest = &rest[close..];
        }
        text.push_str(rest);
        text.push_str("\r\n");
        Reply::parse(text.as_bytes())
            .unwrap_or_else(|_| Reply::new(451, "4.3.0", text.trim_end().to_string()))
    }

    /// Runs the limits counted at `stage`; the first that refuses answers.
    fn limits(
        &mut self,
        stage: Stage,
        client: &str,
        sender: &str,
        rcpt: &str,
        now: Timestamp,
    ) -> Option<(usize, Reply)> {
        let mut refused = None;
        for (i, limit) in self.model.limits.iter().enumerate() {
            if limit.at != stage {
                continue;
            }
            let key = limit.key(client, sender, rcpt);
            let count = limit.count(&mut self.counts[i], key, now);
            let tarpit = limit.delay.is_some();
            if limit.take(count, now, refused.is_none(), tarpit) {
                continue;
            }
            match limit.delay {
                // A tarpit lets it through and slows every reply to the client until it is
                // back under the limit.
                Some(delay) => {
                    let delay = delay.mul_f64(limit.overshoot(count));
                    let until = limit
                        .earliest(count, now)
                        .max(now + Duration::from_millis(1));
                    let slow = self
                        .slow_until
                        .entry(client.to_string())
                        .or_insert((now, delay));
                    *slow = (slow.0.max(until), delay);
                }
                None if refused.is_none() => refused = Some(i),
                None => {}
            }
        }
        refused.map(|i| {
            let text = self.model.limits[i].refusal();
            (i, self.fill(text, client, sender, rcpt))
        })
    }

    /// A client connects.
    pub fn connect(&mut self, client: &str, now: Timestamp) -> Greeting {
        let now = self.tick(now);
        match self.outage(now) {
            Some(OutageKind::Refused) => return Greeting::Refuse,
            Some(OutageKind::Timeout) => return Greeting::Hang,
            Some(OutageKind::Greeting) => {
                return Greeting::TurnAway {
                    reply: self.fill(&self.model.replies.outage, client, "", ""),
                    delay: self.model.latency,
                };
            }
            None => {}
        }
        let delay = self.delay(client, now);
        let open = self.open.get(client).copied().unwrap_or(0);
        if self.model.connections.is_some_and(|c| open as u64 >= c) {
            let reply = self.fill(&self.model.replies.connections, client, "", "");
            return Greeting::TurnAway { reply, delay };
        }
        if let Some((_, reply)) = self.limits(Stage::Connect, client, "", "", now) {
            return Greeting::TurnAway { reply, delay };
        }
        *self.open.entry(client.to_string()).or_default() += 1;
        self.sessions += 1;
        Greeting::Accept { delay }
    }

    /// A session that [`Receiver::connect`] accepted is over.
    pub fn disconnect(&mut self, client: &str) {
        if let Some(n) = self.open.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(client);
            }
            self.sessions = self.sessions.saturating_sub(1);
        }
    }

    fn answer(&self, reply: Reply, client: &str, now: Timestamp, verdict: Verdict) -> Answer {
        Answer {
            reply,
            delay: self.delay(client, now),
            verdict,
        }
    }

    pub fn mail(&mut self, s: &mut Session, sender: &str, now: Timestamp) -> Answer {
        let now = self.tick(now);
        s.recipients = 0;
        if self
            .model
            .messages_per_connection
            .is_some_and(|m| s.messages >= m)
        {
            let reply = self.fill(
                &self.model.replies.messages_per_connection,
                &s.client,
                sender,
                "",
            );
            return self.answer(reply, &s.client, now, Verdict::Capped);
        }
        if let Some((i, reply)) = self.limits(Stage::Mail, &s.client, sender, "", now) {
            return self.answer(reply, &s.client, now, Verdict::Limited(i));
        }
        s.messages += 1;
        self.answer(ok(2, 1, 0), &s.client, now, Verdict::Accepted)
    }

    pub fn rcpt(&mut self, s: &mut Session, sender: &str, rcpt: &str, now: Timestamp) -> Answer {
        let now = self.tick(now);
        let client = s.client.as_str();
        if let Some(reply) = magic(rcpt) {
            return self.answer(reply, client, now, Verdict::Magic);
        }
        if self
            .model
            .recipients_per_message
            .is_some_and(|r| s.recipients >= r)
        {
            let reply = self.fill(
                &self.model.replies.recipients_per_message,
                client,
                sender,
                rcpt,
            );
            return self.answer(reply, client, now, Verdict::Capped);
        }
        if let Some(g) = &self.model.greylist {
            let first = *self
                .triplets
                .entry(triplet(client, sender, rcpt))
                .or_insert(now);
            if now.since(first) < g.window {
                let reply = match g.reply.as_deref() {
                    Some(text) => {
                        let text =
                            text.replace("{seconds}", &g.window.as_secs().max(1).to_string());
                        self.fill(&text, client, sender, rcpt)
                    }
                    None => self.fill(GREYLISTED, client, sender, rcpt),
                };
                return self.answer(reply, client, now, Verdict::Greylisted);
            }
        }
        if let Some((i, reply)) = self.limits(Stage::Rcpt, client, sender, rcpt, now) {
            return self.answer(reply, client, now, Verdict::Limited(i));
        }
        if self.model.defer_share > 0.0 && self.rng.f64() < self.model.defer_share {
            let reply = self.fill(&self.model.replies.defer, client, sender, rcpt);
            return self.answer(reply, client, now, Verdict::Deferred);
        }
        if self.model.bounce_share > 0.0 && self.rng.f64() < self.model.bounce_share {
            let reply = self.fill(&self.model.replies.bounce, client, sender, rcpt);
            return self.answer(reply, client, now, Verdict::Bounced);
        }
        let answer = self.answer(ok(2, 1, 5), client, now, Verdict::Accepted);
        s.recipients += 1;
        answer
    }

    /// The reply to the end of the message.
    pub fn data(&mut self, s: &Session, now: Timestamp) -> Answer {
        let now = self.tick(now);
        self.answer(ok(2, 0, 0), &s.client, now, Verdict::Accepted)
    }

    /// When one more message from `sender` to `rcpt` over a fresh connection from `client`
    /// would first be accepted, from `now`, ignoring greylisting, connections and chance:
    /// what a sender that knew this receiver exactly would wait for. [`Receiver::accept`]
    /// then counts it.
    pub fn earliest(&self, client: &str, sender: &str, rcpt: &str, now: Timestamp) -> Timestamp {
        let mut t = now;
        // Out of every outage that covers the time.
        loop {
            let before = t;
            for o in &self.model.outages {
                let since = t.since(self.started);
                if o.from <= since && since < o.to {
                    t = self.started + o.to;
                }
            }
            // A silent limit too: the ideal sender stays under it and is never slowed.
            for (i, limit) in self.model.limits.iter().enumerate() {
                if let Some(c) = self.counts[i].get(limit.key(client, sender, rcpt)) {
                    t = t.max(limit.earliest(c, t));
                }
            }
            if t == before {
                return t;
            }
        }
    }

    /// Counts one message accepted at `at` (for the ideal; see [`Receiver::earliest`]).
    pub fn accept(&mut self, client: &str, sender: &str, rcpt: &str, at: Timestamp) {
        for (i, limit) in self.model.limits.iter().enumerate() {
            let key = limit.key(client, sender, rcpt);
            let count = limit.count(&mut self.counts[i], key, at);
            limit.take(count, at, true, true);
        }
    }

    /// Whether any limit counts per recipient (the ideal then needs each address).
    pub fn counts_recipients(&self) -> bool {
        self.model.limits.iter().any(|l| l.per == Scope::Recipient)
    }
}

/// What postgrey answers a new triplet.
const GREYLISTED: &str = "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{domain}.html";

/// A `250` with its enhanced code (built, not parsed: it is the common case).
fn ok(class: u8, subject: u16, detail: u16) -> Reply {
    Reply {
        code: 250,
        enhanced: Some(crate::reply::Enhanced::new(class, subject, detail)),
        text: "Ok".into(),
    }
}

/// A greylisting triplet, hashed: one allocation less per recipient, and a collision
/// costs a model one greylisting it would have done anyway.
fn triplet(client: &str, sender: &str, rcpt: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (client, sender, rcpt).hash(&mut h);
    h.finish()
}

/// A recipient every receiver (`knock sink`'s too) answers as scripted, whatever its
/// domain: its local part, in any case, and the reply.
pub struct MagicRecipient {
    pub local_part: &'static str,
    pub code: u16,
    pub enhanced: &'static str,
    /// The reply's text, after `<rcpt>: `.
    pub text: &'static str,
    /// What the reply stands for, as `knock sink --help` says it.
    pub means: &'static str,
}

/// The scripted recipients: the one table the receivers answer from and `knock sink
/// --help` lists.
pub const MAGIC_RECIPIENTS: &[MagicRecipient] = &[
    MagicRecipient {
        local_part: "tempfail",
        code: 451,
        enhanced: "4.3.0",
        text: "Temporary failure, try again later",
        means: "a temporary failure (deferred)",
    },
    MagicRecipient {
        local_part: "permfail",
        code: 550,
        enhanced: "5.7.1",
        text: "Message refused",
        means: "refused for good, not about the mailbox (bounced)",
    },
    MagicRecipient {
        local_part: "unknown",
        code: 550,
        enhanced: "5.1.1",
        text: "Recipient address rejected: User unknown in virtual mailbox table",
        means: "no such user (bounced, and suppressed)",
    },
    MagicRecipient {
        local_part: "full",
        code: 452,
        enhanced: "4.2.2",
        text: "Mailbox full, try again later",
        means: "mailbox full, for now (deferred)",
    },
    MagicRecipient {
        local_part: "overquota",
        code: 552,
        enhanced: "5.2.2",
        text: "Mailbox full",
        means: "mailbox full, for good (bounced)",
    },
    MagicRecipient {
        local_part: "blocked",
        code: 554,
        enhanced: "5.7.1",
        text: "Service unavailable; client host blocked",
        means: "the sending host is blocked (bounced)",
    },
];

/// The scripted answer to `rcpt`, if it is a magic recipient (a `+tag` is ignored, so
/// that many distinct recipients can answer alike).
fn magic(rcpt: &str) -> Option<Reply> {
    let local = rcpt.split('@').next()?;
    let local = local.split('+').next()?;
    let m = MAGIC_RECIPIENTS
        .iter()
        .find(|m| m.local_part.eq_ignore_ascii_case(local))?;
    Some(Reply::new(
        m.code,
        m.enhanced,
        format!("<{rcpt}>: {}", m.text),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_800_000_000_000);
    const SEC: Duration = Duration::from_secs(1);

    fn limit(shape: Shape, rate: &str) -> Limit {
        Limit {
            shape,
            rate: rate.parse().unwrap(),
            burst: None,
            strict: false,
            per: Scope::Client,
            at: Stage::Mail,
            delay: None,
            reply: None,
        }
    }

    fn receiver(limits: Vec<Limit>) -> Receiver {
        let model = ReceiverModel {
            limits,
            ..Default::default()
        };
        Receiver::new(model, "mx.test", T0, 1)
    }

    /// Offers one message every `every` for `span`; returns the times accepted.
    fn offer(r: &mut Receiver, every: Duration, span: Duration) -> Vec<Duration> {
        let mut s = Session {
            client: "192.0.2.1".into(),
            ..Default::default()
        };
        let mut t = T0;
        let mut accepted = Vec::new();
        while t < T0 + span {
            if r.mail(&mut s, "s@x.test", t).verdict == Verdict::Accepted {
                accepted.push(t.since(T0));
            }
            t += every;
        }
        accepted
    }

    #[test]
    fn a_fixed_window_lets_n_through_then_refuses_until_it_resets() {
        let mut r = receiver(vec![limit(Shape::FixedWindow, "10/10s")]);
        let ok = offer(&mut r, Duration::from_millis(100), 25 * SEC);
        assert_eq!(ok.len(), 30);
        assert_eq!(ok[9], Duration::from_millis(900));
        assert_eq!(
            ok[10],
            10 * SEC,
            "the window resets 10 s after its first message"
        );
        assert_eq!(ok[20], 20 * SEC);
    }

    #[test]
    fn a_sliding_window_lets_old_events_age_out() {
        let mut r = receiver(vec![limit(Shape::SlidingWindow, "10/10s")]);
        let ok = offer(&mut r, Duration::from_millis(100), 25 * SEC);
        assert_eq!(ok[10], 10 * SEC);
        assert_eq!(ok[11], Duration::from_millis(10_100));
        assert_eq!(ok.len(), 30);
    }

    #[test]
    fn a_token_bucket_gives_a_burst_then_its_rate() {
        let mut l = limit(Shape::TokenBucket, "2/s");
        l.burst = Some(5);
        let mut r = receiver(vec![l]);
        let ok = offer(&mut r, Duration::from_millis(50), 10 * SEC);
        assert_eq!(ok.len(), 5 + 19, "5 at once, then 2 a second: {ok:?}");
        assert_eq!(ok[5], Duration::from_millis(500));
    }

    #[test]
    fn a_strict_smoothed_rate_keeps_a_hammering_client_out() {
        let mut leaky = receiver(vec![limit(Shape::Ewma, "10/10s")]);
        let mut l = limit(Shape::Ewma, "10/10s");
        l.strict = true;
        let mut strict = receiver(vec![l]);
        let leaky_ok = offer(&mut leaky, Duration::from_millis(200), 60 * SEC);
        let strict_ok = offer(&mut strict, Duration::from_millis(200), 60 * SEC);
        assert!(
            (50..=70).contains(&leaky_ok.len()),
            "leaky: about the rate, {}",
            leaky_ok.len()
        );
        assert!(
            strict_ok.len() < 15,
            "strict: refusals keep the average up, {}",
            strict_ok.len()
        );
    }

    #[test]
    fn earliest_is_exactly_when_the_limit_lets_one_more_through() {
        for shape in [
            Shape::FixedWindow,
            Shape::SlidingWindow,
            Shape::TokenBucket,
            Shape::Ewma,
        ] {
            let mut r = receiver(vec![limit(shape, "5/10s")]);
            let mut t = T0;
            for _ in 0..20 {
                let before = t;
                t = r.earliest("c", "s", "r", t);
                let mut s = Session {
                    client: "c".into(),
                    ..Default::default()
                };
                let just_before = Timestamp(t.0 - 1);
                if t > before {
                    // A moment earlier it would have been refused.
                    let mut probe = Receiver::new(r.model.clone(), "mx", T0, 1);
                    probe.counts = r.counts.clone();

                    assert_ne!(
                        probe.mail(&mut s, "s", just_before).verdict,
                        Verdict::Accepted,
                        "{shape:?} at {:?}",
                        t.since(T0)
                    );
                }
                assert_eq!(
                    r.mail(&mut s, "s", t).verdict,
                    Verdict::Accepted,
                    "{shape:?}"
                );
            }
        }
    }

    #[test]
    fn per_recipient_limits_defer_that_recipient_only() {
        let mut l = limit(Shape::FixedWindow, "2/h");
        l.per = Scope::Recipient;
        l.at = Stage::Rcpt;
        let mut r = receiver(vec![l]);
        let mut s = Session {
            client: "c".into(),
            ..Default::default()
        };
        let verdicts: Vec<Verdict> = ["a@x", "a@x", "a@x", "b@x"]
            .iter()
            .map(|rcpt| r.rcpt(&mut s, "s@y", rcpt, T0).verdict)
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Accepted,
                Verdict::Accepted,
                Verdict::Limited(0),
                Verdict::Accepted
            ]
        );
        let reply = r.rcpt(&mut s, "s@y", "a@x", T0).reply;
        assert_eq!(
            (reply.code, reply.enhanced.unwrap().to_string()),
            (450, "4.2.1".into())
        );
    }

    #[test]
    fn a_tarpit_refuses_nothing_and_slows_every_reply() {
        let mut l = limit(Shape::SlidingWindow, "5/10s");
        l.delay = Some(2 * SEC);
        let mut r = receiver(vec![l]);
        r.model.latency = Duration::from_millis(10);
        let mut s = Session {
            client: "c".into(),
            ..Default::default()
        };
        let delays: Vec<Duration> = (0..8)
            .map(|i| {
                let a = r.mail(&mut s, "s", T0 + SEC * i);
                assert_eq!(a.verdict, Verdict::Accepted);
                a.delay
            })
            .collect();
        assert_eq!(delays[4], Duration::from_millis(10));
        // 6 in the window of 5: 1.2 times over.
        assert_eq!(delays[5], Duration::from_millis(2410), "{delays:?}");
        assert!(delays[7] > delays[6] && delays[6] > delays[5], "{delays:?}");
    }

    #[test]
    fn connections_greylisting_and_outages() {
        let model = ReceiverModel {
            connections: Some(2),
            greylist: Some(Greylisting {
                window: 60 * SEC,
                reply: None,
            }),
            outages: vec![Outage {
                from: 100 * SEC,
                to: 200 * SEC,
                kind: OutageKind::Greeting,
            }],
            ..Default::default()
        };
        let mut r = Receiver::new(model, "mx.test", T0, 1);
        assert!(matches!(r.connect("c", T0), Greeting::Accept { .. }));
        assert!(matches!(r.connect("c", T0), Greeting::Accept { .. }));
        match r.connect("c", T0) {
            Greeting::TurnAway { reply, .. } => assert_eq!(reply.code, 421),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.connect("d", T0), Greeting::Accept { .. }));
        r.disconnect("c");
        assert!(matches!(r.connect("c", T0), Greeting::Accept { .. }));
        let mut s = Session {
            client: "c".into(),
            ..Default::default()
        };
        assert_eq!(r.rcpt(&mut s, "s", "u@x", T0).verdict, Verdict::Greylisted);
        assert_eq!(
            r.rcpt(&mut s, "s", "u@x", T0 + 59 * SEC).verdict,
            Verdict::Greylisted
        );
        assert_eq!(
            r.rcpt(&mut s, "s", "u@x", T0 + 60 * SEC).verdict,
            Verdict::Accepted
        );
        match r.connect("e", T0 + 150 * SEC) {
            Greeting::TurnAway { reply, .. } => assert_eq!(reply.code, 421),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.connect("e", T0 + 200 * SEC),
            Greeting::Accept { .. }
        ));
    }
}
