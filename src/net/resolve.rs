//! Finding where a domain's mail goes: MX lookup with the RFC 5321 section 5.1 rules
//! (preference order, implicit MX, null MX per RFC 7505) behind the [`Resolver`] trait.
//! [`DnsResolver`] asks real DNS through hickory; [`StaticResolver`] answers from a table
//! for tests. `[routes]` in the config bypass MX lookup altogether (see `transport`).

use crate::config::DnsConfig;
use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("domain {0} does not exist (NXDOMAIN)")]
    NxDomain(String),
    #[error("domain {0} accepts no mail (null MX)")]
    NullMx(String),
    #[error("host {0} has no address")]
    NoAddress(String),
    #[error("DNS lookup for {0} failed: {1}")]
    Temporary(String, String),
}

#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The mail exchangers of `domain`, most preferred first; the domain itself when it has
    /// no MX records but has an address (the implicit MX).
    async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError>;
    /// The addresses of `host`, with `port`.
    async fn addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError>;
}

/// Real DNS through hickory, with the system's resolver configuration.
pub struct DnsResolver {
    inner: TokioResolver,
}

impl DnsResolver {
    /// Asks the configured servers (over UDP, and TCP for long answers), or the servers of
    /// the system's configuration when there are none. `attempts` is how many times a query
    /// is tried in all (hickory counts the retries after the first).
    pub fn new(config: &DnsConfig) -> anyhow::Result<DnsResolver> {
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            TokioResolver::builder_with_config(
                servers_config(&config.servers),
                TokioRuntimeProvider::default(),
            )
        };
        apply_options(config, builder.options_mut());
        Ok(DnsResolver {
            inner: builder.build()?,
        })
    }
}

/// `[dns] servers` as a resolver's configuration: each asked over UDP, and TCP for long
/// answers, on its own port. (Also what `knock check-domain` hands mail-auth's resolver.)
pub fn servers_config(servers: &[SocketAddr]) -> ResolverConfig {
    let name_servers = servers
        .iter()
        .map(|s| {
            let on = |protocol| {
                let mut c = ConnectionConfig::new(protocol);
                c.port = s.port();
                c
            };
            NameServerConfig::new(
                s.ip(),
                true,
                vec![on(ProtocolConfig::Udp), on(ProtocolConfig::Tcp)],
            )
        })
        .collect();
    ResolverConfig::from_parts(None, Vec::new(), name_servers)
}

/// `[dns] timeout`, `attempts` (hickory counts the retries after the first) and
/// `cache_size` on a resolver's options.
pub fn apply_options(config: &DnsConfig, options: &mut ResolverOpts) {
    options.timeout = config.timeout;
    options.attempts = config.attempts.saturating_sub(1);
    options.cache_size = config.cache_size;
}

#[async_trait]
impl Resolver for DnsResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.inner.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let hosts = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(MxHost {
                            name: mx
                                .exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                            preference: mx.preference,
                        }),
                        _ => None,
                    })
                    .collect();
                order_mx(domain, hosts)
            }
            Err(e) if e.is_nx_domain() => Err(DnsError::NxDomain(domain.to_string())),
            Err(e) if e.is_no_records_found() => {
                // No MX: the domain itself is the implicit MX if it has an address.
                match self.addrs(domain, 25).await {
                    Ok(_) => Ok(vec![MxHost {
                        name: domain.to_string(),
                        preference: 0,
                    }]),
                    Err(DnsError::NoAddress(_)) => Err(DnsError::NxDomain(domain.to_string())),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(DnsError::Temporary(domain.to_string(), e.to_string())),
        }
    }

    async fn addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                Err(DnsError::NoAddress(host.to_string()))
            }
            Err(e) => Err(DnsError::Temporary(host.to_string(), e.to_string())),
        }
    }
}

/// Sorts by preference (shuffling equal ones, RFC 5321 section 5.1) and spots a null MX.
fn order_mx(domain: &str, mut hosts: Vec<MxHost>) -> Result<Vec<MxHost>, DnsError> {
    if hosts.iter().any(|h| h.name.is_empty() || h.name == ".") {
        return Err(DnsError::NullMx(domain.to_string()));
    }
    if hosts.is_empty() {
        return Err(DnsError::NxDomain(domain.to_string()));
    }
    fastrand::shuffle(&mut hosts);
    hosts.sort_by_key(|h| h.preference);
    Ok(hosts)
}

/// Answers from a table: for tests, benchmarks, and anywhere DNS must not be asked.
#[derive(Default, Clone)]
pub struct StaticResolver {
    mx: HashMap<String, Result<Vec<MxHost>, DnsError>>,
    hosts: HashMap<String, Vec<SocketAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// `domain`'s MX hosts, in preference order.
    pub fn with_mx(mut self, domain: &str, hosts: &[&str]) -> Self {
        let list = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| MxHost {
                name: h.to_string(),
                preference: 10 * (i as u16 + 1),
            })
            .collect();
        self.mx.insert(domain.to_string(), Ok(list));
        self
    }

    /// `host` resolves to `addr` (port included: tests listen on ephemeral ports).
    pub fn with_host(mut self, host: &str, addr: SocketAddr) -> Self {
        self.hosts.entry(host.to_string()).or_default().push(addr);
        self
    }

    pub fn with_error(mut self, domain: &str, error: DnsError) -> Self {
        self.mx.insert(domain.to_string(), Err(error));
        self
    }

    pub fn into_arc(self) -> Arc<dyn Resolver> {
        Arc::new(self)
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        match self.mx.get(domain) {
            Some(answer) => answer.clone(),
            None if self.hosts.contains_key(domain) => Ok(vec![MxHost {
                name: domain.to_string(),
                preference: 0,
            }]),
            None => Err(DnsError::NxDomain(domain.to_string())),
        }
    }

    async fn addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        self.hosts
            .get(host)
            .cloned()
            .ok_or_else(|| DnsError::NoAddress(host.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_order_and_null_mx() {
        let hosts = vec![
            MxHost {
                name: "b.test".into(),
                preference: 20,
            },
            MxHost {
                name: "a.test".into(),
                preference: 10,
            },
        ];
        let ordered = order_mx("d.test", hosts).unwrap();
        assert_eq!(ordered[0].name, "a.test");
        let null = vec![MxHost {
            name: "".into(),
            preference: 0,
        }];
        assert_eq!(
            order_mx("d.test", null),
            Err(DnsError::NullMx("d.test".into()))
        );
    }

    #[tokio::test]
    async fn static_resolver_answers() {
        let addr: SocketAddr = "127.0.0.1:2600".parse().unwrap();
        let r = StaticResolver::new()
            .with_mx("a.test", &["mx.a.test"])
            .with_host("mx.a.test", addr);
        assert_eq!(r.mx("a.test").await.unwrap()[0].name, "mx.a.test");
        assert_eq!(r.addrs("mx.a.test", 25).await.unwrap(), vec![addr]);
        assert!(matches!(
            r.mx("nope.test").await,
            Err(DnsError::NxDomain(_))
        ));
    }
}
