//! What an operator can ask of the queue: suspend a provider, a domain or a stream, hold a
//! message
//! ([`Target`], [`Suspension`]), retry or end the recipients a [`Selector`] picks
//! ([`Steer`], [`Ending`]), and what an operation touched ([`Steered`]). Plain types: the
//! scheduler carries operations out, the spool keeps suspensions, the API and the command
//! line speak them.

use crate::message::MessageId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// How an operator ends a recipient's stay in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// Removed without a bounce: `cancelled`.
    Cancel,
    /// Bounced: `bounced`, with a DSN to the sender when `dsn`.
    Bounce { dsn: bool },
}

/// What an operator suspends: a provider, a recipient domain, or one message (a hold).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Provider(String),
    Domain(String),
    Message(MessageId),
    /// A stream (`[stream.NAME]`): its mail to every destination.
    Stream(String),
}

impl Target {
    /// The target as a key of the spool's table: `provider/NAME`, `domain/NAME`,
    /// `message/ID`.
    pub fn key(&self) -> String {
        match self {
            Target::Provider(p) => format!("provider/{p}"),
            Target::Domain(d) => format!("domain/{d}"),
            Target::Message(id) => format!("message/{id}"),
            Target::Stream(s) => format!("stream/{s}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Target> {
        let (kind, name) = key.split_once('/')?;
        match kind {
            "provider" => Some(Target::Provider(name.to_string())),
            "domain" => Some(Target::Domain(name.to_string())),
            "message" => name.parse().ok().map(Target::Message),
            "stream" => Some(Target::Stream(name.to_string())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Provider(p) => write!(f, "provider {p}"),
            Target::Domain(d) => write!(f, "domain {d}"),
            Target::Message(id) => write!(f, "message {id}"),
            Target::Stream(s) => write!(f, "stream {s}"),
        }
    }
}

/// Why and since when a target is suspended, and by whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    pub actor: String,
    pub since: Timestamp,
}

/// Which groups an operation applies to: all criteria given must hold. Empty selects
/// every group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.domain.is_none() && self.provider.is_none()
    }
}

/// An operator's operation on the queue.
#[derive(Debug, Clone)]
pub enum Steer {
    Suspend {
        target: Target,
        suspension: Suspension,
    },
    Resume {
        target: Target,
    },
    /// Makes the selected groups due now (no earlier than a greylisting time).
    Retry {
        selector: Selector,
        dry_run: bool,
    },
    /// Ends the selected groups' pending recipients.
    End {
        selector: Selector,
        how: Ending,
        actor: String,
        dry_run: bool,
    },
    /// Changes nothing: what the selector picks, with its messages' ids.
    Select {
        selector: Selector,
    },
}

/// What an operation touched (or would).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Steered {
    pub groups: usize,
    pub recipients: usize,
    /// Of those, groups with an attempt under way: they are ended (or retried) once it
    /// reports.
    pub in_flight: usize,
    /// Retry: groups left at their time because they were greylisted, and the latest such
    /// time.
    pub greylisted: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Hold and release: the messages touched (or that would be).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageId>,
}
