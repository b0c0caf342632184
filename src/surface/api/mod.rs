//! The HTTP API under `/api/v1/`: inject messages, read a message's recipients and
//! attempts, and the per-domain queue summary. Every error is JSON naming what is wrong
//! (`{"error": "...", "field": "to[1]"}`). Documented in `docs/http-api.md`.

use crate::address::Address;
use crate::engine::ingest::Intake;
use crate::engine::scheduler::DomainSummary;
use crate::message::{Attempt, MessageId, State, new_id};
use crate::time::Timestamp;
use axum::Router;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

pub struct ApiState {
    pub intake: Arc<Intake>,
    /// The event log, which diagnosis reads.
    pub events_path: std::path::PathBuf,
    /// Who may call without a token, and the tokens (never logged).
    pub trusted_networks: Vec<ipnet::IpNet>,
    pub tokens: Vec<String>,
    pub hostname: String,
    pub max_message_size: u64,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(
            "/api/v1/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/api/v1/messages", post(post_message))
        .route("/api/v1/messages/{id}", get(get_message))
        .route("/api/v1/queue", get(get_queue))
        .route("/api/v1/destinations", get(get_destinations))
        .route("/api/v1/diagnose", get(get_diagnose))
        .route("/api/v1/suppressions", get(get_suppressions))
        .route(
            "/api/v1/suppressions/{address}",
            axum::routing::put(put_suppression).delete(delete_suppression),
        )
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
/// check is open to all. Tokens are compared in constant time.
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
    if state.trusted_networks.iter().any(|n| n.contains(&ip))
        || req.uri().path() == "/api/v1/health"
    {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let valid = given.is_some_and(|g| {
        state.tokens.iter().fold(false, |ok, t| {
            ok | bool::from(t.as_bytes().ct_eq(g.as_bytes()))
        })
    });
    if valid {
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

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    fn field(field: impl Into<String>, error: impl Into<String>) -> Self {
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

/// `POST /api/v1/messages`: either `raw` RFC 5322 text, or `subject` and `text`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub from: String,
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    pub id: String,
    pub recipients: Vec<String>,
}

async fn post_message(
    AxState(state): AxState<Arc<ApiState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<SendResponse>), ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        error: e.body_text(),
        field: Some("body".into()),
    })?;
    let req: SendRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(json_error)?;
    let from = Address::parse(&req.from)
        .map_err(|e| ApiError::field("from", format!("not a valid address: {e}")))?;
    if req.to.is_empty() {
        return Err(ApiError::field("to", "at least one recipient is needed"));
    }
    let rcpts = req
        .to
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Address::parse(t).map_err(|e| {
                ApiError::field(format!("to[{i}]"), format!("not a valid address: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let id = new_id();
    let message = match (&req.raw, &req.subject, &req.text) {
        (Some(raw), None, None) => raw_message(raw)?,
        (Some(_), _, _) => {
            return Err(ApiError::field(
                "raw",
                "give either raw or subject and text, not both",
            ));
        }
        (None, Some(subject), Some(text)) => {
            build_message(&state.hostname, id, &from, &rcpts, subject, text)?
        }
        (None, None, _) => {
            return Err(ApiError::field(
                "subject",
                "needed (or give the whole message as raw)",
            ));
        }
        (None, Some(_), None) => {
            return Err(ApiError::field(
                "text",
                "needed (or give the whole message as raw)",
            ));
        }
    };
    if message.len() as u64 > state.max_message_size {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: format!(
                "message is {} bytes; the limit is {}",
                message.len(),
                state.max_message_size
            ),
            field: Some(if req.raw.is_some() { "raw" } else { "text" }.into()),
        });
    }
    let stored = state
        .intake
        .accept(id, from.to_string(), &rcpts, message, "http".into())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not store a message from the API");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the spool could not store the message (disk full or a write error); nothing was accepted, try again",
            )
        })?;
    let recipients = stored
        .groups
        .iter()
        .flat_map(|g| g.recipients.iter().map(|r| r.address.clone()))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(SendResponse {
            id: id.to_string(),
            recipients,
        }),
    ))
}

/// Names the field serde complained about, where there is one.
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    // A missing field has no path of its own: serde names it only in its message.
    let text = inner.to_string();
    let named = ["from", "to", "raw", "subject", "text"]
        .into_iter()
        .find(|f| text.starts_with(&format!("missing field `{f}`")));
    match (inner.classify(), named) {
        (_, Some(field)) => ApiError::field(field, format!("invalid request: {inner}")),
        (serde_json::error::Category::Data, _) if path != "." => {
            ApiError::field(path, format!("invalid request: {inner}"))
        }
        _ => ApiError::field("body", format!("invalid JSON: {inner}")),
    }
}

fn raw_message(raw: &str) -> Result<Bytes, ApiError> {
    let has_headers = raw.lines().next().is_some_and(|l| {
        l.split_once(':')
            .is_some_and(|(name, _)| !name.is_empty() && !name.contains(' '))
    });
    if !has_headers {
        return Err(ApiError::field(
            "raw",
            "not an RFC 5322 message: it must start with a header field",
        ));
    }
    // Normalise line endings to CRLF, as SMTP carries them.
    let mut out = String::with_capacity(raw.len() + raw.len() / 40);
    for line in raw.split_inclusive('\n') {
        out.push_str(line.trim_end_matches(['\r', '\n']));
        out.push_str("\r\n");
    }
    Ok(out.into())
}

fn build_message(
    hostname: &str,
    id: MessageId,
    from: &Address,
    to: &[Address],
    subject: &str,
    text: &str,
) -> Result<Bytes, ApiError> {
    mail_builder::MessageBuilder::new()
        .from(from.to_string())
        .to(to.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .subject(subject)
        .message_id(format!("{id}@{hostname}"))
        .text_body(text)
        .write_to_vec()
        .map(Bytes::from)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("building the message: {e}"),
            )
        })
}

/// `GET /api/v1/messages/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub from: String,
    pub received_at: Timestamp,
    pub size: u64,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<Timestamp>,
    pub recipients: Vec<RecipientView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecipientView {
    pub address: String,
    pub domain: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Timestamp>,
    pub attempts: Vec<Attempt>,
}

async fn get_message(
    AxState(state): AxState<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<MessageView>, ApiError> {
    let id: MessageId = id
        .parse()
        .map_err(|_| ApiError::field("id", format!("{id:?} is not a message id")))?;
    let record = state
        .intake
        .spool
        .record(id)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let Some((envelope, groups)) = record else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no message {id} (never accepted, or finished and purged)"),
        ));
    };
    let recipients = groups
        .into_iter()
        .flat_map(|g| {
            let next = g.next_attempt;
            let domain = g.domain;
            g.recipients.into_iter().map(move |r| RecipientView {
                next_attempt: if r.state.is_final() { None } else { next },
                address: r.address,
                domain: domain.clone(),
                state: r.state,
                attempts: r.attempts,
            })
        })
        .collect();
    Ok(axum::Json(MessageView {
        id: envelope.id.to_string(),
        from: envelope.from,
        received_at: envelope.received_at,
        size: envelope.size,
        source: envelope.source,
        done_at: envelope.done_at,
        recipients,
    }))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueView {
    pub domains: Vec<DomainSummary>,
}

async fn get_queue(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<QueueView> {
    axum::Json(QueueView {
        domains: state.intake.scheduler.summary().await,
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DestinationsView {
    pub destinations: Vec<crate::engine::scheduler::DestinationView>,
}

async fn get_destinations(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<DestinationsView> {
    axum::Json(DestinationsView {
        destinations: state.intake.scheduler.destinations().await,
    })
}

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

async fn get_suppressions(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<SuppressionsView> {
    let suppressions = state
        .intake
        .suppressions
        .list()
        .into_iter()
        .map(|(address, entry)| SuppressionView { address, entry })
        .collect();
    axum::Json(SuppressionsView { suppressions })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// `PUT /api/v1/suppressions/{address}`, optionally with `{"reason": "..."}`.
async fn put_suppression(
    AxState(state): AxState<Arc<ApiState>>,
    Path(address): Path<String>,
    body: Bytes,
) -> Result<axum::Json<SuppressionView>, ApiError> {
    let parsed = Address::parse(&address)
        .map_err(|e| ApiError::field("address", format!("not a valid address: {e}")))?;
    let req: SuppressRequest = if body.is_empty() {
        SuppressRequest::default()
    } else {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(json_error)?
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
async fn delete_suppression(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiagnoseQuery {
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
async fn get_diagnose(
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
    let records =
        tokio::task::spawn_blocking(move || crate::surface::diagnose::read_events(&path, since))
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
