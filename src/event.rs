//! Events: one record of something that happened to one recipient, written as one JSON
//! line to the event log (`[events] path`). The schema is documented in `docs/events.md`.
//! Events are produced where things happen and written by one task, so a slow disk never
//! holds up delivery; the log is flushed whenever the queue of events runs empty.

use crate::message::NewMessage;
use crate::outcome::{Class, FailureKind};
use crate::reply::Enhanced;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Processed,
    Deferred,
    Delivered,
    Bounced,
    Expired,
    Suppressed,
    /// An operator removed the recipient from the queue (cancel, or bounce without a DSN).
    Cancelled,
    /// An operator put the recipient on hold: it stays queued and is not tried.
    Held,
    /// An operator released a held recipient.
    Released,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Processed => "processed",
            Kind::Deferred => "deferred",
            Kind::Delivered => "delivered",
            Kind::Bounced => "bounced",
            Kind::Expired => "expired",
            Kind::Suppressed => "suppressed",
            Kind::Cancelled => "cancelled",
            Kind::Held => "held",
            Kind::Released => "released",
        }
    }

    pub const ALL: &'static [Kind] = &[
        Kind::Processed,
        Kind::Deferred,
        Kind::Delivered,
        Kind::Bounced,
        Kind::Expired,
        Kind::Suppressed,
        Kind::Cancelled,
        Kind::Held,
        Kind::Released,
    ];
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("{s:?} is not an event; one of {}", names.join(", "))
            })
    }
}

impl From<crate::message::State> for Kind {
    /// The event that reports a recipient entering `state`.
    fn from(state: crate::message::State) -> Kind {
        use crate::message::State;
        match state {
            State::Queued => Kind::Processed,
            State::Deferred => Kind::Deferred,
            State::Delivered => Kind::Delivered,
            State::Bounced => Kind::Bounced,
            State::Expired => Kind::Expired,
            State::Suppressed => Kind::Suppressed,
            State::Cancelled => Kind::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique to this event (a UUIDv7, given when it is emitted), so that a consumer that
    /// gets it twice (a webhook POST retried) can tell. Empty in logs written before knock
    /// had it.
    #[serde(default)]
    pub id: String,
    pub event: Kind,
    pub timestamp: Timestamp,
    pub message_id: String,
    pub recipient: String,
    pub domain: String,
    /// The provider (destination) the domain belongs to, on attempt events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The envelope sender; empty for the null sender.
    pub from: String,
    /// The message's stream (`[stream.NAME]`); absent in logs written before streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The attempt this event reports, 1 for the first; absent on `processed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    /// The `[[source]]` the attempt went out of (`default` when none is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
    /// The TLS the attempt's session ran over (`TLSv1.3 TLS13_AES_256_GCM_SHA384`, with
    /// ` verified` when the certificate was valid for the MX); absent in plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<Enhanced>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// What knock saw itself when the receiver said nothing (`timeout`, `reset`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Timestamp>,
    /// Why knock did it, in words, where the reply does not say: an expiry's lifetime or
    /// deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A deferral knock imposed itself (a limit of its own), not the receiver's reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Who did it, for an operator's action: the API token's name, `trusted` for a
    /// caller from a trusted network without a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ee_seconds: Option<f64>,
    /// MX hosts that would not do before the one reached (or all of them), and what each
    /// did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<crate::message::HostTried>,
}

impl Event {
    /// An event about a recipient of the message `envelope` describes: its id, sender and
    /// stream set, the rest empty.
    pub fn about(
        event: Kind,
        timestamp: Timestamp,
        envelope: &crate::message::Envelope,
        recipient: String,
        domain: String,
    ) -> Event {
        let mut e = Event::new(
            event,
            timestamp,
            envelope.id.to_string(),
            recipient,
            domain,
            envelope.from.clone(),
        );
        e.stream = envelope.stream.clone();
        e
    }

    /// An event at `timestamp` with the identity fields set and the rest empty.
    pub fn new(
        event: Kind,
        timestamp: Timestamp,
        message_id: String,
        recipient: String,
        domain: String,
        from: String,
    ) -> Event {
        Event {
            id: String::new(),
            event,
            timestamp,
            message_id,
            recipient,
            domain,
            provider: None,
            from,
            stream: None,
            attempt: None,
            mx: None,
            source: None,
            local_ip: None,
            tls: None,
            code: None,
            enhanced: None,
            text: None,
            class: None,
            failure: None,
            next_attempt: None,
            reason: None,
            internal: false,
            actor: None,
            ee_seconds: None,
            tried: Vec::new(),
        }
    }
}

impl Event {
    /// Every field an event line may hold.
    pub const FIELDS: &'static [&'static str] = &[
        "id",
        "event",
        "timestamp",
        "message_id",
        "recipient",
        "domain",
        "provider",
        "from",
        "stream",
        "attempt",
        "mx",
        "source",
        "local_ip",
        "tls",
        "code",
        "enhanced",
        "text",
        "class",
        "failure",
        "next_attempt",
        "reason",
        "internal",
        "actor",
        "ee_seconds",
        "tried",
    ];

    /// One line of the log, read strictly: a key that is not an event field, a missing
    /// field or a bad value is an error that names it.
    pub fn parse_line(line: &str) -> Result<Event, String> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let object = value.as_object().ok_or("not a JSON object")?;
        if let Some(key) = object.keys().find(|k| !Self::FIELDS.contains(&k.as_str())) {
            return Err(format!("{key}: not a field of an event"));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." => e.into_inner().to_string(),
                _ => format!("{path}: {}", e.into_inner()),
            }
        })
    }
}

/// One `processed` event per recipient of a message accepted at `at`.
pub fn processed(m: &NewMessage, at: Timestamp) -> Vec<Event> {
    let mut events = Vec::new();
    for g in &m.groups {
        for r in &g.recipients {
            events.push(Event::about(
                Kind::Processed,
                at,
                &m.envelope,
                r.address.clone(),
                g.domain.clone(),
            ));
        }
    }
    events
}

/// Reads events back from the log at `path`: those at or after `since`, from the last
/// `at_most` bytes of the file (a line cut by that limit is skipped, as are lines that are
/// not events). A missing log has no events.
pub fn read_log(path: &Path, since: Timestamp, at_most: u64) -> std::io::Result<Vec<Event>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(at_most);
    file.seek(SeekFrom::Start(start))?;
    // Bytes: the cut may fall inside a character, and its line is skipped anyway.
    let mut bytes = Vec::new();
    file.take(at_most).read_to_end(&mut bytes)?;
    let lines = bytes.split(|&b| b == b'\n').skip(usize::from(start > 0));
    Ok(lines
        .filter_map(|l| serde_json::from_slice::<Event>(l).ok())
        .filter(|e| e.timestamp >= since)
        .collect())
}

/// Something that counts events as they are emitted (the metrics of `crate::metrics`, the
/// time series of `crate::stats`).
pub trait Observer: Send + Sync {
    /// Must not block: called on every event, on the path that emits it.
    fn observe(&self, event: &Event);
    /// An event could not be handed to the log.
    fn dropped(&self) {}
}

/// Where events go. Cheap to clone; sending never blocks delivery for long.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    /// The kinds some webhook takes; nothing goes in the outbox when it is empty. Shared
    /// by every handle, replaced when the webhooks are reloaded.
    outboxed: Arc<std::sync::RwLock<Arc<[Kind]>>>,
    /// Told of every event, in order.
    observers: Vec<Arc<dyn Observer>>,
}

impl Events {
    /// The same events, with those of `kinds` also put in the spool's outbox for the
    /// webhooks (see [`Events::outbox`]).
    pub fn with_outbox(self, kinds: &[Kind]) -> Events {
        self.set_outbox(kinds);
        self
    }

    /// The kinds put in the outbox from now on, for every handle (a reload of the webhooks).
    pub fn set_outbox(&self, kinds: &[Kind]) {
        let mut wanted: Vec<Kind> = Vec::new();
        for k in kinds {
            if !wanted.contains(k) {
                wanted.push(*k);
            }
        }
        *self.outboxed.write().expect("outbox kinds lock") = wanted.into();
    }

    /// The same events, each also told to `observer` as it is emitted.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Events {
        self.observers.push(observer);
        self
    }

    /// Gives `events` their ids and returns those a webhook takes, for the spool's outbox
    /// (`Op::Outbox`), to be committed in the same transaction as the change they tell of:
    /// then a webhook gets an event if and only if its change is on disk. The events are
    /// emitted afterwards as usual, with the same ids.
    pub fn outbox(&self, events: &mut [Event]) -> Option<Vec<Event>> {
        for e in events.iter_mut().filter(|e| e.id.is_empty()) {
            e.id = new_id();
        }
        let outboxed = self.outboxed.read().expect("outbox kinds lock").clone();
        if outboxed.is_empty() {
            return None;
        }
        let wanted: Vec<Event> = events
            .iter()
            .filter(|e| outboxed.contains(&e.event))
            .cloned()
            .collect();
        (!wanted.is_empty()).then_some(wanted)
    }

    /// Gives the event its id, logs and counts it, and hands it to the writer.
    pub async fn emit(&self, mut event: Event) {
        if event.id.is_empty() {
            event.id = new_id();
        }
        log_event(&event);
        for observer in &self.observers {
            observer.observe(&event);
        }
        if self.tx.send(event).await.is_err() {
            for observer in &self.observers {
                observer.dropped();
            }
            tracing::warn!("event log is closed; event dropped");
        }
    }

    /// Opens the log for appending and starts its writer; the writer ends, flushed, once
    /// every `Events` handle is dropped.
    pub async fn open(path: &Path) -> anyhow::Result<(Events, tokio::task::JoinHandle<()>)> {
        use anyhow::Context;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .with_context(|| format!("events.path: creating {}", dir.display()))?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .with_context(|| format!("events.path: opening {}", path.display()))?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let task = tokio::spawn(write_loop(file, rx, path.to_path_buf()));
        Ok((
            Events {
                tx,
                outboxed: Arc::new(std::sync::RwLock::new(Arc::from([]))),
                observers: Vec::new(),
            },
            task,
        ))
    }
}

/// A new event id: a UUIDv7, so ids sort by time.
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// How long written events may sit in the buffer before they are flushed to the file. One
/// flush per event cost a write on the blocking pool (and the thread wake-ups around it) for
/// every event at thousands a second; readers of the log see it at most this late.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

async fn write_loop(file: tokio::fs::File, mut rx: mpsc::Receiver<Event>, path: PathBuf) {
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(512);
    // When the oldest event not yet flushed was written.
    let mut unflushed: Option<tokio::time::Instant> = None;
    loop {
        let next = match unflushed {
            None => rx.recv().await,
            Some(since) => match tokio::time::timeout_at(since + FLUSH_AFTER, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    flush(&mut out, &path).await;
                    unflushed = None;
                    continue;
                }
            },
        };
        let Some(event) = next else { break };
        line.clear();
        if serde_json::to_writer(&mut line, &event).is_ok() {
            line.push(b'\n');
            if let Err(e) = out.write_all(&line).await {
                tracing::error!(path = %path.display(), error = %e, "writing the event log failed");
            }
        }
        unflushed.get_or_insert_with(tokio::time::Instant::now);
    }
    flush(&mut out, &path).await;
}

async fn flush(out: &mut tokio::io::BufWriter<tokio::fs::File>, path: &Path) {
    if let Err(e) = out.flush().await {
        tracing::error!(path = %path.display(), error = %e, "flushing the event log failed");
    }
}

/// The event as one line of the operator's log: deliveries, deferrals, bounces,
/// expirations and suppressions at info, acceptances at debug. Called for every event, so
/// the fields are passed structured and nothing is formatted unless a subscriber takes the
/// line.
fn log_event(e: &Event) {
    // Displayed, so that plain text shows them bare; only the reply's text is quoted.
    use tracing::field::display;
    let (id, rcpt) = (display(&e.message_id), display(&e.recipient));
    let provider = e.provider.as_deref().map(display);
    let mx = e.mx.as_deref().map(display);
    let text = e.text.as_deref();
    let enhanced = e.enhanced.map(display);
    let class = e.class.map(|c| display(c.as_str()));
    let failure = e.failure.map(|f| display(f.as_str()));
    let next_attempt = e.next_attempt.map(display);
    let what = match e.event {
        Kind::Processed => {
            tracing::debug!(id, rcpt, "accepted");
            return;
        }
        Kind::Delivered => "delivered",
        Kind::Deferred => "deferred",
        Kind::Bounced => "bounced",
        Kind::Expired => "expired",
        Kind::Suppressed => "suppressed",
        Kind::Cancelled => "cancelled",
        Kind::Held => "held",
        Kind::Released => "released",
    };
    let actor = e.actor.as_deref().map(display);
    tracing::info!(
        id,
        rcpt,
        actor,
        internal = e.internal.then_some(true),
        provider,
        mx,
        attempt = e.attempt,
        code = e.code,
        enhanced,
        text,
        class,
        failure,
        next_attempt,
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_documented() {
        let mut e = Event::new(
            Kind::Deferred,
            Timestamp(0),
            "id".into(),
            "a@b.test".into(),
            "b.test".into(),
            "s@a.test".into(),
        );
        e.attempt = Some(1);
        e.provider = Some("google".into());
        e.mx = Some("mx".into());
        e.local_ip = Some("127.0.0.1".into());
        e.tls = Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into());
        e.code = Some(450);
        e.enhanced = Enhanced::parse("4.2.0");
        e.text = Some("Greylisted".into());
        e.class = Some(Class::Greylist);
        e.failure = Some(FailureKind::Timeout);
        e.next_attempt = Some(Timestamp(0));
        e.internal = true;
        e.actor = Some("ops".into());
        e.ee_seconds = Some(1.0);
        e.stream = Some("bulk".into());
        e.reason = Some("its delivery deadline cannot be met".into());
        e.source = Some("default".into());
        e.tried = vec![crate::message::HostTried {
            host: "mx1".into(),
            addr: "192.0.2.1:25".into(),
            said: "connection refused".into(),
        }];
        let doc = include_str!("../docs/events.md");
        let json = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut all = Event::FIELDS.to_vec();
        all.sort();
        let mut written = keys.clone();
        written.sort();
        assert_eq!(all, written, "Event::FIELDS is every field");
        for key in json.as_object().unwrap().keys() {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/events.md does not describe `{key}`"
            );
        }
    }

    #[tokio::test]
    async fn writes_one_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.jsonl");
        let (events, writer) = Events::open(&path).await.unwrap();
        for kind in [Kind::Processed, Kind::Delivered] {
            events
                .emit(Event::new(
                    kind,
                    Timestamp(1),
                    "id".into(),
                    "a@b.test".into(),
                    "b.test".into(),
                    String::new(),
                ))
                .await;
        }
        drop(events);
        writer.await.unwrap();
        let back = read_log(&path, Timestamp(0), u64::MAX).unwrap();
        let kinds: Vec<Kind> = back.iter().map(|e| e.event).collect();
        assert_eq!(kinds, [Kind::Processed, Kind::Delivered]);
        assert_eq!(back[0].timestamp, Timestamp(1));
    }

    #[test]
    fn a_strict_reading_names_what_is_wrong() {
        let good = serde_json::to_string(&Event::new(
            Kind::Delivered,
            Timestamp(0),
            "id".into(),
            "a@b.test".into(),
            "b.test".into(),
            String::new(),
        ))
        .unwrap();
        assert!(Event::parse_line(&good).is_ok());
        for (line, needle) in [
            (good.replace("\"domain\"", "\"domian\""), "domian"),
            (good.replace("\"delivered\"", "\"arrived\""), "event"),
            (
                good.replace("\"1970-01-01T00:00:00.000Z\"", "\"yesterday\""),
                "timestamp",
            ),
            ("{not json".to_string(), "not JSON"),
        ] {
            let err = Event::parse_line(&line).unwrap_err();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }

    #[test]
    fn the_log_reads_back_typed_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut text = String::new();
        for t in 0..10 {
            let e = Event::new(
                Kind::Deferred,
                Timestamp(t),
                format!("id{t}"),
                "a@b.test".into(),
                "b.test".into(),
                String::new(),
            );
            text.push_str(&serde_json::to_string(&e).unwrap());
            text.push('\n');
            if t == 4 {
                text.push_str("not an event\n");
            }
        }
        std::fs::write(&path, &text).unwrap();
        let all = read_log(&path, Timestamp(0), u64::MAX).unwrap();
        assert_eq!(all.len(), 10, "the stray line is skipped");
        let recent = read_log(&path, Timestamp(7), u64::MAX).unwrap();
        assert_eq!(recent.len(), 3);
        // From the last bytes only: the line they cut into is skipped, not misread.
        let tail = read_log(&path, Timestamp(0), 250).unwrap();
        assert!(!tail.is_empty() && tail.len() < 3, "{}", tail.len());
        assert_eq!(tail.last().unwrap().message_id, "id9");
        assert!(
            read_log(&dir.path().join("none"), Timestamp(0), 100)
                .unwrap()
                .is_empty()
        );
    }
}
