//! Shaping: how fast and how wide knock sends to one destination (a provider). Static limits
//! come from config (`[shaping."google"] rate = "600/min"`, `max_connections`,
//! `messages_per_connection`); on top, the destination adapts to what the receiver says:
//!
//! - a `throttle` reply multiplies the rate down to what the receiver was accepting, takes a
//!   connection away and pauses the destination briefly (AIMD's multiplicative decrease);
//! - while replies stay clean, the rate climbs back additively and connections return;
//! - connection failures on every MX put the destination in *outage*: it backs off as a
//!   whole, exponentially, and lets one probe through at a time;
//! - rising latency (connect, greeting, replies) over its baseline takes connections away
//!   before the receiver starts refusing (silent throttling).
//!
//! The state lives in the scheduler; nothing here sleeps, does I/O or reads a clock: every
//! call is told the time.

use crate::config::{AdaptConfig, Config, Rate, ShapingConfig};
use crate::outcome::Class;
use crate::time::Timestamp;
use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

/// Static limits for a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub rate: Option<Rate>,
    pub max_connections: usize,
    pub messages_per_connection: usize,
}

/// How the destination adapts; the defaults suit real receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// After a throttle, the rate is this share of what the receiver was accepting.
    pub decrease: f64,
    /// While clean, the rate grows by this share of itself per `increase_every`.
    pub increase: f64,
    pub increase_every: Duration,
    /// The whole destination waits this long after a throttle.
    pub throttle_pause: Duration,
    /// Throttles closer together than this are one event (replies in flight arrive late).
    pub react_every: Duration,
    /// Outage backoff: first wait, doubled per failed probe, up to the maximum.
    pub outage_initial: Duration,
    pub outage_max: Duration,
    /// Latency this many times over its baseline counts as silent throttling.
    pub latency_factor: f64,
}

impl Tuning {
    /// The tuning `[adapt]` asks for; the rest are knock's defaults.
    pub fn from_config(adapt: &AdaptConfig) -> Tuning {
        Tuning {
            decrease: 0.95,
            increase: 0.02,
            increase_every: Duration::from_secs(2),
            throttle_pause: adapt.throttle_pause,
            react_every: Duration::from_secs(1),
            outage_initial: adapt.outage_backoff,
            outage_max: adapt.outage_backoff_max.max(adapt.outage_backoff),
            latency_factor: 4.0,
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::from_config(&AdaptConfig::default())
    }
}

impl Limits {
    /// The static limits of `provider`: its own `[shaping]` table, else `"*"`, else
    /// `[delivery]`.
    pub fn for_provider(config: &Config, provider: &str) -> Limits {
        let own = config
            .shaping
            .get(provider)
            .or_else(|| config.shaping.get("*"));
        let pick = |f: fn(&ShapingConfig) -> Option<usize>| own.and_then(f);
        Limits {
            rate: own.and_then(|s| s.rate),
            max_connections: pick(|s| s.max_connections).unwrap_or(config.delivery.max_connections),
            messages_per_connection: pick(|s| s.messages_per_connection)
                .unwrap_or(config.delivery.messages_per_connection),
        }
    }
}

/// What one delivery told the destination.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub accepted: usize,
    /// A reply in the transaction had the throttle class: too fast.
    pub throttled: bool,
    /// The connection was turned away at the greeting with the throttle class: too many
    /// connections.
    pub turned_away: bool,
    /// Every MX host was unreachable (connect failures, timeouts, no greeting).
    pub unreachable: bool,
    /// The connection worked (a probe that succeeds ends an outage).
    pub connected: bool,
    /// Time to connect and greeting, and the slowest command reply, when measured.
    pub latency: Option<Duration>,
    /// Classes of the failures seen, for the destination's recent history.
    pub classes: Vec<Class>,
    /// A recipient greylisted last time was delivered this long after that deferral.
    pub greylist_cleared: Option<Duration>,
    /// This delivery was the outage's probe (not a connection opened before the outage).
    pub probe: bool,
}

/// Deferrals on one connection after which it is closed rather than reused: receivers
/// slow down and cut off error-heavy sessions.
pub const MAX_DEFERRALS_PER_CONNECTION: usize = 3;

/// What one open connection has carried, to decide whether it carries the next job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionUse {
    /// The recipient domain it was opened for.
    pub domain: String,
    /// Transactions sent over it.
    pub sent: usize,
    /// Recipients deferred over it.
    pub deferrals: usize,
}

impl ConnectionUse {
    pub fn new(domain: &str) -> ConnectionUse {
        ConnectionUse {
            domain: domain.to_string(),
            sent: 0,
            deferrals: 0,
        }
    }

    /// Whether the connection may carry a job for `domain`. Only the same domain: two
    /// domains of one provider may have different MX hosts (Microsoft 365 tenants), and a
    /// connection to one is no promise for the other.
    pub fn may_carry(&self, domain: &str, messages_per_connection: usize) -> bool {
        self.domain == domain
            && self.sent < messages_per_connection
            && self.deferrals < MAX_DEFERRALS_PER_CONNECTION
    }
}

/// Why a destination cannot start a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Wait until then (rate or pause).
    Until(Timestamp),
    /// An outage probe is already out; wait for its report.
    Probing,
}

pub struct Shaping {
    limits: Limits,
    tuning: Tuning,
    /// The rate allowed now; `None` is unlimited.
    rate: Option<f64>,
    limiter: Option<Pacer>,
    connections: usize,
    paused_until: Option<Timestamp>,
    outage: Option<Outage>,
    accepted: VecDeque<(Timestamp, usize)>,
    last_change: Timestamp,
    last_throttle: Option<Timestamp>,
    /// What the receiver was taking at the last throttle: with no static rate, the limit
    /// lifts once the climb has doubled it.
    throttled_at: Option<f64>,
    /// After a turn-away at the greeting, connections do not climb back until then.
    connections_held_until: Option<Timestamp>,
    last_latency_cut: Timestamp,
    latency: Option<Latency>,
    recent: VecDeque<(Timestamp, Class)>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    backoff: Duration,
    probing: bool,
    since: Timestamp,
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    baseline: f64,
    average: f64,
    at: Timestamp,
}

/// How far back acceptances count when measuring what the receiver takes.
const MEASURE_WINDOW: Duration = Duration::from_secs(5);
/// Replies faster than this times the factor are never "slow": a sub-millisecond baseline
/// on loopback or a LAN would otherwise call scheduling noise a slowdown.
const LATENCY_FLOOR: Duration = Duration::from_millis(25);
/// How slowly the latency baseline rises towards slower replies.
const BASELINE_RISE: Duration = Duration::from_secs(300);
/// How long connections stay down after a turn-away at the greeting.
const CONNECTION_HOLD: Duration = Duration::from_secs(60);
const RECENT: usize = 20;
/// The slowest rate adaptation goes down to: one message a minute.
const MIN_RATE: f64 = 1.0 / 60.0;

impl Shaping {
    pub fn new(limits: Limits, tuning: Tuning, now: Timestamp) -> Shaping {
        let rate = limits.rate.map(|r| r.count as f64 / r.per.as_secs_f64());
        let connections = limits.max_connections;
        Shaping {
            limiter: rate.map(|r| Pacer::new(r, now)),
            rate,
            connections,
            limits,
            tuning,
            paused_until: None,
            outage: None,
            accepted: VecDeque::new(),
            last_change: now,
            last_throttle: None,
            throttled_at: None,
            connections_held_until: None,
            last_latency_cut: now,
            latency: None,
            recent: VecDeque::new(),
        }
    }

    pub fn connection_limit(&self) -> usize {
        if self.outage.is_some() {
            1
        } else {
            self.connections
        }
    }

    pub fn messages_per_connection(&self) -> usize {
        self.limits.messages_per_connection
    }

    pub fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// May a delivery start now? Takes a rate token when it may and `charge` is set (mail
    /// from the null sender, DSNs, does not spend the senders' budget).
    pub fn admit(&mut self, now: Timestamp, charge: bool) -> Result<(), Gate> {
        if let Some(until) = self.paused_until.filter(|&u| u > now) {
            return Err(Gate::Until(until));
        }
        if let Some(outage) = &mut self.outage {
            if outage.probing {
                return Err(Gate::Probing);
            }
            outage.probing = true;
            return Ok(());
        }
        if let Some(limiter) = self.limiter.as_mut().filter(|_| charge)
            && let Err(wait) = limiter.check(now)
        {
            // Rounded up to the next millisecond: a wake a moment early would only wake
            // again.
            let wait = wait.max(Duration::from_millis(1)) + Duration::from_nanos(999_999);
            return Err(Gate::Until(now + wait));
        }
        Ok(())
    }

    /// The outage's probe came to nothing (its worker was gone, its group could not be
    /// read): another may go out.
    pub fn start_lost(&mut self) {
        if let Some(o) = &mut self.outage {
            o.probing = false;
        }
    }

    /// Learns from one delivery's report.
    pub fn report(&mut self, now: Timestamp, r: &Report) {
        for c in &r.classes {
            self.recent.push_back((now, *c));
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
        if r.accepted > 0 {
            self.accepted.push_back((now, r.accepted));
        }
        while self
            .accepted
            .front()
            .is_some_and(|(t, _)| now.since(*t) > MEASURE_WINDOW)
        {
            self.accepted.pop_front();
        }
        self.outage_report(now, r);
        if r.turned_away {
            self.turned_away(now);
        }
        if r.throttled {
            self.throttled(now);
        } else if r.accepted > 0 && !r.turned_away {
            self.clean(now);
        }
        if let Some(latency) = r.latency {
            self.observe_latency(now, latency);
        }
    }

    fn outage_report(&mut self, now: Timestamp, r: &Report) {
        if r.unreachable {
            let max = self.tuning.outage_max;
            match &mut self.outage {
                // A connection that was opened before the outage began: it tells nothing
                // new, and must not lengthen the wait as a failed probe does.
                Some(_) if !r.probe => {}
                Some(o) => {
                    o.backoff = (o.backoff * 2).min(max);
                    o.probing = false;
                    self.paused_until = Some(now + o.backoff);
                }
                None => {
                    let backoff = self.tuning.outage_initial;
                    self.outage = Some(Outage {
                        backoff,
                        probing: false,
                        since: now,
                    });
                    self.paused_until = Some(now + backoff);
                }
            }
        } else if r.connected {
            if self.outage.take().is_some() {
                self.paused_until = None;
            }
        } else if let Some(o) = self.outage.as_mut().filter(|_| r.probe) {
            // The probe could not tell (say, a DNS failure): another tries after the wait.
            o.probing = false;
            self.paused_until = Some(now + o.backoff);
        }
    }

    /// Multiplicative decrease: down to what the receiver was taking, one connection less,
    /// a short pause. Every throttle pauses; throttles closer together than `react_every`
    /// are one event for the rate and the connections (replies in flight arrive late).
    fn throttled(&mut self, now: Timestamp) {
        self.pause(now);
        if self
            .last_throttle
            .is_some_and(|t| now.since(t) < self.tuning.react_every)
        {
            return;
        }
        self.last_throttle = Some(now);
        let current = self.rate.unwrap_or(f64::INFINITY);
        // What the receiver took over the last seconds, never more than the rate allowed.
        // The last second alone would read a burst after a window's reset as the rate.
        let base = match self.measured_rate(now) {
            Some(m) => m.min(current),
            // Refused before anything was accepted: the rate says nothing yet.
            None if current.is_finite() => current,
            None => {
                self.fewer_connections(now);
                return;
            }
        };
        self.throttled_at = Some(base);
        self.set_rate(Some((base * self.tuning.decrease).max(MIN_RATE)), now);
        self.fewer_connections(now);
        self.last_change = now;
    }

    /// The whole destination waits `throttle_pause` from now (never less than it already
    /// waits): without it, mail refused before anything was accepted would go straight
    /// back at the receiver.
    fn pause(&mut self, now: Timestamp) {
        let until = now + self.tuning.throttle_pause;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Turned away at the greeting ("too many connections"): the connection count is the
    /// problem, and it stays lower for a while.
    fn turned_away(&mut self, now: Timestamp) {
        self.pause(now);
        self.fewer_connections(now);
        self.connections_held_until = Some(now + CONNECTION_HOLD);
    }

    fn fewer_connections(&mut self, now: Timestamp) {
        self.connections = self.connections.saturating_sub(1).max(1);
        self.last_change = now;
    }

    /// Additive increase while clean: the rate and the connections come back.
    fn clean(&mut self, now: Timestamp) {
        if now.since(self.last_change) < self.tuning.increase_every {
            return;
        }
        self.last_change = now;
        let static_rate = self
            .limits
            .rate
            .map(|r| r.count as f64 / r.per.as_secs_f64());
        if let Some(rate) = self.rate
            && Some(rate) != static_rate
        {
            let next = rate + (rate * self.tuning.increase).max(MIN_RATE);
            match static_rate {
                Some(s) => self.set_rate(Some(next.min(s)), now),
                None if self.throttled_at.is_some_and(|t| next > 2.0 * t) => {
                    self.set_rate(None, now)
                }
                None => self.set_rate(Some(next), now),
            }
        }
        let held = self.connections_held_until.is_some_and(|t| t > now) || self.is_slow();
        if self.connections < self.limits.max_connections && !held {
            self.connections += 1;
        }
    }

    /// Replies have slowed to several times their baseline.
    fn is_slow(&self) -> bool {
        self.latency.is_some_and(|l| {
            l.average > self.tuning.latency_factor * l.baseline.max(LATENCY_FLOOR.as_secs_f64())
        })
    }

    fn observe_latency(&mut self, now: Timestamp, sample: Duration) {
        let s = sample.as_secs_f64();
        let l = self.latency.get_or_insert(Latency {
            baseline: s,
            average: s,
            at: now,
        });
        l.average = 0.8 * l.average + 0.2 * s;
        // The baseline follows the quiet times: it comes down at once, and goes up only
        // with a time constant of minutes, however many samples arrive.
        let dt = now.since(l.at).as_secs_f64();
        l.at = now;
        l.baseline = if s < l.baseline {
            s
        } else {
            l.baseline + (s - l.baseline) * (dt / BASELINE_RISE.as_secs_f64()).min(1.0)
        };
        if self.is_slow()
            && now.since(self.last_latency_cut) >= self.tuning.increase_every
            && self.connections > 1
        {
            self.connections -= 1;
            self.last_latency_cut = now;
        }
    }

    /// The rate the queue drains at: the allowed rate, else what was accepted lately.
    pub fn drain_rate(&self, now: Timestamp) -> Option<f64> {
        self.rate.or_else(|| self.measured_rate(now))
    }

    fn measured_rate(&self, now: Timestamp) -> Option<f64> {
        self.measured_over(now, MEASURE_WINDOW)
    }

    /// Acceptances per second over the last `window` (or since the first, if later; at
    /// least half a second, so one burst is not taken for a rate).
    fn measured_over(&self, now: Timestamp, window: Duration) -> Option<f64> {
        let recent = self
            .accepted
            .iter()
            .filter(|(t, _)| now.since(*t) <= window);
        let (first, total) = recent.fold((None, 0), |(first, total), (t, n)| {
            (first.or(Some(*t)), total + n)
        });
        let span = now.since(first?).as_secs_f64().max(0.5);
        Some(total as f64 / span)
    }

    fn set_rate(&mut self, rate: Option<f64>, now: Timestamp) {
        self.rate = rate;
        self.limiter = rate.map(|r| Pacer::new(r, now));
    }

    pub fn view(&self, now: Timestamp) -> ShapingView {
        ShapingView {
            rate_per_minute: self.rate.map(|r| (r * 60.0 * 10.0).round() / 10.0),
            static_rate_per_minute: self
                .limits
                .rate
                .map(|r| r.count as f64 * 60.0 / r.per.as_secs_f64()),
            connections: self.connection_limit(),
            max_connections: self.limits.max_connections,
            messages_per_connection: self.limits.messages_per_connection,
            paused_for_seconds: self
                .paused_until
                .filter(|&u| u > now)
                .map(|u| u.since(now).as_secs_f64()),
            outage_since: self.outage.map(|o| o.since),
            outage_backoff_seconds: self.outage.map(|o| o.backoff.as_secs()),
            latency_ms: self.latency.map(|l| (l.average * 1000.0).round()),
            latency_baseline_ms: self.latency.map(|l| (l.baseline * 1000.0).round()),
            recent_classes: self.recent.iter().map(|(_, c)| *c).collect(),
        }
    }
}

/// The destination's pace: governor's GCRA on a clock that is told the time instead of
/// reading one, so the same pacing runs on wall time and on virtual time.
struct Pacer {
    limiter: RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<Nanos>>,
    clock: FakeRelativeClock,
    at: Timestamp,
}

impl Pacer {
    fn new(rate: f64, now: Timestamp) -> Pacer {
        let rate = rate.max(MIN_RATE);
        let period = Duration::from_secs_f64(1.0 / rate);
        // Time moves in milliseconds: above a thousand a second, a millisecond's worth may
        // start at once, or the rate could never be reached.
        let burst = NonZeroU32::new((rate / 1000.0).ceil() as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst);
        let clock = FakeRelativeClock::default();
        Pacer {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            at: now,
        }
    }

    /// Takes a start if the pace allows one at `now`; else how long until it does.
    fn check(&mut self, now: Timestamp) -> Result<(), Duration> {
        if now > self.at {
            self.clock.advance(now.since(self.at));
            self.at = now;
        }
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// A destination's shaping as the API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ShapingView {
    /// The rate allowed now; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_rate_per_minute: Option<f64>,
    pub connections: usize,
    pub max_connections: usize,
    pub messages_per_connection: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_for_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_since: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_backoff_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_baseline_ms: Option<f64>,
    pub recent_classes: Vec<Class>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: Option<&str>) -> Limits {
        Limits {
            rate: rate.map(|r| r.parse().unwrap()),
            max_connections: 4,
            messages_per_connection: 100,
        }
    }

    fn accepted(n: usize) -> Report {
        Report {
            accepted: n,
            connected: true,
            ..Default::default()
        }
    }

    #[test]
    fn throttle_halves_towards_what_was_accepted_then_climbs_back() {
        let mut s = Shaping::new(limits(None), Tuning::default(), Timestamp(1_000_000));
        let t0 = Timestamp(1_000_000);
        // 500 accepted over 5 s: the receiver took 100/s.
        for i in 0..50 {
            s.report(t0 + Duration::from_millis(100 * i), &accepted(10));
        }
        let t1 = t0 + Duration::from_secs(5);
        s.report(
            t1,
            &Report {
                throttled: true,
                connected: true,
                ..Default::default()
            },
        );
        let v = s.view(t1);
        let rate = v.rate_per_minute.unwrap() / 60.0;
        assert!(
            (85.0..=95.0).contains(&rate),
            "rate {rate}/s after a throttle at ~100/s accepted"
        );
        assert_eq!(v.connections, 3);
        assert!(v.paused_for_seconds.is_some());
        assert_eq!(
            s.admit(t1, true),
            Err(Gate::Until(t1 + Duration::from_millis(200)))
        );
        // A second throttle inside the pause is the same event.
        s.report(
            t1 + Duration::from_millis(10),
            &Report {
                throttled: true,
                ..Default::default()
            },
        );
        assert_eq!(s.view(t1).connections, 3);
        // Clean seconds: additive increase, connections come back.
        let mut t = t1;
        for _ in 0..3 {
            t += Duration::from_secs(1);
            s.report(t, &accepted(1));
        }
        let v = s.view(t);
        assert!(
            v.rate_per_minute.unwrap() / 60.0 > rate,
            "the rate climbs back"
        );
        assert_eq!(v.connections, 4);
    }

    #[test]
    fn static_rate_paces_and_caps_the_climb() {
        let mut s = Shaping::new(
            limits(Some("600/min")),
            Tuning::default(),
            Timestamp(1_000_000),
        );
        let now = Timestamp(1_000_000);
        assert_eq!(s.admit(now, true), Ok(()));
        match s.admit(now, true) {
            Err(Gate::Until(t)) => assert!(
                t > now && t <= now + Duration::from_millis(101),
                "{:?}",
                t.since(now)
            ),
            other => panic!("{other:?}"),
        }
        for i in 1..20 {
            s.report(now + Duration::from_secs(i), &accepted(10));
        }
        assert_eq!(
            s.view(now).rate_per_minute,
            Some(600.0),
            "never above the configured rate"
        );
    }

    #[test]
    fn outage_backs_off_and_lets_one_probe_through() {
        let mut s = Shaping::new(limits(None), Tuning::default(), Timestamp(1_000_000));
        let t0 = Timestamp(1_000_000);
        let down = Report {
            unreachable: true,
            ..Default::default()
        };
        s.report(t0, &down);
        assert_eq!(
            s.admit(t0, true),
            Err(Gate::Until(t0 + Duration::from_secs(30)))
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(s.admit(t1, true), Ok(()), "the probe");
        assert_eq!(s.admit(t1, true), Err(Gate::Probing), "one probe at a time");
        // A connection opened before the outage fails late: it is not the probe.
        s.report(t1 + Duration::from_secs(5), &down);
        assert_eq!(
            s.admit(t1, true),
            Err(Gate::Probing),
            "the probe is still out"
        );
        let probe_down = Report {
            probe: true,
            ..down.clone()
        };
        s.report(t1, &probe_down);
        assert_eq!(
            s.admit(t1, true),
            Err(Gate::Until(t1 + Duration::from_secs(60))),
            "backoff doubles"
        );
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(s.admit(t2, true), Ok(()));
        s.report(t2, &accepted(1));
        assert!(!s.in_outage());
        assert_eq!(s.admit(t2, true), Ok(()), "flow resumes at once");
        assert_eq!(s.connection_limit(), 4);
    }

    #[test]
    fn every_throttle_pauses_even_before_anything_was_accepted() {
        let mut s = Shaping::new(limits(None), Tuning::default(), Timestamp(1_000_000));
        let t0 = Timestamp(1_000_000);
        let throttled = Report {
            throttled: true,
            connected: true,
            ..Default::default()
        };
        s.report(t0, &throttled);
        let pause = Tuning::default().throttle_pause;
        assert_eq!(s.admit(t0, true), Err(Gate::Until(t0 + pause)));
        // Within `react_every` the rate is not cut again, but the pause still holds.
        let t1 = t0 + pause;
        assert_eq!(s.admit(t1, true), Ok(()));
        s.report(t1, &throttled);
        assert_eq!(s.admit(t1, true), Err(Gate::Until(t1 + pause)));
        let turned_away = Report {
            turned_away: true,
            ..Default::default()
        };
        let t2 = t1 + pause;
        s.report(t2, &turned_away);
        assert_eq!(s.admit(t2, true), Err(Gate::Until(t2 + pause)));
    }

    #[test]
    fn a_probe_that_cannot_tell_waits_the_backoff_again() {
        let mut s = Shaping::new(limits(None), Tuning::default(), Timestamp(1_000_000));
        let t0 = Timestamp(1_000_000);
        s.report(
            t0,
            &Report {
                unreachable: true,
                ..Default::default()
            },
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(s.admit(t1, true), Ok(()));
        // A DNS failure, say: neither connected nor unreachable.
        s.report(
            t1,
            &Report {
                probe: true,
                ..Default::default()
            },
        );
        assert_eq!(
            s.admit(t1, true),
            Err(Gate::Until(t1 + Duration::from_secs(30)))
        );
        assert!(s.in_outage());
    }

    #[test]
    fn rising_latency_takes_connections_away() {
        let mut s = Shaping::new(limits(None), Tuning::default(), Timestamp(1_000_000));
        let mut t = Timestamp(1_000_000);
        for _ in 0..20 {
            t += Duration::from_millis(200);
            s.report(
                t,
                &Report {
                    latency: Some(Duration::from_millis(5)),
                    ..accepted(1)
                },
            );
        }
        assert_eq!(s.connection_limit(), 4);
        for _ in 0..20 {
            t += Duration::from_millis(500);
            s.report(
                t,
                &Report {
                    latency: Some(Duration::from_millis(200)),
                    connected: true,
                    ..Default::default()
                },
            );
        }
        assert!(
            s.connection_limit() < 4,
            "slow replies cost connections before any refusal"
        );
    }
}
