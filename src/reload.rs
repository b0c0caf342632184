//! Reloading the configuration while knock runs (SIGHUP, `POST /api/v1/reload`): the file
//! is read and validated as at start; a bad file is refused whole and the running
//! configuration kept. What can change in flight is applied: shaping, `[adapt]`, the retry
//! schedule, greylisting, the classification rules (the rules file is read again even when
//! its name did not change), routes, the outbound TLS policy, API tokens and trusted
//! networks, and webhooks. Everything else (listen addresses, the spool, providers, ...)
//! needs a restart, and the answer says which keys.

use crate::config::{Access, Config, TlsConfig};
use crate::engine::handle::SchedulerHandle;
use crate::engine::scheduler::Policy;
use crate::engine::spool::Spool;
use crate::event::Events;
use crate::net::transport::Transport;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Sections changed and applied (`shaping`, `http.tokens`, `webhook`, ...).
    pub applied: Vec<String>,
    /// Keys that differ from the running configuration but take effect only at a restart.
    pub restart_needed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("knock runs on its embedded defaults (no --config file): there is nothing to reload")]
    NoFile,
    #[error("{0:#}")]
    Invalid(anyhow::Error),
}

/// The webhook senders running now, and how to stop them.
pub struct Senders {
    pub stop: CancellationToken,
    pub tasks: Vec<JoinHandle<()>>,
}

pub struct Reloader {
    path: std::sync::Mutex<Option<PathBuf>>,
    /// The configuration in force, and the one knock started with (what needs a restart
    /// is told against it until there is one).
    current: tokio::sync::Mutex<Config>,
    started: serde_json::Value,
    access: Arc<RwLock<Access>>,
    scheduler: SchedulerHandle,
    events: Events,
    spool: Arc<dyn Spool>,
    senders: tokio::sync::Mutex<Senders>,
    shutdown: CancellationToken,
    tls: Arc<RwLock<TlsConfig>>,
    transport: Arc<dyn Transport>,
    /// How many nodes share every limit (`[cluster]`); 1 alone.
    share: std::sync::atomic::AtomicUsize,
}

/// What a reloader works on, as the engine starts it.
pub struct Parts {
    pub config: Config,
    pub access: Arc<RwLock<Access>>,
    pub scheduler: SchedulerHandle,
    pub events: Events,
    pub spool: Arc<dyn Spool>,
    pub senders: Senders,
    pub shutdown: CancellationToken,
    pub tls: Arc<RwLock<TlsConfig>>,
    pub transport: Arc<dyn Transport>,
    /// How many nodes share every limit at the start.
    pub share: usize,
}

/// Top-level sections a reload applies as a whole.
const APPLIED: &[&str] = &[
    "shaping", "adapt", "retry", "greylist", "classify", "routes",
];

impl Reloader {
    pub fn new(p: Parts) -> Reloader {
        Reloader {
            path: std::sync::Mutex::new(None),
            started: serde_json::to_value(&p.config).unwrap_or_default(),
            current: tokio::sync::Mutex::new(p.config),
            access: p.access,
            scheduler: p.scheduler,
            events: p.events,
            spool: p.spool,
            senders: tokio::sync::Mutex::new(p.senders),
            shutdown: p.shutdown,
            tls: p.tls,
            transport: p.transport,
            share: std::sync::atomic::AtomicUsize::new(p.share.max(1)),
        }
    }

    /// `nodes` nodes share every limit from now on (a fleet grew or shrank): the
    /// scheduler takes this node's part of the configuration in force.
    pub async fn set_fleet_size(&self, nodes: usize) {
        use std::sync::atomic::Ordering;
        let nodes = nodes.max(1);
        let current = self.current.lock().await;
        if self.share.swap(nodes, Ordering::Relaxed) == nodes {
            return;
        }
        let part = current.share_of(nodes);
        drop(current);
        match tokio::task::spawn_blocking(move || Policy::from_config(&part)).await {
            Ok(Ok(policy)) => self.scheduler.reconfigure(policy),
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "fleet: the shared limits could not be applied")
            }
            Err(e) => tracing::error!(error = %e, "fleet: the shared limits could not be applied"),
        }
    }

    /// The configuration in force.
    pub async fn config(&self) -> Config {
        self.current.lock().await.clone()
    }

    /// The file a reload reads (`knock serve --config FILE`).
    pub fn set_path(&self, path: PathBuf) {
        *self.path.lock().expect("reload path lock") = Some(path);
    }

    /// Reads the file again and applies what can change in flight.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self
            .path
            .lock()
            .expect("reload path lock")
            .clone()
            .ok_or(ReloadError::NoFile)?;
        let share = self.share.load(std::sync::atomic::Ordering::Relaxed);
        let new = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path)?;
            // Builds the classifier too: its rules file is read now. In a fleet, of this
            // node's part of each limit.
            let policy = Policy::from_config(&config.share_of(share))?;
            Ok::<_, anyhow::Error>((config, policy))
        })
        .await
        .map_err(|e| ReloadError::Invalid(e.into()))?;
        let (new, policy) = new.map_err(ReloadError::Invalid)?;
        let mut current = self.current.lock().await;
        let mut done = Reloaded::default();
        let old_v = serde_json::to_value(&*current).unwrap_or_default();
        let new_v = serde_json::to_value(&new).unwrap_or_default();
        let differs = |key: &str| old_v.get(key) != new_v.get(key);

        // Always: the rules file may have changed under the same name.
        self.scheduler.reconfigure(policy);
        for key in APPLIED {
            if differs(key) {
                done.applied.push(key.to_string());
            }
        }
        if differs("routes") && !self.transport.set_routes(&new.routes) {
            done.applied.retain(|k| k != "routes");
            done.restart_needed.push("routes".into());
        }
        if current.tls.outbound != new.tls.outbound
            || current.tls.destinations != new.tls.destinations
        {
            *self.tls.write().expect("tls policy lock") = new.tls.clone();
            done.applied.push("tls.destinations".into());
        }
        if differs("stream") {
            // The scheduler takes new settings for the same streams; queued mail keeps
            // its stream's place, so a new set of streams waits for a restart.
            match current.streams.names() == new.streams.names() {
                true => done.applied.push("stream".into()),
                false => done.restart_needed.push("stream".into()),
            }
        }
        if current.http.tokens != new.http.tokens {
            done.applied.push("http.tokens".into());
        }
        if current.http.trusted_networks != new.http.trusted_networks {
            done.applied.push("http.trusted_networks".into());
        }
        *self.access.write().expect("access lock") = Access::from_config(&new.http);
        if current.webhooks != new.webhooks {
            self.restart_senders(&new).await;
            done.applied.push("webhook".into());
        }
        done.restart_needed
            .extend(restart_needed(&self.started, &new_v));
        tracing::info!(
            applied = ?done.applied,
            restart_needed = ?done.restart_needed,
            "configuration reloaded"
        );
        *current = new;
        Ok(done)
    }

    /// Stops the webhook senders and starts them on the new `[[webhook]]` list: a new
    /// webhook starts at the outbox's tip, one gone stops holding events back.
    async fn restart_senders(&self, config: &Config) {
        let mut senders = self.senders.lock().await;
        senders.stop.cancel();
        for t in senders.tasks.drain(..) {
            let _ = t.await;
        }
        let kinds: Vec<_> = config.webhooks.iter().flat_map(|w| w.kinds()).collect();
        self.events.set_outbox(&kinds);
        let stop = self.shutdown.child_token();
        match crate::surface::webhook::start(&config.webhooks, self.spool.clone(), stop.clone())
            .await
        {
            Ok(tasks) => *senders = Senders { stop, tasks },
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "webhooks could not be restarted");
                *senders = Senders {
                    stop,
                    tasks: Vec::new(),
                };
            }
        }
    }
}

/// The keys of `new` that differ from `started` and that no reload applies: top-level
/// sections, and `http`'s and `tls`'s own keys one by one.
fn restart_needed(started: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (old, new) = (
        started.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        if APPLIED.contains(&key.as_str()) || key == "webhook" || key == "stream" {
            continue;
        }
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        let applied_within: &[&str] = match key.as_str() {
            "http" => &["tokens", "trusted_networks"],
            "tls" => &["outbound", "destinations"],
            _ => {
                out.push(key.clone());
                continue;
            }
        };
        let (a, b) = (
            a.and_then(|v| v.as_object()).unwrap_or(&empty),
            b.and_then(|v| v.as_object()).unwrap_or(&empty),
        );
        let mut sub: Vec<&String> = a.keys().chain(b.keys()).collect();
        sub.sort();
        sub.dedup();
        for k in sub {
            if !applied_within.contains(&k.as_str()) && a.get(k) != b.get(k) {
                out.push(format!("{key}.{k}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_no_reload_applies_needs_a_restart() {
        let old = Config::parse("[smtp]\nhostname = \"a.test\"\n").unwrap();
        let new = Config::parse(
            "[smtp]\nhostname = \"b.test\"\n[http]\nlisten = \"127.0.0.1:9\"\ntokens = [\"a-long-enough-token\"]\n\
             [tls]\noutbound = \"require\"\n[shaping.\"*\"]\nrate = \"10/s\"\n[routes]\n\"x.test\" = [\"127.0.0.1:25\"]\n",
        )
        .unwrap();
        let needed = restart_needed(
            &serde_json::to_value(&old).unwrap(),
            &serde_json::to_value(&new).unwrap(),
        );
        assert_eq!(needed, vec!["http.listen".to_string(), "smtp".to_string()]);
    }
}
