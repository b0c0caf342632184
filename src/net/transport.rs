//! The SMTP client side of delivery behind the [`Transport`] trait: from a recipient domain
//! to an open, greeted connection (routes or MX lookup, each MX host and address in turn,
//! STARTTLS as the destination's TLS policy says), and transactions over it. Tests may
//! substitute a scripted transport.

use crate::config::{DeliveryConfig, parse_host_port};
use crate::net::resolve::{DnsError, Resolver};
use crate::net::smtp::client::{Client, ClientError};
use crate::net::tls::{Connectors, Policy, TlsInfo};
use crate::outcome::{Failure, FailureKind, Observed};
use crate::reply::Reply;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// An open connection for `domain` under TLS `policy`, or why there is none (DNS
    /// failure, every host down or refusing, TLS required and not had): what was observed
    /// stands for every recipient.
    async fn connect(
        &self,
        domain: &str,
        policy: Policy,
    ) -> Result<Box<dyn Connection>, ConnectError>;

    /// The host names mail for `domain` goes to (its route or its MX hosts), to find its
    /// provider; empty when DNS cannot say.
    async fn mx_hosts(&self, domain: &str) -> Vec<String>;
}

/// No connection: what was observed, and the last MX host tried if DNS got that far.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub observed: Observed,
    pub mx: Option<String>,
    /// Every host was tried and none would talk (refused, timed out, turned away at the
    /// greeting): the destination, not the message, is unwell.
    pub unreachable: bool,
}

#[async_trait]
pub trait Connection: Send {
    /// The MX host name this connection reached.
    fn mx(&self) -> &str;
    fn local_ip(&self) -> String;
    fn is_reusable(&self) -> bool;
    /// The TLS the session runs over; `None` in plaintext.
    fn tls(&self) -> Option<TlsInfo>;
    /// The slowest reply (the greeting included) since the last call: a slowing receiver
    /// shows here before it refuses anything.
    fn take_slowest_reply(&mut self) -> Option<Duration>;
    /// One transaction: each recipient's reply (its RCPT reply when that refused it, else
    /// the reply to the end of data), or the failure that cut the conversation short.
    async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Vec<Result<Reply, Failure>>;
    async fn quit(self: Box<Self>);
}

/// One host to try: its name and its addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

pub struct SmtpTransport {
    resolver: Arc<dyn Resolver>,
    routes: BTreeMap<String, Vec<(String, u16)>>,
    config: DeliveryConfig,
    helo_name: String,
    connectors: Connectors,
}

impl SmtpTransport {
    pub fn new(
        resolver: Arc<dyn Resolver>,
        routes: &BTreeMap<String, Vec<String>>,
        config: DeliveryConfig,
        helo_name: String,
        connectors: Connectors,
    ) -> SmtpTransport {
        let routes = routes
            .iter()
            .map(|(domain, hosts)| {
                let hosts = hosts
                    .iter()
                    .filter_map(|h| parse_host_port(h, config.port).ok())
                    .collect();
                (domain.to_ascii_lowercase(), hosts)
            })
            .collect();
        SmtpTransport {
            resolver,
            routes,
            config,
            helo_name,
            connectors,
        }
    }

    /// The hosts to try for `domain`, in order: a route when one matches, else its MX.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, Observed> {
        let hosts: Vec<(String, u16)> =
            match self.routes.get(domain).or_else(|| self.routes.get("*")) {
                Some(hosts) => hosts.clone(),
                None => self
                    .resolver
                    .mx(domain)
                    .await
                    .map_err(dns_observed)?
                    .into_iter()
                    .map(|mx| (mx.name, self.config.port))
                    .collect(),
            };
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
    async fn connect(
        &self,
        domain: &str,
        policy: Policy,
    ) -> Result<Box<dyn Connection>, ConnectError> {
        let targets = self
            .targets(domain)
            .await
            .map_err(|observed| ConnectError {
                observed,
                mx: None,
                unreachable: false,
            })?;
        let mut failure = ConnectError {
            observed: Failure::new(
                FailureKind::NoMailExchanger,
                format!("no mail exchanger for {domain}"),
            )
            .into(),
            mx: None,
            unreachable: true,
        };
        for target in targets {
            for addr in &target.addrs {
                match self.open(&target.host, *addr, policy).await {
                    Ok(conn) => return Ok(Box::new(conn)),
                    Err(failed) => {
                        tracing::debug!(domain, host = %target.host, %addr, reason = %failed.observed, "MX host unusable, trying the next");
                        failure = ConnectError {
                            observed: failed.observed,
                            mx: Some(target.host.clone()),
                            unreachable: failure.unreachable && !failed.tls_policy,
                        };
                    }
                }
            }
        }
        Err(failure)
    }

    async fn mx_hosts(&self, domain: &str) -> Vec<String> {
        match self.routes.get(domain).or_else(|| self.routes.get("*")) {
            Some(hosts) => hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect(),
            None => self
                .resolver
                .mx(domain)
                .await
                .map(|mx| mx.into_iter().map(|m| m.name).collect())
                .unwrap_or_default(),
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
    ) -> Result<SmtpConnection, OpenFailed> {
        match self.open_once(host, addr, policy).await {
            Err(failed) if failed.tls_policy && policy == Policy::Opportunistic => {
                tracing::info!(host, %addr, reason = %failed.observed, "TLS failed; trying again in plaintext");
                self.open_once(host, addr, Policy::Off).await
            }
            opened => opened,
        }
    }

    async fn open_once(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: Policy,
    ) -> Result<SmtpConnection, OpenFailed> {
        // Client errors name the address; the host name is what operators look for.
        let described = |e: ClientError| Observed::from(Failure::from(&e).at(host));
        let mut client = Client::connect(addr, &self.config.timeouts)
            .await
            .map_err(described)?;
        let greeting = client.read_greeting().await.map_err(described)?;
        if !greeting.is_positive() {
            client.quit().await;
            return Err(Observed::Reply(greeting).into());
        }
        let mut ready = self.hello(&mut client, host).await;
        if ready.is_ok() && policy != Policy::Off {
            ready = self.starttls(&mut client, host, policy).await;
        }
        if let Err(failed) = ready {
            client.quit().await;
            return Err(failed);
        }
        Ok(SmtpConnection {
            client,
            mx: host.to_string(),
        })
    }

    async fn hello(&self, client: &mut Client, host: &str) -> Result<(), OpenFailed> {
        let hello = client
            .hello(&self.helo_name)
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
            Ok(Ok(())) => self.hello(client, host).await,
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
}

#[async_trait]
impl Connection for SmtpConnection {
    fn mx(&self) -> &str {
        &self.mx
    }

    fn local_ip(&self) -> String {
        self.client.local.ip().to_string()
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

    async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Vec<Result<Reply, Failure>> {
        let replies = self.client.send(from, rcpts, body).await;
        replies
            .per_recipient
            .into_iter()
            .map(|r| r.map_err(|e| Failure::from(&e)))
            .collect()
    }

    async fn quit(self: Box<Self>) {
        self.client.quit().await
    }
}
