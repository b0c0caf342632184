//! The durable queue. A message is in the spool, fsync'd, before anyone is told it was
//! accepted; recipient states and attempts are written back after every attempt, so a
//! restart carries on where the last run stopped.
//!
//! [`RedbSpool`] keeps everything in one redb file. All writes go through one writer thread
//! that commits whatever is waiting in a single transaction (group commit): concurrent
//! sessions share one fsync, and each caller is answered only after the commit that holds
//! its write. Reads use redb's MVCC read transactions and never wait for the writer.
//!
//! Not owned here: *when* anything happens (the scheduler) and what a state means.

use crate::message::{Envelope, Group, MessageId, NewMessage};
use crate::time::Timestamp;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const ENVELOPES: TableDefinition<u128, &[u8]> = TableDefinition::new("envelopes");
const BODIES: TableDefinition<u128, &[u8]> = TableDefinition::new("bodies");
const GROUPS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("groups");
/// Finished messages by the time they finished, for purging their records.
const HISTORY: TableDefinition<(u64, u128), ()> = TableDefinition::new("history");
/// The suppression list: address → why.
const SUPPRESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("suppressions");
/// Entries that could not be read at recovery, kept for an operator to inspect.
const SET_ASIDE: TableDefinition<&str, &[u8]> = TableDefinition::new("set_aside");
/// Events waiting for the webhooks, by their place in the commit order: written in the
/// transaction that commits what they tell, trimmed once every webhook has sent them.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// The outbox's bookkeeping: [`OUTBOX_LAST`] (the last sequence number given, so numbers
/// never repeat once the outbox is empty) and each webhook's cursor (`cursor/NAME`: the
/// last event it has sent, or skipped as not its kind).
const OUTBOX_STATE: TableDefinition<&str, u64> = TableDefinition::new("outbox_state");
const OUTBOX_LAST: &str = "last";
/// What operators suspended (providers, domains) or held (messages): target key → why.
const SUSPENDED: TableDefinition<&str, &[u8]> = TableDefinition::new("suspended");
/// Each source's warm-up with each provider: (source, provider) → its state as JSON.
/// What each source has with each provider: its warm-up and its own limits' counts.
const SOURCES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("source_state");
const CURSOR_PREFIX: &str = "cursor/";
/// The deferral time series (`crate::stats`): (minute since the epoch, provider, class) →
/// the counts of that cell, encoded by [`crate::stats::Counts::encode`]. Minutes first, so
/// a time range is one range of keys and old minutes are deleted from the front.
const STATS: TableDefinition<(u32, &str, &str), &[u8]> = TableDefinition::new("stats");

/// Most writes committed together in one transaction.
const MAX_BATCH: usize = 1024;

/// How long the outcomes of attempts wait for company when nothing else is to be written.
/// Nobody waits on them (a worker goes on once it has reported), so instead of one commit
/// and one fsync per outcome while the queue drains, the outcomes of a few milliseconds share
/// one; anything else that arrives (a new message whose `250` waits) is committed at once,
/// with them.
const OUTCOMES_LINGER: Duration = Duration::from_millis(5);

/// Outcomes that are enough for one commit without lingering further.
const OUTCOMES_ENOUGH: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage error: {0}")]
    Storage(String),
    #[error("spool is shut down")]
    Closed,
}

fn storage<E: std::fmt::Display>(e: E) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

/// One change to the spool.
#[derive(Debug, Clone)]
pub enum Op {
    /// A newly accepted message.
    Store(NewMessage),
    /// A group's new states after an attempt. When it leaves every group of its message
    /// final, the body is removed and the record kept until it is purged.
    Update { id: MessageId, group: Group },
    /// An address goes on the suppression list.
    Suppress {
        address: String,
        entry: crate::policy::suppress::Suppression,
    },
    /// An address comes off the suppression list.
    Unsuppress { address: String },
    /// Events for the webhooks, committed with the change they tell of (docs/events.md).
    Outbox(Vec<crate::event::Event>),
    /// A webhook has sent everything up to `seq`; what every webhook has sent is trimmed.
    OutboxCursor { webhook: String, seq: u64 },
    /// A webhook is gone from the configuration: its cursor no longer holds events back.
    OutboxForget { webhook: String },
    /// An operator suspended a provider or a domain, or held a message.
    Suspend {
        target: crate::control::Target,
        suspension: crate::control::Suspension,
    },
    /// The suspension or hold ends.
    Resume { target: crate::control::Target },
    /// Counts of the time series added to those kept for the same cells, and the minutes
    /// before `forget_before` (past the retention) deleted.
    Stats {
        add: Vec<crate::stats::Row>,
        forget_before: Option<u32>,
    },
    /// A source's state with a provider changed: its warm-up moved a step, or its hour or
    /// day under way counted one more.
    Source(SourceRecord),
}

/// One event in the outbox: its sequence number and the event as JSON.
pub type OutboxEntry = (u64, Vec<u8>);

/// A source's state with a provider, as the spool keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    pub source: String,
    pub provider: String,
    pub state: SourceState,
}

/// What a source has with a provider that must outlive a restart: its warm-up, and the
/// counts of its hourly and daily limits in the hour and day under way (else a restart
/// would let it send its limit again in the same window).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<crate::policy::warmup::WarmupState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used: Vec<crate::policy::quota::Used>,
}

/// Everything the spool held that still needs delivering, read at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub pending: Vec<Waiting>,
    /// Entries that could not be decoded (or lost their body) and were set aside.
    pub set_aside: usize,
}

/// A group waiting for delivery, as the scheduler needs to know it; the envelope and
/// recipients stay on disk (or in the scheduler's memory) until a worker needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub id: MessageId,
    pub domain: String,
    pub received_at: Timestamp,
    pub null_sender: bool,
    /// Recipients not yet final, and how many of those have been deferred.
    pub pending: u32,
    pub deferred: u32,
    /// When the group is due.
    pub next_attempt: Timestamp,
    /// Its one pending recipient's mailbox ([`Group::mailbox`]), if it has only one.
    pub mailbox: Option<u64>,
    /// No retry before this: the last attempt was greylisted ([`Group::greylisted_until`]).
    pub not_before: Option<Timestamp>,
    /// Its message's stream ([`Envelope::stream`]).
    pub stream: Option<String>,
}

/// A message's record: its envelope and every group, final or not.
pub type Record = (Envelope, Vec<Group>);

#[async_trait::async_trait]
pub trait Spool: Send + Sync + 'static {
    /// Hands `ops` to the writer and returns at once: their place in the commit order is
    /// taken before this returns, so commits submitted one after another land in that
    /// order. The future says when they are on disk (all or nothing).
    fn submit(&self, ops: Vec<Op>) -> Committing;
    /// Makes `ops` durable, all or nothing; returns once they are on disk.
    async fn commit(&self, ops: Vec<Op>) -> Result<(), SpoolError> {
        self.submit(ops).await
    }
    fn body(&self, id: MessageId) -> Result<Option<Bytes>, SpoolError>;
    fn record(&self, id: MessageId) -> Result<Option<Record>, SpoolError>;
    /// Reads all pending groups, setting aside what cannot be read.
    fn recover(&self) -> Result<Recovered, SpoolError>;
    /// Forgets finished messages that finished before `before`; returns how many.
    fn purge(&self, before: Timestamp) -> Result<usize, SpoolError>;
    /// The suppression list as stored.
    fn suppressions(
        &self,
    ) -> Result<Vec<(String, crate::policy::suppress::Suppression)>, SpoolError>;
    /// Up to `limit` outbox entries after sequence number `after`, in order.
    fn outbox_read(&self, _after: u64, _limit: usize) -> Result<Vec<OutboxEntry>, SpoolError> {
        Ok(Vec::new())
    }
    /// Each source's state with each provider.
    fn source_states(&self) -> Result<Vec<SourceRecord>, SpoolError> {
        Ok(Vec::new())
    }
    /// The suspensions and holds in force.
    fn suspended(
        &self,
    ) -> Result<Vec<(crate::control::Target, crate::control::Suspension)>, SpoolError> {
        Ok(Vec::new())
    }
    /// Hands `visit` every cell of the time series kept for a minute in `minutes`, in the
    /// order of (minute, provider, class): minute, provider, class, counts. Cells that
    /// cannot be read are skipped.
    fn stats_visit(
        &self,
        _minutes: std::ops::Range<u32>,
        _visit: &mut dyn FnMut(u32, &str, &str, &crate::stats::Counts),
    ) -> Result<(), SpoolError> {
        Ok(())
    }
    /// Every webhook cursor in the outbox, by webhook name.
    fn outbox_cursors(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        Ok(Vec::new())
    }
    /// The last sequence number given to an outbox entry, as it changes.
    fn outbox_tip(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
    /// The ids of messages on record (queued or finished and not yet purged) whose
    /// [`MessageId::as_u128`] is in `range`, in order, at most `at_most` of them.
    fn ids_in(
        &self,
        range: std::ops::RangeInclusive<u128>,
        at_most: usize,
    ) -> Result<Vec<MessageId>, SpoolError>;
    /// Hands `visit` every group that is not final, with its message's envelope, in the
    /// order of (message id, domain), from the first message after `after`, until `visit`
    /// breaks. A message's groups come one after another. Entries that cannot be read are
    /// skipped (recovery sets them aside).
    fn scan_pending(
        &self,
        after: Option<MessageId>,
        visit: &mut dyn FnMut(&Envelope, Group) -> std::ops::ControlFlow<()>,
    ) -> Result<(), SpoolError>;
}

/// A submitted commit: resolves once it is on disk, or failed.
pub type Committing = futures::future::BoxFuture<'static, Result<(), SpoolError>>;

struct Batch {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

impl Batch {
    /// Whether someone waits for this write: anything but the outcome of an attempt (and
    /// the events that come with it).
    fn urgent(&self) -> bool {
        // (A suspension is urgent: the operator waits for it.)
        self.ops
            .iter()
            .any(|op| !matches!(op, Op::Update { .. } | Op::Outbox(_) | Op::Stats { .. }))
    }
}

pub struct RedbSpool {
    db: Arc<Handle>,
    tx: Option<mpsc::Sender<Batch>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The outbox's last sequence number, published by the writer after each commit.
    tip: tokio::sync::watch::Receiver<u64>,
}

pub use crate::config::DEFAULT_SPOOL_CACHE as DEFAULT_CACHE;

impl RedbSpool {
    /// Opens (or creates) the spool in directory `dir`.
    pub fn open(dir: &Path) -> Result<RedbSpool, SpoolError> {
        Self::open_with_cache(dir, DEFAULT_CACHE)
    }

    /// Opens the spool with a page cache of `cache` bytes.
    pub fn open_with_cache(dir: &Path, cache: u64) -> Result<RedbSpool, SpoolError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SpoolError::Storage(format!("creating {}: {e}", dir.display())))?;
        let path = database_file(dir);
        let db = open_database(&path, cache)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(ENVELOPES).map_err(storage)?;
            txn.open_table(BODIES).map_err(storage)?;
            txn.open_table(GROUPS).map_err(storage)?;
            txn.open_table(HISTORY).map_err(storage)?;
            txn.open_table(SET_ASIDE).map_err(storage)?;
            txn.open_table(SUPPRESSIONS).map_err(storage)?;
            txn.open_table(OUTBOX).map_err(storage)?;
            txn.open_table(OUTBOX_STATE).map_err(storage)?;
            txn.open_table(SUSPENDED).map_err(storage)?;
            txn.open_table(STATS).map_err(storage)?;
            txn.open_table(SOURCES).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        let last = {
            let txn = db.begin_read().map_err(storage)?;
            let state = txn.open_table(OUTBOX_STATE).map_err(storage)?;
            state
                .get(OUTBOX_LAST)
                .map_err(storage)?
                .map_or(0, |v| v.value())
        };
        let (tip_tx, tip) = tokio::sync::watch::channel(last);
        let db = Arc::new(Handle {
            path,
            cache,
            db: RwLock::new(Some(Arc::new(db))),
        });
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(writer_db, rx, tip_tx))
            .map_err(storage)?;
        Ok(RedbSpool {
            db,
            tx: Some(tx),
            writer: Mutex::new(Some(writer)),
            tip,
        })
    }
}

impl Drop for RedbSpool {
    fn drop(&mut self) {
        // Close the channel and wait, so the file is released when this returns.
        self.tx.take();
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

/// The database file of the spool in `dir`.
pub fn database_file(dir: &Path) -> std::path::PathBuf {
    dir.join("spool.redb")
}

fn open_database(path: &Path, cache: u64) -> Result<Database, SpoolError> {
    Database::builder()
        .set_cache_size(cache as usize)
        .create(path)
        .map_err(|e| SpoolError::Storage(format!("opening {}: {e}", path.display())))
}

/// The open database, and the means to open it again. After a write fails (a full disk, an
/// I/O error) redb refuses every later operation until the database is closed and opened
/// again; the writer does that, so knock recovers by itself once the cause is gone.
struct Handle {
    path: PathBuf,
    cache: u64,
    /// `None` while it is being (or could not be) opened again.
    db: RwLock<Option<Arc<Database>>>,
}

/// How long a reopen waits for readers to finish with the old database.
const READERS_GRACE: Duration = Duration::from_secs(5);

impl Handle {
    fn get(&self) -> Result<Arc<Database>, SpoolError> {
        self.db
            .read()
            .expect("spool handle lock")
            .clone()
            .ok_or_else(|| {
                SpoolError::Storage("the spool is being reopened after a write error".into())
            })
    }

    /// Closes the database and opens it again. Readers hold it only for one read; redb
    /// opens a file once per process, so their handles must be gone first.
    fn reopen(&self) -> Result<Arc<Database>, SpoolError> {
        let old = self.db.write().expect("spool handle lock").take();
        if let Some(mut old) = old {
            let deadline = Instant::now() + READERS_GRACE;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        *self.db.write().expect("spool handle lock") = Some(still);
                        return Err(SpoolError::Storage(
                            "the spool is still in use; not reopened".into(),
                        ));
                    }
                }
            }
        }
        let db = Arc::new(open_database(&self.path, self.cache)?);
        *self.db.write().expect("spool handle lock") = Some(db.clone());
        tracing::warn!(path = %self.path.display(), "spool reopened after a write error");
        Ok(db)
    }
}

fn writer_loop(
    handle: Arc<Handle>,
    rx: mpsc::Receiver<Batch>,
    tip: tokio::sync::watch::Sender<u64>,
) {
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        linger(&rx, &mut batches);
        // After a failed write the database must be opened again before it takes more.
        let db = match failed {
            true => handle.reopen(),
            false => handle.get(),
        };
        let started = Instant::now();
        let result = db.and_then(|db| apply(&db, &batches));
        crate::metrics::spool_commit(started.elapsed());
        failed = result.is_err();
        match &result {
            Ok(Some(last)) => {
                tip.send_replace(*last);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, writes = batches.len(), "spool commit failed"),
        }
        let result = result.map(|_| ());
        for b in batches {
            let _ = b.done.send(result.clone());
        }
    }
}

/// When only outcomes are waiting, gathers more for up to [`OUTCOMES_LINGER`]: until
/// something urgent arrives, enough are there, or the channel closes.
fn linger(rx: &mpsc::Receiver<Batch>, batches: &mut Vec<Batch>) {
    if batches.iter().any(Batch::urgent) {
        return;
    }
    let deadline = Instant::now() + OUTCOMES_LINGER;
    let mut ops: usize = batches.iter().map(|b| b.ops.len()).sum();
    while ops < OUTCOMES_ENOUGH && batches.len() < MAX_BATCH {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        match rx.recv_timeout(left) {
            Ok(b) => {
                let urgent = b.urgent();
                ops += b.ops.len();
                batches.push(b);
                if urgent {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Commits `batches` in one transaction; returns the outbox's new last sequence number
/// when events were put in it.
fn apply(db: &Database, batches: &[Batch]) -> Result<Option<u64>, SpoolError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut outbox_last = None;
    {
        let mut outbox = Outbox::open(&txn)?;
        let mut envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
        let mut bodies = txn.open_table(BODIES).map_err(storage)?;
        let mut groups = txn.open_table(GROUPS).map_err(storage)?;
        let mut history = txn.open_table(HISTORY).map_err(storage)?;
        let mut suppressions = txn.open_table(SUPPRESSIONS).map_err(storage)?;
        let mut suspended = txn.open_table(SUSPENDED).map_err(storage)?;
        let mut sources = txn.open_table(SOURCES).map_err(storage)?;
        let mut stats = txn.open_table(STATS).map_err(storage)?;
        for op in batches.iter().flat_map(|b| &b.ops) {
            match op {
                Op::Store(m) => {
                    let id = m.envelope.id.as_u128();
                    if m.groups.iter().all(Group::is_done) {
                        // Nothing to deliver (every recipient suppressed): a record only.
                        let now = Timestamp::now();
                        let env = Envelope {
                            done_at: Some(now),
                            ..m.envelope.clone()
                        };
                        envelopes
                            .insert(id, json(&env)?.as_slice())
                            .map_err(storage)?;
                        history.insert((now.millis(), id), ()).map_err(storage)?;
                    } else {
                        envelopes
                            .insert(id, json(&m.envelope)?.as_slice())
                            .map_err(storage)?;
                        bodies.insert(id, m.body.as_ref()).map_err(storage)?;
                    }
                    for g in &m.groups {
                        groups
                            .insert((id, g.domain.as_str()), json(g)?.as_slice())
                            .map_err(storage)?;
                    }
                }
                Op::Suppress { address, entry } => {
                    suppressions
                        .insert(address.as_str(), json(entry)?.as_slice())
                        .map_err(storage)?;
                }
                Op::Unsuppress { address } => {
                    suppressions.remove(address.as_str()).map_err(storage)?;
                }
                Op::Outbox(events) => {
                    for e in events {
                        outbox_last = Some(outbox.push(e)?);
                    }
                }
                Op::OutboxCursor { webhook, seq } => outbox.set_cursor(webhook, *seq)?,
                Op::OutboxForget { webhook } => outbox.forget(webhook)?,
                Op::Suspend { target, suspension } => {
                    suspended
                        .insert(target.key().as_str(), json(suspension)?.as_slice())
                        .map_err(storage)?;
                }
                Op::Resume { target } => {
                    suspended.remove(target.key().as_str()).map_err(storage)?;
                }
                Op::Source(r) => {
                    sources
                        .insert(
                            (r.source.as_str(), r.provider.as_str()),
                            json(&r.state)?.as_slice(),
                        )
                        .map_err(storage)?;
                }
                Op::Stats { add, forget_before } => {
                    add_stats(&mut stats, add)?;
                    if let Some(before) = forget_before {
                        stats
                            .retain_in(..(*before, "", ""), |_, _| false)
                            .map_err(storage)?;
                    }
                }
                Op::Update { id, group } => {
                    let id = id.as_u128();
                    groups
                        .insert((id, group.domain.as_str()), json(group)?.as_slice())
                        .map_err(storage)?;
                    if group.is_done() && all_done(&groups, id)? {
                        bodies.remove(id).map_err(storage)?;
                        let envelope = envelopes
                            .get(id)
                            .map_err(storage)?
                            .map(|v| v.value().to_vec());
                        if let Some(bytes) = envelope {
                            let mut env: Envelope =
                                serde_json::from_slice(&bytes).map_err(storage)?;
                            let now = Timestamp::now();
                            env.done_at = Some(now);
                            envelopes
                                .insert(id, json(&env)?.as_slice())
                                .map_err(storage)?;
                            history.insert((now.millis(), id), ()).map_err(storage)?;
                        }
                    }
                }
            }
        }
        outbox.finish()?;
    }
    txn.commit().map_err(storage)?;
    Ok(outbox_last)
}

/// The outbox tables within one write transaction.
struct Outbox<'t> {
    entries: redb::Table<'t, u64, &'static [u8]>,
    state: redb::Table<'t, &'static str, u64>,
    /// The last sequence number given, once read.
    last: Option<u64>,
    /// Whether a cursor moved or went, so that the outbox may be trimmed.
    cursors_changed: bool,
}

impl<'t> Outbox<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Outbox<'t>, SpoolError> {
        Ok(Outbox {
            entries: txn.open_table(OUTBOX).map_err(storage)?,
            state: txn.open_table(OUTBOX_STATE).map_err(storage)?,
            last: None,
            cursors_changed: false,
        })
    }

    fn push(&mut self, event: &crate::event::Event) -> Result<u64, SpoolError> {
        let last = match self.last {
            Some(l) => l,
            None => self
                .state
                .get(OUTBOX_LAST)
                .map_err(storage)?
                .map_or(0, |v| v.value()),
        };
        let seq = last + 1;
        self.entries
            .insert(seq, json(event)?.as_slice())
            .map_err(storage)?;
        self.last = Some(seq);
        Ok(seq)
    }

    fn set_cursor(&mut self, webhook: &str, seq: u64) -> Result<(), SpoolError> {
        let key = format!("{CURSOR_PREFIX}{webhook}");
        self.state.insert(key.as_str(), seq).map_err(storage)?;
        self.cursors_changed = true;
        Ok(())
    }

    fn forget(&mut self, webhook: &str) -> Result<(), SpoolError> {
        let key = format!("{CURSOR_PREFIX}{webhook}");
        self.state.remove(key.as_str()).map_err(storage)?;
        self.cursors_changed = true;
        Ok(())
    }

    /// Records the last sequence number and trims what every webhook has sent (all of it
    /// when no webhook is left).
    fn finish(mut self) -> Result<(), SpoolError> {
        if let Some(last) = self.last {
            self.state.insert(OUTBOX_LAST, last).map_err(storage)?;
        }
        if !self.cursors_changed {
            return Ok(());
        }
        let mut lowest: Option<u64> = None;
        for entry in self.state.range(CURSOR_PREFIX..).map_err(storage)? {
            let (key, seq) = entry.map_err(storage)?;
            if !key.value().starts_with(CURSOR_PREFIX) {
                break;
            }
            lowest = Some(lowest.map_or(seq.value(), |l| l.min(seq.value())));
        }
        match lowest {
            Some(upto) => self.entries.retain_in(..=upto, |_, _| false),
            None => self.entries.retain(|_, _| false),
        }
        .map_err(storage)
    }
}

/// Adds `rows` to the counts kept for their cells.
fn add_stats(
    table: &mut redb::Table<(u32, &str, &str), &[u8]>,
    rows: &[crate::stats::Row],
) -> Result<(), SpoolError> {
    use crate::stats::Counts;
    for row in rows {
        let key = (row.minute, row.provider.as_str(), row.class);
        let mut counts = table
            .get(key)
            .map_err(storage)?
            .and_then(|v| Counts::decode(v.value()))
            .unwrap_or_default();
        counts.add(&row.counts);
        table
            .insert(key, counts.encode().as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

fn all_done(groups: &redb::Table<(u128, &str), &[u8]>, id: u128) -> Result<bool, SpoolError> {
    for entry in groups.range((id, "")..).map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        if key.value().0 != id {
            break;
        }
        let group: Group = serde_json::from_slice(value.value()).map_err(storage)?;
        if !group.is_done() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(value).map_err(storage)
}

#[async_trait::async_trait]
impl Spool for RedbSpool {
    fn submit(&self, ops: Vec<Op>) -> Committing {
        let (done, wait) = oneshot::channel();
        let sent = match self.tx.as_ref() {
            Some(tx) => tx.send(Batch { ops, done }).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(SpoolError::Closed);
            }
            wait.await.map_err(|_| SpoolError::Closed)?
        })
    }

    fn body(&self, id: MessageId) -> Result<Option<Bytes>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let bodies = txn.open_table(BODIES).map_err(storage)?;
        let body = bodies.get(id.as_u128()).map_err(storage)?;
        Ok(body.map(|b| Bytes::copy_from_slice(b.value())))
    }

    fn record(&self, id: MessageId) -> Result<Option<Record>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
        let Some(env) = envelopes.get(id.as_u128()).map_err(storage)? else {
            return Ok(None);
        };
        let envelope: Envelope = serde_json::from_slice(env.value()).map_err(storage)?;
        let table = txn.open_table(GROUPS).map_err(storage)?;
        let mut groups = Vec::new();
        for entry in table.range((id.as_u128(), "")..).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            if key.value().0 != id.as_u128() {
                break;
            }
            groups.push(serde_json::from_slice(value.value()).map_err(storage)?);
        }
        Ok(Some((envelope, groups)))
    }

    fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut recovered = Recovered::default();
        let mut bad_groups: Vec<(u128, String, Vec<u8>)> = Vec::new();
        let mut bad_envelopes: BTreeSet<u128> = BTreeSet::new();
        {
            // Held for the whole transaction: a reopen waits for it.
            let db = self.db.get()?;
            let txn = db.begin_read().map_err(storage)?;
            let envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
            let bodies = txn.open_table(BODIES).map_err(storage)?;
            let groups = txn.open_table(GROUPS).map_err(storage)?;
            // Per message: when it came, whether from the null sender, and its stream; or
            // unusable.
            let mut cache: HashMap<u128, Option<(Timestamp, bool, Option<String>)>> =
                HashMap::new();
            for entry in groups.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let (id, domain) = key.value();
                let group: Group = match serde_json::from_slice(value.value()) {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(id = %uuid::Uuid::from_u128(id), domain, error = %e, "spool: unreadable recipient group set aside");
                        bad_groups.push((id, domain.to_string(), value.value().to_vec()));
                        continue;
                    }
                };
                let Some(next_attempt) = group.next_attempt.filter(|_| !group.is_done()) else {
                    continue;
                };
                let envelope = cache.entry(id).or_insert_with(|| {
                    let env = envelopes.get(id).ok().flatten()?;
                    let has_body = bodies.get(id).ok().flatten().is_some();
                    match serde_json::from_slice::<Envelope>(env.value()) {
                        Ok(env) if has_body => {
                            Some((env.received_at, env.is_null_sender(), env.stream))
                        }
                        Ok(_) => {
                            tracing::error!(id = %uuid::Uuid::from_u128(id), "spool: message without a body set aside");
                            None
                        }
                        Err(e) => {
                            tracing::error!(id = %uuid::Uuid::from_u128(id), error = %e, "spool: unreadable envelope set aside");
                            None
                        }
                    }
                });
                match envelope {
                    Some((received_at, null_sender, stream)) => {
                        let (pending, deferred) = group.counts();
                        recovered.pending.push(Waiting {
                            id: MessageId::from_u128(id),
                            domain: domain.to_string(),
                            received_at: *received_at,
                            null_sender: *null_sender,
                            stream: stream.clone(),
                            pending,
                            deferred,
                            next_attempt,
                            mailbox: group.mailbox(),
                            not_before: group.greylisted_until(),
                        });
                    }
                    None => {
                        bad_envelopes.insert(id);
                        bad_groups.push((id, domain.to_string(), value.value().to_vec()));
                    }
                }
            }
        }
        recovered.set_aside = bad_groups.len();
        if !bad_groups.is_empty() {
            self.set_aside(bad_groups, bad_envelopes)?;
        }
        Ok(recovered)
    }

    fn suppressions(
        &self,
    ) -> Result<Vec<(String, crate::policy::suppress::Suppression)>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(SUPPRESSIONS).map_err(storage)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            match serde_json::from_slice(v.value()) {
                Ok(s) => all.push((k.value().to_string(), s)),
                Err(e) => {
                    tracing::error!(address = k.value(), error = %e, "unreadable suppression entry skipped")
                }
            }
        }
        Ok(all)
    }

    fn outbox_read(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(OUTBOX).map_err(storage)?;
        let mut entries = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(storage)?
            .take(limit)
        {
            let (seq, event) = entry.map_err(storage)?;
            entries.push((seq.value(), event.value().to_vec()));
        }
        Ok(entries)
    }

    fn source_states(&self) -> Result<Vec<SourceRecord>, SpoolError> {
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(SOURCES).map_err(storage)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (source, provider) = k.value();
            match serde_json::from_slice(v.value()) {
                Ok(state) => all.push(SourceRecord {
                    source: source.to_string(),
                    provider: provider.to_string(),
                    state,
                }),
                Err(e) => {
                    tracing::error!(source, provider, error = %e, "unreadable source state skipped: its warm-up starts again at day 1 and its hour and day are counted from now")
                }
            }
        }
        Ok(all)
    }

    fn suspended(
        &self,
    ) -> Result<Vec<(crate::control::Target, crate::control::Suspension)>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(SUSPENDED).map_err(storage)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let target = crate::control::Target::from_key(k.value());
            match (target, serde_json::from_slice(v.value())) {
                (Some(t), Ok(s)) => all.push((t, s)),
                _ => tracing::error!(key = k.value(), "unreadable suspension skipped"),
            }
        }
        Ok(all)
    }

    fn stats_visit(
        &self,
        minutes: std::ops::Range<u32>,
        visit: &mut dyn FnMut(u32, &str, &str, &crate::stats::Counts),
    ) -> Result<(), SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(STATS).map_err(storage)?;
        for entry in table
            .range((minutes.start, "", "")..(minutes.end, "", ""))
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let (minute, provider, class) = key.value();
            match crate::stats::Counts::decode(value.value()) {
                Some(counts) => visit(minute, provider, class, &counts),
                None => tracing::warn!(minute, provider, class, "unreadable stats cell skipped"),
            }
        }
        Ok(())
    }

    fn outbox_cursors(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(OUTBOX_STATE).map_err(storage)?;
        let mut cursors = Vec::new();
        for entry in table.range(CURSOR_PREFIX..).map_err(storage)? {
            let (key, seq) = entry.map_err(storage)?;
            match key.value().strip_prefix(CURSOR_PREFIX) {
                Some(name) => cursors.push((name.to_string(), seq.value())),
                None => break,
            }
        }
        Ok(cursors)
    }

    fn outbox_tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tip.clone()
    }

    fn ids_in(
        &self,
        range: std::ops::RangeInclusive<u128>,
        at_most: usize,
    ) -> Result<Vec<MessageId>, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
        let mut ids = Vec::new();
        for entry in envelopes.range(range).map_err(storage)?.take(at_most) {
            let (key, _) = entry.map_err(storage)?;
            ids.push(MessageId::from_u128(key.value()));
        }
        Ok(ids)
    }

    fn scan_pending(
        &self,
        after: Option<MessageId>,
        visit: &mut dyn FnMut(&Envelope, Group) -> std::ops::ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        let start = match after {
            None => 0,
            Some(id) => match id.as_u128().checked_add(1) {
                Some(next) => next,
                None => return Ok(()),
            },
        };
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
        let groups = txn.open_table(GROUPS).map_err(storage)?;
        // The envelope of the message whose groups are being read.
        let mut current: Option<(u128, Option<Envelope>)> = None;
        for entry in groups.range((start, "")..).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let id = key.value().0;
            let Ok(group) = serde_json::from_slice::<Group>(value.value()) else {
                continue;
            };
            if group.is_done() {
                continue;
            }
            if current.as_ref().is_none_or(|(c, _)| *c != id) {
                let envelope = envelopes
                    .get(id)
                    .map_err(storage)?
                    .and_then(|v| serde_json::from_slice::<Envelope>(v.value()).ok());
                current = Some((id, envelope));
            }
            let Some((_, Some(envelope))) = &current else {
                continue;
            };
            if visit(envelope, group).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn purge(&self, before: Timestamp) -> Result<usize, SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_write().map_err(storage)?;
        let mut purged = 0;
        {
            let mut history = txn.open_table(HISTORY).map_err(storage)?;
            let mut envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
            let mut groups = txn.open_table(GROUPS).map_err(storage)?;
            let old: Vec<(u64, u128)> = history
                .range(..(before.millis(), 0))
                .map_err(storage)?
                .filter_map(|e| e.ok().map(|(k, _)| k.value()))
                .collect();
            for (at, id) in old {
                history.remove((at, id)).map_err(storage)?;
                envelopes.remove(id).map_err(storage)?;
                let mut domains = Vec::new();
                for entry in groups.range((id, "")..).map_err(storage)? {
                    let (key, _) = entry.map_err(storage)?;
                    let (gid, domain) = key.value();
                    if gid != id {
                        break;
                    }
                    domains.push(domain.to_string());
                }
                for d in domains {
                    groups.remove((id, d.as_str())).map_err(storage)?;
                }
                purged += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(purged)
    }
}

impl RedbSpool {
    /// Moves unreadable entries to the `set_aside` table, out of the queue's way.
    fn set_aside(
        &self,
        bad_groups: Vec<(u128, String, Vec<u8>)>,
        bad_envelopes: BTreeSet<u128>,
    ) -> Result<(), SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut aside = txn.open_table(SET_ASIDE).map_err(storage)?;
            let mut groups = txn.open_table(GROUPS).map_err(storage)?;
            let mut envelopes = txn.open_table(ENVELOPES).map_err(storage)?;
            let mut bodies = txn.open_table(BODIES).map_err(storage)?;
            for (id, domain, raw) in &bad_groups {
                let key = format!("group/{}/{domain}", uuid::Uuid::from_u128(*id));
                aside
                    .insert(key.as_str(), raw.as_slice())
                    .map_err(storage)?;
                groups.remove((*id, domain.as_str())).map_err(storage)?;
            }
            for id in bad_envelopes {
                let name = uuid::Uuid::from_u128(id);
                if let Some(raw) = envelopes
                    .remove(id)
                    .map_err(storage)?
                    .map(|v| v.value().to_vec())
                {
                    aside
                        .insert(format!("envelope/{name}").as_str(), raw.as_slice())
                        .map_err(storage)?;
                }
                if let Some(raw) = bodies
                    .remove(id)
                    .map_err(storage)?
                    .map(|v| v.value().to_vec())
                {
                    aside
                        .insert(format!("body/{name}").as_str(), raw.as_slice())
                        .map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)
    }

    /// Writes raw bytes under a group key, as a damaged disk might; for tests.
    #[doc(hidden)]
    pub fn corrupt_group_for_test(
        &self,
        id: MessageId,
        domain: &str,
        raw: &[u8],
    ) -> Result<(), SpoolError> {
        // Held for the whole transaction: a reopen waits for it.
        let db = self.db.get()?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(GROUPS)
            .map_err(storage)?
            .insert((id.as_u128(), domain), raw)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::message::{State, group_by_domain, new_id};

    fn message(rcpts: &[&str]) -> NewMessage {
        let rcpts: Vec<crate::message::Rcpt> = rcpts
            .iter()
            .map(|r| Address::parse(r).unwrap().into())
            .collect();
        let id = new_id();
        NewMessage {
            envelope: Envelope {
                id,
                from: "s@a.test".into(),
                received_at: Timestamp::now(),
                size: 5,
                source: "test".into(),
                stream: None,
                done_at: None,
                params: Default::default(),
            },
            groups: group_by_domain(&rcpts, Timestamp::now()),
            body: Bytes::from_static(b"hello"),
        }
    }

    #[tokio::test]
    async fn stores_updates_recovers_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let m = message(&["a@x.test", "b@y.test"]);
        let id = m.envelope.id;
        {
            let spool = RedbSpool::open(dir.path()).unwrap();
            spool.commit(vec![Op::Store(m.clone())]).await.unwrap();
            let mut x = m.groups[0].clone();
            x.recipients[0].state = State::Delivered;
            x.next_attempt = None;
            spool
                .commit(vec![Op::Update { id, group: x }])
                .await
                .unwrap();
        }
        let spool = RedbSpool::open(dir.path()).unwrap();
        let recovered = spool.recover().unwrap();
        assert_eq!(recovered.pending.len(), 1, "only y.test is pending");
        assert_eq!(recovered.pending[0].domain, "y.test");
        assert_eq!(spool.body(id).unwrap().as_deref(), Some(&b"hello"[..]));

        let mut y = m.groups[1].clone();
        y.recipients[0].state = State::Bounced;
        spool
            .commit(vec![Op::Update { id, group: y }])
            .await
            .unwrap();
        assert_eq!(
            spool.body(id).unwrap(),
            None,
            "body goes when every group is final"
        );
        let (env, groups) = spool.record(id).unwrap().unwrap();
        assert!(env.done_at.is_some());
        assert_eq!(groups.len(), 2);
        assert_eq!(spool.recover().unwrap().pending.len(), 0);

        assert_eq!(spool.purge(Timestamp(0)).unwrap(), 0);
        assert_eq!(
            spool
                .purge(Timestamp::now() + std::time::Duration::from_secs(1))
                .unwrap(),
            1
        );
        assert!(spool.record(id).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_source_s_warm_up_and_counts_survive_a_reopen() {
        use crate::policy::quota::{Period, Used};
        let dir = tempfile::tempdir().unwrap();
        let state = |day: u32, used: u32| SourceState {
            warmup: Some(crate::policy::warmup::WarmupState {
                day,
                ..crate::policy::warmup::WarmupState::new(Timestamp(0))
            }),
            used: vec![Used {
                period: Period::Hour,
                window: Timestamp(3_600_000),
                used,
            }],
        };
        {
            let spool = RedbSpool::open(dir.path()).unwrap();
            assert!(spool.source_states().unwrap().is_empty());
            for (provider, day, used) in [("google", 3, 10), ("google", 4, 11), ("yahoo", 1, 5)] {
                spool
                    .commit(vec![Op::Source(SourceRecord {
                        source: "new-ip".into(),
                        provider: provider.into(),
                        state: state(day, used),
                    })])
                    .await
                    .unwrap();
            }
        }
        let spool = RedbSpool::open(dir.path()).unwrap();
        let kept = spool.source_states().unwrap();
        let got: Vec<(&str, SourceState)> = kept
            .iter()
            .map(|r| (r.provider.as_str(), r.state.clone()))
            .collect();
        assert_eq!(
            got,
            [("google", state(4, 11)), ("yahoo", state(1, 5))],
            "the last of each"
        );
        assert!(kept.iter().all(|r| r.source == "new-ip"));
    }

    #[tokio::test]
    async fn ids_are_found_by_range_and_pending_groups_scanned_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path()).unwrap();
        let mut messages: Vec<NewMessage> =
            (0..4).map(|_| message(&["a@x.test", "b@y.test"])).collect();
        messages.sort_by_key(|m| m.envelope.id);
        let ops = messages.iter().cloned().map(Op::Store).collect();
        spool.commit(ops).await.unwrap();
        // The second message is delivered at x.test: only its y.test group is pending.
        let mut x = messages[1].groups[0].clone();
        x.recipients[0].state = State::Delivered;
        x.next_attempt = None;
        let second = messages[1].envelope.id;
        spool
            .commit(vec![Op::Update {
                id: second,
                group: x,
            }])
            .await
            .unwrap();

        let ids: Vec<MessageId> = messages.iter().map(|m| m.envelope.id).collect();
        assert_eq!(spool.ids_in(0..=u128::MAX, usize::MAX).unwrap(), ids);
        assert_eq!(spool.ids_in(0..=u128::MAX, 2).unwrap(), ids[..2]);
        let one = ids[2].as_u128();
        assert_eq!(spool.ids_in(one..=one, 10).unwrap(), [ids[2]]);

        let scan = |after: Option<MessageId>, stop_after: usize| {
            let mut seen = Vec::new();
            spool
                .scan_pending(after, &mut |env, group| {
                    seen.push((env.id, group.domain));
                    match seen.len() >= stop_after {
                        true => std::ops::ControlFlow::Break(()),
                        false => std::ops::ControlFlow::Continue(()),
                    }
                })
                .unwrap();
            seen
        };
        let all = scan(None, usize::MAX);
        let expected: Vec<(MessageId, String)> = ids
            .iter()
            .flat_map(|id| [(*id, "x.test".to_string()), (*id, "y.test".to_string())])
            .filter(|(id, d)| !(*id == second && d == "x.test"))
            .collect();
        assert_eq!(all, expected);
        assert_eq!(scan(Some(second), usize::MAX), expected[3..]);
        assert_eq!(scan(None, 3), expected[..3]);
    }

    #[tokio::test]
    async fn corrupt_entries_are_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path()).unwrap();
        let good = message(&["a@x.test"]);
        let bad = message(&["b@x.test"]);
        spool
            .commit(vec![Op::Store(good.clone()), Op::Store(bad.clone())])
            .await
            .unwrap();
        spool
            .corrupt_group_for_test(bad.envelope.id, "x.test", b"{not json")
            .unwrap();
        let recovered = spool.recover().unwrap();
        assert_eq!(recovered.set_aside, 1);
        assert_eq!(recovered.pending.len(), 1);
        assert_eq!(recovered.pending[0].id, good.envelope.id);
        // Set aside once: the next start is clean.
        assert_eq!(spool.recover().unwrap().set_aside, 0);
    }

    fn event(n: u32) -> crate::event::Event {
        let mut e = crate::event::Event::new(
            crate::event::Kind::Delivered,
            Timestamp::now(),
            format!("m{n}"),
            format!("r{n}@x.test"),
            "x.test".into(),
            "s@a.test".into(),
        );
        e.id = format!("e{n}");
        e
    }

    fn ids(entries: &[OutboxEntry]) -> Vec<(u64, String)> {
        entries
            .iter()
            .map(|(seq, raw)| {
                let e: crate::event::Event = serde_json::from_slice(raw).unwrap();
                (*seq, e.id)
            })
            .collect()
    }

    #[tokio::test]
    async fn outbox_keeps_events_until_every_webhook_sent_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path()).unwrap();
        let cursor = |webhook: &str, seq| Op::OutboxCursor {
            webhook: webhook.into(),
            seq,
        };
        spool
            .commit(vec![cursor("a", 0), cursor("b", 0)])
            .await
            .unwrap();
        // Committed with the change they tell of, numbered in commit order.
        let m = message(&["a@x.test"]);
        spool
            .commit(vec![Op::Store(m), Op::Outbox(vec![event(1), event(2)])])
            .await
            .unwrap();
        spool
            .commit(vec![Op::Outbox(vec![event(3)])])
            .await
            .unwrap();
        assert_eq!(*spool.outbox_tip().borrow(), 3);
        assert_eq!(
            ids(&spool.outbox_read(1, 10).unwrap()),
            vec![(2, "e2".to_string()), (3, "e3".to_string())]
        );
        assert_eq!(spool.outbox_read(0, 1).unwrap().len(), 1);

        // Trimmed only up to the slower webhook.
        spool
            .commit(vec![cursor("a", 3), cursor("b", 1)])
            .await
            .unwrap();
        assert_eq!(ids(&spool.outbox_read(0, 10).unwrap()).len(), 2);
        spool.commit(vec![cursor("b", 3)]).await.unwrap();
        assert!(spool.outbox_read(0, 10).unwrap().is_empty());
        drop(spool);

        // Numbers go on after a restart with an empty outbox; cursors are kept.
        let spool = RedbSpool::open(dir.path()).unwrap();
        assert_eq!(*spool.outbox_tip().borrow(), 3);
        spool
            .commit(vec![Op::Outbox(vec![event(4)])])
            .await
            .unwrap();
        assert_eq!(
            ids(&spool.outbox_read(3, 10).unwrap()),
            vec![(4, "e4".to_string())]
        );
        let mut cursors = spool.outbox_cursors().unwrap();
        cursors.sort();
        assert_eq!(cursors, vec![("a".into(), 3), ("b".into(), 3)]);

        // With every webhook gone, nothing is kept.
        spool
            .commit(vec![
                Op::OutboxForget {
                    webhook: "a".into(),
                },
                Op::OutboxForget {
                    webhook: "b".into(),
                },
            ])
            .await
            .unwrap();
        assert!(spool.outbox_cursors().unwrap().is_empty());
        assert!(spool.outbox_read(0, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn stats_add_up_per_cell_and_old_minutes_are_deleted() {
        use crate::stats::{Counts, Row};
        let dir = tempfile::tempdir().unwrap();
        let row = |minute, provider: &str, class, deferred| Row {
            minute,
            provider: provider.into(),
            class,
            counts: Counts {
                attempts: deferred,
                deferred,
                ..Counts::default()
            },
        };
        let read = |spool: &RedbSpool, minutes| {
            let mut cells = Vec::new();
            spool
                .stats_visit(minutes, &mut |m, p, c, counts| {
                    cells.push((m, p.to_string(), c.to_string(), counts.deferred))
                })
                .unwrap();
            cells
        };
        {
            let spool = RedbSpool::open(dir.path()).unwrap();
            let add = vec![
                row(100, "google", "greylist", 2),
                row(101, "google", "greylist", 1),
                row(101, "yahoo", "throttle", 5),
                row(200, "google", "", 0),
            ];
            spool
                .commit(vec![Op::Stats {
                    add,
                    forget_before: None,
                }])
                .await
                .unwrap();
            // A second flush for the same minute adds to it.
            spool
                .commit(vec![Op::Stats {
                    add: vec![row(101, "google", "greylist", 3)],
                    forget_before: None,
                }])
                .await
                .unwrap();
        }
        // Kept across a restart, read by range of minutes in key order.
        let spool = RedbSpool::open(dir.path()).unwrap();
        let s = |t: &str| t.to_string();
        assert_eq!(
            read(&spool, 101..200),
            [
                (101, s("google"), s("greylist"), 4),
                (101, s("yahoo"), s("throttle"), 5)
            ]
        );
        assert_eq!(read(&spool, 0..u32::MAX).len(), 4);
        // Retention: minutes before 101 go, the rest stay.
        spool
            .commit(vec![Op::Stats {
                add: Vec::new(),
                forget_before: Some(101),
            }])
            .await
            .unwrap();
        let left: Vec<u32> = read(&spool, 0..u32::MAX).iter().map(|c| c.0).collect();
        assert_eq!(left, [101, 101, 200]);
    }

    #[tokio::test]
    async fn concurrent_writers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(RedbSpool::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                spool.commit(vec![Op::Store(message(&["a@x.test"]))]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(spool.recover().unwrap().pending.len(), 200);
    }
}
