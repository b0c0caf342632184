//! `/api/v1/queue` and `/api/v1/destinations`: the queue per domain, and per destination
//! with its shaping; `/api/v1/queue/shape`: how long the queue has waited, per domain or
//! provider (Postfix's `qshape`).

use super::{ApiError, ApiState};
use crate::engine::scheduler::{DestinationView, DomainSummary, QueueShape, ShapeBy};
use axum::extract::State as AxState;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueView {
    pub domains: Vec<DomainSummary>,
}

#[utoipa::path(get, path = "/api/v1/queue", tag = "queue", responses((status = 200, description = "The queue per domain")))]
pub(super) async fn get_queue(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<QueueView> {
    axum::Json(QueueView {
        domains: state.intake.scheduler.summary().await,
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DestinationsView {
    pub destinations: Vec<DestinationView>,
}

#[utoipa::path(get, path = "/api/v1/destinations", tag = "queue", responses((status = 200, description = "Each destination's queue and shaping")))]
pub(super) async fn get_destinations(
    AxState(state): AxState<Arc<ApiState>>,
) -> axum::Json<DestinationsView> {
    axum::Json(DestinationsView {
        destinations: state.intake.scheduler.destinations().await,
    })
}

/// `GET /api/v1/queue/shape?by=domain|provider`.
#[utoipa::path(get, path = "/api/v1/queue/shape", tag = "queue", params(("by" = Option<String>, Query, description = "domain (the default) or provider")), responses((status = 200, description = "Pending recipients by how long they waited"), (status = 400, description = "A bad parameter")))]
pub(super) async fn get_shape(
    AxState(state): AxState<Arc<ApiState>>,
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::Json<QueueShape>, ApiError> {
    let axum::extract::Query(pairs) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let params = super::query_params(pairs, &["by"])?;
    let by = match params.get("by").map(String::as_str) {
        None | Some("domain") => ShapeBy::Domain,
        Some("provider") => ShapeBy::Provider,
        Some(other) => {
            return Err(ApiError::field(
                "by",
                format!("{other:?}: domain or provider"),
            ));
        }
    };
    state
        .intake
        .scheduler
        .shape(by)
        .await
        .map(axum::Json)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doc_s_shape_example_reads_and_adds_up() {
        let section = super::super::doc_section("GET /api/v1/queue/shape");
        let start = section.find("{\"by\"").unwrap();
        let end = start + section[start..].find("\n```").unwrap();
        let shape: QueueShape = serde_json::from_str(&section[start..end]).unwrap();
        let labels: Vec<String> = shape.buckets.iter().map(|b| b.label.clone()).collect();
        let mut counter = crate::engine::scheduler::ShapeCounter::default();
        counter.add("x", std::time::Duration::ZERO, 1);
        let ours: Vec<String> = counter
            .finish(ShapeBy::Domain)
            .buckets
            .into_iter()
            .map(|b| b.label)
            .collect();
        assert_eq!(labels, ours, "the doc shows knock's buckets");
        for row in std::iter::once(&shape.total).chain(&shape.rows) {
            assert_eq!(row.total, row.counts.iter().sum::<u64>(), "{}", row.name);
        }
        let columns: Vec<u64> = (0..shape.buckets.len())
            .map(|i| shape.rows.iter().map(|r| r.counts[i]).sum())
            .collect();
        assert_eq!(shape.total.counts, columns);
    }
}
