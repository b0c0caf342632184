//! `GET /api/v1/stats`: the deferral time series (`crate::stats`) over a range, in steps,
//! summed or split by provider or class. Reads the counts still in memory and those in the
//! spool together, so the minute going on now is in the answer too.

use super::{ApiError, ApiState};
use crate::stats::{Aggregate, By, Query, RangeError, StatsView};
use crate::time::Timestamp;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// The query parameters, in the order the doc lists them.
pub const PARAMETERS: &[&str] = &["provider", "by", "from", "to", "step"];

/// The range when `from` is not given: the last hour.
const DEFAULT_RANGE: Duration = Duration::from_secs(3600);

/// The steps tried, shortest first, when `step` is not given: the first that keeps the
/// series within [`crate::stats::MAX_POINTS`].
const DEFAULT_STEPS: &[u64] = &[1, 5, 15, 60, 360, 1440];

/// Reads the query against `now`; the error names the parameter.
pub fn parse_query(pairs: Vec<(String, String)>, now: Timestamp) -> Result<Query, ApiError> {
    let params = super::query_params(pairs, PARAMETERS)?;
    for (name, value) in &params {
        if value.trim().is_empty() {
            return Err(ApiError::field(name.clone(), "is empty"));
        }
    }
    let time = |name: &str| {
        params
            .get(name)
            .map(|v| parse_time(v.trim(), now).map_err(|e| ApiError::field(name, e)))
            .transpose()
    };
    let to = time("to")?.unwrap_or(now);
    let from = time("from")?.unwrap_or(Timestamp(
        to.millis().saturating_sub(DEFAULT_RANGE.as_millis() as u64),
    ));
    let by = match params.get("by").map(|b| b.trim()) {
        None => By::Total,
        Some(b) => By::ALL
            .iter()
            .find(|(name, _)| *name == b)
            .map(|(_, by)| *by)
            .ok_or_else(|| {
                ApiError::field("by", format!("{b:?} is not one of total, provider, class"))
            })?,
    };
    let provider = params.get("provider").map(|p| p.trim().to_string());
    let query = |step| Query::new(from, to, step, provider.clone(), by);
    let range_error = |e: RangeError| match e {
        RangeError::Empty => ApiError::field("from", format!("{e} ({from} is not before {to})")),
        RangeError::Step | RangeError::TooManyPoints(_) => ApiError::field("step", e.to_string()),
    };
    match params.get("step") {
        Some(step) => {
            let step = humantime::parse_duration(step.trim()).map_err(|e| {
                ApiError::field("step", format!("not a duration (e.g. 5m, 1h): {e}"))
            })?;
            query(step).map_err(range_error)
        }
        None => {
            let mut last = None;
            for minutes in DEFAULT_STEPS {
                match query(Duration::from_secs(60 * minutes)) {
                    Err(RangeError::TooManyPoints(n)) => last = Some(RangeError::TooManyPoints(n)),
                    other => return other.map_err(range_error),
                }
            }
            Err(ApiError::field(
                "from",
                format!(
                    "the range is too long: {}",
                    last.map_or(String::new(), |e| e.to_string())
                ),
            ))
        }
    }
}

/// A time as the query gives it: `now`, relative to now (`-1h`, `-2d 6h`), or RFC 3339
/// (`2026-11-23T08:00:00Z`, `2026-11-23T09:00:00+01:00`).
fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let ago = humantime::parse_duration(ago.trim())
            .map_err(|e| format!("not a time before now (e.g. -1h, -30m): {e}"))?;
        return Ok(Timestamp(
            now.millis().saturating_sub(ago.as_millis() as u64),
        ));
    }
    let bad = |e: humantime::TimestampError| {
        format!("not a time: RFC 3339 (2026-11-23T08:00:00Z), -1h or now: {e}")
    };
    // humantime reads UTC (`Z`) only: an offset is taken off first and applied after.
    let (utc, offset_ms) = match split_offset(text) {
        Some((utc, offset_ms)) => (format!("{utc}Z"), offset_ms),
        None => (text.to_string(), 0),
    };
    let at = humantime::parse_rfc3339(&utc).map_err(bad)?;
    let millis = Timestamp::from(at).millis() as i64 - offset_ms;
    u64::try_from(millis)
        .map(Timestamp)
        .map_err(|_| "before 1970".to_string())
}

/// `2026-11-23T09:00:00+01:00` → (`2026-11-23T09:00:00`, 3,600,000): the local time and
/// its offset from UTC in milliseconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..at)?, text.get(at..)?);
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if !local.contains('T') && !local.contains('t') || offset.as_bytes()[3] != b':' {
        return None;
    }
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    Some((local, sign * (hours * 60 + minutes) * 60_000))
}

/// `GET /api/v1/stats?provider=google&from=-6h&step=5m&by=class`.
#[utoipa::path(get, path = "/api/v1/stats", tag = "queue", params(("provider" = Option<String>, Query, description = "Only this provider"), ("by" = Option<String>, Query, description = "total (the default), provider or class"), ("from" = Option<String>, Query, description = "RFC 3339, -1h style, or now; the last hour by default"), ("to" = Option<String>, Query, description = "RFC 3339, -1h style, or now"), ("step" = Option<String>, Query, description = "A whole number of minutes, e.g. 5m")), responses((status = 200, description = "Attempts, deliveries, deferrals (by class), bounces and expirations per step"), (status = 400, description = "A bad parameter, named in field")))]
pub(super) async fn get_stats(
    AxState(state): AxState<Arc<ApiState>>,
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::Json<StatsView>, ApiError> {
    let axum::extract::Query(pairs) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let query = parse_query(pairs, state.intake.clock.now())?;
    let minutes = query.minutes();
    let mut aggregate = Aggregate::new(query);
    // Memory and spool read while no flush moves counts from one to the other.
    let reading = state.stats.read().await;
    for row in reading.unflushed(minutes.clone()) {
        aggregate.add(row.minute, &row.provider, row.class, &row.counts);
    }
    let spool = state.intake.spool.clone();
    let aggregate = tokio::task::spawn_blocking(move || {
        spool
            .stats_visit(minutes, &mut |minute, provider, class, counts| {
                aggregate.add(minute, provider, class, counts)
            })
            .map(|()| aggregate)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    drop(reading);
    Ok(axum::Json(aggregate.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:30:00Z.
    const NOW: Timestamp = Timestamp(1_767_227_400_000);
    const MIN: u64 = 60_000;

    fn query(q: &[(&str, &str)]) -> Result<Query, ApiError> {
        parse_query(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            NOW,
        )
    }

    fn minute(t: Timestamp) -> u32 {
        crate::stats::minute_of(t)
    }

    #[test]
    fn the_query_is_read_with_its_defaults() {
        let now = minute(NOW);
        let q = query(&[]).unwrap();
        assert_eq!((q.from_minute, q.step_minutes, q.points), (now - 60, 1, 60));
        assert_eq!((q.provider, q.by), (None, By::Total));

        let q = query(&[
            ("provider", "google"),
            ("by", "class"),
            ("from", "-6h"),
            ("step", "5m"),
        ])
        .unwrap();
        assert_eq!(
            (q.from_minute, q.step_minutes, q.points),
            (now - 360, 5, 72)
        );
        assert_eq!((q.provider.as_deref(), q.by), (Some("google"), By::Class));

        // RFC 3339, in UTC or with an offset; `now`.
        let q = query(&[
            ("from", "2026-01-01T00:00:00Z"),
            ("to", "2026-01-01T02:00:00+01:00"),
        ])
        .unwrap();
        assert_eq!((q.from_minute, q.points), (now - 30, 60));
        let q = query(&[("from", "2025-12-31T23:30:00.000-00:30"), ("to", "now")]).unwrap();
        assert_eq!((q.from_minute, q.points), (now - 30, 30));

        // Without a step, the shortest that fits: a week goes by the quarter hour, a month
        // by the hour (and the first point starts on the hour).
        let q = query(&[("from", "-7d")]).unwrap();
        assert_eq!((q.step_minutes, q.points), (15, 7 * 96));
        let q = query(&[("from", "-30d")]).unwrap();
        assert_eq!((q.step_minutes, q.points), (60, 30 * 24 + 1));
        let q = query(&[("from", "-1d")]).unwrap();
        assert_eq!((q.step_minutes, q.points), (1, 1440));
        assert_eq!(q.minutes().end, now);
    }

    /// Query parameters, the parameter the error names, and words of the error.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

    #[test]
    fn a_bad_parameter_is_named() {
        let table: &[Case] = &[
            (&[("step", "90s")], "step", "whole number of minutes"),
            (&[("step", "0m")], "step", "whole number of minutes"),
            (&[("step", "fast")], "step", "not a duration"),
            (&[("from", "-2d"), ("step", "1m")], "step", "more than 1440"),
            (&[("from", "yesterday")], "from", "not a time"),
            (&[("to", "-1x")], "to", "not a time before now"),
            (
                &[("from", "-1h"), ("to", "-2h")],
                "from",
                "must be before to",
            ),
            (&[("by", "domain")], "by", "not one of"),
            (&[("provider", " ")], "provider", "empty"),
            (&[("class", "greylist")], "class", "unknown parameter"),
            (
                &[("by", "class"), ("by", "provider")],
                "by",
                "more than once",
            ),
            (&[("from", "-100y")], "from", "too long"),
        ];
        for (q, field, needle) in table {
            let e = query(q).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.field.as_deref(), Some(*field), "{q:?}: {}", e.error);
            assert!(e.error.contains(needle), "{q:?}: {}", e.error);
        }
    }

    #[test]
    fn offsets_are_read_only_where_they_are() {
        assert_eq!(
            split_offset("2026-01-01T01:00:00+01:00"),
            Some(("2026-01-01T01:00:00", 3_600_000))
        );
        assert_eq!(split_offset("2026-01-01T01:00:00Z"), None);
        assert_eq!(split_offset("-01:00"), None);
        assert_eq!(
            parse_time("2026-01-01T00:30:00Z", NOW).unwrap(),
            parse_time("2026-01-01T05:45:00+05:15", NOW).unwrap()
        );
        assert_eq!(
            parse_time("-90m", NOW).unwrap(),
            Timestamp(NOW.0 - 90 * MIN)
        );
    }

    #[test]
    fn the_doc_names_every_parameter_and_its_example_reads() {
        let section = super::super::doc_section("GET /api/v1/stats");
        for p in PARAMETERS {
            assert!(section.contains(&format!("`{p}`")), "http-api.md: {p}");
        }
        for (name, _) in By::ALL {
            assert!(
                section.contains(&format!("`{name}`")),
                "http-api.md: {name}"
            );
        }
        let start = section.find("{\"from\"").unwrap();
        let end = start + section[start..].find("\n```").unwrap();
        let view: StatsView = serde_json::from_str(&section[start..end]).unwrap();
        assert_eq!(view.series.len(), 1);
        let s = &view.series[0];
        let mut sum = crate::stats::Counts::default();
        for p in &s.points {
            sum.add(&p.tally.counts);
            let by_class: u64 = p.tally.deferred_by_class.values().sum();
            assert_eq!(by_class, p.tally.counts.deferred, "{:?}", p.t);
        }
        assert_eq!(sum, s.total.counts, "the example's total adds up");
        assert_eq!(
            view.to.millis() - view.from.millis(),
            s.points.len() as u64 * view.step_seconds * 1000
        );
    }
}
