//! `knock bench`: the SMTP load generator. N messages of S bytes over C concurrent
//! sessions, connections reused, with a progress bar; reports accepted messages per second
//! and acknowledgment latency percentiles. Given a sink's stats URL it also waits for the
//! sink to have received everything and reports the end-to-end delivered rate.

use crate::config::TimeoutConfig;
use crate::net::smtp::client::Client;
use crate::net::tls::Policy;
use crate::tools::sink::Stats;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: SocketAddr,
    pub count: usize,
    pub size: usize,
    pub concurrency: usize,
    pub from: String,
    pub to: String,
    pub sink_stats: Option<String>,
    pub progress: bool,
    /// Start TLS on every session (any certificate), as a submission client would.
    pub starttls: bool,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub accepted: usize,
    pub refused: usize,
    pub elapsed: Duration,
    pub latencies: Latencies,
    /// Messages the sink received and the time from the start until the last arrived.
    pub delivered: Option<(u64, Duration)>,
}

#[derive(Debug, Clone, Default)]
pub struct Latencies {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    pub fn from_samples(mut micros: Vec<u64>) -> Latencies {
        if micros.is_empty() {
            return Latencies::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            Duration::from_micros(micros[((micros.len() - 1) as f64 * q).round() as usize])
        };
        Latencies {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "accepted   {} messages in {secs:.2} s: {:.0} msg/s ({} refused)",
            self.accepted,
            self.accepted as f64 / secs,
            self.refused
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(
            f,
            "latency    p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.latencies.p50),
            ms(self.latencies.p95),
            ms(self.latencies.p99),
            ms(self.latencies.max)
        )?;
        if let Some((n, d)) = self.delivered {
            writeln!(
                f,
                "delivered  {n} messages in {:.2} s: {:.0} msg/s end to end",
                d.as_secs_f64(),
                n as f64 / d.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// A message of about `size` bytes.
pub fn make_message(from: &str, to: &str, size: usize, n: usize) -> Vec<u8> {
    let mut m = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: knock bench {n}\r\nMessage-ID: <bench-{n}-{}@knock.bench>\r\n\r\n", std::process::id()).into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, and knock delivers it on time.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    crate::install_crypto_provider();
    let http = reqwest::Client::new();
    let baseline = match &config.sink_stats {
        Some(url) => Some(sink_stats(&http, url).await?.messages),
        None => None,
    };
    let bar = if config.progress {
        indicatif::ProgressBar::new(config.count as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(make_message(&config.from, &config.to, config.size, 0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..config.concurrency.max(1) {
        let (config, next, body, bar) = (config.clone(), next.clone(), body.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            session(&config, &next, &body, &bar).await
        }));
    }
    let mut samples = Vec::with_capacity(config.count);
    let mut refused = 0;
    for t in tasks {
        let (s, r) = t.await.context("a bench session panicked")??;
        samples.extend(s);
        refused += r;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let accepted = samples.len();
    let delivered = match (&config.sink_stats, baseline) {
        (Some(url), Some(base)) => {
            Some(wait_delivered(&http, url, base, accepted as u64, start).await?)
        }
        _ => None,
    };
    Ok(BenchReport {
        accepted,
        refused,
        elapsed,
        latencies: Latencies::from_samples(samples),
        delivered,
    })
}

/// One SMTP session sending until the shared counter reaches the total.
async fn session(
    config: &BenchConfig,
    next: &AtomicUsize,
    body: &[u8],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let timeouts = TimeoutConfig::default();
    let mut samples = Vec::new();
    let mut refused = 0;
    let mut client: Option<Client> = None;
    while next.fetch_add(1, Ordering::Relaxed) < config.count {
        if client.as_ref().is_none_or(|c| c.is_broken()) {
            let mut c = Client::connect(config.target, &timeouts).await?;
            c.read_greeting().await?;
            c.hello("bench.knock").await?;
            if config.starttls {
                let connectors = crate::net::tls::Connectors::new(None)?;
                let host = config.target.ip().to_string();
                if let Err(refused) = c.starttls(&connectors, Policy::Require, &host).await? {
                    anyhow::bail!("STARTTLS refused: {refused}");
                }
                c.hello("bench.knock").await?;
            }
            client = Some(c);
        }
        let c = client.as_mut().expect("connected above");
        let t0 = Instant::now();
        let replies = c.send(&config.from, &[config.to.as_str()], body).await;
        match replies.per_recipient.first() {
            Some(Ok(r)) if r.is_positive() => samples.push(t0.elapsed().as_micros() as u64),
            _ => refused += 1,
        }
        bar.inc(1);
    }
    if let Some(c) = client {
        c.quit().await;
    }
    Ok((samples, refused))
}

async fn sink_stats(http: &reqwest::Client, url: &str) -> anyhow::Result<Stats> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("reading sink stats at {url}"))?;
    resp.json()
        .await
        .with_context(|| format!("sink stats at {url} are not JSON"))
}

/// Polls the sink until it has `expected` more messages, or nothing arrives for 30 s.
async fn wait_delivered(
    http: &reqwest::Client,
    url: &str,
    base: u64,
    expected: u64,
    start: Instant,
) -> anyhow::Result<(u64, Duration)> {
    let mut last = (0, start.elapsed());
    let mut last_change = Instant::now();
    loop {
        let got = sink_stats(http, url).await?.messages.saturating_sub(base);
        if got != last.0 {
            last = (got, start.elapsed());
            last_change = Instant::now();
        }
        if got >= expected || last_change.elapsed() > Duration::from_secs(30) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_asked_size() {
        let m = make_message("a@b.test", "c@d.test", 5 * 1024, 1);
        assert!(
            m.len() <= 5 * 1024 && m.len() > 5 * 1024 - 100,
            "{}",
            m.len()
        );
        assert!(m.starts_with(b"From: <a@b.test>\r\n"));
    }

    #[test]
    fn percentiles() {
        let l = Latencies::from_samples((1..=100).collect());
        assert_eq!(
            (l.p50, l.p99, l.max),
            (
                Duration::from_micros(51),
                Duration::from_micros(99),
                Duration::from_micros(100)
            )
        );
    }
}
