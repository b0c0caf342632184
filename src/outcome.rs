//! Outcomes: what one attempt meant for one recipient, with its [`Class`]. Every reply and
//! every failure to talk becomes an [`Outcome`] here, in one place; what to *do* about it is
//! the scheduler's and the retry schedule's business.
//!
//! This first classifier reads the reply code and the enhanced status code (RFC 3463);
//! reading the text against a table of receivers' phrases comes on top of it.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    Delivered,
    Transient,
    Permanent,
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
    /// Classifies a receiver's reply.
    pub fn from_reply(reply: &Reply) -> Outcome {
        let disposition = if reply.is_positive() {
            Disposition::Delivered
        } else if reply.is_transient() {
            Disposition::Transient
        } else {
            Disposition::Permanent
        };
        Outcome {
            disposition,
            class: classify(reply.code, reply.enhanced),
            code: Some(reply.code),
            enhanced: reply.enhanced,
            text: reply.text.replace('\n', " "),
        }
    }

    /// A failure knock observed itself: no reply, so the enhanced code says what happened.
    pub fn local(enhanced: Enhanced, text: impl Into<String>) -> Outcome {
        let disposition = if enhanced.class == 4 {
            Disposition::Transient
        } else {
            Disposition::Permanent
        };
        Outcome {
            disposition,
            class: classify(if enhanced.class == 4 { 451 } else { 550 }, Some(enhanced)),
            code: None,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A connection failure, timeout or lost connection.
    pub fn network(text: impl Into<String>) -> Outcome {
        Outcome::local(Enhanced::new(4, 4, 1), text)
    }

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

/// The class from the codes alone: the enhanced code's subject first, then the basic code.
pub fn classify(code: u16, enhanced: Option<Enhanced>) -> Option<Class> {
    let transient = (400..500).contains(&code);
    let permanent = (500..600).contains(&code);
    if !transient && !permanent {
        return None;
    }
    let class = match enhanced.map(|e| (e.subject, e.detail)) {
        Some((1, _)) if permanent => Class::Hard,
        Some((1, _)) => Class::Mailbox,
        Some((2, _)) => Class::Mailbox,
        Some((3, _)) => Class::System,
        Some((4, _)) => Class::Network,
        Some((7, 1)) if permanent => Class::Block,
        Some((7, 23..=27)) => Class::Auth,
        Some((7, _)) => Class::Policy,
        Some((5 | 6, _)) => Class::Policy,
        _ if code == 421 => Class::System,
        _ if transient => Class::System,
        _ if code == 550 || code == 551 || code == 553 => Class::Hard,
        _ => Class::Policy,
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_codes() {
        let cases: &[(&str, Disposition, Option<Class>)] = &[
            ("250 2.0.0 Ok", Disposition::Delivered, None),
            (
                "450 4.2.0 Greylisted",
                Disposition::Transient,
                Some(Class::Mailbox),
            ),
            (
                "452 4.2.2 Mailbox full",
                Disposition::Transient,
                Some(Class::Mailbox),
            ),
            (
                "451 4.3.0 Temporary failure",
                Disposition::Transient,
                Some(Class::System),
            ),
            (
                "421 4.4.2 Timeout",
                Disposition::Transient,
                Some(Class::Network),
            ),
            (
                "450 4.7.1 Too much mail",
                Disposition::Transient,
                Some(Class::Policy),
            ),
            (
                "421 Service not available",
                Disposition::Transient,
                Some(Class::System),
            ),
            (
                "550 5.1.1 User unknown",
                Disposition::Permanent,
                Some(Class::Hard),
            ),
            (
                "552 5.2.2 Over quota",
                Disposition::Permanent,
                Some(Class::Mailbox),
            ),
            (
                "554 5.7.1 Blocked",
                Disposition::Permanent,
                Some(Class::Block),
            ),
            (
                "550 5.7.26 DMARC",
                Disposition::Permanent,
                Some(Class::Auth),
            ),
            (
                "550 User unknown",
                Disposition::Permanent,
                Some(Class::Hard),
            ),
            (
                "554 Transaction failed",
                Disposition::Permanent,
                Some(Class::Policy),
            ),
        ];
        for (raw, disposition, class) in cases {
            let reply = Reply::parse(format!("{raw}\r\n").as_bytes()).unwrap();
            let o = Outcome::from_reply(&reply);
            assert_eq!((o.disposition, o.class), (*disposition, *class), "{raw}");
        }
    }

    #[test]
    fn local_failures() {
        let o = Outcome::network("connect to 127.0.0.1:25 failed");
        assert_eq!(
            (o.disposition, o.class, o.code),
            (Disposition::Transient, Some(Class::Network), None)
        );
        let o = Outcome::local(Enhanced::new(5, 1, 2), "domain does not exist");
        assert_eq!(
            (o.disposition, o.class),
            (Disposition::Permanent, Some(Class::Hard))
        );
        assert_eq!(o.diagnostic(), "5.1.2 domain does not exist");
    }
}
