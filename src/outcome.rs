//! Outcomes: what one attempt meant for one recipient. What was *observed* (a reply, or a
//! failure knock saw itself) is an [`Observed`]; the classifier (`classify`) turns it into an
//! [`Outcome`] with a disposition and a [`Class`], in that one place. What to *do* about an
//! outcome is dispatch's and the retry schedule's business.

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
    /// or `policy`.
    pub fn permanent(self) -> Class {
        match self {
            Class::Reputation => Class::Block,
            Class::Greylist | Class::Throttle | Class::System | Class::Network => Class::Policy,
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
    /// Nothing was said: knock saw a DNS answer, a connection failure or a timeout, and
    /// gives it an enhanced code of its own.
    Local { enhanced: Enhanced, text: String },
}

impl Observed {
    pub fn local(enhanced: Enhanced, text: impl Into<String>) -> Observed {
        Observed::Local {
            enhanced,
            text: text.into(),
        }
    }

    /// A connection failure, timeout or lost connection.
    pub fn network(text: impl Into<String>) -> Observed {
        Observed::local(Enhanced::new(4, 4, 1), text)
    }
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Reply(r) => write!(f, "{r}"),
            Observed::Local { enhanced, text } => write!(f, "{enhanced} {text}"),
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
}

impl Outcome {
    pub fn is_transient(&self) -> bool {
        self.disposition == Disposition::Transient
    }

    /// The reply as a DSN's Diagnostic-Code or a log shows it.
    pub fn diagnostic(&self) -> String {
        match (self.code, self.enhanced) {
            (Some(code), Some(e)) => format!("{code} {e} {}", self.text),
            (Some(code), None) => format!("{code} {}", self.text),
            (None, Some(e)) => format!("{e} {}", self.text),
            (None, None) => self.text.clone(),
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
