//! The HTTP client behind `knock send`, `knock queue` and `knock diagnose`: finds the
//! engine (`--api`, `--config`, `KNOCK_API`, or the embedded default, in that order) and
//! calls the API. Formatting for people is the CLI's (`surface::cli::format`).

use crate::config::{Config, DEFAULT_HTTP_LISTEN};
use crate::engine::scheduler::{QueueShape, ShapeBy};
use crate::surface::api::{ListView, MessageView, QueueView, SendRequest, SendResponse};
use anyhow::{Context, bail};
use std::path::Path;
use std::time::Duration;

/// The API's base URL from the flag, else the config file's `[http] listen`, else the
/// `KNOCK_API` environment variable, else the embedded default. The flag and the variable
/// may leave the scheme out (`127.0.0.1:8025`, as `[http] listen` is written): it is
/// `http`.
pub fn api_base(flag: Option<&str>, config: Option<&Path>) -> anyhow::Result<String> {
    if let Some(url) = flag {
        return Ok(base_url(url));
    }
    if let Some(path) = config {
        let listen = Config::load(path)?.http.listen;
        return Ok(format!("http://{listen}"));
    }
    if let Ok(url) = std::env::var("KNOCK_API")
        && !url.is_empty()
    {
        return Ok(base_url(&url));
    }
    Ok(format!("http://{DEFAULT_HTTP_LISTEN}"))
}

/// `url` without a trailing slash, `http://` put in front when it names no scheme.
fn base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.contains("://") {
        true => url.to_string(),
        false => format!("http://{url}"),
    }
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

    /// One message; `id` may be the start of one (the API resolves it).
    pub async fn message(&self, id: &str) -> anyhow::Result<MessageView> {
        let resp = self.http.get(self.message_url(id, "")?).send().await;
        self.read(resp).await
    }

    /// The message as stored, or its header section only.
    pub async fn raw(&self, id: &str, headers_only: bool) -> anyhow::Result<bytes::Bytes> {
        let mut url = self.message_url(id, "raw")?;
        if headers_only {
            url.query_pairs_mut().append_pair("headers", "true");
        }
        let resp = self.http.get(url).send().await;
        self.checked(resp).await
    }

    /// A page of the queue listing; `query` holds the API's parameters as given.
    pub async fn list(&self, query: &[(&str, String)]) -> anyhow::Result<ListView> {
        let resp = self
            .http
            .get(format!("{}/api/v1/messages", self.base))
            .query(query)
            .send()
            .await;
        self.read(resp).await
    }

    pub async fn shape(&self, by: ShapeBy) -> anyhow::Result<QueueShape> {
        let resp = self
            .http
            .get(format!("{}/api/v1/queue/shape", self.base))
            .query(&[("by", by.as_str())])
            .send()
            .await;
        self.read(resp).await
    }

    /// POSTs `body` to `path` (`/api/v1/...`) and reads the answer.
    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        self.read(resp).await
    }

    /// The fleet as the node sees it; `None` when it runs alone (no `[cluster] redis`).
    pub async fn fleet(&self) -> anyhow::Result<Option<crate::engine::fleet::FleetView>> {
        let resp = self
            .http
            .get(format!("{}/api/v1/fleet", self.base))
            .send()
            .await;
        if let Ok(r) = &resp
            && r.status() == reqwest::StatusCode::NOT_FOUND
        {
            return Ok(None);
        }
        self.read(resp).await.map(Some)
    }

    /// GETs `path` (`/api/v1/...`) and reads the answer.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await;
        self.read(resp).await
    }

    /// An address's suppression: read it, or add it when `body` is given.
    pub async fn suppression<T: serde::de::DeserializeOwned>(
        &self,
        address: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = self.url(&["api", "v1", "suppressions", address])?;
        let resp = match body {
            Some(b) => self.http.put(url).json(b).send().await,
            None => self.http.get(url).send().await,
        };
        self.read(resp).await
    }

    /// Takes an address off the suppression list.
    pub async fn unsuppress(&self, address: &str) -> anyhow::Result<()> {
        let url = self.url(&["api", "v1", "suppressions", address])?;
        self.checked(self.http.delete(url).send().await).await?;
        Ok(())
    }

    /// The base URL with `segments` appended, each escaped as a path segment.
    fn url(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.base)
            .with_context(|| format!("--api: {} is not a URL", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--api: {} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// POSTs `body` to `/api/v1/messages/{id}/{then}`.
    pub async fn post_message<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        then: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(self.message_url(id, then)?)
            .json(body)
            .send()
            .await;
        self.read(resp).await
    }

    /// `/api/v1/messages/{id}[/{then}]`, the id escaped as a path segment (whatever was
    /// typed, it names no other endpoint).
    fn message_url(&self, id: &str, then: &str) -> anyhow::Result<reqwest::Url> {
        match then {
            "" => self.url(&["api", "v1", "messages", id]),
            then => self.url(&["api", "v1", "messages", id, then]),
        }
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<T> {
        let body = self.checked(resp).await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from {}", self.base))
    }

    /// The body of a successful answer; an error saying what the API said otherwise.
    async fn checked(
        &self,
        resp: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<bytes::Bytes> {
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
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_address_may_leave_out_the_scheme() {
        for (given, base) in [
            ("127.0.0.1:8025", "http://127.0.0.1:8025"),
            ("127.0.0.1:8025/", "http://127.0.0.1:8025"),
            ("knock.internal:8025", "http://knock.internal:8025"),
            ("[::1]:8025", "http://[::1]:8025"),
            ("http://127.0.0.1:8025/", "http://127.0.0.1:8025"),
            ("https://knock.example/base", "https://knock.example/base"),
        ] {
            assert_eq!(api_base(Some(given), None).unwrap(), base, "{given}");
        }
    }

    #[test]
    fn an_id_stays_one_path_segment() {
        let client = ApiClient::new("http://127.0.0.1:8025/".into(), None).unwrap();
        let url = |id, then| client.message_url(id, then).unwrap().to_string();
        assert_eq!(
            url("01a2", "raw"),
            "http://127.0.0.1:8025/api/v1/messages/01a2/raw"
        );
        assert_eq!(
            url("../queue", ""),
            "http://127.0.0.1:8025/api/v1/messages/..%2Fqueue"
        );
        let based = ApiClient::new("https://knock.example/base".into(), None).unwrap();
        assert_eq!(
            based.message_url("01a2", "").unwrap().to_string(),
            "https://knock.example/base/api/v1/messages/01a2"
        );
    }
}
