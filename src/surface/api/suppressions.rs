//! `/api/v1/suppressions`: the suppression list, read and edited.

use super::{ApiError, ApiState};
use crate::address::Address;
use crate::time::Timestamp;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One entry of the suppression list.
#[derive(Debug, Serialize, Deserialize)]
pub struct SuppressionView {
    pub address: String,
    #[serde(flatten)]
    pub entry: crate::policy::suppress::Suppression,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SuppressionsView {
    pub suppressions: Vec<SuppressionView>,
}

#[utoipa::path(get, path = "/api/v1/suppressions", tag = "suppressions", responses((status = 200, description = "Every suppressed address")))]
pub(super) async fn get_suppressions(
    AxState(state): AxState<Arc<ApiState>>,
) -> axum::Json<SuppressionsView> {
    let suppressions = state
        .intake
        .suppressions
        .list()
        .into_iter()
        .map(|(address, entry)| SuppressionView { address, entry })
        .collect();
    axum::Json(SuppressionsView { suppressions })
}

/// `GET /api/v1/suppressions/{address}`: why the address is listed and since when, or 404.
#[utoipa::path(get, path = "/api/v1/suppressions/{address}", tag = "suppressions", params(("address" = String, Path, description = "The address")), responses((status = 200, description = "Why and since when"), (status = 404, description = "Not listed")))]
pub(super) async fn get_suppression(
    AxState(state): AxState<Arc<ApiState>>,
    Path(address): Path<String>,
) -> Result<axum::Json<SuppressionView>, ApiError> {
    let address = crate::policy::suppress::key(&address);
    match state.intake.suppressions.get(&address) {
        Some(entry) => Ok(axum::Json(SuppressionView { address, entry })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{address} is not on the suppression list"),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuppressRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// `PUT /api/v1/suppressions/{address}`, optionally with `{"reason": "..."}`.
#[utoipa::path(put, path = "/api/v1/suppressions/{address}", tag = "suppressions", params(("address" = String, Path, description = "The address")), request_body(content = serde_json::Value, content_type = "application/json", description = "an optional reason"), responses((status = 200, description = "Listed"), (status = 400, description = "Not an address")))]
pub(super) async fn put_suppression(
    AxState(state): AxState<Arc<ApiState>>,
    Path(address): Path<String>,
    body: Bytes,
) -> Result<axum::Json<SuppressionView>, ApiError> {
    let parsed = Address::parse(&address)
        .map_err(|e| ApiError::field("address", format!("not a valid address: {e}")))?;
    let req: SuppressRequest = if body.is_empty() {
        SuppressRequest::default()
    } else {
        super::parse_json(&body)?
    };
    let address = crate::policy::suppress::key(&parsed.to_string());
    let entry = crate::policy::suppress::Suppression {
        added_at: Timestamp::now(),
        reason: req.reason.unwrap_or_else(|| "added by the operator".into()),
        message_id: None,
    };
    state
        .intake
        .suppress(&address, entry.clone())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(axum::Json(SuppressionView { address, entry }))
}

/// `DELETE /api/v1/suppressions/{address}`: 204, or 404 when it was not listed.
#[utoipa::path(delete, path = "/api/v1/suppressions/{address}", tag = "suppressions", params(("address" = String, Path, description = "The address")), responses((status = 204, description = "Removed"), (status = 404, description = "Not listed")))]
pub(super) async fn delete_suppression(
    AxState(state): AxState<Arc<ApiState>>,
    Path(address): Path<String>,
) -> Result<StatusCode, ApiError> {
    let address = crate::policy::suppress::key(&address);
    let removed = state
        .intake
        .unsuppress(&address)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if !removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{address} is not on the suppression list"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
