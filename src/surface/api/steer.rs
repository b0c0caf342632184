//! The operator's actions on the queue: suspend and resume a provider or a domain, hold and
//! release a message, retry now, cancel, bounce. Bulk actions take a filter (`messages`,
//! `domain`, `provider`, or `all: true`) and a `dry_run` that answers how many recipients
//! they would touch without touching them. Every action is recorded under the caller's
//! token name ([`Actor`]).

use super::messages::resolve;
use super::{Actor, ApiError, ApiState, parse_json};
use crate::control::{Ending, Selector, Steered, Suspension, Target};
use crate::engine::operator::OperatorError;
use axum::Extension;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What an action touched, or would have with `dry_run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SteerView {
    pub dry_run: bool,
    #[serde(flatten)]
    pub steered: Steered,
}

/// A provider or a domain, as a body names it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendRequest {
    provider: Option<String>,
    domain: Option<String>,
    stream: Option<String>,
    reason: Option<String>,
}

/// A filter over the queue, as a body gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterRequest {
    #[serde(default)]
    messages: Vec<String>,
    domain: Option<String>,
    provider: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
    /// Bounce only: send the sender a DSN (the default).
    dsn: Option<bool>,
    /// Hold only: why, for whoever looks at the queue later.
    reason: Option<String>,
}

impl FilterRequest {
    /// Refuses the keys the action does not take: `dsn` (a bounce's) and `reason` (a
    /// hold's).
    fn takes(&self, dsn: bool, reason: bool) -> Result<(), ApiError> {
        if self.dsn.is_some() && !dsn {
            return Err(ApiError::field("dsn", "only a bounce takes dsn"));
        }
        if self.reason.is_some() && !reason {
            return Err(ApiError::field("reason", "only a hold takes a reason"));
        }
        Ok(())
    }
}

/// One suspension, for `GET /api/v1/suspensions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SuspensionView {
    #[serde(flatten)]
    pub target: Target,
    #[serde(flatten)]
    pub suspension: Suspension,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SuspensionsView {
    pub suspensions: Vec<SuspensionView>,
}

/// The answer to an action.
fn done(steered: Steered, dry_run: bool) -> axum::Json<SteerView> {
    axum::Json(SteerView { dry_run, steered })
}

/// A domain as a body gives it, as knock keeps domains: lowercase, without a final dot.
fn domain_name(text: &str) -> String {
    text.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn operator_error(e: OperatorError) -> ApiError {
    let status = match &e {
        OperatorError::NotQueued(_) | OperatorError::NotSuspended(_) => StatusCode::NOT_FOUND,
        OperatorError::AlreadySuspended(_) => StatusCode::CONFLICT,
        OperatorError::Spool(_) => StatusCode::INSUFFICIENT_STORAGE,
        OperatorError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

/// The provider, domain or stream a suspend or resume body names (exactly one of them).
fn target(r: &SuspendRequest) -> Result<Target, ApiError> {
    if let Some(s) = &r.stream {
        if r.provider.is_some() || r.domain.is_some() {
            return Err(ApiError::field(
                "stream",
                "give a provider, a domain or a stream, one of them",
            ));
        }
        return Ok(Target::Stream(s.trim().to_string()));
    }
    match (&r.provider, &r.domain) {
        (Some(p), None) => {
            let p = p.trim();
            if p.is_empty() {
                return Err(ApiError::field("provider", "must not be empty"));
            }
            Ok(Target::Provider(p.to_string()))
        }
        (None, Some(d)) => {
            let d = domain_name(d);
            if d.is_empty() || !d.contains('.') {
                return Err(ApiError::field(
                    "domain",
                    format!("{d:?} is not a domain name"),
                ));
            }
            Ok(Target::Domain(d))
        }
        (Some(_), Some(_)) => Err(ApiError::field(
            "provider",
            "give a provider or a domain, not both",
        )),
        (None, None) => Err(ApiError::field(
            "provider",
            "give the provider, the domain or the stream to suspend",
        )),
    }
}

/// `POST /api/v1/suspend`: `{"provider": "google"}` or `{"domain": "example.com"}`, with an
/// optional `reason`. Its mail stays queued (and still expires); nothing is sent to it until
/// it is resumed.
#[utoipa::path(post, path = "/api/v1/suspend", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "provider, domain or stream, and an optional reason"), responses((status = 200, description = "Suspended: what it holds back"), (status = 400, description = "A bad field"), (status = 409, description = "Suspended already")))]
pub(super) async fn post_suspend(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: SuspendRequest = parse_json(&body)?;
    let target = target(&r)?;
    if let Target::Provider(p) = &target
        && !state.provider_known(p).await
    {
        return Err(ApiError::field(
            "provider",
            format!("no provider is named {p:?} (see GET /api/v1/destinations)"),
        ));
    }
    if let Target::Stream(s) = &target
        && state.intake.streams.get(s).is_none()
    {
        return Err(ApiError::field(
            "stream",
            format!(
                "no stream is named {s:?} (the streams are {})",
                state.intake.streams.names().join(", ")
            ),
        ));
    }
    let reason = r
        .reason
        .unwrap_or_else(|| "suspended by the operator".into());
    let steered = state
        .operator
        .suspend(target, reason, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, false))
}

/// `POST /api/v1/resume`: ends a suspension; its mail goes at the destination's pace.
#[utoipa::path(post, path = "/api/v1/resume", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "provider, domain or stream"), responses((status = 200, description = "Resumed: what goes again"), (status = 404, description = "Not suspended")))]
pub(super) async fn post_resume(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: SuspendRequest = parse_json(&body)?;
    if r.reason.is_some() {
        return Err(ApiError::field("reason", "a resume takes no reason"));
    }
    let target = target(&r)?;
    let steered = state
        .operator
        .resume(target, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, false))
}

/// `GET /api/v1/suspensions`: what is suspended or held, why, since when and by whom.
#[utoipa::path(get, path = "/api/v1/suspensions", tag = "steering", responses((status = 200, description = "What is suspended or held, why, since when and by whom")))]
pub(super) async fn get_suspensions_in_force(
    AxState(state): AxState<Arc<ApiState>>,
) -> axum::Json<SuspensionsView> {
    let suspensions = state
        .operator
        .suspensions()
        .await
        .into_iter()
        .map(|(target, suspension)| SuspensionView { target, suspension })
        .collect();
    axum::Json(SuspensionsView { suspensions })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    reason: Option<String>,
}

/// `POST /api/v1/messages/{id}/hold`: the message stays queued and is not tried.
#[utoipa::path(post, path = "/api/v1/messages/{id}/hold", tag = "steering", params(("id" = String, Path, description = "A message id, or the start of one no other message on record shares")), request_body(content = serde_json::Value, content_type = "application/json", description = "an optional reason"), responses((status = 200, description = "Held"), (status = 404, description = "Nothing of it is pending"), (status = 409, description = "Held already, or several messages have ids starting so")))]
pub(super) async fn post_hold(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: HoldRequest = match body.is_empty() {
        true => HoldRequest::default(),
        false => parse_json(&body)?,
    };
    let id = resolve(&state, &id).await?;
    let reason = r.reason.unwrap_or_else(|| "held by the operator".into());
    let steered = state
        .operator
        .suspend(Target::Message(id), reason, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, false))
}

/// `POST /api/v1/messages/{id}/release`: a held message is tried again.
#[utoipa::path(post, path = "/api/v1/messages/{id}/release", tag = "steering", params(("id" = String, Path, description = "A message id, or the start of one no other message on record shares")), responses((status = 200, description = "Released"), (status = 404, description = "Not held")))]
pub(super) async fn post_release(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<axum::Json<SteerView>, ApiError> {
    let id = resolve(&state, &id).await?;
    let steered = state
        .operator
        .resume(Target::Message(id), &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, false))
}

/// The selector a filter body gives: message ids (or their starts), domain, provider, or
/// `all: true`; an empty filter is refused, so that nothing is done to everything by
/// mistake.
async fn selector(state: &ApiState, r: &FilterRequest) -> Result<Selector, ApiError> {
    let mut messages = Vec::new();
    for (i, text) in r.messages.iter().enumerate() {
        let id = resolve(state, text).await.map_err(|e| ApiError {
            field: Some(format!("messages[{i}]")),
            ..e
        })?;
        messages.push(id);
    }
    let domain = r.domain.as_deref().map(domain_name);
    let selector = Selector {
        messages,
        domain,
        provider: r.provider.as_deref().map(|p| p.trim().to_string()),
    };
    match (selector.is_empty(), r.all) {
        (true, false) => Err(ApiError::field(
            "messages",
            "give a filter (messages, domain, provider) or \"all\": true",
        )),
        (false, true) => Err(ApiError::field(
            "all",
            "\"all\": true takes no other filter",
        )),
        _ => Ok(selector),
    }
}

/// `POST /api/v1/retry`: the selected mail is due now, released at each destination's
/// pace; greylisted mail keeps its time (the answer says how many, and until when).
#[utoipa::path(post, path = "/api/v1/retry", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "a filter (messages, domain, provider, or all) and dry_run"), responses((status = 200, description = "What is due now, or would be"), (status = 400, description = "No filter, or a bad one")))]
pub(super) async fn post_retry(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: FilterRequest = parse_json(&body)?;
    r.takes(false, false)?;
    let selector = selector(&state, &r).await?;
    let steered = state
        .operator
        .retry(selector, r.dry_run, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, r.dry_run))
}

/// `POST /api/v1/hold`: every message with mail the filter picks is held (those held
/// already stay as they are); a dry run counts them.
#[utoipa::path(post, path = "/api/v1/hold", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "a filter (messages, domain, provider, or all), reason and dry_run"), responses((status = 200, description = "What was held, or would be"), (status = 400, description = "No filter, or a bad one")))]
pub(super) async fn post_hold_many(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: FilterRequest = parse_json(&body)?;
    r.takes(false, true)?;
    let selector = selector(&state, &r).await?;
    let reason = r
        .reason
        .clone()
        .unwrap_or_else(|| "held by the operator".into());
    let steered = state
        .operator
        .hold_many(selector, r.dry_run, reason, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, r.dry_run))
}

/// `POST /api/v1/release`: every held message the filter picks is released; a dry run
/// counts them.
#[utoipa::path(post, path = "/api/v1/release", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "a filter (messages, domain, provider, or all) and dry_run"), responses((status = 200, description = "What was released, or would be"), (status = 400, description = "No filter, or a bad one")))]
pub(super) async fn post_release_many(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: FilterRequest = parse_json(&body)?;
    r.takes(false, false)?;
    let selector = selector(&state, &r).await?;
    let steered = state
        .operator
        .release_many(selector, r.dry_run, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, r.dry_run))
}

/// `POST /api/v1/cancel`: the selected recipients leave the queue (`cancelled`), without a
/// DSN.
#[utoipa::path(post, path = "/api/v1/cancel", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "a filter (messages, domain, provider, or all) and dry_run"), responses((status = 200, description = "What was cancelled, or would be"), (status = 400, description = "No filter, or a bad one")))]
pub(super) async fn post_cancel(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: FilterRequest = parse_json(&body)?;
    if r.dsn.is_some() {
        return Err(ApiError::field(
            "dsn",
            "a cancel sends no DSN; bounce to send one",
        ));
    }
    end(state, actor, r, Ending::Cancel).await
}

/// `POST /api/v1/bounce`: the selected recipients are bounced (`bounced`), with a DSN to
/// the sender unless `"dsn": false`.
#[utoipa::path(post, path = "/api/v1/bounce", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "a filter (messages, domain, provider, or all), dsn and dry_run"), responses((status = 200, description = "What was bounced, or would be"), (status = 400, description = "No filter, or a bad one")))]
pub(super) async fn post_bounce(
    AxState(state): AxState<Arc<ApiState>>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<axum::Json<SteerView>, ApiError> {
    let r: FilterRequest = parse_json(&body)?;
    let how = Ending::Bounce {
        dsn: r.dsn.unwrap_or(true),
    };
    end(state, actor, r, how).await
}

async fn end(
    state: Arc<ApiState>,
    actor: String,
    r: FilterRequest,
    how: Ending,
) -> Result<axum::Json<SteerView>, ApiError> {
    r.takes(matches!(how, Ending::Bounce { .. }), false)?;
    let selector = selector(&state, &r).await?;
    let steered = state
        .operator
        .end(selector, how, r.dry_run, &actor)
        .await
        .map_err(operator_error)?;
    Ok(done(steered, r.dry_run))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainRequest {
    to: Option<String>,
    limit: Option<usize>,
}

/// `POST /api/v1/drain` with `{"to": "host:port", "limit": 100}`: moves up to `limit`
/// queued messages (100 unless given, at most 1,000) to another MTA, each whole in one
/// transaction; cancelled here (`cancelled`, actor `drain to …`) once it took the data,
/// kept when it refused any recipient. Call again until `left` is 0.
#[utoipa::path(post, path = "/api/v1/drain", tag = "steering", request_body(content = serde_json::Value, content_type = "application/json", description = "to (host:port), and an optional limit"), responses((status = 200, description = "What moved, what stayed and why, and how many are left"), (status = 400, description = "A bad field")))]
pub(super) async fn post_drain(
    AxState(state): AxState<Arc<ApiState>>,
    body: Bytes,
) -> Result<axum::Json<crate::engine::drain::Drained>, ApiError> {
    let req: DrainRequest = super::parse_json(&body)?;
    let to = req
        .to
        .ok_or_else(|| ApiError::field("to", "missing: the host:port to move the mail to"))?;
    let addr: std::net::SocketAddr = tokio::net::lookup_host(to.as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ApiError::field("to", format!("{to:?} is not a host:port that resolves")))?;
    let limit = req.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "from 1 to 1000"));
    }
    let drained = state
        .drainer
        .round(addr, limit)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(axum::Json(drained))
}
