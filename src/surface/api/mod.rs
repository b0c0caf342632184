//! The HTTP API under `/api/v1/`, one module per resource: [`messages`] (inject, read
//! back, the stored message), [`listing`] (the queue listed and searched), [`queue`] (per
//! domain, per destination, and its shape), [`suppressions`], [`diagnose`], [`stats`] (the
//! deferral time series), [`domains`] (the sending domains and their DNS checks). Here:
//! the router, the bearer-token check, and the one error type: every error is JSON naming
//! what is wrong (`{"error": "...", "field": "to[1]"}`). Documented in `docs/http-api.md`.

pub mod diagnose;
pub mod domains;
pub mod listing;
pub mod messages;
pub mod metrics;
pub mod queue;
pub mod stats;
pub mod steer;
pub mod suppressions;

use crate::engine::ingest::Intake;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;

pub use diagnose::DiagnoseView;
pub use listing::{ListView, ListedMessage, ListedRecipient};
pub use messages::{MessageView, RecipientView, SendRequest, SendResponse};
pub use queue::{DestinationsView, QueueView};
pub use suppressions::{SuppressionView, SuppressionsView};

pub struct ApiState {
    pub intake: Arc<Intake>,
    pub operator: Arc<crate::engine::operator::Operator>,
    /// Moves queued mail to another MTA (`POST /api/v1/drain`).
    pub drainer: Arc<crate::engine::drain::Drainer>,
    /// The event log, which diagnosis reads.
    pub events_path: std::path::PathBuf,
    /// Who may call without a token, and the tokens (never logged); a reload replaces
    /// them.
    pub access: Arc<std::sync::RwLock<crate::config::Access>>,
    /// Reloads the configuration (`POST /api/v1/reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    pub hostname: String,
    /// The stream of a message posted without one (`[http] stream`).
    pub stream: String,
    pub max_message_size: u64,
    /// The spool's database file, whose size `/metrics` reports.
    pub spool_file: std::path::PathBuf,
    pub scraped: metrics::Scraped,
    /// The provider table, to tell a provider's name from a typo.
    pub providers: crate::policy::provider::Providers,
    /// The time series' counts not yet in the spool.
    pub stats: Arc<crate::stats::Stats>,
    /// The fleet as this node sees it (`[cluster]`); `None` alone.
    pub fleet: Option<crate::engine::fleet::Shared>,
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

/// The OpenAPI document's frame; the paths come from the handlers as they are routed.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "knock",
        description = "The HTTP API of knock, an outbound mail delivery engine (docs/http-api.md).",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Declares the bearer token every call but the health check needs from outside the
/// trusted networks.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `POST /api/v1/reload`: reads the configuration file again and applies what can change
/// without a restart (as SIGHUP does); a bad file is refused and the running
/// configuration kept.
#[utoipa::path(post, path = "/api/v1/reload", tag = "health", responses((status = 200, description = "What was applied, and what needs a restart"), (status = 400, description = "The file is not valid: nothing changed"), (status = 409, description = "knock runs without a config file")))]
async fn post_reload(
    AxState(state): AxState<Arc<ApiState>>,
    axum::Extension(Actor(actor)): axum::Extension<Actor>,
) -> Result<axum::Json<crate::reload::Reloaded>, ApiError> {
    tracing::info!(actor, "reload asked over the API");
    match state.reloader.reload().await {
        Ok(r) => Ok(axum::Json(r)),
        Err(crate::reload::ReloadError::NoFile) => Err(ApiError::new(
            StatusCode::CONFLICT,
            crate::reload::ReloadError::NoFile.to_string(),
        )),
        Err(crate::reload::ReloadError::Invalid(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{e:#}; the running configuration is kept"),
        )),
    }
}

/// `GET /api/v1/health`: answers while the engine runs; needs no token. In a fleet it says
/// whether Redis answers (`"redis": "down"` while this node delivers on its last share).
#[utoipa::path(get, path = "/api/v1/health", tag = "health", security(()), responses((status = 200, description = "The engine runs")))]
async fn get_health(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<serde_json::Value> {
    match &state.fleet {
        None => axum::Json(json!({"status": "ok"})),
        Some(fleet) => {
            let v = fleet.read().expect("fleet view");
            let redis = if v.redis_up { "up" } else { "down" };
            axum::Json(json!({"status": "ok", "redis": redis, "share": v.share}))
        }
    }
}

/// `GET /api/v1/fleet`: this node, the nodes alive, whether Redis answers, and how many
/// nodes share each limit. 404 when knock runs alone (no `[cluster] redis`).
#[utoipa::path(get, path = "/api/v1/fleet", tag = "health", responses((status = 200, description = "The fleet as this node sees it"), (status = 404, description = "Not in a fleet")))]
async fn get_fleet(
    AxState(state): AxState<Arc<ApiState>>,
) -> Result<axum::Json<crate::engine::fleet::FleetView>, ApiError> {
    match &state.fleet {
        Some(fleet) => Ok(axum::Json(fleet.read().expect("fleet view").clone())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "knock runs alone here: no [cluster] redis",
        )),
    }
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", responses((status = 200, description = "This document")))]
async fn get_openapi(
    AxState(doc): AxState<Arc<utoipa::openapi::OpenApi>>,
) -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json((*doc).clone())
}

/// Every route with its OpenAPI entry: routes are only ever added here, through
/// `routes!`, so none can lack an entry and no entry can lack a route.
fn routes() -> (Router<Arc<ApiState>>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_health))
        .routes(routes!(get_fleet))
        .routes(routes!(crate::surface::dashboard::get_index))
        .routes(routes!(crate::surface::dashboard::get_asset))
        .routes(routes!(post_reload))
        .routes(routes!(metrics::get_metrics))
        .routes(routes!(messages::post_message, listing::get_messages))
        .routes(routes!(messages::get_message))
        .routes(routes!(messages::get_raw))
        .routes(routes!(queue::get_queue))
        .routes(routes!(queue::get_shape))
        .routes(routes!(queue::get_destinations))
        .routes(routes!(diagnose::get_diagnose))
        .routes(routes!(domains::get_domains))
        .routes(routes!(domains::get_check))
        .routes(routes!(stats::get_stats))
        .routes(routes!(suppressions::get_suppressions))
        .routes(routes!(
            suppressions::get_suppression,
            suppressions::put_suppression,
            suppressions::delete_suppression
        ))
        .routes(routes!(steer::get_suspensions_in_force))
        .routes(routes!(steer::post_suspend))
        .routes(routes!(steer::post_resume))
        .routes(routes!(steer::post_hold))
        .routes(routes!(steer::post_release))
        .routes(routes!(steer::post_hold_many))
        .routes(routes!(steer::post_release_many))
        .routes(routes!(steer::post_retry))
        .routes(routes!(steer::post_cancel))
        .routes(routes!(steer::post_bounce))
        .routes(routes!(steer::post_drain))
        .split_for_parts()
}

/// The API's OpenAPI document (what `GET /api/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes();
    add_openapi_path(&mut doc);
    doc
}

/// The document's own route is served from the document, so it is added to it by hand.
fn add_openapi_path(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::Path as _;
    let path = __path_get_openapi::path();
    let item = utoipa::openapi::PathItem::new(
        utoipa::openapi::HttpMethod::Get,
        __path_get_openapi::operation(),
    );
    doc.paths.paths.insert(path, item);
}

pub fn router(state: Arc<ApiState>) -> Router {
    let (api, mut doc) = routes();
    add_openapi_path(&mut doc);
    let doc = Router::new()
        .route("/api/v1/openapi.json", get(get_openapi))
        .with_state(Arc::new(doc));
    api.merge(doc.with_state(()))
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
    let (matched, trusted) = {
        let access = state.access.read().expect("access lock");
        // Every token is compared, whichever matches, so the time says nothing of which.
        let matched = given.and_then(|g| {
            access.tokens.iter().fold(None, |found, t| {
                let equal = bool::from(t.token.as_bytes().ct_eq(g.as_bytes()));
                if equal { Some(t.name.clone()) } else { found }
            })
        });
        let trusted = access.trusted_networks.iter().any(|n| n.contains(&ip));
        (matched, trusted)
    };
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

#[cfg(test)]
mod tests {
    /// Routes are added through `routes!` only (each with its OpenAPI entry); the one
    /// exception is the document's own route, which `add_openapi_path` documents.
    #[test]
    fn every_route_is_added_with_its_openapi_entry() {
        let source = include_str!("mod.rs");
        let plain = concat!(".rou", "te(\"");
        let routed: Vec<&str> = source.lines().filter(|l| l.contains(plain)).collect();
        assert_eq!(
            routed.len(),
            1,
            "routes added without an OpenAPI entry: {routed:?}"
        );
        assert!(routed[0].contains("/api/v1/openapi.json"));
        let doc = super::openapi();
        assert!(doc.paths.paths.contains_key("/api/v1/openapi.json"));
        assert!(doc.paths.paths.contains_key("/api/v1/messages/{id}/hold"));
    }
}
