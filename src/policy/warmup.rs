//! Warm-up: a new source earns a provider's trust by sending little at first and more each
//! day it is received well. A plan (`[[source]] warmup`) gives day 1's hourly and daily
//! limits and how much they grow a day, up to the source's own `hourly` and `daily`; the
//! day of the ramp is kept per source and provider, and moves at each UTC midnight by how
//! the provider took the day's mail: on when its deferral rate stayed under the plan's
//! threshold, held when it rose above it, a day back when it rose above twice the
//! threshold or the provider blocked the source. A day with no mail moves nothing.

use crate::config::WarmupConfig;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 86_400_000;

/// A plan and the caps it climbs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    pub plan: WarmupConfig,
    pub cap_hourly: u32,
    pub cap_daily: u32,
}

impl Ramp {
    /// The hourly and daily limits on `day` (1 for the first) of the ramp.
    pub fn limits(&self, day: u32) -> (u32, u32) {
        let factor = self
            .plan
            .growth
            .powi(day.saturating_sub(1).min(1000) as i32);
        let grown = |start: u32, cap: u32| {
            let v = (f64::from(start) * factor).ceil();
            if v >= f64::from(cap) { cap } else { v as u32 }
        };
        (
            grown(self.plan.hourly, self.cap_hourly),
            grown(self.plan.daily, self.cap_daily),
        )
    }

    /// Whether `day` has reached the caps: the ramp is over.
    pub fn done(&self, day: u32) -> bool {
        self.limits(day) == (self.cap_hourly, self.cap_daily)
    }
}

/// How the ramp moved at the end of a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Advanced,
    Held,
    SteppedBack,
}

impl Step {
    /// In words: "advanced", "held", "stepped back".
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Advanced => "advanced",
            Step::Held => "held",
            Step::SteppedBack => "stepped back",
        }
    }
}

/// Where a source stands with a provider: the day of its ramp, and what the current UTC
/// day has seen so far. Kept in the spool with the source's hour and day counts, each time
/// a start is counted (so the day's attempts and deferrals as of the last start survive a
/// restart; what was reported after it is counted again from then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupState {
    pub day: u32,
    /// The UTC day the counts are for (its midnight).
    pub counting: Timestamp,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub deferrals: u32,
    #[serde(default)]
    pub blocked: bool,
    /// How the ramp moved last, and why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<(Step, String)>,
}

fn midnight(now: Timestamp) -> Timestamp {
    Timestamp(now.0 - now.0 % DAY_MS)
}

impl WarmupState {
    pub fn new(now: Timestamp) -> WarmupState {
        WarmupState {
            day: 1,
            counting: midnight(now),
            attempts: 0,
            deferrals: 0,
            blocked: false,
            last: None,
        }
    }

    /// One recipient's attempt: deferred or not, and whether the provider blocked the
    /// source.
    pub fn record(&mut self, deferred: bool, blocked: bool) {
        self.attempts += 1;
        self.deferrals += u32::from(deferred);
        self.blocked |= blocked;
    }

    /// Moves to `now`'s day: the day that ended decides the ramp's step. `None` when the
    /// day has not ended.
    pub fn roll(&mut self, now: Timestamp, ramp: &Ramp) -> Option<Step> {
        if midnight(now) <= self.counting {
            return None;
        }
        let rate = match self.attempts {
            0 => 0.0,
            n => f64::from(self.deferrals) / f64::from(n),
        };
        let max = ramp.plan.max_deferral_rate;
        let percent = |r: f64| format!("{:.1} %", r * 100.0);
        let (step, why) = if self.attempts == 0 {
            (Step::Held, "no mail that day".to_string())
        } else if self.blocked {
            (
                Step::SteppedBack,
                "the provider blocked the source".to_string(),
            )
        } else if rate > 2.0 * max {
            (
                Step::SteppedBack,
                format!(
                    "deferral rate {} over twice {}",
                    percent(rate),
                    percent(max)
                ),
            )
        } else if rate > max {
            (
                Step::Held,
                format!("deferral rate {} over {}", percent(rate), percent(max)),
            )
        } else if ramp.done(self.day) {
            (Step::Held, "the ramp is complete".to_string())
        } else {
            (
                Step::Advanced,
                format!("deferral rate {} under {}", percent(rate), percent(max)),
            )
        };
        match step {
            Step::Advanced => self.day += 1,
            Step::SteppedBack => self.day = self.day.saturating_sub(1).max(1),
            Step::Held => {}
        }
        *self = WarmupState {
            day: self.day,
            counting: midnight(now),
            attempts: 0,
            deferrals: 0,
            blocked: false,
            last: Some((step, why)),
        };
        Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    fn ramp() -> Ramp {
        Ramp {
            plan: WarmupConfig {
                hourly: 50,
                daily: 500,
                growth: 2.0,
                max_deferral_rate: 0.05,
            },
            cap_hourly: 1000,
            cap_daily: 10_000,
        }
    }

    #[test]
    fn the_limits_double_to_the_caps() {
        let r = ramp();
        assert_eq!(r.limits(1), (50, 500));
        assert_eq!(r.limits(2), (100, 1000));
        assert_eq!(r.limits(5), (800, 8000));
        assert_eq!(r.limits(6), (1000, 10_000));
        assert!(!r.done(5) && r.done(6) && r.done(60));
    }

    #[test]
    fn healthy_days_advance_and_deferrals_hold_or_step_back() {
        let r = ramp();
        let t0 = Timestamp(1_767_225_600_000);
        let mut s = WarmupState::new(t0);
        let day = |s: &mut WarmupState, n: u32, deferred: u32, blocked: bool, at: Timestamp| {
            for i in 0..n {
                s.record(i < deferred, blocked && i == 0);
            }
            s.roll(at, &r)
        };
        // Not a day yet: nothing moves.
        assert_eq!(day(&mut s, 10, 0, false, t0 + DAY / 2), None);
        assert_eq!(day(&mut s, 90, 2, false, t0 + DAY), Some(Step::Advanced));
        assert_eq!(s.day, 2);
        assert_eq!(day(&mut s, 100, 8, false, t0 + DAY * 2), Some(Step::Held));
        assert_eq!(s.day, 2);
        assert!(s.last.as_ref().unwrap().1.contains("8.0 % over 5.0 %"));
        assert_eq!(
            day(&mut s, 100, 11, false, t0 + DAY * 3),
            Some(Step::SteppedBack)
        );
        assert_eq!(s.day, 1);
        assert_eq!(
            day(&mut s, 100, 0, true, t0 + DAY * 4),
            Some(Step::SteppedBack)
        );
        assert_eq!(s.day, 1, "never below day 1");
        assert_eq!(day(&mut s, 0, 0, false, t0 + DAY * 5), Some(Step::Held));
        // Several days at once (knock was down): the one day counted decides.
        assert_eq!(
            day(&mut s, 50, 0, false, t0 + DAY * 9),
            Some(Step::Advanced)
        );
        assert_eq!((s.day, s.attempts), (2, 0));
    }
}
