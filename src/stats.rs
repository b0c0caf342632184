//! The deferral time series behind `GET /api/v1/stats`: attempts, deliveries, deferrals,
//! bounces, expirations and internal deferrals, counted per minute × provider × class.
//! Counted from the events as they are emitted ([`Stats`] is an [`Observer`] of
//! [`Events`](crate::event::Events)), with the same rules as `/metrics`, so the series, the
//! metrics and the event log agree.
//!
//! Counts gather in memory ([`Stats`]) and `serve` writes them to the spool's `stats` table
//! every [`FLUSH_EVERY`] and at shutdown, adding to what the spool holds for the same minute;
//! a crash loses the counts of at most the last [`FLUSH_EVERY`]. A read ([`Stats::read`])
//! adds what is still in memory to what the spool holds, and sees every count once. This
//! module owns the counting, the value encoding and the aggregation into steps; not the
//! table (`engine::spool`) nor the HTTP parameters (`surface::api::stats`).

use crate::event::{Event, Kind, Observer};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

/// How often the counts in memory are written to the spool: what a crash may lose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Most (minute, provider, class) cells held in memory. Reached only when the spool keeps
/// refusing the flushes; then the oldest minutes are dropped, so memory stays bounded.
pub const MAX_UNFLUSHED: usize = 100_000;

const MINUTE_MS: u64 = 60_000;

/// The minute `t` falls in, counted from the Unix epoch: the series' unit and the first
/// part of the spool's key. (A `u32` of minutes lasts until the year 10136.)
pub fn minute_of(t: Timestamp) -> u32 {
    (t.millis() / MINUTE_MS).min(u64::from(u32::MAX)) as u32
}

/// When minute `minute` starts.
pub fn start_of(minute: u32) -> Timestamp {
    Timestamp(u64::from(minute) * MINUTE_MS)
}

/// What happened in one cell (a minute, a provider, a class), or in a step of the series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Delivery attempts: deliveries, deferrals by the receiver, and bounces that had an
    /// attempt (a domain that does not exist bounces without one).
    pub attempts: u64,
    pub delivered: u64,
    /// Deferrals by the receiver (or no answer), not those knock imposed itself.
    pub deferred: u64,
    pub bounced: u64,
    pub expired: u64,
    /// Deferrals knock imposed itself (`internal: true` events); not attempts.
    pub internal_deferred: u64,
}

impl Counts {
    /// What one event adds, if it adds anything: the same rules as
    /// [`crate::metrics::record_event`].
    pub fn of_event(e: &Event) -> Option<Counts> {
        let mut c = Counts::default();
        match e.event {
            Kind::Delivered => {
                c.attempts = 1;
                c.delivered = 1;
            }
            Kind::Deferred if e.internal => c.internal_deferred = 1,
            Kind::Deferred => {
                c.attempts = 1;
                c.deferred = 1;
            }
            Kind::Bounced => {
                c.attempts = u64::from(e.attempt.is_some());
                c.bounced = 1;
            }
            Kind::Expired => c.expired = 1,
            Kind::Processed | Kind::Suppressed | Kind::Cancelled | Kind::Held | Kind::Released => {
                return None;
            }
        }
        Some(c)
    }

    fn columns(&self) -> [u64; 6] {
        [
            self.attempts,
            self.delivered,
            self.deferred,
            self.bounced,
            self.expired,
            self.internal_deferred,
        ]
    }

    fn from_columns(c: [u64; 6]) -> Counts {
        Counts {
            attempts: c[0],
            delivered: c[1],
            deferred: c[2],
            bounced: c[3],
            expired: c[4],
            internal_deferred: c[5],
        }
    }

    pub fn add(&mut self, other: &Counts) {
        let mut sum = self.columns();
        for (s, o) in sum.iter_mut().zip(other.columns()) {
            *s = s.saturating_add(o);
        }
        *self = Counts::from_columns(sum);
    }

    pub fn is_zero(&self) -> bool {
        self.columns().iter().all(|&n| n == 0)
    }

    /// The spool's encoding: the columns in order as LEB128 varints, trailing zeros left
    /// off (a minute with only deliveries takes 2 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let columns = self.columns();
        let used = columns.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
        let mut out = Vec::with_capacity(used * 2);
        for mut n in columns.into_iter().take(used) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// Reads [`Counts::encode`]'s bytes; columns left off are zero, and columns beyond
    /// those known (written by a later knock) are ignored. `None` for a cut-off varint.
    pub fn decode(bytes: &[u8]) -> Option<Counts> {
        let mut columns = [0u64; 6];
        let mut i = 0;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (mut n, mut shift) = (0u64, 0u32);
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                if shift < 64 {
                    n |= u64::from(byte & 0x7f) << shift;
                }
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if let Some(c) = columns.get_mut(i) {
                *c = n;
            }
            i += 1;
        }
        Some(Counts::from_columns(columns))
    }
}

/// The name of an event's class in the series: its class, or `""` when it has none (a
/// delivery).
fn class_name(e: &Event) -> &'static str {
    e.class.map_or("", |c| c.as_str())
}

/// One cell of counts, in memory or on its way to the spool.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub minute: u32,
    /// The event's provider; `""` when it had none.
    pub provider: String,
    pub class: &'static str,
    pub counts: Counts,
}

type Cell = (u32, String, &'static str);

/// The counts not yet written to the spool. Shared by the events (which count into it),
/// the flushing task and the API (which reads it).
#[derive(Default)]
pub struct Stats {
    unflushed: Mutex<HashMap<Cell, Counts>>,
    /// Held from taking the counts out of memory until they are committed, and through a
    /// read: so a read never sees a count twice (in memory and committed) or not at all
    /// (taken out and not yet committed).
    flushing: tokio::sync::Mutex<()>,
}

impl Observer for Stats {
    /// Must not block: called on every event as it is emitted.
    fn observe(&self, e: &Event) {
        let Some(counts) = Counts::of_event(e) else {
            return;
        };
        let cell = (
            minute_of(e.timestamp),
            e.provider.clone().unwrap_or_default(),
            class_name(e),
        );
        let mut unflushed = self.unflushed.lock().expect("stats lock");
        unflushed.entry(cell).or_default().add(&counts);
        if unflushed.len() > MAX_UNFLUSHED {
            drop_oldest(&mut unflushed);
        }
    }
}

/// Drops the oldest minute held, and says so.
fn drop_oldest(unflushed: &mut HashMap<Cell, Counts>) {
    let Some(oldest) = unflushed.keys().map(|(m, _, _)| *m).min() else {
        return;
    };
    unflushed.retain(|(m, _, _), _| *m != oldest);
    tracing::warn!(
        minute = %start_of(oldest),
        "stats: the spool has not taken the counts for a while; the oldest minute is dropped"
    );
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Takes the counts out of memory and hands them to `commit` (which writes them to the
    /// spool; with no rows it may still have work, such as deleting old minutes). When
    /// `commit` fails the counts go back, to be tried at the next flush.
    pub async fn flush<F, Fut, E>(&self, commit: F) -> Result<usize, E>
    where
        F: FnOnce(Vec<Row>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let _held = self.flushing.lock().await;
        let taken = std::mem::take(&mut *self.unflushed.lock().expect("stats lock"));
        let rows: Vec<Row> = taken
            .into_iter()
            .map(|((minute, provider, class), counts)| Row {
                minute,
                provider,
                class,
                counts,
            })
            .collect();
        let n = rows.len();
        match commit(rows.clone()).await {
            Ok(()) => Ok(n),
            Err(e) => {
                let mut unflushed = self.unflushed.lock().expect("stats lock");
                for r in rows {
                    unflushed
                        .entry((r.minute, r.provider, r.class))
                        .or_default()
                        .add(&r.counts);
                }
                while unflushed.len() > MAX_UNFLUSHED {
                    drop_oldest(&mut unflushed);
                }
                Err(e)
            }
        }
    }

    /// Holds off flushes while the caller reads the spool: what [`Reading::unflushed`]
    /// returns and what the spool holds then add up to every count, each once.
    pub async fn read(&self) -> Reading<'_> {
        Reading {
            stats: self,
            _held: self.flushing.lock().await,
        }
    }

    /// How many cells wait in memory.
    pub fn unflushed_cells(&self) -> usize {
        self.unflushed.lock().expect("stats lock").len()
    }
}

/// A read in progress: no flush happens until it is dropped.
pub struct Reading<'a> {
    stats: &'a Stats,
    _held: tokio::sync::MutexGuard<'a, ()>,
}

impl Reading<'_> {
    /// The cells in memory whose minute is in `minutes`.
    pub fn unflushed(&self, minutes: Range<u32>) -> Vec<Row> {
        let unflushed = self.stats.unflushed.lock().expect("stats lock");
        unflushed
            .iter()
            .filter(|((m, _, _), _)| minutes.contains(m))
            .map(|((minute, provider, class), counts)| Row {
                minute: *minute,
                provider: provider.clone(),
                class,
                counts: *counts,
            })
            .collect()
    }
}

/// How a query splits the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// One series: everything (or the one provider asked for) summed.
    Total,
    /// One series per provider.
    Provider,
    /// One series per class (`none` for deliveries and what had no class).
    Class,
}

impl By {
    pub const ALL: [(&'static str, By); 3] = [
        ("total", By::Total),
        ("provider", By::Provider),
        ("class", By::Class),
    ];

    pub fn as_str(self) -> &'static str {
        By::ALL
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("total", |(name, _)| name)
    }
}

/// What a query asks for: `points` steps of `step_minutes`, from `from_minute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub from_minute: u32,
    pub step_minutes: u32,
    pub points: u32,
    pub provider: Option<String>,
    pub by: By,
}

/// Most points a series may have.
pub const MAX_POINTS: u64 = 1440;

/// Why a range and step make no query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("must be before to")]
    Empty,
    #[error("must be a whole number of minutes, at least 1m")]
    Step,
    #[error("gives {0} points, more than {MAX_POINTS}: take a longer step or a shorter range")]
    TooManyPoints(u64),
}

impl Query {
    /// The steps covering `from..to`: the first starts at `from` rounded down to a whole
    /// step (counted from the epoch, so 1h steps start on the hour), the last ends at or
    /// after `to`.
    pub fn new(
        from: Timestamp,
        to: Timestamp,
        step: Duration,
        provider: Option<String>,
        by: By,
    ) -> Result<Query, RangeError> {
        let step_ms = step.as_millis();
        if step_ms == 0 || !step_ms.is_multiple_of(u128::from(MINUTE_MS)) {
            return Err(RangeError::Step);
        }
        let step_minutes = u32::try_from(step_ms / u128::from(MINUTE_MS))
            .map_err(|_| RangeError::TooManyPoints(0))?;
        if from >= to {
            return Err(RangeError::Empty);
        }
        let first = minute_of(from);
        let first = first - first % step_minutes;
        // The minute `to` falls in is the last one counted, unless `to` starts it.
        let end = u64::from(minute_of(to)) + u64::from(!to.millis().is_multiple_of(MINUTE_MS));
        let points = (end - u64::from(first)).div_ceil(u64::from(step_minutes));
        if points > MAX_POINTS {
            return Err(RangeError::TooManyPoints(points));
        }
        if u64::from(first) + points * u64::from(step_minutes) > u64::from(u32::MAX) {
            return Err(RangeError::TooManyPoints(points));
        }
        Ok(Query {
            from_minute: first,
            step_minutes,
            points: points as u32,
            provider,
            by,
        })
    }

    /// The minutes the points cover.
    pub fn minutes(&self) -> Range<u32> {
        self.from_minute..self.from_minute + self.points * self.step_minutes
    }
}

/// Counts and the deferrals by class: one point of a series, or its total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    #[serde(flatten)]
    pub counts: Counts,
    /// The receiver's deferrals (`deferred`) by class.
    pub deferred_by_class: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, class: &str, counts: &Counts) {
        self.counts.add(counts);
        if counts.deferred > 0 {
            let name = if class.is_empty() { "none" } else { class };
            *self.deferred_by_class.entry(name.to_string()).or_default() += counts.deferred;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// When the step starts.
    pub t: Timestamp,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The whole range.
    pub total: Tally,
    pub points: Vec<Point>,
}

/// The answer of `GET /api/v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    /// Where the first step starts and the last ends.
    pub from: Timestamp,
    pub to: Timestamp,
    pub step_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub by: String,
    pub series: Vec<SeriesView>,
}

/// Adds cells up into a query's steps.
pub struct Aggregate {
    query: Query,
    /// By series name (`""` for the one series of [`By::Total`]): a tally per point.
    series: BTreeMap<String, Vec<Tally>>,
}

impl Aggregate {
    pub fn new(query: Query) -> Aggregate {
        let mut series = BTreeMap::new();
        if query.by == By::Total {
            series.insert(String::new(), vec![Tally::default(); query.points as usize]);
        }
        Aggregate { query, series }
    }

    /// Counts one cell in, if the query takes it.
    pub fn add(&mut self, minute: u32, provider: &str, class: &str, counts: &Counts) {
        let q = &self.query;
        if !q.minutes().contains(&minute) || q.provider.as_deref().is_some_and(|p| p != provider) {
            return;
        }
        let point = ((minute - q.from_minute) / q.step_minutes) as usize;
        let name = match q.by {
            By::Total => "",
            By::Provider => provider,
            By::Class if class.is_empty() => "none",
            By::Class => class,
        };
        let points = q.points as usize;
        let tallies = match self.series.get_mut(name) {
            Some(t) => t,
            None => self
                .series
                .entry(name.to_string())
                .or_insert_with(|| vec![Tally::default(); points]),
        };
        tallies[point].add(class, counts);
    }

    pub fn finish(self) -> StatsView {
        let q = self.query;
        let step = u64::from(q.step_minutes) * MINUTE_MS;
        let series = self
            .series
            .into_iter()
            .map(|(name, tallies)| {
                let mut total = Tally::default();
                for t in &tallies {
                    total.counts.add(&t.counts);
                    for (class, n) in &t.deferred_by_class {
                        *total.deferred_by_class.entry(class.clone()).or_default() += n;
                    }
                }
                let points = tallies
                    .into_iter()
                    .enumerate()
                    .map(|(i, tally)| Point {
                        t: Timestamp(start_of(q.from_minute).millis() + i as u64 * step),
                        tally,
                    })
                    .collect();
                let (provider, class) = match q.by {
                    By::Total => (q.provider.clone(), None),
                    By::Provider => (Some(name), None),
                    By::Class => (q.provider.clone(), Some(name)),
                };
                SeriesView {
                    provider,
                    class,
                    total,
                    points,
                }
            })
            .collect();
        let range = q.minutes();
        StatsView {
            from: start_of(range.start),
            to: start_of(range.end),
            step_seconds: step / 1000,
            provider: q.provider,
            by: q.by.as_str().to_string(),
            series,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Class;

    /// 2026-01-01T00:00:00Z, a whole hour.
    const HOUR: u64 = 1_767_225_600_000;

    fn event(kind: Kind, at: u64, provider: &str, class: Option<Class>) -> Event {
        let mut e = Event::new(
            kind,
            Timestamp(at),
            "m".into(),
            "r@x.test".into(),
            "x.test".into(),
            "s@a.test".into(),
        );
        e.provider = Some(provider.into());
        e.class = class;
        e.attempt = Some(1);
        e
    }

    fn counts(c: [u64; 6]) -> Counts {
        Counts::from_columns(c)
    }

    #[test]
    fn each_event_counts_as_the_metrics_count_it() {
        let mut internal = event(Kind::Deferred, 0, "p", Some(Class::Throttle));
        internal.internal = true;
        let mut no_attempt = event(Kind::Bounced, 0, "p", Some(Class::Hard));
        no_attempt.attempt = None;
        let table: &[(Event, Option<[u64; 6]>)] = &[
            (
                event(Kind::Delivered, 0, "p", None),
                Some([1, 1, 0, 0, 0, 0]),
            ),
            (
                event(Kind::Deferred, 0, "p", Some(Class::Greylist)),
                Some([1, 0, 1, 0, 0, 0]),
            ),
            (internal, Some([0, 0, 0, 0, 0, 1])),
            (
                event(Kind::Bounced, 0, "p", Some(Class::Hard)),
                Some([1, 0, 0, 1, 0, 0]),
            ),
            (no_attempt, Some([0, 0, 0, 1, 0, 0])),
            (event(Kind::Expired, 0, "p", None), Some([0, 0, 0, 0, 1, 0])),
            (event(Kind::Processed, 0, "p", None), None),
            (event(Kind::Suppressed, 0, "p", None), None),
            (event(Kind::Cancelled, 0, "p", None), None),
            (event(Kind::Held, 0, "p", None), None),
            (event(Kind::Released, 0, "p", None), None),
        ];
        for (e, want) in table {
            assert_eq!(Counts::of_event(e), want.map(counts), "{:?}", e.event);
        }
    }

    #[test]
    fn the_encoding_is_short_and_reads_back() {
        for c in [
            [0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [300, 0, 127, 128, 0, 1],
            [u64::MAX, 0, 0, 0, 0, u64::MAX],
        ] {
            let c = counts(c);
            assert_eq!(Counts::decode(&c.encode()), Some(c));
        }
        assert_eq!(counts([1, 1, 0, 0, 0, 0]).encode(), [1, 1]);
        assert!(counts([0; 6]).encode().is_empty());
        // A later knock's extra column is ignored; a cut varint is not read.
        assert_eq!(
            Counts::decode(&[1, 1, 0, 0, 0, 0, 9]),
            Some(counts([1, 1, 0, 0, 0, 0]))
        );
        assert_eq!(Counts::decode(&[0x80]), None);
    }

    #[test]
    fn events_fall_in_their_minute() {
        let stats = Stats::new();
        // The last millisecond of a minute, and the first of the next.
        stats.observe(&event(Kind::Delivered, HOUR + 59_999, "p", None));
        stats.observe(&event(Kind::Delivered, HOUR + 60_000, "p", None));
        stats.observe(&event(
            Kind::Deferred,
            HOUR + 60_001,
            "p",
            Some(Class::Greylist),
        ));
        stats.observe(&event(
            Kind::Deferred,
            HOUR + 60_002,
            "q",
            Some(Class::Greylist),
        ));
        stats.observe(&event(Kind::Processed, HOUR, "p", None));
        let first = minute_of(Timestamp(HOUR));
        let reading = futures::executor::block_on(stats.read());
        let mut rows = reading.unflushed(0..u32::MAX);
        rows.sort_by(|a, b| {
            (a.minute, &a.provider, a.class).cmp(&(b.minute, &b.provider, b.class))
        });
        let row = |minute, provider: &str, class, c| Row {
            minute,
            provider: provider.into(),
            class,
            counts: counts(c),
        };
        assert_eq!(
            rows,
            [
                row(first, "p", "", [1, 1, 0, 0, 0, 0]),
                row(first + 1, "p", "", [1, 1, 0, 0, 0, 0]),
                row(first + 1, "p", "greylist", [1, 0, 1, 0, 0, 0]),
                row(first + 1, "q", "greylist", [1, 0, 1, 0, 0, 0]),
            ]
        );
        assert_eq!(reading.unflushed(first + 1..first + 2).len(), 3);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_counts_and_a_good_one_empties_memory() {
        let stats = Stats::new();
        stats.observe(&event(Kind::Delivered, HOUR, "p", None));
        let failed: Result<usize, &str> = stats.flush(|_| async { Err("disk full") }).await;
        assert!(failed.is_err());
        stats.observe(&event(Kind::Delivered, HOUR, "p", None));
        let mut written = Vec::new();
        let n = stats
            .flush(|rows| {
                written = rows;
                async { Ok::<_, ()>(()) }
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(written[0].counts, counts([2, 2, 0, 0, 0, 0]), "both, once");
        assert_eq!(stats.unflushed_cells(), 0);
    }

    #[test]
    fn memory_is_bounded_by_dropping_the_oldest_minutes() {
        let stats = Stats::new();
        for i in 0..=MAX_UNFLUSHED as u64 {
            stats.observe(&event(Kind::Delivered, i * MINUTE_MS, "p", None));
        }
        assert_eq!(stats.unflushed_cells(), MAX_UNFLUSHED);
        let reading = futures::executor::block_on(stats.read());
        assert!(reading.unflushed(0..1).is_empty(), "minute 0 went first");
    }

    fn q(from: u64, to: u64, step_minutes: u64) -> Result<Query, RangeError> {
        Query::new(
            Timestamp(from),
            Timestamp(to),
            Duration::from_secs(60 * step_minutes),
            None,
            By::Total,
        )
    }

    #[test]
    fn ranges_become_whole_steps() {
        let m = minute_of(Timestamp(HOUR));
        // An hour of minutes.
        let one = q(HOUR, HOUR + 3_600_000, 1).unwrap();
        assert_eq!((one.from_minute, one.points), (m, 60));
        // Mid-minute ends count their minute; a start is rounded down to a whole step.
        let cut = q(HOUR + 30_000, HOUR + 90_000, 1).unwrap();
        assert_eq!((cut.from_minute, cut.points), (m, 2));
        let five = q(HOUR + 7 * MINUTE_MS, HOUR + 61 * MINUTE_MS, 5).unwrap();
        assert_eq!((five.from_minute, five.points), (m + 5, 12));
        assert_eq!(five.minutes(), m + 5..m + 65);
        let hours = q(HOUR + 3_600_000 + 1, HOUR + 3 * 3_600_000, 60).unwrap();
        assert_eq!((hours.from_minute, hours.points), (m + 60, 2));
        // A day of minutes is the most; a second more is too many.
        assert_eq!(q(HOUR, HOUR + 1440 * MINUTE_MS, 1).unwrap().points, 1440);
        assert_eq!(
            q(HOUR, HOUR + 1440 * MINUTE_MS + 1, 1),
            Err(RangeError::TooManyPoints(1441))
        );
        assert_eq!(q(HOUR, HOUR, 1), Err(RangeError::Empty));
        assert_eq!(q(HOUR + 1, HOUR, 1), Err(RangeError::Empty));
        let odd = Query::new(
            Timestamp(HOUR),
            Timestamp(HOUR + 3_600_000),
            Duration::from_secs(90),
            None,
            By::Total,
        );
        assert_eq!(odd, Err(RangeError::Step));
        let zero = Query::new(
            Timestamp(HOUR),
            Timestamp(HOUR + 1),
            Duration::ZERO,
            None,
            By::Total,
        );
        assert_eq!(zero, Err(RangeError::Step));
    }

    #[test]
    fn cells_add_up_into_steps_series_and_classes() {
        let m = minute_of(Timestamp(HOUR));
        let grey = counts([1, 0, 1, 0, 0, 0]);
        let delivered = counts([1, 1, 0, 0, 0, 0]);
        let hard = counts([1, 0, 0, 1, 0, 0]);
        let cells: &[(u32, &str, &str, Counts)] = &[
            (m, "google", "greylist", grey),
            (m + 4, "google", "", delivered),
            (m + 5, "google", "greylist", grey),
            (m + 5, "yahoo", "throttle", grey),
            (m + 9, "yahoo", "hard", hard),
            // Outside the range: before and after.
            (m - 1, "google", "", delivered),
            (m + 10, "google", "", delivered),
        ];
        let run = |provider: Option<&str>, by: By| {
            let query = Query::new(
                Timestamp(HOUR),
                Timestamp(HOUR + 10 * MINUTE_MS),
                Duration::from_secs(300),
                provider.map(String::from),
                by,
            )
            .unwrap();
            let mut a = Aggregate::new(query);
            for (minute, p, class, c) in cells {
                a.add(*minute, p, class, c);
            }
            a.finish()
        };
        let all = run(None, By::Total);
        assert_eq!(all.from, Timestamp(HOUR));
        assert_eq!(all.to, Timestamp(HOUR + 10 * MINUTE_MS));
        assert_eq!(all.step_seconds, 300);
        assert_eq!(all.series.len(), 1);
        let s = &all.series[0];
        assert_eq!(s.points.len(), 2);
        assert_eq!(s.points[1].t, Timestamp(HOUR + 5 * MINUTE_MS));
        assert_eq!(s.points[0].tally.counts, counts([2, 1, 1, 0, 0, 0]));
        assert_eq!(s.points[1].tally.counts, counts([3, 0, 2, 1, 0, 0]));
        assert_eq!(
            s.points[1].tally.deferred_by_class,
            BTreeMap::from([("greylist".into(), 1), ("throttle".into(), 1)])
        );
        assert_eq!(s.total.counts, counts([5, 1, 3, 1, 0, 0]));
        assert_eq!(s.total.deferred_by_class["greylist"], 2);

        let by_provider = run(None, By::Provider);
        let names: Vec<_> = by_provider
            .series
            .iter()
            .map(|s| s.provider.clone().unwrap())
            .collect();
        assert_eq!(names, ["google", "yahoo"]);
        assert_eq!(
            by_provider.series[1].total.counts,
            counts([2, 0, 1, 1, 0, 0])
        );

        let yahoo = run(Some("yahoo"), By::Total);
        assert_eq!(yahoo.series[0].total.counts, counts([2, 0, 1, 1, 0, 0]));
        assert_eq!(yahoo.series[0].provider.as_deref(), Some("yahoo"));
        assert_eq!(yahoo.series[0].points[0].tally, Tally::default());

        let by_class = run(None, By::Class);
        let classes: Vec<_> = by_class
            .series
            .iter()
            .map(|s| (s.class.clone().unwrap(), s.total.counts.attempts))
            .collect();
        assert_eq!(
            classes,
            [
                ("greylist".into(), 2),
                ("hard".into(), 1),
                ("none".into(), 1),
                ("throttle".into(), 1)
            ]
        );
        // Nothing in range still gives one series of zeros to chart.
        let none = run(Some("nobody"), By::Total);
        assert_eq!(none.series[0].points.len(), 2);
        assert!(none.series[0].total.counts.is_zero());
        assert!(run(Some("nobody"), By::Provider).series.is_empty());
    }
}
