//! Mailbox syntax (RFC 5321 section 4.1.2, in the forms senders really use) and the
//! recipient domain that routing, queueing and reporting key on.

use std::fmt;

/// A mailbox `local@domain`, with the domain lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address has no @domain")]
    NoDomain,
    #[error("local part is empty or longer than 64 octets")]
    LocalLength,
    #[error("local part has a character not allowed unquoted: {0:?}")]
    LocalChar(char),
    #[error("domain is not a valid host name: {0:?}")]
    Domain(String),
}

impl Address {
    /// Parses `local@domain`, optionally inside angle brackets.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let text = text.trim();
        let text = text
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        let (local, domain) = text.rsplit_once('@').ok_or(AddressError::NoDomain)?;
        check_local(local)?;
        let domain = check_domain(domain)?;
        Ok(Address {
            local: local.to_string(),
            domain,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

fn check_local(local: &str) -> Result<(), AddressError> {
    if local.is_empty() || local.len() > 64 {
        return Err(AddressError::LocalLength);
    }
    if local.starts_with('"') && local.ends_with('"') && local.len() >= 2 {
        return Ok(());
    }
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";
    match local
        .chars()
        .find(|&c| !(c.is_alphanumeric() || SPECIALS.contains(c)))
    {
        Some(c) => Err(AddressError::LocalChar(c)),
        None if local.starts_with('.') || local.ends_with('.') || local.contains("..") => {
            Err(AddressError::LocalChar('.'))
        }
        None => Ok(()),
    }
}

/// Checks a domain name (or an address literal) and returns it lowercased.
pub fn check_domain(domain: &str) -> Result<String, AddressError> {
    let bad = || AddressError::Domain(domain.to_string());
    if domain.starts_with('[') && domain.ends_with(']') {
        let inner = &domain[1..domain.len() - 1];
        let ip = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return ip
            .parse::<std::net::IpAddr>()
            .map(|_| domain.to_string())
            .map_err(|_| bad());
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.len() > 253 {
        return Err(bad());
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(domain.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_addresses() {
        for (text, local, domain) in [
            ("a@b.test", "a", "b.test"),
            (
                "<First.Last+tag@Example.COM>",
                "First.Last+tag",
                "example.com",
            ),
            ("o'neil@x-y.test", "o'neil", "x-y.test"),
            ("\"john doe\"@a.test", "\"john doe\"", "a.test"),
            ("root@[127.0.0.1]", "root", "[127.0.0.1]"),
            ("user@b.test.", "user", "b.test"),
        ] {
            let a = Address::parse(text).unwrap();
            assert_eq!(
                (a.local.as_str(), a.domain.as_str()),
                (local, domain),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_broken_addresses() {
        for text in [
            "",
            "<>",
            "nodomain",
            "@a.test",
            "a@",
            "a b@c.test",
            "a@b..test",
            "a@-b.test",
            ".a@b.test",
            "a..b@c.test",
            "a@b_c.test",
            "a@[not.an.ip]",
        ] {
            assert!(Address::parse(text).is_err(), "{text:?} should be refused");
        }
    }
}
