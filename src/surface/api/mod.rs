//! The HTTP API under `/api/v1/`, one module per resource: [`messages`] (inject, read
//! back, the stored message), [`listing`] (the queue listed and searched), [`queue`] (per
//! domain, per destination, and its shape), [`suppressions`], [`diagnose`]. Here:
//! the router, the bearer-token check, and the one error type: every error is JSON naming
//! what is wrong (`{"error": "...", "field": "to[1]"}`). Documented in `docs/http-api.md`.

pub mod diagnose;
pub mod listing;
pub mod messages;
pub mod metrics;
pub mod queue;
pub mod steer;
pub mod suppressions;

use crate::engine::ingest::Intake;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use diagnose::get_diagnose;
use listing::get_messages;
use messages::{get_message, get_raw, post_message};
use queue::{get_destinations, get_queue, get_shape};
use serde_json::json;
use std::sync::Arc;
use suppressions::{delete_suppression, get_suppression, get_suppressions, put_suppression};

pub use diagnose::DiagnoseView;
pub use listing::{ListView, ListedMessage, ListedRecipient};
pub use messages::{MessageView, RecipientView, SendRequest, SendResponse};
pub use queue::{DestinationsView, QueueView};
pub use suppressions::{SuppressionView, SuppressionsView};

pub struct ApiState {
    pub intake: Arc<Intake>,
    pub operator: Arc<crate::engine::operator::Operator>,
    /// The event log, which diagnosis reads.
    pub events_path: std::path::PathBuf,
    /// Who may call without a token, and the tokens (never logged).
    pub trusted_networks: Vec<ipnet::IpNet>,
    pub tokens: Vec<crate::config::NamedToken>,
    pub hostname: String,
    pub max_message_size: u64,
    /// The spool's database file, whose size `/metrics` reports.
    pub spool_file: std::path::PathBuf,
    pub scraped: metrics::Scraped,
    /// The provider table, to tell a provider's name from a typo.
    pub providers: crate::policy::provider::Providers,
}

impl ApiState {
    /// Whether `name` is a provider: one of the table, or one knock has met (a domain's
    /// own MX hosts make a provider of their own).
    pub async fn provider_known(&self, name: &str) -> bool {
        self.providers.is_named(name)
            || self
                .intake
                .scheduler
                .destinations()
                .await
                .iter()
                .any(|d| d.destination == name)
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(
            "/api/v1/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics::get_metrics))
        .route("/api/v1/messages", post(post_message).get(get_messages))
        .route("/api/v1/messages/{id}", get(get_message))
        .route("/api/v1/messages/{id}/raw", get(get_raw))
        .route("/api/v1/queue", get(get_queue))
        .route("/api/v1/queue/shape", get(get_shape))
        .route("/api/v1/destinations", get(get_destinations))
        .route("/api/v1/diagnose", get(get_diagnose))
        .route("/api/v1/suppressions", get(get_suppressions))
        .route("/api/v1/suspensions", get(steer::get_suspensions_in_force))
        .route("/api/v1/suspend", post(steer::post_suspend))
        .route("/api/v1/resume", post(steer::post_resume))
        .route("/api/v1/messages/{id}/hold", post(steer::post_hold))
        .route("/api/v1/messages/{id}/release", post(steer::post_release))
        .route("/api/v1/retry", post(steer::post_retry))
        .route("/api/v1/cancel", post(steer::post_cancel))
        .route("/api/v1/bounce", post(steer::post_bounce))
        .route(
            "/api/v1/suppressions/{address}",
            get(get_suppression)
                .put(put_suppression)
                .delete(delete_suppression),
        )
        .merge(crate::surface::dashboard::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        // Room for the largest message as a JSON string (escaping can double it).
        .layer(axum::extract::DefaultBodyLimit::max(
            2 * state.max_message_size as usize + 64 * 1024,
        ))
        .with_state(state)
}

/// Clients outside the trusted networks need `Authorization: Bearer <token>`; the health
/// check and the dashboard's page and files (which hold no data: the page asks the API,
/// with the token its user typed) are open to all. Tokens are compared in constant time.
async fn authorize(
    AxState(state): AxState<Arc<ApiState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use subtle::ConstantTimeEq;
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(peer.ip()),
        v4 => v4,
    };
    let mut req = req;
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Every token is compared, whichever matches, so the time says nothing of which.
    let matched = given.and_then(|g| {
        state.tokens.iter().fold(None, |found, t| {
            let equal = bool::from(t.token.as_bytes().ct_eq(g.as_bytes()));
            if equal { Some(t.name.clone()) } else { found }
        })
    });
    let trusted = state.trusted_networks.iter().any(|n| n.contains(&ip));
    let actor = match (&matched, trusted) {
        (Some(name), _) => Some(name.clone()),
        (None, true) => Some("trusted".to_string()),
        (None, false) => None,
    };
    if let Some(actor) = actor {
        req.extensions_mut().insert(Actor(actor));
        return next.run(req).await;
    }
    let path = req.uri().path();
    if path == "/api/v1/health" || crate::surface::dashboard::is_page(path) {
        return next.run(req).await;
    }
    let error = if given.is_some() {
        "the bearer token is not valid"
    } else {
        "a bearer token is needed from this address"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, error).into_response();
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Who is calling: the name of the token they sent, or `trusted` for a caller from a
/// trusted network without one. Operator actions are recorded under it.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    pub fn field(field: impl Into<String>, error: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            field: Some(field.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(field) => json!({"error": self.error, "field": field}),
            None => json!({"error": self.error}),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// Reads a JSON body into `T`, naming the field serde could not take: the path it was at
/// (`to[1]`, or an unknown key such as `cc`), else the body as a whole. Required fields are
/// `Option`s in `T` and checked by the caller, so that no error message is ever parsed.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => {
                ApiError::field(path, format!("invalid request: {inner}"))
            }
            _ => ApiError::field("body", format!("invalid JSON: {inner}")),
        }
    })
}

/// A query string's parameters by name, for handlers that name the parameter in their
/// errors: each may be given once, and only those in `known` (else 400 naming it).
pub fn query_params(
    pairs: Vec<(String, String)>,
    known: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut params = std::collections::BTreeMap::new();
    for (name, value) in pairs {
        if !known.contains(&name.as_str()) {
            return Err(ApiError::field(
                name,
                format!("unknown parameter; the parameters are {}", known.join(", ")),
            ));
        }
        if params.contains_key(&name) {
            return Err(ApiError::field(name, "given more than once"));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// The section of `docs/http-api.md` on an endpoint: from its heading (`## \`GET /api/v1/…`)
/// to the next, for tests that keep the doc's examples true.
#[cfg(test)]
pub(crate) fn doc_section(heading: &str) -> &'static str {
    let doc = include_str!("../../../docs/http-api.md");
    let start = doc
        .find(&format!("\n## `{heading}"))
        .unwrap_or_else(|| panic!("http-api.md has no section {heading}"));
    let end = doc[start + 1..]
        .find("\n## ")
        .map_or(doc.len(), |e| start + 1 + e);
    &doc[start..end]
}
