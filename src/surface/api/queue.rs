//! `/api/v1/queue` and `/api/v1/destinations`: the queue per domain, and per destination
//! with its shaping.

use super::ApiState;
use crate::engine::scheduler::{DestinationView, DomainSummary};
use axum::extract::State as AxState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueView {
    pub domains: Vec<DomainSummary>,
}

pub(super) async fn get_queue(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<QueueView> {
    axum::Json(QueueView {
        domains: state.intake.scheduler.summary().await,
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DestinationsView {
    pub destinations: Vec<DestinationView>,
}

pub(super) async fn get_destinations(
    AxState(state): AxState<Arc<ApiState>>,
) -> axum::Json<DestinationsView> {
    axum::Json(DestinationsView {
        destinations: state.intake.scheduler.destinations().await,
    })
}
