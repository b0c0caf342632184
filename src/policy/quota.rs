//! A source's own limits for one provider (`[[source]] hourly`, `daily`): at most so many
//! messages in each clock hour and each UTC day. Past one, knock defers the mail itself,
//! before any attempt: the limit is the sender's (a new address earning trust, a contract),
//! not the receiver's, so no SMTP session is spent on it and no retry step either. Counted
//! exactly: the n+1th start in a window waits for the next window.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The length of a limit's window, aligned to the clock (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub fn length(self) -> Duration {
        match self {
            Period::Hour => Duration::from_secs(3600),
            Period::Day => Duration::from_secs(86_400),
        }
    }

    /// How a limit is written: `200/h`, `2000/day`.
    pub fn unit(self) -> &'static str {
        match self {
            Period::Hour => "h",
            Period::Day => "day",
        }
    }

    /// The start of the window `now` is in.
    fn start(self, now: Timestamp) -> Timestamp {
        let len = self.length().as_millis() as u64;
        Timestamp(now.0 - now.0 % len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Limit {
    n: u32,
    period: Period,
    /// The window counted, and the starts in it.
    window: Timestamp,
    used: u32,
}

/// A limit reached: nothing more starts before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub until: Timestamp,
    pub limit: u32,
    pub period: Period,
}

/// One limit as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuotaView {
    pub limit: u32,
    pub period: Period,
    pub used: u32,
    pub resets_at: Timestamp,
}

/// The count of one window under way, as the spool keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    pub period: Period,
    /// The window's start.
    pub window: Timestamp,
    pub used: u32,
}

/// The limits of one source for one provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    limits: Vec<Limit>,
}

impl Quota {
    pub fn new(hourly: Option<u32>, daily: Option<u32>) -> Quota {
        let limit = |n, period| Limit {
            n,
            period,
            window: Timestamp(0),
            used: 0,
        };
        Quota {
            limits: [
                hourly.map(|n| limit(n, Period::Hour)),
                daily.map(|n| limit(n, Period::Day)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// New limits (a warm-up's day moved), the counts of the windows under way kept.
    pub fn set(&mut self, hourly: u32, daily: u32) {
        for l in &mut self.limits {
            l.n = match l.period {
                Period::Hour => hourly,
                Period::Day => daily,
            };
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    fn roll(&mut self, now: Timestamp) {
        for l in &mut self.limits {
            let start = l.period.start(now);
            if l.window != start {
                l.window = start;
                l.used = 0;
            }
        }
    }

    /// Whether one more may start at `now`; else the limit that is full and when it
    /// resets (the latest, when several are).
    pub fn check(&mut self, now: Timestamp) -> Result<(), Full> {
        self.roll(now);
        self.limits
            .iter()
            .filter(|l| l.used >= l.n)
            .map(|l| Full {
                until: l.window + l.period.length(),
                limit: l.n,
                period: l.period,
            })
            .max_by_key(|f| f.until)
            .map_or(Ok(()), Err)
    }

    /// One started at `now`.
    pub fn count(&mut self, now: Timestamp) {
        self.roll(now);
        for l in &mut self.limits {
            l.used += 1;
        }
    }

    /// The counts to keep, of every limit.
    pub fn used(&self) -> Vec<Used> {
        self.limits
            .iter()
            .map(|l| Used {
                period: l.period,
                window: l.window,
                used: l.used,
            })
            .collect()
    }

    /// Goes on from counts kept before a restart: a window that has ended counts from
    /// zero when it rolls.
    pub fn restore(&mut self, kept: &[Used]) {
        for l in &mut self.limits {
            if let Some(k) = kept.iter().find(|k| k.period == l.period) {
                l.window = k.window;
                l.used = k.used;
            }
        }
    }

    pub fn view(&self, now: Timestamp) -> Vec<QuotaView> {
        self.limits
            .iter()
            .map(|l| {
                let current = l.window == l.period.start(now);
                QuotaView {
                    limit: l.n,
                    period: l.period,
                    used: if current { l.used } else { 0 },
                    resets_at: l.period.start(now) + l.period.length(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_n_plus_first_in_an_hour_waits_for_the_next_hour_exactly() {
        // 10:59:59.000 UTC on some day.
        let day = Timestamp(1_767_225_600_000);
        let t = day + 10 * HOUR + Duration::from_secs(59 * 60 + 59);
        let mut q = Quota::new(Some(3), Some(5));
        for _ in 0..3 {
            assert_eq!(q.check(t), Ok(()));
            q.count(t);
        }
        let full = q.check(t).unwrap_err();
        assert_eq!(full.until, day + 11 * HOUR);
        assert_eq!((full.limit, full.period), (3, Period::Hour));
        // A millisecond before the hour: still full; on it: open.
        assert!(
            q.check(day + (11 * HOUR - Duration::from_millis(1)))
                .is_err()
        );
        let t = day + 11 * HOUR;
        assert_eq!(q.check(t), Ok(()));
        q.count(t);
        q.count(t);
        // The day's 5 are used: the next goes tomorrow, whatever the hour says.
        let full = q.check(t).unwrap_err();
        assert_eq!(full.until, day + 24 * HOUR);
        assert_eq!(full.period, Period::Day);
        let v = q.view(t);
        assert_eq!((v[0].used, v[1].used), (2, 5));
    }

    #[test]
    fn no_limits_never_hold() {
        let mut q = Quota::new(None, None);
        assert!(q.is_empty());
        for i in 0..1000 {
            q.count(Timestamp(i));
        }
        assert_eq!(q.check(Timestamp(1000)), Ok(()));
    }
}
