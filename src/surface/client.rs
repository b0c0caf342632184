//! The HTTP client behind `knock send` and `knock queue`: finds the engine (`--api`,
//! `--config`, `KNOCK_API`, or the embedded default, in that order), calls the API, and
//! formats what it returns for people.

use crate::config::{Config, DEFAULT_HTTP_LISTEN};
use crate::surface::api::{MessageView, QueueView, SendRequest, SendResponse};
use crate::time::Timestamp;
use anyhow::{Context, bail};
use std::fmt::Write;
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

fn age(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn relative(t: Timestamp) -> String {
    let now = Timestamp::now();
    if t <= now {
        format!("{t} (due)")
    } else {
        format!("{t} (in {})", age(t.since(now).as_secs().max(1)))
    }
}

/// `knock queue`: one line per domain.
pub fn format_queue(q: &QueueView) -> String {
    if q.domains.is_empty() {
        return "queue is empty\n".into();
    }
    let mut out = format!(
        "{:<32} {:>7} {:>9} {:>9} {:>12}  {}\n",
        "DOMAIN", "QUEUED", "DEFERRED", "IN FLIGHT", "OLDEST", "NEXT ATTEMPT"
    );
    for d in &q.domains {
        let next = d.next_attempt.map(relative).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>9} {:>9} {:>12}  {next}",
            d.domain,
            d.queued,
            d.deferred,
            d.in_flight,
            age(d.oldest_age_seconds)
        );
    }
    out
}

/// The destinations' shaping, under the per-domain table.
pub fn format_destinations(d: &crate::surface::api::DestinationsView) -> String {
    if d.destinations.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<32} {:>7} {:>7} {:>11} {:>12}  {}\n",
        "DESTINATION", "PENDING", "READY", "CONNECTIONS", "RATE", "STATE"
    );
    for v in &d.destinations {
        let s = &v.shaping;
        let rate = s
            .rate_per_minute
            .map(|r| format!("{r:.0}/min"))
            .unwrap_or_else(|| "-".into());
        let mut state = Vec::new();
        if let Some(since) = s.outage_since {
            state.push(format!(
                "outage since {since}, probing every {} s",
                s.outage_backoff_seconds.unwrap_or(0)
            ));
        } else if let Some(p) = s.paused_for_seconds {
            state.push(format!("paused {p:.1} s"));
        }
        if let (Some(l), Some(b)) = (s.latency_ms, s.latency_baseline_ms) {
            state.push(format!("latency {l:.0} ms (baseline {b:.0})"));
        }
        if let Some(g) = v.greylist_delay_seconds {
            state.push(format!("greylist {g} s"));
        }
        if let Some(c) = s.recent_classes.last() {
            state.push(format!("last deferral {}", c.as_str()));
        }
        let conns = format!("{}/{}", v.connections_open, s.connections);
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>7} {:>11} {:>12}  {}",
            v.destination,
            v.pending,
            v.ready,
            conns,
            rate,
            state.join(", ")
        );
    }
    out
}

/// `knock queue show ID`: the message, each recipient and its attempts.
pub fn format_message(m: &MessageView) -> String {
    let from = if m.from.is_empty() { "<>" } else { &m.from };
    let mut out = format!(
        "message {}\n  from {from}, {} bytes, via {}\n  received {}\n",
        m.id, m.size, m.source, m.received_at
    );
    if let Some(done) = m.done_at {
        let _ = writeln!(out, "  finished {done}");
    }
    for r in &m.recipients {
        let _ = write!(out, "\n  {} [{}]", r.address, r.state.as_str());
        if let Some(next) = r.next_attempt {
            let _ = write!(out, " next attempt {}", relative(next));
        }
        out.push('\n');
        for (i, a) in r.attempts.iter().enumerate() {
            let code = a
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "---".into());
            let enhanced = a.enhanced.map(|e| e.to_string()).unwrap_or_default();
            let class = a
                .class
                .map(|c| {
                    format!(
                        " [{}]",
                        serde_json::to_value(c)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}. {} {} {} {code} {enhanced} {}{class}",
                i + 1,
                a.at,
                a.mx.as_deref().unwrap_or("-"),
                a.local_ip.as_deref().unwrap_or("-"),
                a.text
            );
            if let Some(tls) = &a.tls {
                let _ = writeln!(out, "       over {tls}");
            }
        }
    }
    out
}
