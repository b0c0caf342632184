//! A fleet of knock nodes (`[cluster] redis`, docs/fleet.md): each node keeps its own spool
//! and tells Redis it is alive every heartbeat (a key that expires after three), and reads
//! back who else is. The nodes alive share every configured limit: each takes `1/N` of it
//! (`Config::share_of`), applied through the reloader whenever N changes. The suppression
//! list is shared too: at each heartbeat the changes made on this node go to a hash of the
//! whole list and a stream of changes, and the others' changes come back from the stream
//! (kept in this node's spool before they apply). A refusal for being too fast is passed on
//! at once through a stream the others read every quarter second, and slows their
//! destinations of that provider as if they had been refused themselves. While Redis
//! cannot be reached, a node
//! keeps the last N it read (or `[cluster] nodes` before it read one), keeps its changes
//! for later and goes on delivering: no limit is exceeded by more than the shares allow,
//! and nothing waits for Redis.

use crate::config::ClusterConfig;
use crate::engine::handle::SchedulerHandle;
use crate::engine::ingest::Intake;
use crate::engine::scheduler::Input;
use crate::event::{Event, Kind};
use crate::outcome::Class;
use crate::policy::suppress::{Change, Suppression};
use crate::time::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A node as it tells the others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    /// Where it takes SMTP and HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    pub started: Timestamp,
}

/// What this node knows of the fleet (`GET /api/v1/fleet`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// This node.
    pub node: String,
    /// The last heartbeat reached Redis.
    pub redis_up: bool,
    /// The nodes alive at the last heartbeat that reached Redis, by name.
    pub nodes: Vec<Member>,
    /// How many nodes this node's limits are shared by (it takes `1/share` of each).
    pub share: usize,
    /// When Redis last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Timestamp>,
    /// Why the last heartbeat failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The fleet as this node sees it, shared with the API.
pub type Shared = Arc<RwLock<FleetView>>;

pub struct Fleet {
    conn: ConnectionManager,
    me: Member,
    prefix: String,
    heartbeat: Duration,
    view: Shared,
    /// The last entry of the stream of suppression changes this node has applied; `None`
    /// until the whole list has been read (at the first contact, and again after Redis
    /// was lost).
    suppressions_seen: Option<String>,
    /// The last entry of the stream of refusals read; `None` until the first read, which
    /// starts [`RECENT_REFUSALS`] back.
    refusals_seen: Option<String>,
}

/// Entries kept in the stream of suppression changes: a node away for longer than this
/// many changes reads the whole list again when it is back.
const CHANGES_KEPT: u64 = 100_000;

/// Refusals kept in their stream (they matter for seconds).
const REFUSALS_KEPT: u64 = 1_000;

/// How far back, in milliseconds, a node starting takes the others' refusals.
const RECENT_REFUSALS: u64 = 2_000;

/// How often a node reads the others' refusals, at most: one refused by a receiver slows
/// the rest within about this (plus a round trip).
const REFUSALS_EVERY: Duration = Duration::from_millis(250);

/// Adds to `pipe` an entry of this node's to `stream` (trimmed to about `kept`): `node`,
/// and `field` with `value`.
fn xadd(pipe: &mut redis::Pipeline, stream: &str, kept: u64, node: &str, field: &str, value: &str) {
    pipe.cmd("XADD")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(kept)
        .arg("*")
        .arg("node")
        .arg(node)
        .arg(field)
        .arg(value)
        .ignore();
}

/// The value of `name` among a stream entry's fields (name, value, name, value …).
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

/// Hears this node's refusals for being too fast as they are emitted, for the fleet: the
/// provider of each deferral of the throttle class (not a mailbox over its own rate,
/// 4.2.x, nor knock's own holding back).
pub struct RefusalObserver(tokio::sync::mpsc::UnboundedSender<String>);

impl RefusalObserver {
    pub fn new() -> (RefusalObserver, Refusals) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (RefusalObserver(tx), Refusals(rx))
    }
}

/// The providers that refused this node, as [`RefusalObserver`] heard them.
pub struct Refusals(tokio::sync::mpsc::UnboundedReceiver<String>);

impl crate::event::Observer for RefusalObserver {
    fn observe(&self, e: &Event) {
        let throttled = e.event == Kind::Deferred
            && e.class == Some(Class::Throttle)
            && !e.internal
            && e.enhanced.is_none_or(|x| x.subject != 2);
        if let (true, Some(provider)) = (throttled, &e.provider) {
            let _ = self.0.send(provider.clone());
        }
    }
}

/// What `[cluster]` names this node: `node`, else the SMTP host name.
pub fn node_name(cluster: &ClusterConfig, hostname: &str) -> String {
    cluster.node.clone().unwrap_or_else(|| hostname.to_string())
}

impl Fleet {
    /// A node of the fleet `cluster` describes; it connects when it first needs Redis.
    /// `None` without `[cluster] redis`.
    pub fn new(cluster: &ClusterConfig, me: Member) -> anyhow::Result<Option<Fleet>> {
        let Some(url) = &cluster.redis else {
            return Ok(None);
        };
        let client = match &cluster.ca {
            // A private CA: Redis's chain must end at it.
            Some(ca) => {
                let root = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("cluster.ca: reading {}: {e}", ca.display()))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(url.as_str(), certs)
            }
            None => redis::Client::open(url.as_str()),
        }
        .map_err(|e| anyhow::anyhow!("cluster.redis: {e}"))?;
        // A heartbeat never waits long: a Redis that does not answer is one that is down.
        let wait = cluster.heartbeat.max(Duration::from_millis(500));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(wait))
            .set_response_timeout(Some(wait))
            .set_number_of_retries(1)
            .set_max_delay(cluster.heartbeat);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cluster.redis: {e}"))?;
        let view = Arc::new(RwLock::new(FleetView {
            node: me.node.clone(),
            redis_up: false,
            nodes: Vec::new(),
            share: cluster.nodes.max(1),
            last_contact: None,
            error: None,
        }));
        Ok(Some(Fleet {
            conn,
            me,
            prefix: cluster.prefix.clone(),
            heartbeat: cluster.heartbeat,
            view,
            suppressions_seen: None,
            refusals_seen: None,
        }))
    }

    pub fn view(&self) -> Shared {
        self.view.clone()
    }

    fn key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// One heartbeat: this node's key set to expire after three heartbeats, then every
    /// node's key read back. Two round trips, and one more per hundred nodes.
    async fn beat(&mut self) -> redis::RedisResult<Vec<Member>> {
        let me = serde_json::to_string(&self.me).expect("a member serializes");
        let ttl = (self.heartbeat * 3).as_millis() as u64;
        redis::cmd("SET")
            .arg(self.key(&self.me.node))
            .arg(me)
            .arg("PX")
            .arg(ttl)
            .query_async::<()>(&mut self.conn)
            .await?;
        let pattern = format!("{}:node:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(100)
                .query_async(&mut self.conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let values: Vec<Option<String>> = match keys.is_empty() {
            true => Vec::new(),
            false => {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut self.conn)
                    .await?
            }
        };
        let mut members: Vec<Member> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        members.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(members)
    }

    /// Passes this node's suppression changes on and applies the others'. The first time
    /// (and after Redis was lost), the whole list: each side gets what the other has (a
    /// removal made while this node could not hear of it is not undone here).
    async fn sync_suppressions(&mut self, intake: &Intake) -> anyhow::Result<()> {
        let list = format!("{}:suppressed", self.prefix);
        let stream = format!("{}:suppressions", self.prefix);
        let mine = intake.suppressions.take_changes();
        if !mine.is_empty() {
            let mut pipe = redis::pipe();
            for c in &mine {
                match c {
                    Change::Add { address, entry } => {
                        let entry = serde_json::to_string(entry)?;
                        pipe.cmd("HSET").arg(&list).arg(address).arg(entry).ignore();
                    }
                    Change::Remove { address } => {
                        pipe.cmd("HDEL").arg(&list).arg(address).ignore();
                    }
                }
                let change = serde_json::to_string(c)?;
                xadd(
                    &mut pipe,
                    &stream,
                    CHANGES_KEPT,
                    &self.me.node,
                    "change",
                    &change,
                );
            }
            if let Err(e) = pipe.query_async::<()>(&mut self.conn).await {
                intake.suppressions.put_back(mine);
                return Err(e.into());
            }
        }
        let seen = match self.suppressions_seen.clone() {
            Some(seen) => seen,
            None => {
                // Where the stream ends now, then the whole list: nothing falls between.
                let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.conn)
                    .await?;
                let theirs: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(&list)
                    .query_async(&mut self.conn)
                    .await?;
                for (address, entry) in &theirs {
                    if intake.suppressions.contains(address) {
                        continue;
                    }
                    if let Ok(entry) = serde_json::from_str::<Suppression>(entry) {
                        let change = Change::Add {
                            address: address.clone(),
                            entry,
                        };
                        intake.apply_suppression(&change).await?;
                    }
                }
                let mut pipe = redis::pipe();
                let mut missing = 0;
                // What only this node has goes to the list and, for the nodes that read
                // only the stream, as changes.
                for (address, entry) in intake.suppressions.list() {
                    if !theirs.contains_key(&address) {
                        let json = serde_json::to_string(&entry)?;
                        pipe.cmd("HSETNX")
                            .arg(&list)
                            .arg(&address)
                            .arg(json)
                            .ignore();
                        let change = serde_json::to_string(&Change::Add { address, entry })?;
                        xadd(
                            &mut pipe,
                            &stream,
                            CHANGES_KEPT,
                            &self.me.node,
                            "change",
                            &change,
                        );
                        missing += 1;
                    }
                }
                if missing > 0 {
                    pipe.query_async::<()>(&mut self.conn).await?;
                }
                tracing::info!(
                    from_fleet = theirs.len(),
                    to_fleet = missing,
                    "fleet: suppression list merged"
                );
                let seen = last.first().map_or("0-0".to_string(), |(id, _)| id.clone());
                self.suppressions_seen = Some(seen.clone());
                seen
            }
        };
        for (id, fields) in self.entries_after(&stream, &seen).await? {
            let from_me = field(&fields, "node") == Some(self.me.node.as_str());
            let change =
                field(&fields, "change").and_then(|c| serde_json::from_str::<Change>(c).ok());
            if let (false, Some(change)) = (from_me, change) {
                intake.apply_suppression(&change).await?;
            }
            self.suppressions_seen = Some(id);
        }
        Ok(())
    }

    /// Passes this node's refusals on (one entry per provider, however many recipients
    /// the refusal deferred).
    async fn publish_refusals(&mut self, providers: &[String]) -> redis::RedisResult<()> {
        let stream = format!("{}:refusals", self.prefix);
        let mut pipe = redis::pipe();
        for provider in providers {
            xadd(
                &mut pipe,
                &stream,
                REFUSALS_KEPT,
                &self.me.node,
                "provider",
                provider,
            );
        }
        pipe.query_async::<()>(&mut self.conn).await
    }

    /// The entries of `stream` after the one with id `after` (1,000 at most): id and fields.
    async fn entries_after(
        &mut self,
        stream: &str,
        after: &str,
    ) -> redis::RedisResult<Vec<(String, Vec<String>)>> {
        redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut self.conn)
            .await
    }

    /// The providers that refused other nodes since the last read.
    async fn read_refusals(&mut self) -> redis::RedisResult<Vec<String>> {
        let stream = format!("{}:refusals", self.prefix);
        // The first read takes the last few seconds' refusals (entry ids are Redis's
        // milliseconds): older ones are over, a newer one may have come while this node
        // was starting.
        let seen = self.refusals_seen.clone().unwrap_or_else(|| {
            let recent = Timestamp::now().millis().saturating_sub(RECENT_REFUSALS);
            format!("{recent}-0")
        });
        let mut providers: Vec<String> = Vec::new();
        for (id, fields) in self.entries_after(&stream, &seen).await? {
            if field(&fields, "node") != Some(self.me.node.as_str())
                && let Some(p) = field(&fields, "provider")
                && !providers.iter().any(|q| q == p)
            {
                providers.push(p.to_string());
            }
            self.refusals_seen = Some(id);
        }
        Ok(providers)
    }

    /// Beats until `shutdown`, telling `apply` the fleet's size whenever it changes (and
    /// once at the start), passing suppressions on both ways and refusals to the
    /// scheduler, then takes this node out of the fleet.
    pub async fn run<F, Fut>(
        mut self,
        apply: F,
        intake: std::sync::Arc<Intake>,
        scheduler: SchedulerHandle,
        mut refusals: Refusals,
        shutdown: CancellationToken,
    ) where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut applied = self.view.read().expect("fleet view").share;
        apply(applied).await;
        intake.suppressions.share();
        crate::metrics::fleet(applied, false);
        loop {
            let wait = self.heartbeat.max(Duration::from_millis(500));
            let beat = tokio::time::timeout(wait, self.beat()).await;
            if let Ok(Ok(_)) = &beat {
                let synced = tokio::time::timeout(wait, self.sync_suppressions(&intake)).await;
                let failed = match synced {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("suppression list: {e:#}")),
                    Err(_) => Some("suppression list: no answer within the heartbeat".into()),
                };
                if let Some(e) = failed {
                    tracing::warn!(error = e, "fleet: the suppression list could not be shared");
                    self.suppressions_seen = None;
                }
            } else {
                // Read the whole list again once Redis is back.
                self.suppressions_seen = None;
            }
            let share = {
                let mut v = self.view.write().expect("fleet view");
                match beat {
                    Ok(Ok(members)) => {
                        if !v.redis_up {
                            tracing::info!(nodes = members.len(), "fleet: Redis reached");
                        }
                        v.redis_up = true;
                        v.error = None;
                        v.last_contact = Some(Timestamp::now());
                        // This node counts even before its own key can be read back.
                        let mut n = members.len();
                        if !members.iter().any(|m| m.node == self.me.node) {
                            n += 1;
                        }
                        v.share = n.max(1);
                        v.nodes = members;
                    }
                    failed => {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "no answer within the heartbeat".to_string(),
                        };
                        if v.redis_up || v.error.is_none() {
                            tracing::warn!(
                                error,
                                share = v.share,
                                "fleet: Redis cannot be reached; each limit stays shared by the last fleet size"
                            );
                        }
                        v.redis_up = false;
                        v.error = Some(error);
                    }
                }
                crate::metrics::fleet(v.share, v.redis_up);
                v.share
            };
            if share != applied {
                tracing::info!(
                    from = applied,
                    to = share,
                    "fleet: nodes sharing the limits"
                );
                apply(share).await;
                applied = share;
            }
            // Until the next heartbeat: this node's refusals go out as they come, the
            // others' are read every quarter second.
            let next_beat = tokio::time::Instant::now() + self.heartbeat;
            loop {
                let poll = (tokio::time::Instant::now() + REFUSALS_EVERY).min(next_beat);
                tokio::select! {
                    _ = tokio::time::sleep_until(poll) => {}
                    Some(first) = refusals.0.recv() => {
                        let mut providers = vec![first];
                        while let Ok(p) = refusals.0.try_recv() {
                            if !providers.contains(&p) {
                                providers.push(p);
                            }
                        }
                        let sent = tokio::time::timeout(wait, self.publish_refusals(&providers)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            tracing::debug!(?providers, "fleet: a refusal could not be passed on");
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
                if let Ok(Ok(providers)) = tokio::time::timeout(wait, self.read_refusals()).await {
                    for provider in providers {
                        tracing::info!(
                            provider,
                            "fleet: another node was refused as too fast; slowing down"
                        );
                        scheduler.input(Input::PeerRefused { provider });
                    }
                }
                if tokio::time::Instant::now() >= next_beat {
                    break;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        let key = self.key(&self.me.node);
        let mut del = redis::cmd("DEL");
        del.arg(key);
        let gone = del.query_async::<()>(&mut self.conn);
        let _ = tokio::time::timeout(Duration::from_secs(1), gone).await;
    }
}
