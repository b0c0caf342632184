//! Providers: which receiving infrastructure a recipient domain belongs to. Shaping, learning
//! and reporting are per provider, because gmail.com, googlemail.com and every company on
//! Google Workspace share the same receivers and the same limits.
//!
//! A domain belongs to the first provider listing it by name, else to the first whose MX
//! suffixes match one of its MX hosts (`data/providers.toml`, after the operator's
//! `[[provider]]` entries); otherwise its MX host set is a provider of its own.

use serde::{Deserialize, Serialize};

pub const SHIPPED_PROVIDERS: &str = include_str!("../../data/providers.toml");

/// One provider: a name, the domains known to be hosted there, and MX host suffixes (a
/// `[[provider]]` of the configuration, or an entry of the shipped table).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderDef {
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub mx: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    provider: Vec<ProviderDef>,
}

#[derive(Debug, Clone)]
pub struct Providers {
    defs: Vec<ProviderDef>,
    /// Each listed domain's provider (the first that lists it), by index in `defs`.
    by_name: std::collections::HashMap<String, usize>,
}

impl Default for Providers {
    fn default() -> Self {
        Providers::new(Vec::new())
    }
}

impl Providers {
    /// The operator's providers in front of the shipped ones.
    pub fn new(mut operator: Vec<ProviderDef>) -> Providers {
        let shipped: ProviderFile =
            toml::from_str(SHIPPED_PROVIDERS).expect("the shipped providers are valid");
        for d in operator.iter_mut() {
            d.domains
                .iter_mut()
                .for_each(|x| *x = x.to_ascii_lowercase());
            d.mx.iter_mut()
                .for_each(|x| *x = x.trim_start_matches('.').to_ascii_lowercase());
        }
        operator.extend(shipped.provider);
        let mut by_name = std::collections::HashMap::new();
        for (i, p) in operator.iter().enumerate() {
            for d in &p.domains {
                by_name.entry(d.clone()).or_insert(i);
            }
        }
        Providers {
            defs: operator,
            by_name,
        }
    }

    /// Whether a provider of this name is in the table (the operator's or the shipped).
    pub fn is_named(&self, name: &str) -> bool {
        self.defs.iter().any(|p| p.name == name)
    }

    /// The names of the providers in the table, the operator's first, each once.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.defs {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        names
    }

    /// The provider that lists `domain` by name, if any: no DNS needed.
    pub fn by_domain(&self, domain: &str) -> Option<&str> {
        self.by_name
            .get(domain)
            .map(|&i| self.defs[i].name.as_str())
    }

    /// The provider of `domain` given its MX hosts (most preferred first).
    pub fn name_for(&self, domain: &str, mx_hosts: &[String]) -> String {
        if let Some(name) = self.by_domain(domain) {
            return name.to_string();
        }
        let hosts: Vec<String> = mx_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let matches = |host: &str, suffix: &str| {
            host == suffix
                || (host.len() > suffix.len()
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
        };
        for p in &self.defs {
            if hosts.iter().any(|h| p.mx.iter().any(|s| matches(h, s))) {
                return p.name.clone();
            }
        }
        own_name(domain, mx_hosts)
    }
}

/// An unknown MX set is its own provider, named by its hosts, so that two domains share a
/// provider exactly when they share their mail exchangers.
fn own_name(domain: &str, mx_hosts: &[String]) -> String {
    if mx_hosts.is_empty() {
        return domain.to_string();
    }
    let mut hosts: Vec<String> = mx_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    hosts.join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(hosts: &[&str]) -> Vec<String> {
        hosts.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn grouping_table() {
        let p = Providers::default();
        let cases: &[(&str, &[&str], &str)] = &[
            ("gmail.com", &[], "google"),
            ("googlemail.com", &["gmail-smtp-in.l.google.com"], "google"),
            (
                "company.example",
                &["aspmx.l.google.com", "alt1.aspmx.l.google.com"],
                "google",
            ),
            (
                "contoso.example",
                &["contoso-example.mail.protection.outlook.com"],
                "microsoft",
            ),
            ("hotmail.com", &[], "microsoft"),
            ("aol.com", &[], "yahoo"),
            ("small.example", &["mta5.am0.yahoodns.net"], "yahoo"),
            ("me.com", &[], "apple"),
            ("web.de", &[], "gmx"),
            ("bank.example", &["mx0a-001.pphosted.com"], "proofpoint"),
            (
                "shop.example",
                &["us-smtp-inbound-1.mimecast.com"],
                "mimecast",
            ),
            (
                "a.example",
                &["mx2.hoster.example", "mx1.hoster.example"],
                "mx1.hoster.example+mx2.hoster.example",
            ),
            (
                "b.example",
                &["MX1.hoster.example", "mx2.hoster.example"],
                "mx1.hoster.example+mx2.hoster.example",
            ),
            ("nomx.example", &[], "nomx.example"),
            (
                "notgoogle.example",
                &["mx.google.com.evil.example"],
                "mx.google.com.evil.example",
            ),
        ];
        for (domain, hosts, expected) in cases {
            assert_eq!(
                p.name_for(domain, &mx(hosts)),
                *expected,
                "{domain} {hosts:?}"
            );
        }
    }

    #[test]
    fn operator_providers_come_first() {
        let mine = ProviderDef {
            name: "corp".into(),
            domains: vec!["Gmail.com".into()],
            mx: vec![".corp.example".into()],
        };
        let p = Providers::new(vec![mine]);
        assert_eq!(p.name_for("gmail.com", &[]), "corp");
        assert_eq!(p.name_for("x.example", &mx(&["in.corp.example"])), "corp");
        assert_eq!(p.name_for("googlemail.com", &[]), "google");
    }
}
