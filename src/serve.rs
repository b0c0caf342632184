//! `knock serve`: one running knock. Opens the spool and the event log, recovers what the
//! spool holds, starts the scheduler task (`engine`), the SMTP listener and the HTTP API
//! (`surface::api`), and stops them in order. It sits above the engine core and the
//! surfaces, and wires them together.

use crate::config::Config;
use crate::engine::{dispatch, driver, handle, ingest, scheduler, spool};
use crate::event::Events;
use crate::net::resolve::{DnsResolver, Resolver};
use crate::net::transport::{SmtpTransport, Transport};
use crate::policy::suppress::Suppressions;
use crate::stats::Stats;
use crate::surface::api::{self, ApiState};
use crate::time::{Timestamp, WallClock};
use anyhow::Context;
use dispatch::Dispatcher;
use driver::Driver;
use ingest::Intake;
use scheduler::{Policy, Queued, Scheduler};
use spool::{RedbSpool, Spool, SpoolError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight deliveries get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

pub struct Engine {
    pub smtp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The tasks the scheduler's effects run in: workers, lookups, writes.
    work: TaskTracker,
    events_writer: JoinHandle<()>,
    /// The time series' counts not yet in the spool, written there at shutdown.
    stats: Arc<Stats>,
    spool: Arc<dyn Spool>,
    reloader: Arc<crate::reload::Reloader>,
}

impl Engine {
    /// Starts with real DNS.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let resolver = DnsResolver::new(&config.dns).context("setting up the DNS resolver")?;
        Self::start_with(config, Arc::new(resolver)).await
    }

    /// Starts with the given resolver (tests use a static one).
    pub async fn start_with(config: Config, resolver: Arc<dyn Resolver>) -> anyhow::Result<Engine> {
        config.validate()?;
        let transport = SmtpTransport::new(
            resolver,
            &config.routes,
            config.delivery.clone(),
            config.smtp.hostname.clone(),
            crate::net::tls::Connectors::new(config.tls.ca_file.as_deref())?,
        );
        Self::start_with_transport(config, Arc::new(transport)).await
    }

    pub async fn start_with_transport(
        config: Config,
        transport: Arc<dyn Transport>,
    ) -> anyhow::Result<Engine> {
        let (spool_dir, cache) = (config.spool.path.clone(), config.spool.cache_size);
        let spool: Arc<dyn Spool> = Arc::new(
            tokio::task::spawn_blocking(move || RedbSpool::open_with_cache(&spool_dir, cache))
                .await?
                .with_context(|| {
                    format!(
                        "spool.path: opening the spool in {}",
                        config.spool.path.display()
                    )
                })?,
        );
        Self::start_parts(config, transport, spool).await
    }

    /// Starts on a given transport and spool (tests wrap the spool to inject faults).
    pub async fn start_parts(
        config: Config,
        transport: Arc<dyn Transport>,
        spool: Arc<dyn Spool>,
    ) -> anyhow::Result<Engine> {
        config.check_host()?;
        // In a fleet, each limit is shared by `[cluster] nodes` until Redis says how many
        // nodes are alive.
        let share = match config.cluster.redis {
            Some(_) => config.cluster.nodes.max(1),
            None => 1,
        };
        let mut policy = Policy::from_config(&config.share_of(share))?;
        let dkim = crate::dkim::Dkim::from_config(&config.dkim)?;
        // Warm-ups go on from the day they reached, limits from the hour's and day's counts.
        policy.sources = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.source_states()).await??
        };
        let inbound = inbound(&config)?;
        let (events, events_writer) = Events::open(&config.events.path).await?;
        let webhook_kinds: Vec<_> = config.webhooks.iter().flat_map(|w| w.kinds()).collect();
        let stats = Arc::new(Stats::new());
        let mut events = events
            .with_outbox(&webhook_kinds)
            .with_observer(Arc::new(crate::metrics::Recorder))
            .with_observer(stats.clone());
        // In a fleet, this node's refusals go to the others as they happen.
        let refusals = match config.cluster.redis {
            Some(_) => {
                let (observer, refusals) = crate::engine::fleet::RefusalObserver::new();
                events = events.with_observer(Arc::new(observer));
                Some(refusals)
            }
            None => None,
        };
        let stored = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.suppressions()).await??
        };
        let suppressions = Arc::new(Suppressions::new(stored));
        let smtp_listener = TcpListener::bind(config.smtp.listen)
            .await
            .with_context(|| format!("smtp.listen: cannot listen on {}", config.smtp.listen))?;
        let http_listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
        let shutdown = CancellationToken::new();
        // Before anything is committed: a new webhook's cursor starts at the outbox's tip.
        let webhooks_stop = shutdown.child_token();
        let webhooks =
            crate::surface::webhook::start(&config.webhooks, spool.clone(), webhooks_stop.clone())
                .await
                .context("webhook: starting the senders")?;
        let tls_policy = Arc::new(std::sync::RwLock::new(config.tls.clone()));
        let clock = WallClock::new();
        let work = TaskTracker::new();

        let reload_transport = transport.clone();
        let (handle, commands) = handle::channel();
        let dispatcher = Dispatcher::new(dispatch::Inner {
            transport: transport.clone(),
            spool: spool.clone(),
            scheduler: handle.clone(),
            max_recipients_per_transaction: config.delivery.max_recipients_per_transaction,
            tls: tls_policy.clone(),
            uncommitted: Arc::new(tokio::sync::Semaphore::new(dispatch::MAX_UNCOMMITTED)),
            clock,
            tasks: work.clone(),
        });
        let driver = Driver::new(
            Scheduler::new(policy),
            commands,
            clock,
            driver::Io {
                dispatcher,
                transport,
                spool: spool.clone(),
                events: events.clone(),
                suppressions: suppressions.clone(),
                handle: handle.clone(),
                hostname: config.smtp.hostname.clone(),
                tasks: work.clone(),
            },
        );
        let mut tasks = vec![tokio::spawn(driver.run(shutdown.clone(), SHUTDOWN_GRACE))];

        let recover_spool = spool.clone();
        let recovered = tokio::task::spawn_blocking(move || recover_spool.recover()).await??;
        if recovered.set_aside > 0 {
            tracing::error!(
                entries = recovered.set_aside,
                "unreadable spool entries were set aside (table set_aside in the spool)"
            );
        }
        tracing::info!(
            groups = recovered.pending.len(),
            "recovered the queue from the spool"
        );
        let operator = Arc::new(crate::engine::operator::Operator {
            spool: spool.clone(),
            scheduler: handle.clone(),
            events: events.clone(),
            clock,
        });
        // Suspensions first, so that suspended mail waits from the start.
        let restored = operator
            .restore()
            .await
            .context("restoring the suspensions kept in the spool")?;
        if restored > 0 {
            tracing::info!(
                suspensions = restored,
                "operators' suspensions and holds restored"
            );
        }
        handle.enqueue(recovered.pending.into_iter().map(Queued::from).collect());

        let intake = Arc::new(Intake {
            suppressions,
            spool: spool.clone(),
            scheduler: handle,
            events,
            clock,
            streams: Arc::new(config.streams.clone()),
            dkim: Arc::new(dkim),
        });
        let smtp_addr = smtp_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        tasks.push(tokio::spawn(ingest::run_smtp(
            smtp_listener,
            intake.clone(),
            inbound,
            shutdown.clone(),
        )));
        let access = Arc::new(std::sync::RwLock::new(crate::config::Access::from_config(
            &config.http,
        )));
        let reloader = Arc::new(crate::reload::Reloader::new(crate::reload::Parts {
            config: config.clone(),
            access: access.clone(),
            scheduler: intake.scheduler.clone(),
            events: intake.events.clone(),
            spool: spool.clone(),
            senders: crate::reload::Senders {
                stop: webhooks_stop,
                tasks: webhooks,
            },
            shutdown: shutdown.clone(),
            tls: tls_policy,
            transport: reload_transport,
            share,
        }));
        let me = crate::engine::fleet::Member {
            node: crate::engine::fleet::node_name(&config.cluster, &config.smtp.hostname),
            smtp: Some(smtp_addr.to_string()),
            http: Some(http_addr.to_string()),
            started: Timestamp::now(),
        };
        let fleet = crate::engine::fleet::Fleet::new(&config.cluster, me)?;
        let fleet_view = fleet.as_ref().map(|f| f.view());
        if let (Some(fleet), Some(refusals)) = (fleet, refusals) {
            let reloader = reloader.clone();
            let apply = move |nodes: usize| {
                let reloader = reloader.clone();
                async move { reloader.set_fleet_size(nodes).await }
            };
            tasks.push(tokio::spawn(fleet.run(
                apply,
                intake.clone(),
                intake.scheduler.clone(),
                refusals,
                shutdown.clone(),
            )));
        }
        let drainer = Arc::new(crate::engine::drain::Drainer {
            operator: operator.clone(),
            spool: spool.clone(),
            hostname: config.smtp.hostname.clone(),
            timeouts: config.delivery.timeouts.clone(),
            moved: Default::default(),
        });
        let app = api::router(Arc::new(ApiState {
            intake,
            operator,
            drainer,
            events_path: config.events.path.clone(),
            access,
            reloader: reloader.clone(),
            hostname: config.smtp.hostname.clone(),
            stream: config.http.stream.clone(),
            max_message_size: config.smtp.max_message_size,
            spool_file: spool::database_file(&config.spool.path),
            scraped: Default::default(),
            providers: crate::policy::provider::Providers::new(config.providers.clone()),
            stats: stats.clone(),
            fleet: fleet_view,
        }));
        // Histograms gather samples until they are drained: drain them between scrapes.
        crate::metrics::handle();
        let upkeep_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = every.tick() => crate::metrics::handle().run_upkeep(),
                    _ = upkeep_shutdown.cancelled() => break,
                }
            }
        }));
        let http_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        }));
        tasks.push(tokio::spawn(purge_loop(
            spool.clone(),
            config.spool.history,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(stats_loop(
            stats.clone(),
            spool.clone(),
            config.stats.retention,
            shutdown.clone(),
        )));
        tracing::info!(smtp = %smtp_addr, http = %http_addr, "knock is running");
        Ok(Engine {
            smtp_addr,
            http_addr,
            shutdown,
            tasks,
            work,
            events_writer,
            stats,
            spool,
            reloader,
        })
    }

    /// Reloads read `path` (the file the engine was started from).
    pub fn reload_from(&self, path: std::path::PathBuf) {
        self.reloader.set_path(path);
    }

    /// Reads the config file again and applies what can change in flight (SIGHUP).
    pub async fn reload(&self) -> Result<crate::reload::Reloaded, crate::reload::ReloadError> {
        self.reloader.reload().await
    }

    /// Stops accepting, lets in-flight deliveries finish (within a grace period), writes
    /// the time series' last counts, flushes the event log and closes the spool.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        // It holds an events handle: the event log's writer ends once every handle is gone.
        drop(self.reloader);
        // Workers closing their connections, outcomes being written and told.
        self.work.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.work.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some deliveries did not finish in time; they are tried again at the next start"
            );
        }
        // After the workers: their last outcomes are counted too.
        if let Err(e) = flush_stats(&self.stats, &*self.spool, None).await {
            tracing::warn!(error = %e, "writing the last stats to the spool failed; they are lost");
        }
        let _ = self.events_writer.await;
    }

    /// Runs until SIGINT or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => match self.reload().await {
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "reload refused; the running configuration is kept"),
                },
            }
        }
        tracing::info!("shutting down");
        self.shutdown().await;
        Ok(())
    }
}

/// The listener's TLS and AUTH set-up; errors name the key.
fn inbound(config: &Config) -> anyhow::Result<ingest::Inbound> {
    let tls = match config.tls.starttls {
        true => Some(crate::net::tls::acceptor(
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
            &config.spool.path,
            &config.smtp.hostname,
        )?),
        false => None,
    };
    let credentials = match &config.smtp.credentials {
        Some(path) => Some(crate::net::auth::Credentials::load(path)?),
        None => None,
    };
    Ok(ingest::Inbound {
        config: config.smtp.clone(),
        tls,
        credentials,
    })
}

async fn purge_loop(spool: Arc<dyn Spool>, keep: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        let spool = spool.clone();
        let before = Timestamp(
            Timestamp::now()
                .millis()
                .saturating_sub(keep.as_millis() as u64),
        );
        match tokio::task::spawn_blocking(move || spool.purge(before)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(messages = n, "purged finished messages from the spool")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "purging the spool failed"),
            _ => {}
        }
    }
}

/// Writes the time series' counts held in memory to the spool in one commit, and deletes
/// the minutes before `forget_before`; returns how many cells were written.
async fn flush_stats(
    stats: &Stats,
    spool: &dyn Spool,
    forget_before: Option<u32>,
) -> Result<usize, SpoolError> {
    stats
        .flush(|add| async move {
            if add.is_empty() && forget_before.is_none() {
                return Ok(());
            }
            spool
                .commit(vec![spool::Op::Stats { add, forget_before }])
                .await
        })
        .await
}

/// Writes the time series to the spool every [`crate::stats::FLUSH_EVERY`], and deletes
/// what is older than `retention` at start and every [`PURGE_INTERVAL`]. The last counts
/// are written by [`Engine::shutdown`], once the workers are done.
async fn stats_loop(
    stats: Arc<Stats>,
    spool: Arc<dyn Spool>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(crate::stats::FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let trim = trimmed.is_none_or(|t| t.elapsed() >= PURGE_INTERVAL);
        let forget_before = trim.then(|| {
            let oldest = Timestamp(
                Timestamp::now()
                    .millis()
                    .saturating_sub(retention.as_millis() as u64),
            );
            crate::stats::minute_of(oldest)
        });
        match flush_stats(&stats, &*spool, forget_before).await {
            Ok(_) if trim => trimmed = Some(tokio::time::Instant::now()),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                cells = stats.unflushed_cells(),
                "writing the stats to the spool failed; they stay in memory and are tried again"
            ),
        }
    }
}
