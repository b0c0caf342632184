//! The configuration file (`knock.toml`): serde structs with defaults that run out of the
//! box, human units (`"5m"`, `"25MiB"`), unknown keys refused, and one validation pass at
//! load whose errors name the key. Owns nothing at run time.

pub use crate::policy::provider::ProviderDef;
use crate::policy::provider::Providers;
use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the engine listens for HTTP by default; the client subcommands use it too.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8025";
pub const DEFAULT_SMTP_LISTEN: &str = "127.0.0.1:2525";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub http: HttpConfig,
    pub spool: SpoolConfig,
    pub retry: RetryConfig,
    pub delivery: DeliveryConfig,
    /// Domain → hosts ("host" or "host:port", tried in order); `"*"` is the smart host.
    pub routes: BTreeMap<String, Vec<String>>,
    pub events: EventsConfig,
    pub stats: StatsConfig,
    pub log: LogConfig,
    pub dns: DnsConfig,
    pub classify: ClassifyConfig,
    pub greylist: GreylistConfig,
    /// Per provider (`"*"` for every provider without its own): rate and connections.
    pub shaping: BTreeMap<String, ShapingConfig>,
    pub adapt: AdaptConfig,
    pub tls: TlsConfig,
    /// Providers of the operator's own, in front of the shipped table.
    #[serde(rename = "provider")]
    pub providers: Vec<ProviderDef>,
    /// Where events are POSTed (docs/events.md).
    #[serde(rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// Classes of traffic, each with its own queues, share, retries and lifetime;
    /// `transactional` and `bulk` exist unless configured otherwise.
    #[serde(rename = "stream")]
    pub streams: Streams,
    /// The addresses (and EHLO names) knock sends from; one unnamed source, the host's
    /// own address, when none is configured.
    #[serde(rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Sources grouped for streams to send from; `default` holds every source unless
    /// configured.
    #[serde(rename = "pool")]
    pub pools: BTreeMap<String, PoolConfig>,
    /// DKIM keys: each signs the mail of a From domain, or every message (`domain = "*"`).
    pub dkim: Vec<DkimConfig>,
    /// A fleet of nodes sharing their limits through Redis (docs/fleet.md); alone without.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: this node in a fleet of nodes that send for one sender, each with its own
/// spool, which share what receivers limit through Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for Redis over TLS; none:
    /// this node is alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// With `rediss://`: the CA certificate (PEM) Redis's certificate chains to, for a
    /// private CA; the system's roots otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This node's name in the fleet: `[smtp] hostname` unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How often the node tells Redis it is alive; one silent for three of these is gone.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// The fleet's size until Redis has said how many nodes are alive (and, while it
    /// cannot be reached, the last size it said): each node takes this share of every
    /// limit.
    pub nodes: usize,
    /// The prefix of every key knock keeps in Redis (several fleets on one Redis).
    pub prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            ca: None,
            node: None,
            heartbeat: Duration::from_secs(1),
            nodes: 1,
            prefix: "knock".into(),
        }
    }
}

impl ClusterConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.redis
            && !url.starts_with("redis://")
            && !url.starts_with("rediss://")
        {
            bail!("cluster.redis: {url:?} is not a redis:// or rediss:// URL");
        }
        if let Some(ca) = &self.ca {
            if !self
                .redis
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                bail!("cluster.ca: only with a rediss:// cluster.redis");
            }
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cluster.ca: reading {}: {e}", ca.display()))?;
            use rustls_pki_types::pem::PemObject;
            if !rustls_pki_types::CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
                bail!("cluster.ca: {} holds no PEM certificate", ca.display());
            }
        }
        if let Some(node) = &self.node
            && (node.is_empty()
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            bail!("cluster.node: {node:?}: letters, digits, - _ . only");
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(60) {
            bail!("cluster.heartbeat: between 100ms and 60s");
        }
        if self.nodes == 0 {
            bail!("cluster.nodes: at least 1");
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            bail!("cluster.prefix: a word without spaces");
        }
        Ok(())
    }
}

/// One `[[dkim]]`: a key that signs mail at ingest (RFC 6376; RSA-SHA256 or Ed25519-SHA256
/// by the key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Mail whose From address is at this domain is signed; `"*"`: every message (a
    /// platform's signature beside the sender's).
    pub domain: String,
    /// The signing domain (`d=`): `domain` unless set; needed with `"*"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_domain: Option<String>,
    /// The selector (`s=`): the key's TXT record is at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key: PEM, RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8), as `knock dkim
    /// keygen` writes it.
    pub key: PathBuf,
    /// The header fields signed (those present; `From` always).
    #[serde(default = "dkim_headers")]
    pub headers: Vec<String>,
    /// Header and body canonicalization, `relaxed/relaxed` unless set.
    #[serde(default = "dkim_canonicalization")]
    pub canonicalization: String,
}

fn dkim_headers() -> Vec<String> {
    [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .map(String::from)
    .to_vec()
}

fn dkim_canonicalization() -> String {
    "relaxed/relaxed".into()
}

impl DkimConfig {
    fn validate(&self, i: usize) -> anyhow::Result<()> {
        let at = |k: &str| format!("dkim[{i}].{k}");
        if self.domain != "*" && crate::address::check_domain(&self.domain).is_err() {
            bail!(
                "{}: {:?} is not a domain (or \"*\")",
                at("domain"),
                self.domain
            );
        }
        match (&self.signing_domain, self.domain.as_str()) {
            (None, "*") => bail!(
                "{}: needed when domain is \"*\" (the domain every message is signed for)",
                at("signing_domain")
            ),
            (Some(d), _) if crate::address::check_domain(d).is_err() => {
                bail!("{}: {d:?} is not a domain", at("signing_domain"))
            }
            _ => {}
        }
        if self.selector.is_empty()
            || !self
                .selector
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            bail!(
                "{}: {:?} is not a selector (letters, digits, '-', dots between)",
                at("selector"),
                self.selector
            );
        }
        if !self.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            bail!("{}: must include From (RFC 6376 5.4)", at("headers"));
        }
        self.canonicalization()
            .map_err(|e| anyhow::anyhow!("{}: {e}", at("canonicalization")))?;
        Ok(())
    }

    /// (header, body): each `relaxed` or `simple`.
    pub fn canonicalization(&self) -> anyhow::Result<(bool, bool)> {
        let relaxed = |s: &str| match s {
            "relaxed" => Ok(true),
            "simple" => Ok(false),
            other => Err(anyhow::anyhow!("{other:?}: relaxed or simple")),
        };
        let (h, b) = self
            .canonicalization
            .split_once('/')
            .unwrap_or((&self.canonicalization, "simple"));
        Ok((relaxed(h)?, relaxed(b)?))
    }

    /// The signing domain (`d=`).
    pub fn signing_domain(&self) -> &str {
        self.signing_domain.as_deref().unwrap_or(&self.domain)
    }
}

/// One `[[source]]`: where knock's connections come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Its name in pools, events and metrics.
    pub name: String,
    /// The local address to bind; the host picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The name said in EHLO; `[smtp] hostname` when absent (it should be the address's
    /// PTR name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo: Option<String>,
    /// At most so many messages to one provider in each clock hour from this source;
    /// past it knock defers the rest itself until the next hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    /// The same per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    /// A ramp from small limits up to `hourly` and `daily`, per provider, climbing only
    /// while the provider takes the mail well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfig>,
    /// Connections open from this source at once, to every provider together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// A source's warm-up plan: day 1's limits per provider, and how they grow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// Day 1's hourly limit per provider.
    pub hourly: u32,
    /// Day 1's daily limit per provider.
    pub daily: u32,
    /// Each healthy day multiplies the limits by this (2: doubling).
    #[serde(default = "default_growth")]
    pub growth: f64,
    /// A day whose deferral rate is above this holds the ramp; above twice this (or a
    /// block) steps it back a day.
    #[serde(default = "default_max_deferral_rate")]
    pub max_deferral_rate: f64,
}

fn default_growth() -> f64 {
    2.0
}

fn default_max_deferral_rate() -> f64 {
    0.05
}

impl SourceConfig {
    /// A source of that name with nothing else set: the host's address, `[smtp] hostname`,
    /// no limits.
    pub fn named(name: &str) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            ip: None,
            ehlo: None,
            hourly: None,
            daily: None,
            warmup: None,
            max_connections: None,
        }
    }
}

/// One `[pool.NAME]`: sources and their weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `["a", "b"]`, or `[{ source = "a", weight = 3 }, "b"]` (weight 1 when not given).
    pub sources: Vec<PoolMember>,
}

/// A source in a pool, with its weight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PoolMember {
    Name(String),
    Weighted { source: String, weight: u32 },
}

impl PoolMember {
    pub fn source(&self) -> &str {
        match self {
            PoolMember::Name(n) => n,
            PoolMember::Weighted { source, .. } => source,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            PoolMember::Name(_) => 1,
            PoolMember::Weighted { weight, .. } => *weight,
        }
    }
}

/// The pool a stream sends from unless it names one.
pub const DEFAULT_POOL: &str = "default";
/// The source's name when no `[[source]]` is configured.
pub const DEFAULT_SOURCE: &str = "default";

impl Config {
    /// This node's part of every limit when `nodes` nodes share them (a fleet without
    /// Redis to count against, or until it answers): each configured rate spread over
    /// `nodes` times its period, each connection cap and hourly or daily quota divided
    /// (never below 1). One node: the configuration as it is.
    pub fn share_of(&self, nodes: usize) -> Config {
        let mut c = self.clone();
        let n = nodes.max(1);
        if n == 1 {
            return c;
        }
        let part = |x: usize| (x / n).max(1);
        let part32 = |x: u32| (x / n as u32).max(1);
        for s in c.shaping.values_mut() {
            if let Some(r) = s.rate.as_mut() {
                r.per *= n as u32;
            }
            s.max_connections = s.max_connections.map(part);
        }
        c.delivery.max_connections = part(c.delivery.max_connections);
        c.delivery.total_connections = c.delivery.total_connections.map(part);
        for s in &mut c.sources {
            s.hourly = s.hourly.map(part32);
            s.daily = s.daily.map(part32);
            s.max_connections = s.max_connections.map(part);
            if let Some(w) = s.warmup.as_mut() {
                w.hourly = part32(w.hourly);
                w.daily = part32(w.daily);
            }
        }
        c
    }

    /// The sources: those configured, or the host's own address under `default`.
    pub fn effective_sources(&self) -> Vec<SourceConfig> {
        match self.sources.is_empty() {
            true => vec![SourceConfig::named(DEFAULT_SOURCE)],
            false => self.sources.clone(),
        }
    }

    /// The pools: those configured, and `default` (every source) unless configured.
    pub fn effective_pools(&self) -> BTreeMap<String, PoolConfig> {
        let mut pools = self.pools.clone();
        pools
            .entry(DEFAULT_POOL.into())
            .or_insert_with(|| PoolConfig {
                sources: self
                    .effective_sources()
                    .into_iter()
                    .map(|s| PoolMember::Name(s.name))
                    .collect(),
            });
        pools
    }

    /// Checks what only the host can say: every source's address is one of its own.
    pub fn check_host(&self) -> anyhow::Result<()> {
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(ip) = s.ip {
                std::net::TcpListener::bind((ip, 0)).map_err(|e| {
                    anyhow::anyhow!(
                        "source[{i}].ip: {ip} is not an address of this host (binding it: {e})"
                    )
                })?;
            }
        }
        Ok(())
    }

    fn validate_sources(&self) -> anyhow::Result<()> {
        for (i, s) in self.sources.iter().enumerate() {
            let name = s.name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                bail!(
                    "source[{i}].name: must be letters, digits, '-', '_' or '.' (it labels metrics), not {:?}",
                    s.name
                );
            }
            if let Some(j) = self.sources[..i].iter().position(|o| o.name == s.name) {
                bail!("source[{i}].name: {:?} is also source[{j}]'s name", s.name);
            }
            if let Some(ehlo) = &s.ehlo
                && crate::address::check_domain(ehlo).is_err()
            {
                bail!("source[{i}].ehlo: {ehlo:?} is not a host name");
            }
            if s.max_connections == Some(0) {
                bail!("source[{i}].max_connections: must be at least 1");
            }
            if s.hourly == Some(0) {
                bail!("source[{i}].hourly: must be at least 1 (leave it out for no limit)");
            }
            if s.daily == Some(0) {
                bail!("source[{i}].daily: must be at least 1 (leave it out for no limit)");
            }
            if let (Some(h), Some(d)) = (s.hourly, s.daily)
                && h > d
            {
                bail!("source[{i}].hourly: {h} is more than the daily limit {d}");
            }
            if let Some(w) = &s.warmup {
                let (Some(cap_h), Some(cap_d)) = (s.hourly, s.daily) else {
                    bail!(
                        "source[{i}].warmup: a ramp climbs to the source's hourly and daily limits; set both"
                    );
                };
                if w.hourly == 0 || w.hourly > cap_h {
                    bail!(
                        "source[{i}].warmup.hourly: must be between 1 and the source's hourly ({cap_h})"
                    );
                }
                if w.daily == 0 || w.daily > cap_d {
                    bail!(
                        "source[{i}].warmup.daily: must be between 1 and the source's daily ({cap_d})"
                    );
                }
                if !(w.growth > 1.0 && w.growth <= 10.0) {
                    bail!("source[{i}].warmup.growth: must be above 1 and at most 10");
                }
                if !(w.max_deferral_rate > 0.0 && w.max_deferral_rate < 1.0) {
                    bail!("source[{i}].warmup.max_deferral_rate: must be between 0 and 1");
                }
            }
        }
        let names: Vec<String> = self
            .effective_sources()
            .into_iter()
            .map(|s| s.name)
            .collect();
        for (pool, p) in &self.pools {
            if p.sources.is_empty() {
                bail!("pool.{pool}.sources: a pool needs at least one source");
            }
            for (i, m) in p.sources.iter().enumerate() {
                if !names.iter().any(|n| n == m.source()) {
                    bail!(
                        "pool.{pool}.sources[{i}]: no source is named {:?} (the sources are {})",
                        m.source(),
                        names.join(", ")
                    );
                }
                if m.weight() == 0 {
                    bail!("pool.{pool}.sources[{i}].weight: must be at least 1");
                }
            }
        }
        let pools = self.effective_pools();
        for (name, stream) in &self.streams.0 {
            if !pools.contains_key(stream.pool()) {
                bail!(
                    "stream.{name}.pool: no pool is named {:?} (the pools are {})",
                    stream.pool(),
                    pools.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(())
    }
}

/// The streams by name, with the shipped `transactional` and `bulk` filled in where the
/// file does not define them.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Streams(pub BTreeMap<String, StreamConfig>);

/// The stream of mail that names none, unless a listener says otherwise.
pub const DEFAULT_STREAM: &str = "bulk";

impl Default for Streams {
    fn default() -> Streams {
        let mut streams = BTreeMap::new();
        streams.insert(
            "transactional".to_string(),
            StreamConfig {
                priority: 10,
                share: 0.75,
                retry: Some([60, 180, 600, 1800, 3600].map(Duration::from_secs).to_vec()),
                max_age: Some(Duration::from_secs(24 * 3600)),
                deadline: None,
                users: Vec::new(),
                pool: None,
            },
        );
        streams.insert(
            DEFAULT_STREAM.to_string(),
            StreamConfig {
                share: 0.25,
                ..StreamConfig::default()
            },
        );
        Streams(streams)
    }
}

impl<'de> Deserialize<'de> for Streams {
    /// Each `[stream.NAME]` sets the keys it gives over the shipped stream of that name
    /// (`[stream.transactional] pool = "tx"` keeps transactional's share and retries), or
    /// over the defaults for a stream of the operator's own.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Streams, D::Error> {
        let configured = BTreeMap::<String, StreamKeys>::deserialize(d)?;
        let mut streams = Streams::default();
        for (name, keys) in configured {
            let stream = streams.0.entry(name).or_default();
            keys.apply(stream);
        }
        Ok(streams)
    }
}

/// A `[stream.NAME]` as written: only the keys given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamKeys {
    priority: Option<i32>,
    share: Option<f64>,
    #[serde(default, deserialize_with = "de_opt_durations")]
    retry: Option<Vec<Duration>>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    users: Option<Vec<String>>,
    pool: Option<String>,
}

impl StreamKeys {
    fn apply(self, s: &mut StreamConfig) {
        if let Some(v) = self.priority {
            s.priority = v;
        }
        if let Some(v) = self.share {
            s.share = v;
        }
        if self.retry.is_some() {
            s.retry = self.retry;
        }
        if self.max_age.is_some() {
            s.max_age = self.max_age;
        }
        if self.deadline.is_some() {
            s.deadline = self.deadline;
        }
        if let Some(v) = self.users {
            s.users = v;
        }
        if self.pool.is_some() {
            s.pool = self.pool;
        }
    }
}

impl Streams {
    pub fn get(&self, name: &str) -> Option<&StreamConfig> {
        self.0.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// The stream whose `users` name `user`, if one does.
    pub fn of_user(&self, user: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, s)| s.users.iter().any(|u| u == user))
            .map(|(name, _)| name.as_str())
    }

    /// An error naming `at` when `name` is no stream.
    pub fn check(&self, at: &str, name: &str) -> anyhow::Result<()> {
        if self.0.contains_key(name) {
            return Ok(());
        }
        bail!(
            "{at}: no stream is named {name:?} (the streams are {})",
            self.names().join(", ")
        )
    }
}

/// One `[stream.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Of two streams owed the same share, the higher priority goes first.
    pub priority: i32,
    /// The part of each destination's starts (so of its connections and rate) the stream
    /// is sure of while other streams have mail ready: `share` over the sum of the shares of
    /// the streams with mail ready. A stream alone takes everything.
    pub share: f64,
    /// Its own retry schedule (`[retry] schedule` when absent).
    #[serde(
        default,
        deserialize_with = "de_opt_durations",
        serialize_with = "ser_opt_durations",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry: Option<Vec<Duration>>,
    /// Its own lifetime (`[retry] max_age` when absent).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Delivered within this or not at all (a one-time code): the retries fit inside it,
    /// and a recipient expires as soon as its next attempt could not come in time.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Duration>,
    /// Authenticated users whose mail goes in this stream unless it names another.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// The `[pool.NAME]` it sends from (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            priority: 0,
            share: 0.5,
            retry: None,
            max_age: None,
            deadline: None,
            users: Vec::new(),
            pool: None,
        }
    }
}

impl StreamConfig {
    pub fn pool(&self) -> &str {
        self.pool.as_deref().unwrap_or(DEFAULT_POOL)
    }

    fn validate(&self, name: &str, retry: &RetryConfig) -> anyhow::Result<()> {
        let key = |k: &str| format!("stream.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        {
            bail!(
                "stream.{name:?}: a stream's name is lower-case letters, digits, '-' and '_' (it labels metrics and is sent in a header)"
            );
        }
        if !(self.share > 0.0 && self.share <= 1.0) {
            bail!("{}: must be above 0 and at most 1", key("share"));
        }
        if let Some(steps) = &self.retry {
            if steps.is_empty() {
                bail!("{}: needs at least one step", key("retry"));
            }
            if let Some(i) = steps.iter().position(|d| d.is_zero()) {
                bail!(
                    "{}[{i}]: a wait of zero would hammer the receiver",
                    key("retry")
                );
            }
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            bail!("{}: must be greater than zero", key("max_age"));
        }
        if let Some(deadline) = self.deadline {
            if deadline < Duration::from_secs(1) {
                bail!("{}: must be at least 1s", key("deadline"));
            }
            let max_age = self.max_age.unwrap_or(retry.max_age);
            if deadline > max_age {
                bail!(
                    "{}: {} is longer than the stream's max_age ({}); a deadline shortens the lifetime",
                    key("deadline"),
                    humantime::format_duration(deadline),
                    humantime::format_duration(max_age)
                );
            }
        }
        Ok(())
    }

    /// How long its mail may live: the deadline when it has one, else its max_age.
    pub fn lifetime(&self, retry: &RetryConfig) -> Duration {
        self.deadline
            .unwrap_or_else(|| self.max_age.unwrap_or(retry.max_age))
    }
}

/// One `[[webhook]]`: events POSTed in signed batches from a durable outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook in metrics, logs and the outbox's cursor; unique.
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// The event kinds sent (`deferred`, `bounced`, ...); every kind when empty.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// The key of the HMAC-SHA256 signature of each POST; serialized as `"<hidden>"`.
    #[serde(serialize_with = "ser_hidden")]
    pub secret: String,
    /// Most events in one POST.
    #[serde(default = "WebhookConfig::default_batch_size")]
    pub batch_size: usize,
    /// How long a batch that is not full waits for more events.
    #[serde(
        default = "WebhookConfig::default_batch_delay",
        with = "humantime_serde"
    )]
    pub batch_delay: Duration,
    /// Most POSTs waiting for an answer at once.
    #[serde(default = "WebhookConfig::default_max_in_flight")]
    pub max_in_flight: usize,
    /// While the receiver fails, events older than this are dropped (counted and logged)
    /// instead of being kept.
    #[serde(default = "WebhookConfig::default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// How long a POST may take, answer included.
    #[serde(default = "WebhookConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The wait before a failed POST is tried again; it doubles (with jitter) after each
    /// failure up to `backoff_max`.
    #[serde(default = "WebhookConfig::default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(
        default = "WebhookConfig::default_backoff_max",
        with = "humantime_serde"
    )]
    pub backoff_max: Duration,
}

impl WebhookConfig {
    fn default_batch_size() -> usize {
        100
    }
    fn default_batch_delay() -> Duration {
        Duration::from_secs(1)
    }
    fn default_max_in_flight() -> usize {
        4
    }
    fn default_max_age() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_backoff() -> Duration {
        Duration::from_secs(1)
    }
    fn default_backoff_max() -> Duration {
        Duration::from_secs(300)
    }

    /// The kinds this webhook takes (every kind when `events` is empty).
    pub fn kinds(&self) -> Vec<crate::event::Kind> {
        match self.events.is_empty() {
            true => crate::event::Kind::ALL.to_vec(),
            false => self.events.iter().filter_map(|e| e.parse().ok()).collect(),
        }
    }

    fn validate(&self, i: usize) -> anyhow::Result<()> {
        let key = |k: &str| format!("webhook[{i}].{k}");
        let name = self.name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!(
                "{}: must be letters, digits, '-', '_' or '.' (it labels metrics), not {:?}",
                key("name"),
                self.name
            );
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(url) => bail!(
                "{}: {:?} must be an http:// or https:// URL with a host, not {}:",
                key("url"),
                self.url,
                url.scheme()
            ),
            Err(e) => bail!("{}: {:?} is not a URL: {e}", key("url"), self.url),
        }
        for (j, kind) in self.events.iter().enumerate() {
            if kind.parse::<crate::event::Kind>().is_err() {
                let known: Vec<&str> = crate::event::Kind::ALL.iter().map(|k| k.as_str()).collect();
                bail!(
                    "{}[{j}]: {kind:?} is not an event (one of {})",
                    key("events"),
                    known.join(", ")
                );
            }
        }
        if self.secret.len() < 16 {
            bail!(
                "{}: must be at least 16 characters (it signs every POST)",
                key("secret")
            );
        }
        if !(1..=10_000).contains(&self.batch_size) {
            bail!("{}: must be between 1 and 10000", key("batch_size"));
        }
        if !(1..=64).contains(&self.max_in_flight) {
            bail!("{}: must be between 1 and 64", key("max_in_flight"));
        }
        if self.max_age.is_zero() {
            bail!("{}: must be greater than zero", key("max_age"));
        }
        if self.timeout.is_zero() {
            bail!("{}: must be greater than zero", key("timeout"));
        }
        if self.backoff.is_zero() {
            bail!(
                "{}: a wait of zero would hammer the receiver",
                key("backoff")
            );
        }
        if self.backoff_max < self.backoff {
            bail!("{}: must be at least backoff", key("backoff_max"));
        }
        Ok(())
    }
}

/// The body of a webhook's POSTs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// A JSON array of knock's events, as in the event log.
    #[default]
    Native,
    /// A JSON array in the shape of SendGrid's event webhook.
    Sendgrid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistConfig {
    /// The wait after a greylisting reply that states no delay, until one is learned.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Learned delays never go below this.
    #[serde(with = "humantime_serde")]
    pub floor: Duration,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            floor: Duration::from_secs(60),
        }
    }
}

/// Static shaping for one provider; what is left out comes from `[delivery]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    #[serde(deserialize_with = "de_rate")]
    pub rate: Option<Rate>,
    pub max_connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
}

/// How destinations adapt to what receivers say.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptConfig {
    /// The whole destination waits this long after a throttling reply.
    #[serde(with = "humantime_serde")]
    pub throttle_pause: Duration,
    /// When every MX of a destination is unreachable, one probe goes at a time; the wait
    /// between probes is a third of how long the destination has been down, at least
    /// `outage_backoff` and at most `outage_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub outage_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub outage_backoff_max: Duration,
    /// A source a provider blocks (a `block` reply) is not used for that provider for this
    /// long when its pool has another; its mail goes out of the others.
    #[serde(with = "humantime_serde")]
    pub block_pause: Duration,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            throttle_pause: Duration::from_millis(200),
            outage_backoff: Duration::from_secs(5),
            outage_backoff_max: Duration::from_secs(600),
            block_pause: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// The operator's own rules (TOML, as `data/classify.toml`), read before the shipped ones.
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: SocketAddr,
    /// The name in the greeting, in EHLO (inbound and outbound) and in DSNs.
    pub hostname: String,
    pub trusted_networks: Vec<IpNet>,
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub max_message_size: u64,
    pub max_recipients: usize,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The whole of a message's DATA must arrive within this (slow senders are cut off).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    pub max_errors: u32,
    pub max_connections: usize,
    /// Users who may relay after AUTH (over TLS): `user:argon2-hash` lines, as
    /// `knock passwd` prints them. Without it AUTH is not offered.
    pub credentials: Option<PathBuf>,
    pub client_limits: ClientLimitsConfig,
    /// The stream of mail that names none (no `X-Knock-Stream` header) from a client whose
    /// user is in no stream's `users`.
    pub stream: String,
    /// What to do with a message that has a bare CR or LF (not part of a CRLF): make each
    /// a CRLF, or refuse the message. Never relayed as it came (SMTP smuggling).
    pub bare_line_endings: BareLineEndings,
}

/// `[smtp] bare_line_endings`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Each bare CR and bare LF becomes a CRLF (the message is kept, its lines intact).
    #[default]
    Normalize,
    /// `550 5.5.2`, as Postfix's `smtpd_forbid_bare_newline` does.
    Refuse,
}

/// Limits per client IP address, so one client cannot take the whole listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// Open connections from one address at once.
    pub connections: usize,
    /// Messages accepted from one address per period (`"600/min"`); none by default.
    #[serde(deserialize_with = "de_rate")]
    pub messages: Option<Rate>,
    /// Recipients accepted from one address per period; none by default.
    #[serde(deserialize_with = "de_rate")]
    pub recipients: Option<Rate>,
    /// Clients in `smtp.trusted_networks` are not limited (Postfix exempts `mynetworks`).
    pub exempt_trusted: bool,
}

impl Default for ClientLimitsConfig {
    fn default() -> Self {
        Self {
            connections: 50,
            messages: None,
            recipients: None,
            exempt_trusted: true,
        }
    }
}

/// What outbound delivery does about STARTTLS for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never STARTTLS.
    Off,
    /// STARTTLS when the receiver offers it, any certificate; plaintext when it does not,
    /// or when the handshake fails (the same host is tried again without TLS).
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and succeed (any certificate), else the mail waits.
    Require,
    /// As `require`, and the certificate must chain to a trusted root and name the MX host.
    Verify,
}

impl TlsPolicy {
    pub fn requires_tls(self) -> bool {
        matches!(self, TlsPolicy::Require | TlsPolicy::Verify)
    }
}

/// STARTTLS in both directions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The inbound certificate chain and key (PEM). Without them knock makes a
    /// self-signed pair on first start and keeps it in `<spool.path>/tls/`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Offer STARTTLS to inbound clients.
    pub starttls: bool,
    /// Outbound STARTTLS for destinations not listed below.
    pub outbound: TlsPolicy,
    /// More trusted roots (PEM) for the `verify` policy, beside the Mozilla set.
    pub ca_file: Option<PathBuf>,
    /// Outbound policy by recipient domain or provider name (the domain wins).
    pub destinations: BTreeMap<String, TlsPolicy>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            starttls: true,
            outbound: TlsPolicy::Opportunistic,
            ca_file: None,
            destinations: BTreeMap::new(),
        }
    }
}

impl TlsConfig {
    /// The outbound policy for mail to `domain` at `provider`.
    pub fn policy_for(&self, domain: &str, provider: &str) -> TlsPolicy {
        self.destinations
            .get(domain)
            .or_else(|| self.destinations.get(provider))
            .copied()
            .unwrap_or(self.outbound)
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_SMTP_LISTEN.parse().unwrap(),
            hostname: "knock.localdomain".into(),
            trusted_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_errors: 20,
            max_connections: 1000,
            credentials: None,
            client_limits: ClientLimitsConfig::default(),
            stream: DEFAULT_STREAM.into(),
            bare_line_endings: BareLineEndings::Normalize,
        }
    }
}

impl SmtpConfig {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_networks.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Clients here need no token; everyone else must send `Authorization: Bearer <token>`.
    pub trusted_networks: Vec<IpNet>,
    /// Bearer tokens the API accepts (`KNOCK_API_TOKEN` in the environment adds one):
    /// `"secret"` or `{ name = "alice", token = "secret" }`, the name saying who did an
    /// operator's action. Never logged.
    pub tokens: Vec<Token>,
    /// The stream of a message posted without a `stream` field.
    pub stream: String,
}

/// An API token, named or not.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Token {
    Plain(String),
    Named { name: String, token: String },
}

/// What a secret (an API token, a webhook's key) is serialized as: a serialized config is
/// for showing (`knock config check`), and secrets are never shown.
pub const HIDDEN: &str = "<hidden>";

impl Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Named<'a> {
            name: &'a str,
            token: &'a str,
        }
        match self {
            Token::Plain(_) => s.serialize_str(HIDDEN),
            Token::Named { name, .. } => Named {
                name,
                token: HIDDEN,
            }
            .serialize(s),
        }
    }
}

impl From<&str> for Token {
    fn from(token: &str) -> Token {
        Token::Plain(token.to_string())
    }
}

impl Token {
    pub fn secret(&self) -> &str {
        match self {
            Token::Plain(t) | Token::Named { token: t, .. } => t,
        }
    }
}

/// Who may call the API, as the running configuration says (a reload replaces it).
pub struct Access {
    pub trusted_networks: Vec<ipnet::IpNet>,
    pub tokens: Vec<NamedToken>,
}

impl Access {
    pub fn from_config(http: &HttpConfig) -> Access {
        Access {
            trusted_networks: http.trusted_networks.clone(),
            tokens: http.all_tokens(),
        }
    }
}

/// A token and the name actions taken with it are recorded under.
#[derive(Clone)]
pub struct NamedToken {
    pub name: String,
    pub token: String,
}

/// The environment variable that adds an API token (and that the client subcommands send).
pub const TOKEN_ENV: &str = "KNOCK_API_TOKEN";

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.parse().unwrap(),
            trusted_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            tokens: Vec::new(),
            stream: DEFAULT_STREAM.into(),
        }
    }
}

impl HttpConfig {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_networks.iter().any(|net| net.contains(&ip))
    }

    /// The configured tokens and the one from the environment, if any, with their names:
    /// a token without one is `token-N` (its place in the list, from 1), the
    /// environment's is `env`.
    pub fn all_tokens(&self) -> Vec<NamedToken> {
        let mut tokens: Vec<NamedToken> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| NamedToken {
                name: match t {
                    Token::Named { name, .. } => name.clone(),
                    Token::Plain(_) => format!("token-{}", i + 1),
                },
                token: t.secret().to_string(),
            })
            .collect();
        if let Ok(t) = std::env::var(TOKEN_ENV)
            && !t.is_empty()
        {
            tokens.push(NamedToken {
                name: "env".into(),
                token: t,
            });
        }
        tokens
    }
}

// Tokens stay out of `{:?}` output, and so out of logs and error messages.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("trusted_networks", &self.trusted_networks)
            .field("tokens", &format_args!("[{} hidden]", self.tokens.len()))
            .field("stream", &self.stream)
            .finish()
    }
}

/// The spool's page cache when none is configured (`[spool] cache_size`); redb's own
/// default is 1 GiB, which a large spool fills and keeps resident.
pub const DEFAULT_SPOOL_CACHE: u64 = 128 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub path: PathBuf,
    /// How long a finished message's record (states and attempts) stays queryable.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// Memory for the spool's page cache.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub cache_size: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            path: "knock-data".into(),
            history: Duration::from_secs(24 * 3600),
            cache_size: DEFAULT_SPOOL_CACHE,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Wait after the nth temporary failure; the last step repeats.
    #[serde(deserialize_with = "de_durations", serialize_with = "ser_durations")]
    pub schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Up to this share of a wait is added at random so a backlog does not return at once.
    pub jitter: f64,
    /// A recipient still deferred this long after acceptance, whose sender asked for
    /// delay notices (`NOTIFY=DELAY`), gets one delay warning; `0s`: never.
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Self {
            schedule: vec![m(5), m(15), m(30), m(60), m(120), m(240)],
            max_age: Duration::from_secs(72 * 3600),
            jitter: 0.1,
            delay_warning: Duration::from_secs(4 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The port MX hosts are reached on.
    pub port: u16,
    /// Open connections per destination (provider) at most, unless `[shaping]` says.
    pub max_connections: usize,
    /// Connections a destination starts with; each one greeted lets one more open, until a
    /// receiver turns one away at the greeting (Postfix's `initial_destination_concurrency`).
    pub initial_connections: usize,
    /// Messages sent over one connection before it is closed.
    pub messages_per_connection: usize,
    /// Recipients in one SMTP transaction at most (RFC 5321 requires receivers to take 100).
    pub max_recipients_per_transaction: usize,
    /// Outbound connections open at once, every destination and source together; none by
    /// default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_connections: Option<usize>,
    pub timeouts: TimeoutConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            port: 25,
            max_connections: 10,
            initial_connections: 1,
            messages_per_connection: 100,
            max_recipients_per_transaction: 100,
            total_connections: None,
            timeouts: TimeoutConfig::default(),
        }
    }
}

/// SMTP client timeouts, RFC 5321 section 4.5.3.2 by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    #[serde(with = "humantime_serde")]
    pub greeting: Duration,
    /// EHLO, MAIL and RCPT replies.
    #[serde(with = "humantime_serde")]
    pub command: Duration,
    /// The 354 reply to DATA.
    #[serde(with = "humantime_serde")]
    pub data_init: Duration,
    /// Writing one block of the message.
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
    /// The reply to the final dot.
    #[serde(with = "humantime_serde")]
    pub data_done: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            connect: s(30),
            greeting: s(300),
            command: s(300),
            data_init: s(120),
            data_block: s(180),
            data_done: s(600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub path: PathBuf,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            path: "knock-data/events.jsonl".into(),
        }
    }
}

/// The deferral time series behind `GET /api/v1/stats` (kept in the spool).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// How long each minute's counts are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What knock writes on stderr for operators (`KNOCK_LOG` filters it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text for people, coloured only when stderr is a terminal.
    #[default]
    Plain,
    /// One JSON object per line, for a log collector.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    /// By hand, so that a bad value names its key as the other checks do.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(serde::de::Error::custom(format!(
                "log.format: {other:?} is not a log format; use \"plain\" or \"json\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// How long one try of a query waits for an answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How many times a query is tried in all (1: no retry).
    pub attempts: usize,
    /// Name servers to ask (`"127.0.0.1:53"`, over UDP and TCP), in place of the system's
    /// `/etc/resolv.conf`: a local caching resolver, say.
    pub servers: Vec<SocketAddr>,
    /// How many answers the resolver keeps (each for its TTL). Mail to 10,000 domains needs
    /// about two answers a domain (MX, then the address of its first host); a smaller cache
    /// evicts answers that are still fresh and asks again.
    pub cache_size: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            attempts: 2,
            servers: Vec::new(),
            cache_size: 100_000,
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot; every error names its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.smtp.hostname.trim().is_empty() {
            bail!("smtp.hostname: must not be empty");
        }
        if self.smtp.max_message_size == 0 {
            bail!("smtp.max_message_size: must be greater than zero");
        }
        if self.smtp.max_recipients == 0 {
            bail!("smtp.max_recipients: must be at least 1");
        }
        if self.retry.schedule.is_empty() {
            bail!("retry.schedule: needs at least one step");
        }
        if let Some(i) = self.retry.schedule.iter().position(|d| d.is_zero()) {
            bail!("retry.schedule[{i}]: a wait of zero would hammer the receiver");
        }
        if self.retry.max_age.is_zero() {
            bail!("retry.max_age: must be greater than zero");
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            bail!("retry.jitter: must be between 0 and 1");
        }
        if self.delivery.max_connections == 0 {
            bail!("delivery.max_connections: must be at least 1");
        }
        if self.dns.attempts == 0 {
            bail!("dns.attempts: must be at least 1 (the tries of a query, the first included)");
        }
        if self.delivery.initial_connections == 0 {
            bail!("delivery.initial_connections: must be at least 1");
        }
        for (name, s) in &self.shaping {
            if s.max_connections == Some(0) {
                bail!("shaping.\"{name}\".max_connections: must be at least 1");
            }
            if s.messages_per_connection == Some(0) {
                bail!("shaping.\"{name}\".messages_per_connection: must be at least 1");
            }
        }
        for (i, p) in self.providers.iter().enumerate() {
            if p.name.trim().is_empty() {
                bail!("provider[{i}].name: must not be empty");
            }
        }
        self.validate_provider_names()?;
        if !self.http.listen.ip().is_loopback() && self.http.all_tokens().is_empty() {
            bail!(
                "http.tokens: the API listens on {}, beyond loopback, so it needs a token (http.tokens or {TOKEN_ENV})",
                self.http.listen
            );
        }
        for (i, t) in self.http.tokens.iter().enumerate() {
            if t.secret().len() < 16 {
                bail!("http.tokens[{i}]: a token must be at least 16 characters");
            }
            if let Token::Named { name, .. } = t
                && name.trim().is_empty()
            {
                bail!("http.tokens[{i}].name: must not be empty");
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key: set both or neither");
        }
        if self.smtp.credentials.is_some() && !self.tls.starttls {
            bail!("smtp.credentials: AUTH is only offered over TLS; set tls.starttls = true");
        }
        if self.smtp.client_limits.connections == 0 {
            bail!("smtp.client_limits.connections: must be at least 1");
        }
        if self.greylist.window.is_zero() {
            bail!("greylist.window: must be greater than zero");
        }
        if self.stats.retention < Duration::from_secs(60) {
            bail!("stats.retention: must be at least 1m (the series counts by the minute)");
        }
        if self.delivery.messages_per_connection == 0 {
            bail!("delivery.messages_per_connection: must be at least 1");
        }
        if self.delivery.total_connections == Some(0) {
            bail!("delivery.total_connections: must be at least 1");
        }
        if self.delivery.max_recipients_per_transaction == 0 {
            bail!("delivery.max_recipients_per_transaction: must be at least 1");
        }
        for (domain, hosts) in &self.routes {
            if hosts.is_empty() {
                bail!("routes.\"{domain}\": needs at least one host");
            }
            for (i, host) in hosts.iter().enumerate() {
                parse_host_port(host, 25)
                    .map_err(|e| anyhow::anyhow!("routes.\"{domain}\"[{i}]: {e}"))?;
            }
        }
        for (name, stream) in &self.streams.0 {
            stream.validate(name, &self.retry)?;
            for user in &stream.users {
                if let Some((other, _)) = self
                    .streams
                    .0
                    .iter()
                    .find(|(o, s)| *o < name && s.users.contains(user))
                {
                    bail!(
                        "stream.{name}.users: {user:?} is also a user of stream {other:?}; a user has one default stream"
                    );
                }
            }
        }
        self.streams.check("smtp.stream", &self.smtp.stream)?;
        self.validate_sources()?;
        self.cluster.validate()?;
        for (i, d) in self.dkim.iter().enumerate() {
            d.validate(i)?;
        }
        self.streams.check("http.stream", &self.http.stream)?;
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate(i)?;
            if let Some(j) = self.webhooks[..i].iter().position(|o| o.name == w.name) {
                bail!(
                    "webhook[{i}].name: {:?} is also webhook[{j}]'s name",
                    w.name
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// Keys that name a provider (`[shaping."…"]`, `[tls.destinations]`) must name one that
    /// can exist: a misspelt one would match no mail and be silently ignored. A key is a
    /// provider of the table (`[[provider]]` and the shipped ones), `"*"` in `[shaping]`,
    /// or has a dot: a domain, or a provider knock names after a domain or its MX hosts.
    fn validate_provider_names(&self) -> anyhow::Result<()> {
        let providers = Providers::new(self.providers.clone());
        for key in self.shaping.keys() {
            let at = format!("shaping.\"{key}\"");
            if key == "*" || providers.is_named(key) {
                continue;
            }
            if let Some(owner) = providers.by_domain(&key.to_ascii_lowercase()) {
                bail!(
                    "{at}: {key} is a domain of the provider \"{owner}\", and shaping is per provider: use [shaping.\"{owner}\"]"
                );
            }
            check_provider_name(&providers, &at, key)?;
        }
        for key in self.tls.destinations.keys() {
            let at = format!("tls.destinations.\"{key}\"");
            if key == "*" {
                bail!(
                    "{at}: matches no destination; tls.outbound is the policy for every destination not listed"
                );
            }
            if !providers.is_named(key) {
                check_provider_name(&providers, &at, key)?;
            }
        }
        Ok(())
    }
}

/// `key` (found at `at`), which is no provider of the table, must be a domain or a host name.
fn check_provider_name(providers: &Providers, at: &str, key: &str) -> anyhow::Result<()> {
    if !key.contains('.') {
        let closest = providers
            .names()
            .into_iter()
            .map(|name| {
                (
                    edit_distance(&key.to_lowercase(), &name.to_lowercase()),
                    name,
                )
            })
            .min_by_key(|(distance, _)| *distance)
            .filter(|(distance, _)| *distance <= 2 && *distance * 3 <= key.chars().count());
        match closest {
            Some((_, name)) => bail!("{at}: no provider is named {key:?} (did you mean {name:?}?)"),
            None => bail!(
                "{at}: no provider is named {key:?} (the table has {}; a provider named after a domain or its MX hosts has a dot in its name)",
                providers.names().join(", ")
            ),
        }
    }
    if key != key.to_lowercase() {
        bail!(
            "{at}: domains are matched in lower case; write {:?}",
            key.to_lowercase()
        );
    }
    Ok(())
}

/// The Levenshtein distance: single-character insertions, deletions and substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Splits `"host"`, `"host:port"`, `"[v6]:port"` or `"v6"` into host and port.
pub fn parse_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip.to_string(), default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("bad port in {text:?}"))?;
            (host, port)
        }
        None => (text, default_port),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(format!("bad host name in {text:?}"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// A TOML error of `text` in one line: the line it is on, that line, and what is wrong (the
/// parser's own message draws the line and a caret over several).
pub fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim_end();
    let span = e
        .span()
        .filter(|s| !(s.start == 0 && s.end >= text.len()) && s.start <= text.len());
    let Some(span) = span else {
        return anyhow::anyhow!("{message}");
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let source = text.lines().nth(line - 1).unwrap_or("").trim();
    let source = match source.char_indices().nth(60) {
        Some((cut, _)) => format!("{} …", &source[..cut]),
        None => source.to_string(),
    };
    anyhow::anyhow!("line {line} ({source}): {message}")
}

/// A rate such as `"600/min"`, `"100/1m"` or `"5/10s"`: so many per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Rate, String> {
        let (count, per) = text
            .split_once('/')
            .ok_or_else(|| format!("bad rate {text:?}: expected N/period, e.g. 600/min"))?;
        let count = count
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("bad rate {text:?}: {count:?} is not a count"))?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            other => {
                humantime::parse_duration(other).map_err(|e| format!("bad rate {text:?}: {e}"))?
            }
        };
        if count == 0 || per.is_zero() {
            return Err(format!(
                "bad rate {text:?}: count and period must be above zero"
            ));
        }
        Ok(Rate { count, per })
    }
}

fn de_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| serde::de::Error::custom(format!("bad size {text:?}: {e}"))),
    }
}

fn ser_hidden<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(HIDDEN)
}

/// A size as the config takes it: in whole KiB, MiB or GiB where it is one, else in bytes.
fn ser_size<S: serde::Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    let unit = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .into_iter()
        .find(|(size, _)| *bytes > 0 && bytes.is_multiple_of(*size));
    match unit {
        Some((size, name)) => s.collect_str(&format_args!("{}{name}", bytes / size)),
        None => s.serialize_u64(*bytes),
    }
}

fn ser_durations<S: serde::Serializer>(durations: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        durations
            .iter()
            .map(|d| humantime::format_duration(*d).to_string()),
    )
}

fn ser_opt_durations<S: serde::Serializer>(
    durations: &Option<Vec<Duration>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    ser_durations(durations.as_deref().unwrap_or_default(), s)
}

fn de_opt_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    de_durations(d).map(Some)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            humantime::parse_duration(t)
                .map_err(|e| serde::de::Error::custom(format!("bad duration {t:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[smtp]
listen = "127.0.0.1:2525"
hostname = "knock.localdomain"
trusted_networks = ["127.0.0.0/8", "::1/128"]
max_message_size = "25MiB"
[http]
listen = "127.0.0.1:8025"
[spool]
path = "knock-data"
[retry]
schedule = ["5m", "15m", "30m", "1h", "2h", "4h"]
max_age = "72h"
[routes]
"example.test" = ["127.0.0.1:2600"]
[events]
path = "knock-data/events.jsonl"
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(c.smtp.max_message_size, 25 * 1024 * 1024);
        assert_eq!(c.retry.schedule.len(), 6);
        assert_eq!(c.retry.schedule[3], Duration::from_secs(3600));
        assert_eq!(c.retry.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(c.routes["example.test"], vec!["127.0.0.1:2600"]);
        assert!(c.smtp.is_trusted("127.0.0.9".parse().unwrap()));
        assert!(c.smtp.is_trusted("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.smtp.is_trusted("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bare_line_endings_are_normalized_unless_refused_and_nothing_else_is_taken() {
        assert_eq!(
            Config::default().smtp.bare_line_endings,
            BareLineEndings::Normalize
        );
        let c = Config::parse("[smtp]\nbare_line_endings = \"refuse\"\n").unwrap();
        assert_eq!(c.smtp.bare_line_endings, BareLineEndings::Refuse);
        let e = Config::parse("[smtp]\nbare_line_endings = \"strip\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bare_line_endings"), "{e}");
    }

    #[test]
    fn a_nodes_share_of_the_limits() {
        let c = Config::parse(
            r#"
[shaping."*"]
rate = "300/10s"
max_connections = 10
[delivery]
max_connections = 4
total_connections = 2
[[source]]
name = "a"
hourly = 1000
daily = 10000
max_connections = 5
warmup = { hourly = 50, daily = 500, growth = 2.0, max_deferral_rate = 0.05 }
"#,
        )
        .unwrap();
        assert_eq!(
            toml::to_string(&c.share_of(1)).unwrap(),
            toml::to_string(&c).unwrap()
        );
        let third = c.share_of(3);
        let s = &third.shaping["*"];
        let r = s.rate.unwrap();
        assert_eq!(
            (r.count, r.per),
            (300, Duration::from_secs(30)),
            "the same 300, over 30 s"
        );
        assert_eq!(s.max_connections, Some(3));
        assert_eq!(third.delivery.max_connections, 1);
        assert_eq!(third.delivery.total_connections, Some(1), "never below one");
        let a = &third.sources[0];
        assert_eq!(
            (a.hourly, a.daily, a.max_connections),
            (Some(333), Some(3333), Some(1))
        );
        let w = a.warmup.as_ref().unwrap();
        assert_eq!((w.hourly, w.daily), (16, 166));
        for (text, key) in [
            ("[cluster]\nca = \"/etc/ca.pem\"\n", "cluster.ca"),
            ("[cluster]\nredis = \"http://r\"\n", "cluster.redis"),
            ("[cluster]\nnodes = 0\n", "cluster.nodes"),
            ("[cluster]\nnode = \"a b\"\n", "cluster.node"),
            ("[cluster]\nheartbeat = \"10ms\"\n", "cluster.heartbeat"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_documented_configuration_parses() {
        let doc = include_str!("../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + 8;
        let end = start + doc[start..].find("```").expect("its end");
        let c = Config::parse(&doc[start..end]).unwrap();
        let d = Config::default();
        assert_eq!(
            c.smtp.max_message_size, d.smtp.max_message_size,
            "the doc shows the defaults"
        );
        assert_eq!(c.retry.schedule, d.retry.schedule);
        assert_eq!(c.delivery.timeouts.data_done, d.delivery.timeouts.data_done);
        assert_eq!(c.spool.history, d.spool.history);
        assert_eq!(c.spool.cache_size, d.spool.cache_size);
        assert_eq!(c.stats.retention, d.stats.retention);
        assert_eq!(c.smtp.data_timeout, d.smtp.data_timeout);
        assert_eq!(c.smtp.client_limits, d.smtp.client_limits);
        assert_eq!(
            (c.tls.starttls, c.tls.outbound),
            (d.tls.starttls, d.tls.outbound)
        );
        assert!(c.tls.destinations.is_empty() && c.smtp.credentials.is_none());
    }

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.smtp.listen.to_string(), DEFAULT_SMTP_LISTEN);
        assert_eq!(c.http.listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(c.spool.path, PathBuf::from("knock-data"));
        assert_eq!(c.log.format, LogFormat::Plain);
        let c = Config::parse("[log]\nformat = \"json\"").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[smtp]\nlisten_on = \"x\"", "listen_on"),
            ("[smtp]\nmax_message_size = \"lots\"", "max_message_size"),
            ("[retry]\nschedule = [\"5 parsecs\"]", "schedule"),
            ("[retry]\nschedule = []", "retry.schedule"),
            ("[retry]\nschedule = [\"0s\"]", "retry.schedule[0]"),
            ("[tls]\noutbound = \"always\"", "outbound"),
            ("[tls]\ncert = \"c.pem\"", "tls.cert and tls.key"),
            (
                "[smtp.client_limits]\nconnections = 0",
                "smtp.client_limits.connections",
            ),
            ("[smtp.client_limits]\nmessages = \"lots\"", "messages"),
            (
                "[routes]\n\"a.test\" = [\"bad host!\"]",
                "routes.\"a.test\"[0]",
            ),
            (
                "[smtp]\ntrusted_networks = [\"10.0.0.0/33\"]",
                "trusted_networks",
            ),
            ("[bogus]\nx = 1", "bogus"),
            ("[http]\nlisten = \"0.0.0.0:8025\"", "http.tokens"),
            ("[http]\ntokens = [\"short\"]", "http.tokens"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[log]\nformat = 1", "format"),
            ("[log]\nlevel = \"debug\"", "level"),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"ftp://x.test/\"\nsecret = \"0123456789abcdef\"",
                "webhook[0].url",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"not a url\"\nsecret = \"0123456789abcdef\"",
                "webhook[0].url",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x.test/\"\nsecret = \"short\"",
                "webhook[0].secret",
            ),
            (
                "[[webhook]]\nname = \"a b\"\nurl = \"http://x.test/\"\nsecret = \"0123456789abcdef\"",
                "webhook[0].name",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x.test/\"\nsecret = \"0123456789abcdef\"\nevents = [\"delivered\", \"opened\"]",
                "webhook[0].events[1]",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x.test/\"\nsecret = \"0123456789abcdef\"\nbatch_size = 0",
                "webhook[0].batch_size",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x.test/\"\nsecret = \"0123456789abcdef\"\nformat = \"mailgun\"",
                "format",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x.test/\"\nsecret = \"0123456789abcdef\"\n[[webhook]]\nname = \"a\"\nurl = \"http://y.test/\"\nsecret = \"0123456789abcdef\"",
                "webhook[1].name",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"http://x.test/\"",
                "secret",
            ),
            ("[shaping.\"gogle\"]\nrate = \"10/s\"", "shaping.\"gogle\""),
            (
                "[tls.destinations]\ngogle = \"verify\"",
                "tls.destinations.\"gogle\"",
            ),
            (
                "[smtp]\ncredentials = \"users\"\n[tls]\nstarttls = false",
                "smtp.credentials",
            ),
        ];
        for (text, key) in cases {
            let err = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(
                err.contains(key),
                "{text:?}: error {err:?} does not name {key}"
            );
            assert!(!err.contains('\n'), "{text:?}: one line, not {err:?}");
        }
        let err = format!(
            "{:#}",
            Config::parse("[smtp]\nhostname = \"k\"\n\n[retry]\nmax_age = \"forever\"\n")
                .unwrap_err()
        );
        assert!(
            err.starts_with("line 5 (max_age = \"forever\"): ") && err.contains("duration"),
            "{err}"
        );
    }

    /// A key naming a provider names one of the table, or is a domain (or a provider named
    /// after its MX hosts): anything else would be silently ignored.
    #[test]
    fn provider_names_match_a_provider() {
        let corp = "[[provider]]\nname = \"corp\"\ndomains = [\"corp.example\"]\n";
        let ok = [
            "[shaping.\"google\"]",
            "[shaping.\"*\"]",
            "[shaping.\"mx.rx.test\"]",
            "[shaping.\"mx1.hoster.example+mx2.hoster.example\"]",
            "[tls.destinations]\ngoogle = \"verify\"\n\"gmail.com\" = \"require\"",
            "[tls.destinations]\n\"bank.example\" = \"verify\"",
            &format!("{corp}[shaping.corp]\n[tls.destinations]\ncorp = \"verify\""),
            "[[provider]]\nname = \"hosted.example\"\ndomains = [\"hosted.example\"]\n[shaping.\"hosted.example\"]",
        ];
        for text in ok {
            if let Err(e) = Config::parse(text) {
                panic!("{text:?}: {e:#}");
            }
        }
        let bad = [
            (
                "[shaping.\"gogle\"]",
                "shaping.\"gogle\": no provider is named \"gogle\" (did you mean \"google\"?)",
            ),
            (
                "[shaping.Google]",
                "shaping.\"Google\": no provider is named \"Google\" (did you mean \"google\"?)",
            ),
            (
                "[tls.destinations]\nmicrosft = \"verify\"",
                "tls.destinations.\"microsft\": no provider is named \"microsft\" (did you mean \"microsoft\"?)",
            ),
            (
                &format!("{corp}[shaping.corq]"),
                "shaping.\"corq\": no provider is named \"corq\" (did you mean \"corp\"?)",
            ),
            (
                "[shaping.foo]",
                "shaping.\"foo\": no provider is named \"foo\" (the table has google, microsoft, yahoo,",
            ),
            (
                "[shaping.\"gmail.com\"]",
                "shaping.\"gmail.com\": gmail.com is a domain of the provider \"google\", and shaping is per provider: use [shaping.\"google\"]",
            ),
            (
                "[tls.destinations]\n\"*\" = \"verify\"",
                "tls.destinations.\"*\": matches no destination; tls.outbound",
            ),
            (
                "[tls.destinations]\n\"Bank.Example\" = \"verify\"",
                "tls.destinations.\"Bank.Example\": domains are matched in lower case; write \"bank.example\"",
            ),
        ];
        for (text, says) in bad {
            let err = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(err.starts_with(says), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn edit_distances() {
        let cases = [
            ("", "", 0),
            ("google", "google", 0),
            ("gogle", "google", 1),
            ("googel", "google", 2),
            ("yahoo", "", 5),
            ("foo", "zoho", 2),
            ("kitten", "sitting", 3),
        ];
        for (a, b, d) in cases {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
            assert_eq!(edit_distance(b, a), d, "{b} {a}");
        }
    }

    /// The effective configuration, as `knock config check` prints it: every secret hidden,
    /// and the TOML reads back as the same configuration.
    #[test]
    fn serialized_config_hides_secrets_and_reads_back() {
        let text = r#"
[http]
tokens = ["plain-token-0123456789", { name = "alice", token = "alice-token-0123456789" }]
[shaping.google]
rate = "600/min"
[[webhook]]
name = "crm"
url = "https://hooks.example/knock"
secret = "webhook-secret-0123456789"
"#;
        let c = Config::parse(text).unwrap();
        let toml_out = toml::to_string(&c).unwrap();
        let json_out = serde_json::to_string(&c).unwrap();
        for out in [&toml_out, &json_out] {
            for secret in ["plain-token", "alice-token", "webhook-secret"] {
                assert!(!out.contains(secret), "{secret} shown: {out}");
            }
        }
        assert!(
            toml_out.contains(r#"tokens = ["<hidden>", { name = "alice", token = "<hidden>" }]"#),
            "{toml_out}"
        );
        assert!(toml_out.contains(r#"secret = "<hidden>""#), "{toml_out}");
        let json: serde_json::Value = serde_json::from_str(&json_out).unwrap();
        assert_eq!(json["webhook"][0]["secret"], HIDDEN);
        assert_eq!(json["http"]["tokens"][1]["name"], "alice");
        assert_eq!(json["shaping"]["google"]["rate"], "600/1m");
        assert_eq!(json["smtp"]["max_message_size"], "25MiB");
        assert_eq!(json["retry"]["max_age"], "3days");

        let doc = include_str!("../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + 8;
        let end = start + doc[start..].find("```").expect("its end");
        for c in [
            Config::default(),
            c,
            Config::parse(&doc[start..end]).unwrap(),
        ] {
            let out = toml::to_string(&c).unwrap();
            let back: Config = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            assert_eq!(toml::to_string(&back).unwrap(), out, "reads back the same");
        }
        let d = toml::to_string(&Config::default()).unwrap();
        assert!(
            d.contains("schedule = [\"5m\", \"15m\", \"30m\", \"1h\", \"2h\", \"4h\"]"),
            "{d}"
        );
        assert!(d.contains("cache_size = \"128MiB\""), "{d}");
    }

    #[test]
    fn sizes_are_written_in_the_largest_whole_unit() {
        #[derive(Serialize)]
        struct S(#[serde(serialize_with = "ser_size")] u64);
        let cases = [
            (0, "0"),
            (1000, "1000"),
            (1024, "\"1KiB\""),
            (1536, "1536"),
            (25 << 20, "\"25MiB\""),
            (3 << 30, "\"3GiB\""),
        ];
        for (bytes, json) in cases {
            assert_eq!(serde_json::to_string(&S(bytes)).unwrap(), json, "{bytes}");
        }
    }

    #[test]
    fn rates() {
        for text in ["600/1m", "5/10s", "1/1day"] {
            let r: Rate = text.parse().unwrap();
            assert_eq!(r.to_string().parse::<Rate>().unwrap(), r, "{text}");
        }
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!((r.count, r.per), (600, Duration::from_secs(60)));
        let r: Rate = "5/10s".parse().unwrap();
        assert_eq!((r.count, r.per), (5, Duration::from_secs(10)));
        for bad in ["600", "x/min", "0/min", "5/fortnight"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("mx.a.test", 25).unwrap(),
            ("mx.a.test".into(), 25)
        );
        assert_eq!(
            parse_host_port("MX.a.test:2600", 25).unwrap(),
            ("mx.a.test".into(), 2600)
        );
        assert_eq!(
            parse_host_port("127.0.0.1:26", 25).unwrap(),
            ("127.0.0.1".into(), 26)
        );
        assert_eq!(parse_host_port("[::1]:26", 25).unwrap(), ("::1".into(), 26));
        assert_eq!(parse_host_port("::1", 25).unwrap(), ("::1".into(), 25));
        assert!(parse_host_port("a.test:x", 25).is_err());
    }
}
