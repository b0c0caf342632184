//! `knock check-domain DOMAIN`: is a sending domain set up for the mail knock sends from it?
//! Asked of the DNS (`[dns] servers`, else the system's) with mail-auth's resolver and
//! parsers: MX, SPF (does it authorize every egress source's address, within the ten
//! lookups?), DKIM (does a signature made with each configured key verify against the
//! published record?), DMARC (published, its policy, aligned with the signing domain), and
//! each source's reverse DNS (a PTR whose name points back at the address, and the EHLO
//! name). Each check says ok, warning or error, and what to fix.

use crate::config::Config;
use mail_auth::common::cache::NoCache;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::config::ResolverOpts;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, SpfResult};
use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Error,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `mx`, `spf`, `dkim`, `dmarc`, `ptr`.
    pub check: &'static str,
    /// What it is about: a source, a selector.
    pub subject: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(check: &'static str, subject: impl Into<String>, status: Status, detail: String) -> Check {
    Check {
        check,
        subject: subject.into(),
        status,
        detail,
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

fn authenticator(config: &Config) -> anyhow::Result<MessageAuthenticator> {
    if config.dns.servers.is_empty() {
        return Ok(MessageAuthenticator::new_system_conf()?);
    }
    let mut opts = ResolverOpts::default();
    crate::net::resolve::apply_options(&config.dns, &mut opts);
    Ok(MessageAuthenticator::new(
        crate::net::resolve::servers_config(&config.dns.servers),
        opts,
    )?)
}

type Txt = NoCache<Box<str>, mail_auth::Txt>;

/// Every check of `domain` under `config`.
pub async fn run(config: &Config, domain: &str) -> anyhow::Result<Vec<Check>> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    crate::address::check_domain(&domain)
        .map_err(|_| anyhow::anyhow!("{domain:?} is not a domain"))?;
    let auth = authenticator(config)?;
    let mut out = Vec::new();

    // MX: where replies and bounces to the domain go.
    match auth
        .mx_lookup(domain.as_str(), None::<&NoCache<_, _>>)
        .await
    {
        Ok(mx) if !mx.rrset.is_empty() => {
            let hosts: Vec<String> = mx
                .rrset
                .iter()
                .flat_map(|m| {
                    m.exchanges
                        .iter()
                        .map(|h| h.trim_end_matches('.').to_string())
                })
                .collect();
            out.push(check("mx", &domain, Status::Ok, hosts.join(", ")));
        }
        _ => out.push(
            check("mx", &domain, Status::Warning, "no MX record".into())
                .fix("publish an MX record: replies and bounces to this domain have nowhere to go"),
        ),
    }

    // SPF: each source's address, as a receiver checks MAIL FROM at this domain.
    let sources: Vec<(String, Option<IpAddr>, String)> = config
        .sources
        .iter()
        .map(|s| {
            let ehlo = s
                .ehlo
                .clone()
                .unwrap_or_else(|| config.smtp.hostname.clone());
            (s.name.clone(), s.ip, ehlo)
        })
        .collect();
    let sender = format!("postmaster@{domain}");
    let published = auth
        .txt_lookup::<mail_auth::spf::Spf>(domain.as_str(), None::<&Txt>)
        .await;
    if published.is_err() {
        out.push(
            check("spf", &domain, Status::Error, "no SPF record".into()).fix(format!(
                "publish a TXT record at {domain}: \"v=spf1 {} -all\"",
                spf_terms(&sources)
            )),
        );
    } else if sources.iter().all(|(_, ip, _)| ip.is_none()) {
        out.push(check(
            "spf",
            &domain,
            Status::Warning,
            "no [[source]] names an address: the host's own is used, and cannot be checked here"
                .into(),
        ));
    }
    for (name, ip, ehlo) in sources.iter().filter(|_| published.is_ok()) {
        let Some(ip) = ip else { continue };
        let result = auth
            .verify_spf(SpfParameters::verify_mail_from(
                *ip,
                ehlo,
                &config.smtp.hostname,
                &sender,
            ))
            .await;
        let subject = format!("source {name} ({ip})");
        out.push(match result.result() {
            SpfResult::Pass => check("spf", subject, Status::Ok, format!("{ip} is authorized")),
            SpfResult::PermError => check(
                "spf",
                subject,
                Status::Error,
                "the record is broken or needs more than 10 DNS lookups (permerror)".into(),
            )
            .fix("flatten includes so that at most 10 lookups are needed"),
            SpfResult::TempError => check(
                "spf",
                subject,
                Status::Warning,
                "the DNS did not answer (temperror)".into(),
            ),
            other => check(
                "spf",
                subject,
                Status::Error,
                format!(
                    "{ip} is not authorized ({})",
                    other.to_string().to_lowercase()
                ),
            )
            .fix(format!("add {} to the SPF record", spf_term(*ip))),
        });
    }

    // DKIM: a probe signed with each key for the domain must verify against its record.
    let keys: Vec<(usize, &crate::config::DkimConfig)> = config
        .dkim
        .iter()
        .enumerate()
        .filter(|(_, k)| k.domain == domain || k.signing_domain() == domain)
        .collect();
    if keys.is_empty() {
        out.push(
            check("dkim", &domain, Status::Warning, "no [[dkim]] key signs this domain's mail".into())
                .fix(format!("knock dkim keygen {domain} SELECTOR, publish the record, add the [[dkim]] table it prints")),
        );
    }
    for (i, key) in &keys {
        let subject = format!("{}._domainkey.{}", key.selector, key.signing_domain());
        let mut probe = (*key).clone();
        probe.domain = "*".into();
        probe.signing_domain = Some(key.signing_domain().to_string());
        let signer = crate::dkim::Dkim::from_config(std::slice::from_ref(&probe))
            .map_err(|e| anyhow::anyhow!("dkim[{i}]: {e:#}"))?;
        let message = format!(
            "From: <check@{domain}>\r\nTo: <check@{domain}>\r\nSubject: knock check-domain\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\nprobe\r\n"
        );
        let signed = signer.sign(message.as_bytes()).unwrap_or_default();
        let parsed = AuthenticatedMessage::parse(&signed);
        let outputs = match &parsed {
            Some(m) => auth.verify_dkim(m).await,
            None => Vec::new(),
        };
        let result = outputs.first().map(|o| o.result().clone());
        out.push(match result {
            Some(DkimResult::Pass) => check(
                "dkim",
                subject,
                Status::Ok,
                format!("the record matches {}", key.key.display()),
            ),
            Some(DkimResult::PermError(
                e @ mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_)),
            ))
            | Some(DkimResult::TempError(e @ mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_)))) => check(
                "dkim",
                subject.clone(),
                Status::Error,
                format!("no key record published ({e})"),
            )
            .fix(format!("publish the TXT record `knock dkim keygen` printed for {} at {subject}", key.key.display())),
            Some(DkimResult::TempError(_)) => check(
                "dkim",
                subject,
                Status::Warning,
                "the DNS did not answer".into(),
            ),
            other => check(
                "dkim",
                subject.clone(),
                Status::Error,
                format!(
                    "the published record does not verify a signature made with {} ({})",
                    key.key.display(),
                    other.map_or("no result".to_string(), |r| format!("{r:?}"))
                ),
            )
            .fix(format!("publish the public key of {} at {subject} (the record `knock dkim keygen` printed with it)", key.key.display())),
        });
    }

    // DMARC: published, its policy, and whether knock's signatures align with From.
    let dmarc_name = format!("_dmarc.{domain}");
    match auth
        .txt_lookup::<Dmarc>(dmarc_name.as_str(), None::<&Txt>)
        .await
    {
        Ok(dmarc) => {
            let policy = format!("{:?}", dmarc.p).to_lowercase();
            out.push(check("dmarc", &dmarc_name, Status::Ok, format!("policy {policy}")));
            let aligned = keys.iter().any(|(_, k)| aligned(k.signing_domain(), &domain));
            if !aligned {
                out.push(
                    check(
                        "dmarc",
                        &dmarc_name,
                        Status::Warning,
                        "no [[dkim]] key signs as this domain: DMARC passes only by SPF alignment".into(),
                    )
                    .fix(format!("sign with a key whose signing_domain is {domain} (or a subdomain of it)")),
                );
            }
        }
        Err(_) => out.push(
            check("dmarc", &dmarc_name, Status::Warning, "no DMARC record".into())
                .fix(format!("publish a TXT record at {dmarc_name}: \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\" and tighten p= once reports are clean")),
        ),
    }

    // Reverse DNS of each source: a PTR, whose name resolves back to the address.
    for (name, ip, ehlo) in &sources {
        let Some(ip) = ip else { continue };
        let subject = format!("source {name} ({ip})");
        if ip.is_loopback() {
            // Resolvers answer these themselves ("localhost", RFC 6761), and no receiver
            // sees one.
            out.push(check(
                "ptr",
                subject,
                Status::Warning,
                "a loopback address: no receiver sees it, its reverse DNS is not checked".into(),
            ));
            continue;
        }
        let names = match auth.ptr_lookup(*ip, None::<&NoCache<_, _>>).await {
            Ok(names) if !names.rrset.is_empty() => names,
            _ => {
                out.push(
                    check(
                        "ptr",
                        subject,
                        Status::Error,
                        format!("{ip} has no PTR record"),
                    )
                    .fix(format!(
                        "ask whoever runs {ip} for a PTR record naming {ehlo}"
                    )),
                );
                continue;
            }
        };
        let mut confirmed = None;
        for host in names.rrset.iter() {
            let host = host.trim_end_matches('.');
            let back = match ip {
                IpAddr::V4(_) => auth
                    .ipv4_lookup(host, None::<&NoCache<_, _>>)
                    .await
                    .map(|r| r.rrset.iter().any(|a| IpAddr::V4(*a) == *ip))
                    .unwrap_or(false),
                IpAddr::V6(_) => auth
                    .ipv6_lookup(host, None::<&NoCache<_, _>>)
                    .await
                    .map(|r| r.rrset.iter().any(|a| IpAddr::V6(*a) == *ip))
                    .unwrap_or(false),
            };
            if back {
                confirmed = Some(host.to_string());
                break;
            }
        }
        out.push(match confirmed {
            Some(host) if host.eq_ignore_ascii_case(ehlo) => check(
                "ptr",
                subject,
                Status::Ok,
                format!("{host}, which resolves back, is the EHLO name"),
            ),
            Some(host) => check(
                "ptr",
                subject,
                Status::Warning,
                format!("{host} resolves back, but the EHLO name is {ehlo}"),
            )
            .fix(format!(
                "set the source's ehlo = \"{host}\" (or its PTR to {ehlo})"
            )),
            None => check(
                "ptr",
                subject,
                Status::Error,
                format!(
                    "the PTR names ({}) do not resolve back to {ip}",
                    names
                        .rrset
                        .iter()
                        .map(|h| h.trim_end_matches('.'))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .fix(format!(
                "publish an A/AAAA record for the PTR name pointing at {ip}"
            )),
        });
    }
    Ok(out)
}

/// Relaxed alignment: the signing domain is the From domain, or one is a subdomain of the
/// other (close enough without the public suffix list).
fn aligned(signing: &str, from: &str) -> bool {
    signing == from
        || signing.ends_with(&format!(".{from}"))
        || from.ends_with(&format!(".{signing}"))
}

fn spf_term(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("ip4:{a}"),
        IpAddr::V6(a) => format!("ip6:{a}"),
    }
}

fn spf_terms(sources: &[(String, Option<IpAddr>, String)]) -> String {
    let terms: Vec<String> = sources
        .iter()
        .filter_map(|(_, ip, _)| ip.map(spf_term))
        .collect();
    match terms.is_empty() {
        true => "ip4:YOUR.ADDRESS".into(),
        false => terms.join(" "),
    }
}

/// The findings as a table, a fix under each that has one.
pub fn table(checks: &[Check]) -> String {
    let mut out = format!(
        "{:<7} {:<8} {:<40} {}\n",
        "CHECK", "STATUS", "SUBJECT", "DETAIL"
    );
    for c in checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Error => "error",
        };
        out.push_str(&format!(
            "{:<7} {:<8} {:<40} {}\n",
            c.check, status, c.subject, c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<7} {:<8} {:<40} fix: {fix}\n", "", "", ""));
        }
    }
    out
}
