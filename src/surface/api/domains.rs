//! `/api/v1/domains`: the sending domains knock signs for, and the checks of `knock
//! check-domain` on any domain (its DNS asked as the command asks it, with the running
//! configuration's sources and keys).

use super::{ApiError, ApiState};
use crate::surface::check_domain::{Check, Status};
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A domain mail is signed for, with its selectors.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendingDomain {
    pub domain: String,
    pub selectors: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DomainsView {
    pub domains: Vec<SendingDomain>,
}

/// The sending domains of `config`: each `[[dkim]]` key's signing domain (its `domain`,
/// or `signing_domain` for a platform's `"*"` key), with its selectors, in name order.
pub fn sending_domains(config: &crate::config::Config) -> Vec<SendingDomain> {
    let mut by: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for k in &config.dkim {
        let domain = k.signing_domain.as_deref().unwrap_or(&k.domain);
        if domain == "*" {
            continue;
        }
        let selectors = by.entry(domain.to_ascii_lowercase()).or_default();
        if !selectors.contains(&k.selector) {
            selectors.push(k.selector.clone());
        }
    }
    by.into_iter()
        .map(|(domain, selectors)| SendingDomain { domain, selectors })
        .collect()
}

/// `GET /api/v1/domains`.
#[utoipa::path(get, path = "/api/v1/domains", tag = "domains", responses((status = 200, description = "The domains knock signs mail for ([[dkim]]), with their selectors")))]
pub(super) async fn get_domains(AxState(state): AxState<Arc<ApiState>>) -> axum::Json<DomainsView> {
    let config = state.reloader.config().await;
    axum::Json(DomainsView {
        domains: sending_domains(&config),
    })
}

#[derive(Debug, Serialize)]
pub struct CheckView {
    pub domain: String,
    pub errors: usize,
    pub warnings: usize,
    pub checks: Vec<Check>,
}

/// `GET /api/v1/domains/{domain}/check`: what `knock check-domain DOMAIN --json` says.
#[utoipa::path(get, path = "/api/v1/domains/{domain}/check", tag = "domains", params(("domain" = String, Path, description = "Any domain; the sending domains are those of GET /api/v1/domains")), responses((status = 200, description = "MX, SPF per source, DKIM per key, DMARC and reverse DNS per source: ok, warning or error, with what to fix"), (status = 400, description = "Not a domain"), (status = 503, description = "No resolver could be set up")))]
pub(super) async fn get_check(
    AxState(state): AxState<Arc<ApiState>>,
    Path(domain): Path<String>,
) -> Result<axum::Json<CheckView>, ApiError> {
    if crate::address::check_domain(domain.trim_end_matches('.')).is_err()
        || domain.starts_with('[')
    {
        return Err(ApiError::field(
            "domain",
            format!("{domain:?} is not a domain name"),
        ));
    }
    let config = state.reloader.config().await;
    let checks = crate::surface::check_domain::run(&config, &domain)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    Ok(axum::Json(CheckView {
        domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        errors: count(Status::Error),
        warnings: count(Status::Warning),
        checks,
    }))
}
