//! Webhooks: events POSTed in signed batches from the spool's durable outbox.
//!
//! The engine commits each event to the outbox in the same transaction as the change it
//! tells of (see [`Events::outbox`](crate::event::Events::outbox)), so a webhook gets an
//! event exactly when its change is on disk, across restarts and receiver outages. One
//! [`Sender`] per `[[webhook]]` reads the outbox in order from its cursor, keeps up to
//! `max_in_flight` batches posted or waiting to be posted again, and moves its cursor (in the
//! spool) past a batch only once every batch before it is done, so after a crash a webhook
//! gets again at most what was in flight: each event carries a unique `id` to dedupe by.
//!
//! A failed POST (any answer but 2xx, a timeout, no connection) is tried again after an
//! exponential backoff with jitter (`backoff`, 1 s by default, doubling to `backoff_max`, 5
//! min; longer when the receiver's `Retry-After` asks for it, up to `backoff_max`). While a webhook fails, events older than its `max_age` are
//! dropped, counted and logged, so the outbox never grows without bound.

use crate::config::{WebhookConfig, WebhookFormat};
use crate::engine::spool::{Op, Spool};
use crate::event::{Event, Kind};
use crate::time::Timestamp;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The header with the Unix time (seconds) the POST was signed at.
pub const TIMESTAMP_HEADER: &str = "X-Knock-Timestamp";
/// The header with the signature: `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub const SIGNATURE_HEADER: &str = "X-Knock-Signature";
/// The header naming the webhook.
pub const WEBHOOK_HEADER: &str = "X-Knock-Webhook";

/// Registers the webhooks' cursors in the outbox (a new webhook starts with the events
/// committed from now on; one gone from the configuration stops holding events back) and
/// starts one sender per webhook. Call before the engine commits anything.
pub async fn start(
    webhooks: &[WebhookConfig],
    spool: Arc<dyn Spool>,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let known = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || spool.outbox_cursors()).await??
    };
    let tip = *spool.outbox_tip().borrow();
    let mut ops = Vec::new();
    for (name, _) in &known {
        if !webhooks.iter().any(|w| &w.name == name) {
            tracing::info!(webhook = %name, "webhook no longer configured; its unsent events are forgotten");
            ops.push(Op::OutboxForget {
                webhook: name.clone(),
            });
        }
    }
    let mut cursors = Vec::new();
    for w in webhooks {
        let cursor = match known.iter().find(|(name, _)| name == &w.name) {
            Some((_, seq)) => *seq,
            None => {
                ops.push(Op::OutboxCursor {
                    webhook: w.name.clone(),
                    seq: tip,
                });
                tip
            }
        };
        cursors.push(cursor);
    }
    if !ops.is_empty() {
        spool.commit(ops).await?;
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("knock/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut tasks = Vec::new();
    for (w, cursor) in webhooks.iter().zip(cursors) {
        let sender = Sender {
            config: w.clone(),
            kinds: w.kinds(),
            spool: spool.clone(),
            client: client.clone(),
            cursor,
            read: cursor,
            batches: BTreeMap::new(),
            failing_since: None,
            unsaved: false,
        };
        tasks.push(tokio::spawn(sender.run(shutdown.clone())));
    }
    Ok(tasks)
}

/// A batch of events: the outbox entries `first..=last` (those of other kinds left out).
struct Batch {
    first: u64,
    last: u64,
    events: Vec<Event>,
    /// POSTs of it that failed so far.
    failures: u32,
}

/// What became of one POST.
enum Posted {
    Ok,
    /// Not taken; try again no sooner than `retry_after` if the receiver said so.
    Failed {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// One webhook's sender.
struct Sender {
    config: WebhookConfig,
    kinds: Vec<Kind>,
    spool: Arc<dyn Spool>,
    client: reqwest::Client,
    /// Every entry up to here is sent (or skipped); stored in the spool.
    cursor: u64,
    /// Every entry up to here is in a batch.
    read: u64,
    /// Batches not yet sent, by `first`; `true` once done (sent or dropped).
    batches: BTreeMap<u64, (u64, bool)>,
    /// When the first of the POSTs failing now failed.
    failing_since: Option<tokio::time::Instant>,
    /// The cursor moved and is not on disk yet.
    unsaved: bool,
}

type InFlight = futures::future::BoxFuture<'static, (Batch, Posted)>;

impl Sender {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tip = self.spool.outbox_tip();
        let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        // When a batch that is not full was first seen waiting.
        let mut partial_since: Option<tokio::time::Instant> = None;
        loop {
            if self.unsaved {
                self.save_cursor().await;
            }
            crate::metrics::webhook_backlog(
                &self.config.name,
                tip.borrow().saturating_sub(self.cursor),
            );
            // Fill the free slots with new batches.
            let mut wait_for_more: Option<tokio::time::Instant> = None;
            while in_flight.len() < self.config.max_in_flight
                && *tip.borrow_and_update() > self.read
            {
                let (batch, is_full, dropped) = match self.next_batch().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(webhook = %self.config.name, error = %e, "reading the webhook outbox failed");
                        wait_for_more = Some(tokio::time::Instant::now() + self.config.backoff);
                        break;
                    }
                };
                let now = tokio::time::Instant::now();
                let since = *partial_since.get_or_insert(now);
                if !is_full && !batch.events.is_empty() && now < since + self.config.batch_delay {
                    // Wait for company: until the delay is up or more is committed.
                    wait_for_more = Some(since + self.config.batch_delay);
                    break;
                }
                partial_since = None;
                if dropped > 0 {
                    self.dropped(dropped, batch.first, batch.last);
                }
                self.read = batch.last;
                if batch.events.is_empty() {
                    // Nothing of this webhook's kinds: passed over at once.
                    self.batches.insert(batch.first, (batch.last, true));
                    self.advance();
                    continue;
                }
                self.batches.insert(batch.first, (batch.last, false));
                in_flight.push(self.post(batch, Duration::ZERO));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some((batch, posted)) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(again) = self.posted(batch, posted) {
                        in_flight.push(again);
                    }
                }
                changed = tip.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = crate::time::sleep_until(wait_for_more), if wait_for_more.is_some() => {}
            }
        }
    }

    /// The next batch after what was read: up to `batch_size` events of this webhook's
    /// kinds, whether it is full, and how many events it left out as too old: while the
    /// webhook fails, events older than `max_age` are dropped instead of being sent.
    async fn next_batch(&mut self) -> anyhow::Result<Option<(Batch, bool, usize)>> {
        let size = self.config.batch_size;
        let mut batch = Batch {
            first: self.read + 1,
            last: self.read,
            events: Vec::new(),
            failures: 0,
        };
        let mut dropped = 0usize;
        let too_old = self
            .failing_since
            .map(|_| too_old_before(self.config.max_age));
        while batch.events.len() < size {
            let (spool, after) = (self.spool.clone(), batch.last);
            let entries =
                tokio::task::spawn_blocking(move || spool.outbox_read(after, size)).await??;
            if entries.is_empty() {
                break;
            }
            for (seq, raw) in entries {
                if batch.events.len() == size {
                    break;
                }
                batch.last = seq;
                let event: Event = match serde_json::from_slice(&raw) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(webhook = %self.config.name, seq, error = %e, "unreadable outbox entry skipped");
                        continue;
                    }
                };
                if !self.kinds.contains(&event.event) {
                    continue;
                }
                if too_old.is_some_and(|t| event.timestamp < t) {
                    dropped += 1;
                    continue;
                }
                batch.events.push(event);
            }
        }
        if batch.last < batch.first {
            return Ok(None);
        }
        let full = batch.events.len() == size;
        Ok(Some((batch, full, dropped)))
    }

    /// Posts `batch` after `wait`.
    fn post(&self, batch: Batch, wait: Duration) -> InFlight {
        let client = self.client.clone();
        let config = self.config.clone();
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            let posted = post(&client, &config, &batch.events).await;
            (batch, posted)
        })
    }

    /// Takes the answer to a POST; returns the batch's next try, if it gets one.
    fn posted(&mut self, mut batch: Batch, posted: Posted) -> Option<InFlight> {
        let name = &self.config.name;
        match posted {
            Posted::Ok => {
                crate::metrics::webhook_post(name, true);
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(webhook = %name, failed_for = ?since.elapsed(), "webhook is taking events again");
                }
                self.done(batch.first);
                None
            }
            Posted::Failed { why, retry_after } => {
                crate::metrics::webhook_post(name, false);
                batch.failures += 1;
                if self.failing_since.is_none() {
                    self.failing_since = Some(tokio::time::Instant::now());
                    tracing::warn!(webhook = %name, error = %why, "webhook POST failed; trying again with backoff");
                } else {
                    tracing::debug!(webhook = %name, error = %why, failures = batch.failures, "webhook POST failed again");
                }
                let oldest = batch.events.iter().map(|e| e.timestamp).min();
                if oldest.is_some_and(|t| t < too_old_before(self.config.max_age)) {
                    self.dropped(batch.events.len(), batch.first, batch.last);
                    self.done(batch.first);
                    return None;
                }
                let (first, max) = (self.config.backoff, self.config.backoff_max);
                let wait = backoff(batch.failures, first, max).max(retry_after.unwrap_or_default());
                Some(self.post(batch, wait.min(max)))
            }
        }
    }

    fn dropped(&self, events: usize, first: u64, last: u64) {
        crate::metrics::webhook_dropped(&self.config.name, events);
        tracing::error!(
            webhook = %self.config.name,
            events,
            first,
            last,
            max_age = ?self.config.max_age,
            "webhook failing past its max_age: events dropped unsent"
        );
    }

    fn done(&mut self, first: u64) {
        if let Some((_, done)) = self.batches.get_mut(&first) {
            *done = true;
        }
        self.advance();
    }

    /// Moves the cursor past the batches done in a row from the oldest, and stores it.
    fn advance(&mut self) {
        let before = self.cursor;
        while let Some(entry) = self.batches.first_entry() {
            let (last, done) = *entry.get();
            if !done {
                break;
            }
            entry.remove();
            self.cursor = last;
        }
        if self.batches.is_empty() {
            self.cursor = self.cursor.max(self.read);
        }
        if self.cursor != before {
            self.unsaved = true;
        }
    }

    /// Makes the cursor durable before anything more is posted, so that after a crash
    /// only the batches that were in flight are sent again.
    async fn save_cursor(&mut self) {
        let op = Op::OutboxCursor {
            webhook: self.config.name.clone(),
            seq: self.cursor,
        };
        match self.spool.submit(vec![op]).await {
            Ok(()) => self.unsaved = false,
            Err(e) => {
                tracing::error!(webhook = %self.config.name, error = %e, "storing the webhook's cursor failed; trying again");
            }
        }
    }
}

/// Events stamped before this are older than `max_age`.
fn too_old_before(max_age: Duration) -> Timestamp {
    Timestamp(
        Timestamp::now()
            .millis()
            .saturating_sub(max_age.as_millis() as u64),
    )
}

/// The wait before the next try after `failures` failed POSTs: `first` doubling to `max`,
/// each taken at random between half and all of it, so that many senders (or batches) that
/// failed together do not come back together.
fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let full = first
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max);
    full.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// POSTs `events` to the webhook, signed.
async fn post(client: &reqwest::Client, config: &WebhookConfig, events: &[Event]) -> Posted {
    let body = match body(config.format, events) {
        Ok(b) => b,
        Err(e) => {
            return Posted::Failed {
                why: format!("encoding the batch: {e}"),
                retry_after: None,
            };
        }
    };
    let timestamp = Timestamp::now().millis() / 1000;
    let signature = sign(config.secret.as_bytes(), timestamp, &body);
    let sent = client
        .post(&config.url)
        .timeout(config.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .header(WEBHOOK_HEADER, &config.name)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) if answer.status().is_success() => Posted::Ok,
        Ok(answer) => {
            let retry_after = answer
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Posted::Failed {
                why: format!("answered {}", answer.status()),
                retry_after,
            }
        }
        Err(e) => Posted::Failed {
            why: error_chain(&e),
            retry_after: None,
        },
    }
}

/// An error and its causes on one line (reqwest's own says only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The signature of a POST: `v1=` and the hex HMAC-SHA256, keyed with the secret, of the
/// timestamp, a dot and the body.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut hex = String::with_capacity(3 + 64);
    hex.push_str("v1=");
    for b in tag.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The body of a POST of `events` in `format`.
pub fn body(format: WebhookFormat, events: &[Event]) -> serde_json::Result<Vec<u8>> {
    match format {
        WebhookFormat::Native => serde_json::to_vec(events),
        WebhookFormat::Sendgrid => {
            let mapped: Vec<serde_json::Value> = events.iter().filter_map(sendgrid).collect();
            serde_json::to_vec(&mapped)
        }
    }
}

/// An event as SendGrid's event webhook would have sent it (docs/events.md has the
/// mapping); `None` for kinds SendGrid has no event for (`held`, `released`).
pub fn sendgrid(e: &Event) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let name = match e.event {
        Kind::Processed => "processed",
        Kind::Deferred => "deferred",
        Kind::Delivered => "delivered",
        Kind::Bounced | Kind::Expired => "bounce",
        Kind::Suppressed | Kind::Cancelled => "dropped",
        Kind::Held | Kind::Released => return None,
    };
    let mut v = json!({
        "email": e.recipient,
        "timestamp": e.timestamp.millis() / 1000,
        "event": name,
        "sg_event_id": e.id,
        "sg_message_id": e.message_id,
        "smtp-id": format!("<{}>", e.message_id),
        "knock_event": e.event.as_str(),
    });
    let o = v.as_object_mut().expect("an object");
    let reply = || {
        let mut text = String::new();
        if let Some(code) = e.code {
            text.push_str(&code.to_string());
        }
        if let Some(enhanced) = &e.enhanced {
            text.push(' ');
            text.push_str(&enhanced.to_string());
        }
        if let Some(t) = &e.text {
            text.push(' ');
            text.push_str(t);
        }
        match (text.is_empty(), &e.failure) {
            (true, Some(f)) => format!("{f:?}").to_lowercase(),
            _ => text.trim().to_string(),
        }
    };
    if let Some(p) = &e.provider {
        o.insert("provider".into(), Value::from(p.clone()));
    }
    if let Some(a) = e.attempt {
        // SendGrid sends the attempt as a string.
        o.insert("attempt".into(), Value::from(a.to_string()));
    }
    if let Some(ip) = &e.local_ip {
        o.insert("ip".into(), Value::from(ip.clone()));
    }
    if e.mx.is_some() || e.attempt.is_some() {
        o.insert("tls".into(), Value::from(u8::from(e.tls.is_some())));
    }
    if let Some(enhanced) = &e.enhanced {
        o.insert("status".into(), Value::from(enhanced.to_string()));
    }
    match e.event {
        Kind::Delivered | Kind::Deferred => {
            o.insert("response".into(), Value::from(reply()));
        }
        Kind::Bounced | Kind::Expired => {
            o.insert("reason".into(), Value::from(reply()));
            let blocked = e.class.is_some_and(|c| {
                matches!(
                    c,
                    crate::outcome::Class::Block
                        | crate::outcome::Class::Reputation
                        | crate::outcome::Class::Policy
                )
            });
            o.insert(
                "type".into(),
                Value::from(if blocked { "blocked" } else { "bounce" }),
            );
        }
        Kind::Suppressed => {
            o.insert("reason".into(), Value::from("Bounced Address"));
        }
        Kind::Cancelled => {
            o.insert("reason".into(), Value::from("Cancelled by the operator"));
        }
        _ => {}
    }
    if let Some(c) = e.class {
        o.insert("class".into(), Value::from(c.as_str()));
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently:
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"secret-of-sixteen",
        //     b"1700000000.[{\"a\":1}]",hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"secret-of-sixteen", 1_700_000_000, b"[{\"a\":1}]"),
            "v1=e9bba3397f82684f48a2d795cfe17e48473e24577e373a1a4e7e029258077342"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let mut seen = std::collections::HashSet::new();
        for failures in 1..40 {
            let full = first.saturating_mul(1 << (failures - 1).min(16)).min(max);
            let b = backoff(failures, first, max);
            assert!(b >= full / 2 && b <= full, "{failures}: {b:?} vs {full:?}");
            seen.insert(b);
        }
        assert!(seen.len() > 30, "jittered: {seen:?}");
    }
}
