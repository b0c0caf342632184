//! `GET /metrics`: the Prometheus text exposition. Counters and histograms are kept as
//! things happen (`crate::metrics`); the queue and destination gauges are read from the
//! scheduler here, at each scrape, so they are never stale. A provider that left the queue
//! is reported as 0 once, then dropped after a while.

use super::ApiState;
use crate::engine::scheduler::{DestinationView, DomainSummary};
use crate::metrics as m;
use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use metrics::Label;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// One gauge's value at this scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

type SampleKey = (&'static str, Vec<(&'static str, String)>);

/// What was set at the last scrape, to zero what is gone.
#[derive(Default)]
pub struct Scraped(std::sync::Mutex<HashSet<SampleKey>>);

#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain")))]
pub(super) async fn get_metrics(AxState(state): AxState<Arc<ApiState>>) -> impl IntoResponse {
    let handle = m::handle();
    let (summary, destinations) = tokio::join!(
        state.intake.scheduler.summary(),
        state.intake.scheduler.destinations()
    );
    let mut samples = gauges(&summary, &destinations);
    if let Ok(meta) = tokio::fs::metadata(&state.spool_file).await {
        samples.push(sample(m::SPOOL_BYTES, vec![], meta.len() as f64));
    }
    {
        let mut last = state.scraped.0.lock().expect("metrics lock");
        let now: HashSet<SampleKey> = samples.iter().map(|s| (s.name, s.labels.clone())).collect();
        for (name, labels) in last.difference(&now) {
            metrics::gauge!(*name, to_labels(labels)).set(0.0);
        }
        for s in &samples {
            metrics::gauge!(s.name, to_labels(&s.labels)).set(s.value);
        }
        *last = now;
    }
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

fn to_labels(labels: &[(&'static str, String)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.clone()))
        .collect()
}

fn sample(name: &'static str, labels: Vec<(&'static str, String)>, value: f64) -> Sample {
    Sample {
        name,
        labels,
        value,
    }
}

/// The queue and destination gauges for the scheduler's views.
pub fn gauges(summary: &[DomainSummary], destinations: &[DestinationView]) -> Vec<Sample> {
    #[derive(Default)]
    struct Queue {
        queued: usize,
        deferred: usize,
        in_flight: usize,
        oldest: u64,
    }
    let mut queues: BTreeMap<&str, Queue> = BTreeMap::new();
    for d in summary {
        // A domain whose MX hosts are not known yet has no provider yet.
        let q = queues
            .entry(d.provider.as_deref().unwrap_or("(resolving)"))
            .or_default();
        q.queued += d.queued;
        q.deferred += d.deferred;
        q.in_flight += d.in_flight;
        q.oldest = q.oldest.max(d.oldest_age_seconds);
    }
    let mut out = Vec::new();
    let p = |name: &str| vec![("provider", name.to_string())];
    for (provider, q) in queues {
        for (state, n) in [("queued", q.queued), ("deferred", q.deferred)] {
            out.push(sample(
                m::QUEUE_RECIPIENTS,
                vec![("provider", provider.to_string()), ("state", state.into())],
                n as f64,
            ));
        }
        out.push(sample(m::QUEUE_IN_FLIGHT, p(provider), q.in_flight as f64));
        out.push(sample(
            m::QUEUE_OLDEST_SECONDS,
            p(provider),
            q.oldest as f64,
        ));
    }
    for d in destinations {
        let name = d.destination.as_str();
        let source = d.source.as_deref().unwrap_or(crate::config::DEFAULT_SOURCE);
        let p = |name: &str| {
            vec![
                ("provider", name.to_string()),
                ("source", source.to_string()),
            ]
        };
        let s = &d.shaping;
        out.push(sample(m::DESTINATION_READY, p(name), d.ready as f64));
        out.push(sample(
            m::DESTINATION_CONNECTIONS,
            p(name),
            d.connections_open as f64,
        ));
        out.push(sample(
            m::DESTINATION_MAX_CONNECTIONS,
            p(name),
            s.connection_ceiling
                .map_or(s.max_connections, |c| c.min(s.max_connections)) as f64,
        ));
        out.push(sample(
            m::DESTINATION_CONNECTION_WAIT,
            p(name),
            f64::from(u8::from(d.waiting_for_connection.is_some())),
        ));
        if let Some(rate) = s.rate_per_minute {
            out.push(sample(m::DESTINATION_RATE, p(name), rate));
        }
        if let Some(g) = d.greylist_delay_seconds {
            out.push(sample(m::DESTINATION_GREYLIST_SECONDS, p(name), g as f64));
        }
        if let Some(w) = &d.warmup {
            out.push(sample(m::WARMUP_DAY, p(name), f64::from(w.day)));
        }
        for l in &d.limits {
            let mut labels = p(name);
            labels.push(("period", format!("{:?}", l.period).to_lowercase()));
            out.push(sample(m::SOURCE_LIMIT, labels.clone(), f64::from(l.limit)));
            out.push(sample(m::SOURCE_LIMIT_USED, labels, f64::from(l.used)));
        }
        let current = pacing_state(d);
        for state in PACING_STATES {
            out.push(sample(
                m::DESTINATION_STATE,
                vec![
                    ("provider", name.to_string()),
                    ("source", source.to_string()),
                    ("state", state.to_string()),
                ],
                f64::from(u8::from(*state == current)),
            ));
        }
        for w in &s.allowance.windows {
            let labels = vec![
                ("provider", name.to_string()),
                ("source", source.to_string()),
                ("window_seconds", format!("{}", w.seconds)),
            ];
            out.push(sample(
                m::ALLOWANCE_MESSAGES,
                labels.clone(),
                w.count.into(),
            ));
            out.push(sample(m::ALLOWANCE_USED, labels, w.used.into()));
        }
    }
    out
}

pub const PACING_STATES: &[&str] = &["open", "paced", "paused", "probing", "outage"];

/// The one word for where a destination's pacing stands: `outage` (no host answers, one
/// probe at a time), `probing` (refused with no window to explain it), `paused` (after a
/// throttle or turn-away), `paced` (a rate or a learned window holds it), else `open`.
pub fn pacing_state(d: &DestinationView) -> &'static str {
    let s = &d.shaping;
    if s.outage_since.is_some() {
        "outage"
    } else if s.allowance.probing_since.is_some() {
        "probing"
    } else if s.paused_for_seconds.is_some_and(|p| p > 0.0) {
        "paused"
    } else if s.rate_per_minute.is_some() || !s.allowance.windows.is_empty() {
        "paced"
    } else {
        "open"
    }
}
