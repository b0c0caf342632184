//! Time as knock keeps it: [`Timestamp`], wall-clock UTC with millisecond precision and
//! RFC 3339 text in JSON, is what the spool, the event log and the API hold, and also the
//! `now` that the scheduler core is told. The core never reads a clock: the engine tells it
//! [`WallClock`] time, `knock simulate` and the tests tell it virtual time.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Time from now until `self`, zero if it has passed.
    pub fn until_now(self) -> Duration {
        self.since(Timestamp::now())
    }
}

impl std::ops::AddAssign<Duration> for Timestamp {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(rhs.as_millis().min(u64::MAX as u128) as u64),
        )
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Timestamp::from)
            .map_err(serde::de::Error::custom)
    }
}

/// The engine's clock: UTC as read once at start, carried on by a monotonic clock, so the
/// time it tells never goes backwards when the system clock is stepped. It runs on
/// `tokio::time`, so a runtime with paused time pauses it too.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    origin: Timestamp,
    started: tokio::time::Instant,
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

impl WallClock {
    pub fn new() -> WallClock {
        WallClock {
            origin: Timestamp::now(),
            started: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.origin + self.started.elapsed()
    }

    /// The instant at which this clock will tell `at` (now, if that has passed).
    pub fn instant(&self, at: Timestamp) -> tokio::time::Instant {
        self.started + at.since(self.origin)
    }
}

/// RFC 5322 date-time, for Date headers and DSN fields.
pub fn rfc5322(ts: Timestamp) -> String {
    mail_builder::headers::date::Date::new((ts.0 / 1000) as i64).to_rfc822()
}

/// Sleeps until `at`, or forever when there is no such time (a `select!` branch that never
/// fires).
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let ts = Timestamp(1_700_000_000_123);
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ts);
    }

    #[test]
    fn formats_rfc5322() {
        assert_eq!(
            rfc5322(Timestamp(1_700_000_000_000)),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
    }
}
