//! Outcomes: what one attempt meant for one recipient. What was *observed* (a reply, or a
//! [`Failure`] knock saw itself) is an [`Observed`]; the classifier (`classify`) turns it into an
//! [`Outcome`] with a disposition and a [`Class`], in that one place. What to *do* about an
//! outcome is the reaction's business (`policy::react`).

use crate::reply::{Enhanced, Reply};
use serde::{Deserialize, Serialize};

/// Why an attempt did not deliver. Transient and permanent failures share names where
/// the cause is the same (`mailbox`, `policy`, `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Greylist,
    Throttle,
    Mailbox,
    System,
    Network,
    Policy,
    Reputation,
    Auth,
    Hard,
    Block,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Greylist => "greylist",
            Class::Throttle => "throttle",
            Class::Mailbox => "mailbox",
            Class::System => "system",
            Class::Network => "network",
            Class::Policy => "policy",
            Class::Reputation => "reputation",
            Class::Auth => "auth",
            Class::Hard => "hard",
            Class::Block => "block",
        }
    }

    /// The class as it applies to a temporary failure (the transient classes).
    pub fn transient(self) -> Class {
        match self {
            Class::Hard => Class::Mailbox,
            Class::Block => Class::Reputation,
            c => c,
        }
    }

    /// The class as it applies to a permanent failure: `hard`, `mailbox`, `block`, `auth`
    /// or `policy`. A network failure that is permanent (the recipient's host cannot be
    /// found or reached for good) is `hard`; a permanent refusal for a reason that is
    /// otherwise temporary (greylisting, a rate, the receiver's system) is `policy`: the
    /// receiver will not take the message, but nothing says the address is bad.
    pub fn permanent(self) -> Class {
        match self {
            Class::Reputation => Class::Block,
            Class::Network => Class::Hard,
            Class::Greylist | Class::Throttle | Class::System => Class::Policy,
            c => c,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    Delivered,
    Transient,
    Permanent,
}

/// What an attempt observed for a recipient, before it is classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The receiver replied.
    Reply(Reply),
    /// Nothing was said: knock saw a DNS answer, a connection failure, a timeout or a
    /// problem of its own.
    Failure(Failure),
}

impl Observed {
    /// A temporary failure by its code, before any classification: what a worker counts
    /// to decide whether a connection has drawn too many deferrals.
    pub fn is_transient(&self) -> bool {
        match self {
            Observed::Reply(r) => (400..500).contains(&r.code),
            Observed::Failure(f) => f.kind.enhanced().class == 4,
        }
    }
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Reply(r) => write!(f, "{r}"),
            Observed::Failure(failure) => write!(f, "{} {failure}", failure.kind.enhanced()),
        }
    }
}

impl From<Failure> for Observed {
    fn from(f: Failure) -> Observed {
        Observed::Failure(f)
    }
}

/// A failure knock saw by itself. It stays typed from where it happened (the SMTP client,
/// DNS, the TLS policy, the spool) to classification, the attempt record and the event: a
/// timeout, a reset and a closed connection are different kinds, never different strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The MX host it concerns, when there is one.
    pub host: Option<String>,
    /// What happened, in words, for the event text and the DSN.
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            host: None,
            detail: detail.into(),
        }
    }

    /// The same failure, said of `host`.
    pub fn at(self, host: &str) -> Failure {
        Failure {
            host: Some(host.to_string()),
            ..self
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

/// The kinds of failure knock tells apart, with the enhanced status code (RFC 3463) and
/// the class each one stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The connection was refused, or the host could not be reached.
    ConnectFailed,
    /// No connection within `[delivery.timeouts] connect`.
    ConnectTimeout,
    /// The server did not answer a command within its timeout.
    Timeout,
    /// The connection was reset or broke while talking.
    Reset,
    /// The server closed the connection.
    Closed,
    /// What the server sent is not SMTP.
    Protocol,
    /// TLS is required for the destination and the server does not offer it.
    TlsNotOffered,
    /// TLS is required and the server refused STARTTLS.
    TlsRefused,
    /// The TLS handshake failed (or the certificate did not verify).
    TlsHandshake,
    /// The domain does not exist (NXDOMAIN).
    NoSuchDomain,
    /// The domain accepts no mail (null MX, RFC 7505).
    NullMx,
    /// The mail exchanger has no address.
    NoAddress,
    /// DNS did not answer, or answered with an error.
    DnsTemporary,
    /// Every mail exchanger was tried and none could be used.
    NoMailExchanger,
    /// The message needs SMTPUTF8 (a UTF-8 address or header field) and the receiver
    /// does not offer it: it cannot be relayed there as it is (RFC 6531 section 3.5).
    Smtputf8NotOffered,
    /// The message body is missing from the spool.
    SpoolMissing,
    /// The spool could not be read.
    SpoolUnreadable,
}

impl FailureKind {
    pub fn enhanced(self) -> Enhanced {
        use FailureKind::*;
        let (class, subject, detail) = match self {
            ConnectFailed | ConnectTimeout | NoMailExchanger => (4, 4, 1),
            Timeout | Reset | Closed => (4, 4, 2),
            Protocol => (4, 5, 0),
            TlsNotOffered | TlsRefused => (4, 7, 4),
            TlsHandshake => (4, 7, 5),
            NoSuchDomain => (5, 1, 2),
            NullMx => (5, 1, 10),
            NoAddress => (4, 4, 4),
            DnsTemporary => (4, 4, 3),
            Smtputf8NotOffered => (5, 6, 7),
            SpoolMissing => (5, 3, 0),
            SpoolUnreadable => (4, 3, 0),
        };
        Enhanced::new(class, subject, detail)
    }

    /// The class of this kind of failure (before it is fitted to its disposition).
    pub fn class(self) -> Class {
        use FailureKind::*;
        match self {
            ConnectFailed | ConnectTimeout | Timeout | Reset | Closed | Protocol
            | NoMailExchanger | NoAddress | DnsTemporary => Class::Network,
            TlsNotOffered | TlsRefused | TlsHandshake | Smtputf8NotOffered => Class::Policy,
            NoSuchDomain | NullMx => Class::Hard,
            SpoolMissing | SpoolUnreadable => Class::System,
        }
    }

    pub fn as_str(self) -> &'static str {
        use FailureKind::*;
        match self {
            ConnectFailed => "connect_failed",
            ConnectTimeout => "connect_timeout",
            Timeout => "timeout",
            Reset => "reset",
            Closed => "closed",
            Protocol => "protocol",
            TlsNotOffered => "tls_not_offered",
            TlsRefused => "tls_refused",
            TlsHandshake => "tls_handshake",
            NoSuchDomain => "no_such_domain",
            NullMx => "null_mx",
            NoAddress => "no_address",
            DnsTemporary => "dns_temporary",
            NoMailExchanger => "no_mail_exchanger",
            Smtputf8NotOffered => "smtputf8_not_offered",
            SpoolMissing => "spool_missing",
            SpoolUnreadable => "spool_unreadable",
        }
    }
}

/// The meaning of one attempt for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub disposition: Disposition,
    pub class: Option<Class>,
    /// The receiver's reply code; `None` when nothing was said (connection failure, DNS).
    pub code: Option<u16>,
    pub enhanced: Option<Enhanced>,
    pub text: String,
    /// What knock saw itself, when the receiver said nothing.
    pub failure: Option<FailureKind>,
}

impl Outcome {
    pub fn is_transient(&self) -> bool {
        self.disposition == Disposition::Transient
    }

    /// The reply as a DSN's Diagnostic-Code or a log shows it: one line (a CR or LF in a receiver's text becomes a space: it goes
    /// into a DSN's header fields and must not end or add one; found by fuzzing).
    pub fn diagnostic(&self) -> String {
        let text = self.text.replace(['\r', '\n'], " ");
        match (self.code, self.enhanced) {
            (Some(code), Some(e)) => format!("{code} {e} {text}"),
            (Some(code), None) => format!("{code} {text}"),
            (None, Some(e)) => format!("{e} {text}"),
            (None, None) => text,
        }
    }

    /// The enhanced status code, or the one the reply code implies.
    pub fn status(&self) -> Enhanced {
        self.enhanced.unwrap_or(match self.disposition {
            Disposition::Delivered => Enhanced::new(2, 0, 0),
            Disposition::Transient => Enhanced::new(4, 0, 0),
            Disposition::Permanent => Enhanced::new(5, 0, 0),
        })
    }
}
