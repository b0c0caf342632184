//! The SMTP client side of delivery behind the [`Transport`] trait: from a recipient domain
//! to an open, greeted connection (routes or MX lookup, each MX host and address in turn,
//! STARTTLS as the destination's TLS policy says), and transactions over it. Tests may
//! substitute a scripted transport.

use crate::config::{DeliveryConfig, parse_host_port};
use crate::message::HostTried;
use crate::net::resolve::{DnsError, MxHost, Resolver};
use crate::net::smtp::client::{Client, ClientError, Transaction};
use crate::net::tls::{Connectors, Policy, TlsInfo};
use crate::outcome::{Failure, FailureKind, Observed};
use crate::reply::Reply;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a failed MX lookup stands for its domain: the lookup that finds the provider
/// and the delivery after it share one, and a failing domain is not asked again for every
/// group. (Answers are cached by the resolver for their TTL.)
const FAILED_MX_TTL: Duration = Duration::from_secs(60);

/// Where a connection comes from: a source of `[[source]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub name: Arc<str>,
    /// The local address connections are bound to; the host's choice when `None`.
    pub ip: Option<IpAddr>,
    /// The EHLO name; `[smtp] hostname` when `None`.
    pub ehlo: Option<String>,
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// An open connection for `domain` under TLS `policy`, or why there is none (DNS
    /// failure, every host down or refusing, TLS required and not had): what was observed
    /// stands for every recipient.
    async fn connect(
        &self,
        domain: &str,
        policy: Policy,
        source: &Source,
    ) -> Result<Box<dyn Connection>, ConnectError>;

    /// The host names mail for `domain` goes to (its route or its MX hosts), to find its
    /// provider; empty when DNS cannot say.
    async fn mx_hosts(&self, domain: &str) -> Vec<String>;

    /// The addresses of the host `domain`'s mail goes to first (its route's first host, or
    /// its most preferred MX host); empty when DNS cannot say. A connection open to one of
    /// them may carry that domain's mail too, whatever domain it was opened for.
    async fn first_choice(&self, domain: &str) -> Vec<SocketAddr> {
        let _ = domain;
        Vec::new()
    }

    /// Takes new `[routes]` (a reload); `false` when this transport cannot.
    fn set_routes(&self, routes: &BTreeMap<String, Vec<String>>) -> bool {
        let _ = routes;
        false
    }
}

/// No connection: what was observed, and the last MX host tried if DNS got that far.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub observed: Observed,
    pub mx: Option<String>,
    /// Every host tried, in order, and what each did.
    pub tried: Vec<HostTried>,
    /// Every host was tried and none would talk (refused, timed out, turned away at the
    /// greeting): the destination, not the message, is unwell.
    pub unreachable: bool,
}

#[async_trait]
pub trait Connection: Send {
    /// The MX host name this connection reached.
    fn mx(&self) -> &str;
    /// The hosts tried before this one that would not do, in order.
    fn passed_over(&self) -> &[HostTried] {
        &[]
    }
    fn local_ip(&self) -> String;
    /// The address the connection is open to.
    fn peer(&self) -> SocketAddr;
    fn is_reusable(&self) -> bool;
    /// The TLS the session runs over; `None` in plaintext.
    fn tls(&self) -> Option<TlsInfo>;
    /// The slowest reply (the greeting included) since the last call: a slowing receiver
    /// shows here before it refuses anything.
    fn take_slowest_reply(&mut self) -> Option<Duration>;
    /// One transaction: each recipient's reply (its RCPT reply when that refused it, else
    /// the reply to the end of data), or the failure that cut the conversation short.
    async fn send(&mut self, tx: &Transaction<'_>) -> Vec<Result<Reply, Failure>>;
    /// The receiver offered DSN, so NOTIFY went on with the mail: it, not knock, tells the
    /// sender of success from there on (RFC 3461 section 5.2.2.2).
    fn offers_dsn(&self) -> bool {
        false
    }
    async fn quit(self: Box<Self>);
}

/// One host to try: its name and its addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Domain → hosts and ports, tried in order; `"*"` is the smart host.
type Routes = BTreeMap<String, Vec<(String, u16)>>;

fn parse_routes(routes: &BTreeMap<String, Vec<String>>, port: u16) -> Routes {
    routes
        .iter()
        .map(|(domain, hosts)| {
            let hosts = hosts
                .iter()
                .filter_map(|h| parse_host_port(h, port).ok())
                .collect();
            (domain.to_ascii_lowercase(), hosts)
        })
        .collect()
}

pub struct SmtpTransport {
    resolver: Arc<dyn Resolver>,
    /// Read for every connection, replaced by a reload.
    routes: std::sync::RwLock<Routes>,
    config: DeliveryConfig,
    helo_name: String,
    connectors: Connectors,
    failed_mx: Mutex<HashMap<String, (Instant, DnsError)>>,
}

impl SmtpTransport {
    pub fn new(
        resolver: Arc<dyn Resolver>,
        routes: &BTreeMap<String, Vec<String>>,
        config: DeliveryConfig,
        helo_name: String,
        connectors: Connectors,
    ) -> SmtpTransport {
        let routes = parse_routes(routes, config.port);
        SmtpTransport {
            resolver,
            routes: std::sync::RwLock::new(routes),
            config,
            helo_name,
            connectors,
            failed_mx: Mutex::new(HashMap::new()),
        }
    }

    /// `domain`'s route (or the smart host's), if it has one.
    fn route(&self, domain: &str) -> Option<Vec<(String, u16)>> {
        let routes = self.routes.read().expect("routes lock");
        routes.get(domain).or_else(|| routes.get("*")).cloned()
    }

    /// The MX hosts of `domain`; a failure is remembered for a minute.
    async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        let key = domain.to_ascii_lowercase();
        {
            let mut failed = self.failed_mx.lock().expect("not poisoned");
            match failed.get(&key) {
                Some((at, e)) if at.elapsed() < FAILED_MX_TTL => return Err(e.clone()),
                Some(_) => {
                    failed.remove(&key);
                }
                None => {}
            }
        }
        let answer = self.resolver.mx(domain).await;
        if let Err(e) = &answer {
            let mut failed = self.failed_mx.lock().expect("not poisoned");
            failed.retain(|_, (at, _)| at.elapsed() < FAILED_MX_TTL);
            failed.insert(key, (Instant::now(), e.clone()));
        }
        answer
    }

    /// The host names and ports for `domain`, in order: a route when one matches, else its
    /// MX hosts on the delivery port.
    async fn hosts(&self, domain: &str) -> Result<Vec<(String, u16)>, DnsError> {
        match self.route(domain) {
            Some(hosts) => Ok(hosts),
            None => Ok(self
                .mx(domain)
                .await?
                .into_iter()
                .map(|mx| (mx.name, self.config.port))
                .collect()),
        }
    }

    /// The hosts to try for `domain`, in order, with their addresses.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, Observed> {
        let hosts = self.hosts(domain).await.map_err(dns_observed)?;
        let mut targets = Vec::with_capacity(hosts.len());
        let mut last_error = None;
        for (host, port) in hosts {
            match self.resolver.addrs(&host, port).await {
                Ok(addrs) => targets.push(Target { host, addrs }),
                Err(e) => last_error = Some(e),
            }
        }
        match (targets.is_empty(), last_error) {
            (true, Some(e)) => Err(dns_observed(e)),
            _ => Ok(targets),
        }
    }
}

/// What DNS said, as a failure of its kind.
fn dns_observed(e: DnsError) -> Observed {
    let kind = match &e {
        DnsError::NxDomain(_) => FailureKind::NoSuchDomain,
        DnsError::NullMx(_) => FailureKind::NullMx,
        DnsError::NoAddress(_) => FailureKind::NoAddress,
        DnsError::Temporary(..) => FailureKind::DnsTemporary,
    };
    Failure::new(kind, e.to_string()).into()
}

#[async_trait]
impl Transport for SmtpTransport {
    fn set_routes(&self, routes: &BTreeMap<String, Vec<String>>) -> bool {
        *self.routes.write().expect("routes lock") = parse_routes(routes, self.config.port);
        true
    }

    async fn connect(
        &self,
        domain: &str,
        policy: Policy,
        source: &Source,
    ) -> Result<Box<dyn Connection>, ConnectError> {
        let targets = self
            .targets(domain)
            .await
            .map_err(|observed| ConnectError {
                observed,
                mx: None,
                tried: Vec::new(),
                unreachable: false,
            })?;
        let mut failure = ConnectError {
            observed: Failure::new(
                FailureKind::NoMailExchanger,
                format!("no mail exchanger for {domain}"),
            )
            .into(),
            mx: None,
            tried: Vec::new(),
            unreachable: true,
        };
        let mut tried = Vec::new();
        for target in targets {
            for addr in &target.addrs {
                match self.open(&target.host, *addr, policy, source).await {
                    Ok(mut conn) => {
                        conn.passed_over = tried;
                        return Ok(Box::new(conn));
                    }
                    Err(failed) => {
                        tracing::debug!(domain, host = %target.host, %addr, reason = %failed.observed, "MX host unusable, trying the next");
                        tried.push(HostTried {
                            host: target.host.clone(),
                            addr: addr.to_string(),
                            said: failed.observed.to_string(),
                        });
                        failure = ConnectError {
                            observed: failed.observed,
                            mx: Some(target.host.clone()),
                            tried: Vec::new(),
                            unreachable: failure.unreachable && !failed.tls_policy,
                        };
                    }
                }
            }
        }
        failure.tried = tried;
        Err(failure)
    }

    async fn mx_hosts(&self, domain: &str) -> Vec<String> {
        match self.route(domain) {
            Some(hosts) => hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect(),
            None => self
                .mx(domain)
                .await
                .map(|mx| mx.into_iter().map(|m| m.name).collect())
                .unwrap_or_default(),
        }
    }

    async fn first_choice(&self, domain: &str) -> Vec<SocketAddr> {
        let first = self
            .hosts(domain)
            .await
            .ok()
            .and_then(|hosts| hosts.into_iter().next());
        match first {
            Some((host, port)) => self.resolver.addrs(&host, port).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// Why one host would not do.
struct OpenFailed {
    observed: Observed,
    /// The host talks, but not with the TLS the policy asks for: the destination is not
    /// down, and the opportunistic policy may try again in plaintext.
    tls_policy: bool,
}

impl From<Observed> for OpenFailed {
    fn from(observed: Observed) -> Self {
        OpenFailed {
            observed,
            tls_policy: false,
        }
    }
}

impl SmtpTransport {
    /// Connects, reads the greeting, says EHLO and starts TLS as `policy` says. A failed
    /// handshake under the opportunistic policy is tried once more in plaintext, as
    /// Postfix does at its `may` level: some receivers offer STARTTLS and cannot do it.
    async fn open(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: Policy,
        source: &Source,
    ) -> Result<SmtpConnection, OpenFailed> {
        match self.open_once(host, addr, policy, source).await {
            Err(failed) if failed.tls_policy && policy == Policy::Opportunistic => {
                tracing::info!(host, %addr, reason = %failed.observed, "TLS failed; trying again in plaintext");
                self.open_once(host, addr, Policy::Off, source).await
            }
            opened => opened,
        }
    }

    async fn open_once(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: Policy,
        source: &Source,
    ) -> Result<SmtpConnection, OpenFailed> {
        // Client errors name the address; the host name is what operators look for.
        let described = |e: ClientError| Observed::from(Failure::from(&e).at(host));
        let mut client = Client::connect_from(addr, source.ip, &self.config.timeouts)
            .await
            .map_err(described)?;
        let greeting = client.read_greeting().await.map_err(described)?;
        if !greeting.is_positive() {
            client.quit().await;
            return Err(Observed::Reply(greeting).into());
        }
        let helo = source.ehlo.as_deref().unwrap_or(&self.helo_name);
        let mut ready = self.hello(&mut client, host, helo).await;
        if ready.is_ok() && policy != Policy::Off {
            ready = self.starttls(&mut client, host, policy, helo).await;
        }
        if let Err(failed) = ready {
            client.quit().await;
            return Err(failed);
        }
        Ok(SmtpConnection {
            client,
            mx: host.to_string(),
            passed_over: Vec::new(),
        })
    }

    async fn hello(&self, client: &mut Client, host: &str, helo: &str) -> Result<(), OpenFailed> {
        let hello = client
            .hello(helo)
            .await
            .map_err(|e| Observed::from(Failure::from(&e).at(host)))?;
        if !hello.is_positive() {
            return Err(Observed::Reply(hello).into());
        }
        Ok(())
    }

    /// STARTTLS and a new EHLO when offered; when not, an error only if TLS is required.
    async fn starttls(
        &self,
        client: &mut Client,
        host: &str,
        policy: Policy,
        helo: &str,
    ) -> Result<(), OpenFailed> {
        let tls_failure = |kind: FailureKind, text: String| OpenFailed {
            observed: Failure::new(kind, text).into(),
            tls_policy: true,
        };
        if !client.capabilities.starttls {
            return match policy.requires_tls() {
                // Postfix's words and code for the same case.
                true => Err(tls_failure(
                    FailureKind::TlsNotOffered,
                    format!("TLS is required, but was not offered by host {host}"),
                )),
                false => Ok(()),
            };
        }
        match client.starttls(&self.connectors, policy, host).await {
            Ok(Ok(())) => self.hello(client, host, helo).await,
            Ok(Err(refused)) if policy.requires_tls() => Err(tls_failure(
                FailureKind::TlsRefused,
                format!("TLS is required, but host {host} refused to start TLS: {refused}"),
            )),
            // Refused STARTTLS leaves the plaintext session as it was (RFC 3207 section 4).
            Ok(Err(_)) => Ok(()),
            Err(e @ ClientError::Handshake(_)) => Err(tls_failure(
                FailureKind::TlsHandshake,
                format!("{host}: cannot start TLS: {e}"),
            )),
            Err(e) => Err(Observed::from(Failure::from(&e).at(host)).into()),
        }
    }
}

struct SmtpConnection {
    client: Client,
    mx: String,
    passed_over: Vec<HostTried>,
}

#[async_trait]
impl Connection for SmtpConnection {
    fn mx(&self) -> &str {
        &self.mx
    }

    fn passed_over(&self) -> &[HostTried] {
        &self.passed_over
    }

    fn local_ip(&self) -> String {
        self.client.local.ip().to_string()
    }

    fn peer(&self) -> SocketAddr {
        self.client.peer
    }

    fn is_reusable(&self) -> bool {
        !self.client.is_broken()
    }

    fn tls(&self) -> Option<TlsInfo> {
        self.client.tls.clone()
    }

    fn take_slowest_reply(&mut self) -> Option<Duration> {
        self.client.take_slowest_reply()
    }

    async fn send(&mut self, tx: &Transaction<'_>) -> Vec<Result<Reply, Failure>> {
        let replies = self.client.send(tx).await;
        replies
            .per_recipient
            .into_iter()
            .map(|r| r.map_err(|e| Failure::from(&e)))
            .collect()
    }

    fn offers_dsn(&self) -> bool {
        self.client.capabilities.dsn
    }

    async fn quit(self: Box<Self>) {
        self.client.quit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A resolver whose MX lookups all fail, counting them.
    struct Failing(AtomicUsize);

    #[async_trait]
    impl Resolver for Failing {
        async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(DnsError::Temporary(domain.into(), "SERVFAIL".into()))
        }
        async fn addrs(&self, host: &str, _port: u16) -> Result<Vec<SocketAddr>, DnsError> {
            Err(DnsError::NoAddress(host.into()))
        }
    }

    #[tokio::test]
    async fn one_failed_mx_lookup_serves_the_provider_and_the_delivery() {
        let resolver = Arc::new(Failing(AtomicUsize::new(0)));
        let t = SmtpTransport::new(
            resolver.clone(),
            &BTreeMap::new(),
            DeliveryConfig::default(),
            "knock.test".into(),
            Connectors::new(None).unwrap(),
        );
        assert!(t.mx_hosts("x.test").await.is_empty());
        let source = Source {
            name: "default".into(),
            ip: None,
            ehlo: None,
        };
        let e = t
            .connect("X.test", Policy::Off, &source)
            .await
            .err()
            .unwrap();
        assert!(
            e.observed.to_string().contains("SERVFAIL"),
            "{}",
            e.observed
        );
        assert_eq!(resolver.0.load(Ordering::SeqCst), 1, "one lookup");
        assert!(t.mx_hosts("y.test").await.is_empty());
        assert_eq!(resolver.0.load(Ordering::SeqCst), 2, "per domain");
    }
}
