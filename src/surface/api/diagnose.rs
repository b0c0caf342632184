//! `/api/v1/diagnose`: per provider, what is behind the deferrals.

use super::{ApiError, ApiState};
use crate::time::Timestamp;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiagnoseQuery {
    provider: Option<String>,
    /// How far back to read events, e.g. `1h` (the default) or `30m`.
    window: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DiagnoseView {
    pub window_seconds: u64,
    pub providers: Vec<crate::surface::diagnose::Diagnosis>,
}

/// `GET /api/v1/diagnose?provider=google&window=1h`.
#[utoipa::path(get, path = "/api/v1/diagnose", tag = "diagnose", params(("provider" = Option<String>, Query, description = "Only this provider"), ("window" = Option<String>, Query, description = "How far back to read the event log, e.g. 1h")), responses((status = 200, description = "Per provider: what is behind the deferrals and bounces, and what knock does about it"), (status = 400, description = "A bad parameter"), (status = 404, description = "The provider has neither events nor a queue")))]
pub(super) async fn get_diagnose(
    AxState(state): AxState<Arc<ApiState>>,
    query: Result<axum::extract::Query<DiagnoseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<DiagnoseView>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let window = match q.window.as_deref() {
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::field("window", format!("not a duration: {e}")))?,
        None => std::time::Duration::from_secs(3600),
    };
    let since = Timestamp(
        Timestamp::now()
            .millis()
            .saturating_sub(window.as_millis() as u64),
    );
    let path = state.events_path.clone();
    let records = tokio::task::spawn_blocking(move || {
        crate::event::read_log(&path, since, crate::surface::diagnose::READ_AT_MOST)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the event log: {e}"),
        )
    })?;
    let destinations = state.intake.scheduler.destinations().await;
    let providers =
        crate::surface::diagnose::diagnose(&records, &destinations, q.provider.as_deref(), window);
    if let Some(p) = &q.provider
        && providers.is_empty()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no events and no queue for provider {p:?}"),
        ));
    }
    Ok(axum::Json(DiagnoseView {
        window_seconds: window.as_secs(),
        providers,
    }))
}
