//! Prometheus metrics: every name, its help text and its histogram buckets in one place
//! (documented in `docs/metrics.md`, a test keeps the two in step). Counters are fed from
//! the events as they are emitted ([`record_event`]), so a metric and the event log never
//! disagree; queue and destination gauges are set when `/metrics` is scraped, from the
//! scheduler's own views. Labels are providers, classes and the like, never a recipient or
//! a message: their number stays bounded.

use crate::event::{Event, Kind};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const PROCESSED: &str = "knock_processed_total";
pub const ATTEMPTS: &str = "knock_attempts_total";
pub const DELIVERED: &str = "knock_delivered_total";
pub const DEFERRALS: &str = "knock_deferrals_total";
pub const INTERNAL_DEFERRALS: &str = "knock_internal_deferrals_total";
pub const BOUNCES: &str = "knock_bounces_total";
pub const EXPIRED: &str = "knock_expired_total";
pub const SUPPRESSED: &str = "knock_suppressed_total";
pub const CANCELLED: &str = "knock_cancelled_total";
pub const EE_SECONDS: &str = "knock_ee_seconds";
pub const CONNECTIONS_REFUSED: &str = "knock_connections_refused_total";
pub const SOURCE_BLOCKED: &str = "knock_source_blocked_total";
pub const SPOOL_COMMIT_SECONDS: &str = "knock_spool_commit_seconds";
pub const SPOOL_BYTES: &str = "knock_spool_bytes";
pub const QUEUE_RECIPIENTS: &str = "knock_queue_recipients";
pub const QUEUE_IN_FLIGHT: &str = "knock_queue_in_flight_recipients";
pub const QUEUE_OLDEST_SECONDS: &str = "knock_queue_oldest_seconds";
pub const DESTINATION_READY: &str = "knock_destination_ready_groups";
pub const DESTINATION_CONNECTIONS: &str = "knock_destination_connections";
pub const DESTINATION_MAX_CONNECTIONS: &str = "knock_destination_max_connections";
pub const DESTINATION_CONNECTION_WAIT: &str = "knock_destination_waiting_for_connection";
pub const DESTINATION_RATE: &str = "knock_destination_rate_per_minute";
pub const DESTINATION_STATE: &str = "knock_destination_state";
pub const DESTINATION_GREYLIST_SECONDS: &str = "knock_destination_greylist_seconds";
pub const WARMUP_DAY: &str = "knock_warmup_day";
pub const SOURCE_LIMIT: &str = "knock_source_limit_messages";
pub const SOURCE_LIMIT_USED: &str = "knock_source_limit_used_messages";
pub const ALLOWANCE_MESSAGES: &str = "knock_allowance_messages";
pub const ALLOWANCE_USED: &str = "knock_allowance_used";
pub const EVENTS_DROPPED: &str = "knock_events_dropped_total";
pub const WEBHOOK_BACKLOG: &str = "knock_webhook_backlog_events";
pub const WEBHOOK_POSTS: &str = "knock_webhook_posts_total";
pub const WEBHOOK_DROPPED: &str = "knock_webhook_dropped_events_total";
pub const WEBHOOK_FAILING: &str = "knock_webhook_failing";
pub const FLEET_NODES: &str = "knock_fleet_nodes";
pub const FLEET_REDIS_UP: &str = "knock_fleet_redis_up";

/// Every metric knock exports, with its type and help text.
pub const ALL: &[(&str, &str, &str)] = &[
    (PROCESSED, "counter", "Recipients accepted into the queue."),
    (
        ATTEMPTS,
        "counter",
        "Delivery attempts per recipient, by provider and result (delivered, deferred, bounced).",
    ),
    (DELIVERED, "counter", "Recipients delivered, by provider."),
    (
        DEFERRALS,
        "counter",
        "Recipients deferred by the receiver (4xx or no answer), by provider and class.",
    ),
    (
        INTERNAL_DEFERRALS,
        "counter",
        "Recipients held back by a limit knock imposes itself, by provider.",
    ),
    (
        BOUNCES,
        "counter",
        "Recipients bounced (permanent failure), by provider and class.",
    ),
    (
        EXPIRED,
        "counter",
        "Recipients given up on after the maximum queue age, by provider.",
    ),
    (
        SUPPRESSED,
        "counter",
        "Recipients not sent because they are on the suppression list.",
    ),
    (
        CANCELLED,
        "counter",
        "Recipients removed from the queue by an operator.",
    ),
    (
        EE_SECONDS,
        "histogram",
        "Seconds from acceptance to delivery (end-to-end time), by provider.",
    ),
    (
        CONNECTIONS_REFUSED,
        "counter",
        "Connections to an MX host that gave no SMTP session (refused, timed out, turned away at the greeting), by provider.",
    ),
    (
        SOURCE_BLOCKED,
        "counter",
        "Times a provider blocked a source whose pool had another, by provider and source: the source was set aside for that provider.",
    ),
    (
        SPOOL_COMMIT_SECONDS,
        "histogram",
        "Seconds one spool commit (write and fsync) took.",
    ),
    (SPOOL_BYTES, "gauge", "Size of the spool file in bytes."),
    (
        QUEUE_RECIPIENTS,
        "gauge",
        "Recipients in the queue, by provider and state (queued: not tried yet; deferred: tried and deferred).",
    ),
    (
        QUEUE_IN_FLIGHT,
        "gauge",
        "Recipients of the queue being delivered now, by provider (also counted in knock_queue_recipients).",
    ),
    (
        QUEUE_OLDEST_SECONDS,
        "gauge",
        "Age of the oldest message waiting, by provider.",
    ),
    (
        DESTINATION_READY,
        "gauge",
        "Groups due and waiting for the destination's pacing, by provider.",
    ),
    (
        DESTINATION_CONNECTIONS,
        "gauge",
        "Connections open to the destination, by provider.",
    ),
    (
        DESTINATION_MAX_CONNECTIONS,
        "gauge",
        "Connections the destination may have now, by provider.",
    ),
    (
        DESTINATION_CONNECTION_WAIT,
        "gauge",
        "1 while the destination has mail ready and waits for its source's or knock's connection cap, by provider and source.",
    ),
    (
        DESTINATION_RATE,
        "gauge",
        "Messages per minute the destination is paced to now, by provider (absent when unpaced).",
    ),
    (
        DESTINATION_STATE,
        "gauge",
        "1 for the destination's pacing state (open, paced, paused, probing, outage), by provider.",
    ),
    (
        WARMUP_DAY,
        "gauge",
        "The day of a source's warm-up with a provider (1 for the first), by provider and source.",
    ),
    (
        SOURCE_LIMIT,
        "gauge",
        "A source's own limit for a provider now (its warm-up day's while it warms up), by provider, source and period (hour, day).",
    ),
    (
        SOURCE_LIMIT_USED,
        "gauge",
        "Messages counted against that limit in the hour or day under way, by provider, source and period.",
    ),
    (
        DESTINATION_GREYLIST_SECONDS,
        "gauge",
        "Greylisting delay learned for the destination, by provider.",
    ),
    (
        ALLOWANCE_MESSAGES,
        "gauge",
        "Learned allowance: at most this many messages in any window of window_seconds, by provider.",
    ),
    (
        ALLOWANCE_USED,
        "gauge",
        "Messages accepted within the learned window now, by provider and window_seconds.",
    ),
    (
        EVENTS_DROPPED,
        "counter",
        "Events that could not be written to the event log.",
    ),
    (
        WEBHOOK_BACKLOG,
        "gauge",
        "Outbox entries the webhook has not sent yet, by webhook.",
    ),
    (
        WEBHOOK_POSTS,
        "counter",
        "POSTs to the webhook, by webhook and result (ok, failed).",
    ),
    (
        WEBHOOK_DROPPED,
        "counter",
        "Events dropped unsent because the webhook kept failing past its max_age, by webhook.",
    ),
    (
        WEBHOOK_FAILING,
        "gauge",
        "1 while the webhook's last POST failed, by webhook.",
    ),
    (
        FLEET_NODES,
        "gauge",
        "Nodes of the fleet this node shares every limit with, itself included ([cluster]).",
    ),
    (
        FLEET_REDIS_UP,
        "gauge",
        "1 while the fleet's Redis answers this node's heartbeats, 0 while it delivers on its last share.",
    ),
];

/// Bounds of the end-to-end time buckets, in seconds: from transactional (tenths of a
/// second) to the longest queue lifetimes (days).
const EE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
    259_200.0,
];
/// Bounds of the spool commit buckets, in seconds: fsync on an SSD takes about a
/// millisecond.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. Gauges that were not set for a while
/// (a destination that left the queue) are dropped from the output.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(EE_SECONDS.into()), EE_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(SPOOL_COMMIT_SECONDS.into()), COMMIT_BUCKETS)
            })
            .expect("the buckets are not empty")
            .idle_timeout(
                metrics_util::MetricKindMask::GAUGE,
                Some(Duration::from_secs(600)),
            );
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding program's): then knock's
        // metrics go there and `/metrics` shows only what this one holds.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics will be empty");
        }
        for (name, kind, help) in ALL {
            match *kind {
                "counter" => describe_counter!(*name, *help),
                "gauge" => describe_gauge!(*name, *help),
                _ => describe_histogram!(*name, *help),
            }
        }
        handle
    })
}

/// Feeds the metrics from the events as they are emitted.
pub struct Recorder;

impl crate::event::Observer for Recorder {
    fn observe(&self, event: &Event) {
        record_event(event);
    }

    fn dropped(&self) {
        event_dropped();
    }
}

/// Counts what an event reports. Called once per event, as it is emitted.
pub fn record_event(e: &Event) {
    let provider = e.provider.clone().unwrap_or_default();
    let stream = e.stream.clone().unwrap_or_else(|| "-".into());
    let source = e.source.clone().unwrap_or_else(|| "-".into());
    let class = || e.class.map(|c| c.as_str()).unwrap_or("none");
    let attempt = |result: &'static str| {
        counter!(ATTEMPTS, "provider" => provider.clone(), "stream" => stream.clone(), "source" => source.clone(), "result" => result)
            .increment(1)
    };
    match e.event {
        Kind::Processed => counter!(PROCESSED).increment(1),
        Kind::Delivered => {
            attempt("delivered");
            counter!(DELIVERED, "provider" => provider.clone(), "stream" => stream.clone(), "source" => source.clone())
                .increment(1);
            if let Some(ee) = e.ee_seconds {
                histogram!(EE_SECONDS, "provider" => provider, "stream" => stream).record(ee);
            }
        }
        Kind::Deferred if e.internal => {
            counter!(INTERNAL_DEFERRALS, "provider" => provider, "stream" => stream, "source" => source)
                .increment(1)
        }
        Kind::Deferred => {
            attempt("deferred");
            counter!(DEFERRALS, "provider" => provider, "stream" => stream, "source" => source, "class" => class())
                .increment(1);
        }
        Kind::Bounced => {
            // A bounce without an attempt (a domain that does not exist) is still one.
            if e.attempt.is_some() {
                attempt("bounced");
            }
            counter!(BOUNCES, "provider" => provider, "stream" => stream, "source" => source, "class" => class())
                .increment(1);
        }
        Kind::Expired => {
            counter!(EXPIRED, "provider" => provider, "stream" => stream).increment(1)
        }
        Kind::Suppressed => counter!(SUPPRESSED).increment(1),
        Kind::Cancelled => counter!(CANCELLED).increment(1),
        Kind::Held | Kind::Released => {}
    }
}

/// One spool commit took `took`.
pub fn spool_commit(took: Duration) {
    histogram!(SPOOL_COMMIT_SECONDS).record(took.as_secs_f64());
}

/// `count` connections to `provider`'s hosts gave no SMTP session (each MX host passed
/// over on the way to a session, or all of them).
pub fn connections_refused(provider: &str, count: usize) {
    if count > 0 {
        counter!(CONNECTIONS_REFUSED, "provider" => provider.to_string()).increment(count as u64);
    }
}

/// `provider` blocked `source` and its mail went to the pool's other sources.
pub fn source_blocked(provider: &str, source: &str) {
    counter!(SOURCE_BLOCKED, "provider" => provider.to_string(), "source" => source.to_string())
        .increment(1);
}

/// A POST to `webhook` succeeded or failed.
pub fn webhook_post(webhook: &str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    counter!(WEBHOOK_POSTS, "webhook" => webhook.to_string(), "result" => result).increment(1);
    gauge!(WEBHOOK_FAILING, "webhook" => webhook.to_string()).set(f64::from(u8::from(!ok)));
}

/// `webhook` has `events` outbox entries not yet sent.
pub fn webhook_backlog(webhook: &str, events: u64) {
    gauge!(WEBHOOK_BACKLOG, "webhook" => webhook.to_string()).set(events as f64);
}

/// `webhook` dropped `events` unsent.
pub fn webhook_dropped(webhook: &str, events: usize) {
    counter!(WEBHOOK_DROPPED, "webhook" => webhook.to_string()).increment(events as u64);
}

/// An event could not be written to the log.
/// The fleet's size this node shares its limits by, and whether Redis answers.
pub fn fleet(nodes: usize, redis_up: bool) {
    gauge!(FLEET_NODES).set(nodes as f64);
    gauge!(FLEET_REDIS_UP).set(if redis_up { 1.0 } else { 0.0 });
}

pub fn event_dropped() {
    counter!(EVENTS_DROPPED).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../docs/metrics.md");
        for (name, kind, _) in ALL {
            assert!(
                doc.contains(&format!("| `{name}` | {kind} |")),
                "docs/metrics.md does not describe {name} as a {kind}"
            );
        }
        let documented = doc.lines().filter(|l| l.starts_with("| `knock_")).count();
        assert_eq!(
            documented,
            ALL.len(),
            "docs/metrics.md names a metric knock lacks"
        );
    }
}
