//! The HTTP client behind `knock send`, `knock queue` and `knock diagnose`: finds the
//! engine (`--api`, `--config`, `KNOCK_API`, or the embedded default, in that order) and
//! calls the API. Formatting for people is the CLI's (`surface::cli::format`).

use crate::config::{Config, DEFAULT_HTTP_LISTEN};
use crate::surface::api::{MessageView, QueueView, SendRequest, SendResponse};
use anyhow::{Context, bail};
use std::path::Path;
use std::time::Duration;

/// The API's base URL from the flag, else the config file's `[http] listen`, else the
/// `KNOCK_API` environment variable, else the embedded default.
pub fn api_base(flag: Option<&str>, config: Option<&Path>) -> anyhow::Result<String> {
    if let Some(url) = flag {
        return Ok(url.trim_end_matches('/').to_string());
    }
    if let Some(path) = config {
        let listen = Config::load(path)?.http.listen;
        return Ok(format!("http://{listen}"));
    }
    if let Ok(url) = std::env::var("KNOCK_API")
        && !url.is_empty()
    {
        return Ok(url.trim_end_matches('/').to_string());
    }
    Ok(format!("http://{DEFAULT_HTTP_LISTEN}"))
}

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the API at `base`, sending `token` as a bearer token when given.
    pub fn new(base: String, token: Option<&str>) -> anyhow::Result<ApiClient> {
        crate::install_crypto_provider();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the API token has characters a header cannot carry")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()?;
        Ok(ApiClient { base, http })
    }

    pub async fn send(&self, req: &SendRequest) -> anyhow::Result<SendResponse> {
        let resp = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .json(req)
            .send()
            .await;
        self.read(resp).await
    }

    pub async fn queue(&self) -> anyhow::Result<QueueView> {
        let resp = self
            .http
            .get(format!("{}/api/v1/queue", self.base))
            .send()
            .await;
        self.read(resp).await
    }

    pub async fn destinations(&self) -> anyhow::Result<crate::surface::api::DestinationsView> {
        let resp = self
            .http
            .get(format!("{}/api/v1/destinations", self.base))
            .send()
            .await;
        self.read(resp).await
    }

    pub async fn diagnose(
        &self,
        provider: Option<&str>,
        window: &str,
    ) -> anyhow::Result<crate::surface::api::DiagnoseView> {
        let mut query = vec![("window", window)];
        if let Some(p) = provider {
            query.push(("provider", p));
        }
        let resp = self
            .http
            .get(format!("{}/api/v1/diagnose", self.base))
            .query(&query)
            .send()
            .await;
        self.read(resp).await
    }

    pub async fn message(&self, id: &str) -> anyhow::Result<MessageView> {
        let resp = self
            .http
            .get(format!("{}/api/v1/messages/{id}", self.base))
            .send()
            .await;
        self.read(resp).await
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<T> {
        let resp = resp.with_context(|| {
            format!(
                "cannot reach knock at {} (is `knock serve` running? see --api)",
                self.base
            )
        })?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the API's answer")?;
        if !status.is_success() {
            let detail: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let error = detail["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            match detail["field"].as_str() {
                Some(field) => bail!("{status}: {field}: {error}"),
                None => bail!("{status}: {error}"),
            }
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from {}", self.base))
    }
}
