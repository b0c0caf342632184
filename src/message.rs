//! What knock keeps about a message: the envelope, and per recipient domain a [`Group`] of
//! recipients with their states and attempts. A group is the unit of delivery (one SMTP
//! transaction to one domain) and of scheduling (it has one next-attempt time).

use crate::outcome::Class;
use crate::reply::Enhanced;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type MessageId = uuid::Uuid;

/// A new, time-ordered message id.
pub fn new_id() -> MessageId {
    uuid::Uuid::now_v7()
}

/// A message id as an operator may type it: the whole id or its start, in the hyphenated
/// form (`01a20765-b5e3`, hyphens where the whole id has them) or as bare hex digits
/// (`01a20765b5e3`), in either case. Ids are time-ordered, so the ids a prefix stands for
/// are one range of [`MessageId::as_u128`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPrefix {
    low: u128,
    high: u128,
    digits: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdPrefixError {
    #[error("no id given")]
    Empty,
    #[error("{0:?} is not a hex digit: an id is hex digits and hyphens")]
    NotHex(char),
    /// At the (1-based) character.
    #[error("character {0} is a hyphen where an id has a digit (8-4-4-4-12 hex digits)")]
    Hyphen(usize),
    /// At the (1-based) character.
    #[error("character {0} should be a hyphen (an id is 8-4-4-4-12 hex digits)")]
    NoHyphen(usize),
    #[error("longer than an id (32 hex digits)")]
    TooLong,
}

/// Where the hyphenated form of an id has its hyphens.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

impl IdPrefix {
    pub fn parse(text: &str) -> Result<IdPrefix, IdPrefixError> {
        let hyphenated = text.contains('-');
        let mut value: u128 = 0;
        let mut digits = 0;
        for (i, c) in text.chars().enumerate() {
            if c == '-' {
                if !HYPHENS.contains(&i) {
                    return Err(IdPrefixError::Hyphen(i + 1));
                }
                continue;
            }
            if hyphenated && HYPHENS.contains(&i) {
                return Err(IdPrefixError::NoHyphen(i + 1));
            }
            let d = c.to_digit(16).ok_or(IdPrefixError::NotHex(c))?;
            if digits == 32 {
                return Err(IdPrefixError::TooLong);
            }
            value = value << 4 | u128::from(d);
            digits += 1;
        }
        if digits == 0 {
            return Err(IdPrefixError::Empty);
        }
        let rest = 4 * (32 - digits) as u32;
        let low = value.checked_shl(rest).unwrap_or(0);
        let fill = u128::MAX.checked_shr(128 - rest).unwrap_or(0);
        Ok(IdPrefix {
            low,
            high: low | fill,
            digits,
        })
    }

    /// The ids it stands for, as [`MessageId::as_u128`] values.
    pub fn range(&self) -> std::ops::RangeInclusive<u128> {
        self.low..=self.high
    }

    /// Whether it is a whole id (one id only).
    pub fn is_whole(&self) -> bool {
        self.digits == 32
    }
}

/// The envelope and facts that never change after acceptance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    /// The reverse path; empty for the null sender `<>`.
    pub from: String,
    pub received_at: Timestamp,
    pub size: u64,
    /// Where it came from: `smtp 127.0.0.1:40000` or `http`.
    pub source: String,
    /// Its stream (`[stream.NAME]`); absent in spools written before streams, whose mail
    /// goes in the default stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// When every recipient reached a final state; the body is gone from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<Timestamp>,
    /// What the sender asked of MAIL FROM beyond the address (DSN's RET and ENVID,
    /// SMTPUTF8).
    #[serde(default, skip_serializing_if = "MailParams::is_empty")]
    pub params: MailParams,
}

impl Envelope {
    pub fn is_null_sender(&self) -> bool {
        self.from.is_empty()
    }
}

/// The parameters of MAIL FROM that follow a message to its DSNs and its next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// RFC 3461 RET: what of the message a failure DSN returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID: the sender's id for the transaction, given back in every DSN
    /// (decoded from xtext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// RFC 6531: the message was submitted as internationalized (UTF-8 addresses or
    /// header fields); relaying it needs a receiver that offers SMTPUTF8 when it really
    /// has UTF-8 in an address or the header section.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
}

impl MailParams {
    pub fn is_empty(&self) -> bool {
        *self == MailParams::default()
    }
}

/// An ENVID as RFC 3461 allows it once decoded: 1 to 100 printable ASCII characters.
pub fn valid_envid(envid: &str) -> bool {
    (1..=100).contains(&envid.len()) && envid.bytes().all(|b| b.is_ascii_graphic())
}

/// RFC 3461 RET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// The whole message (up to [`crate::dsn::MAX_RETURNED`]).
    Full,
    /// Its header section only.
    Hdrs,
}

/// RFC 3461 NOTIFY: which DSNs the sender wants for one recipient. All false is
/// `NOTIFY=NEVER`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub success: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay: bool,
}

impl Notify {
    /// As an RCPT TO parameter value: `SUCCESS,FAILURE,DELAY` or `NEVER`.
    pub fn keyword(self) -> String {
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
        .collect();
        match words.is_empty() {
            true => "NEVER".into(),
            false => words.join(","),
        }
    }

    /// From the words of `NOTIFY=` (any case): `NEVER` alone, or some of `SUCCESS`,
    /// `FAILURE`, `DELAY`.
    pub fn parse(words: &[&str]) -> Result<Notify, String> {
        let mut n = Notify::default();
        let mut never = false;
        for w in words {
            match w.to_ascii_uppercase().as_str() {
                "NEVER" => never = true,
                "SUCCESS" => n.success = true,
                "FAILURE" => n.failure = true,
                "DELAY" => n.delay = true,
                other => {
                    return Err(format!(
                        "{other:?} is not a notify keyword (never, success, failure, delay)"
                    ));
                }
            }
        }
        if words.is_empty() || (never && n != Notify::default()) {
            return Err("notify is \"never\" alone, or some of success, failure, delay".into());
        }
        Ok(n)
    }
}

/// A recipient as the sender gave it: the address and what RCPT TO said of DSNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    pub address: crate::address::Address,
    /// `None`: not said (knock reports failures only).
    pub notify: Option<Notify>,
    /// RFC 3461 ORCPT, the address the sender first gave (decoded from xtext).
    pub orcpt: Option<String>,
}

impl From<crate::address::Address> for Rcpt {
    fn from(address: crate::address::Address) -> Rcpt {
        Rcpt {
            address,
            notify: None,
            orcpt: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Deferred,
    Delivered,
    Bounced,
    Expired,
    /// On the suppression list when the message came in: never sent.
    Suppressed,
    /// An operator removed it from the queue without a bounce.
    Cancelled,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Delivered
                | State::Bounced
                | State::Expired
                | State::Suppressed
                | State::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Deferred => "deferred",
            State::Delivered => "delivered",
            State::Bounced => "bounced",
            State::Expired => "expired",
            State::Suppressed => "suppressed",
            State::Cancelled => "cancelled",
        }
    }
}

/// The TLS a connection ended up with, kept on attempt records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    pub cipher: String,
    /// The peer's certificate chains to a trusted root and names the host (outbound only).
    #[serde(default)]
    pub verified: bool,
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.cipher)?;
        if self.verified {
            write!(f, " verified")?;
        }
        Ok(())
    }
}

/// One try at delivering to a recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    /// The `[[source]]` it went out of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<Enhanced>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// What knock saw itself (a timeout, a reset, a DNS answer), when nothing was said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::outcome::FailureKind>,
    /// The TLS the session ran over; absent in plaintext or when no session was had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// The destination was down (no MX host would talk): the attempt is not charged
    /// against the recipient's retry schedule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
    /// MX hosts that would not do before the one reached (or all of them, when none
    /// was), and what each did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<HostTried>,
}

/// One MX host that would not do, and why (for the attempt record and the event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTried {
    pub host: String,
    pub addr: String,
    /// What it did: the reply or knock's own diagnostic.
    pub said: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub state: State,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// What the sender asked to hear of it (RFC 3461 NOTIFY); `None` when not said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// RFC 3461 ORCPT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// A delay warning went to the sender.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warned: bool,
}

impl Recipient {
    pub fn new(address: impl Into<String>, state: State) -> Recipient {
        Recipient {
            address: address.into(),
            state,
            attempts: Vec::new(),
            notify: None,
            orcpt: None,
            warned: false,
        }
    }
}

/// The recipients of one message at one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub domain: String,
    pub recipients: Vec<Recipient>,
    /// When the pending recipients are next tried; `None` once all are final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Timestamp>,
}

impl Group {
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }

    /// Recipients not yet final, and how many of those have been deferred.
    pub fn counts(&self) -> (u32, u32) {
        let pending = self.pending().count() as u32;
        let deferred = self
            .pending()
            .filter(|r| r.state == State::Deferred)
            .count() as u32;
        (pending, deferred)
    }

    /// Attempts made at the group's recipients, all together.
    pub fn attempts(&self) -> usize {
        self.recipients.iter().map(|r| r.attempts.len()).sum()
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(|r| !r.state.is_final())
    }

    /// The group's next attempt when its last one was greylisted: a retry asked for by an
    /// operator comes no earlier (the receiver would only greylist again).
    pub fn greylisted_until(&self) -> Option<Timestamp> {
        let greylisted = self.pending().any(|r| {
            r.attempts
                .last()
                .is_some_and(|a| a.class == Some(crate::outcome::Class::Greylist))
        });
        self.next_attempt.filter(|_| greylisted)
    }

    /// The mailbox of a group with one pending recipient, as a number (the same for the
    /// same address, in any case, in every process): what a receiver's per-recipient rate
    /// counts by.
    pub fn mailbox(&self) -> Option<u64> {
        let mut pending = self.pending();
        let one = pending.next()?;
        if pending.next().is_some() {
            return None;
        }
        use std::hash::Hasher;
        // Fixed keys (`DefaultHasher::new`): the same in every run, so a simulation
        // repeats. Case folded byte by byte, with no copy of the address.
        let mut h = std::hash::DefaultHasher::new();
        for b in one.address.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
        Some(h.finish())
    }

    /// Temporary failures so far: the attempts of its most-tried pending recipient.
    pub fn failures(&self) -> u32 {
        self.pending()
            .map(|r| r.attempts.len() as u32)
            .max()
            .unwrap_or(0)
    }

    pub fn is_deferred(&self) -> bool {
        self.pending().any(|r| r.state == State::Deferred)
    }
}

/// Splits recipients by domain, keeping their order, in groups due at `now`.
pub fn group_by_domain(rcpts: &[Rcpt], now: Timestamp) -> Vec<Group> {
    let mut by_domain: BTreeMap<&str, Vec<Recipient>> = BTreeMap::new();
    for r in rcpts {
        let list = by_domain.entry(r.address.domain.as_str()).or_default();
        let address = r.address.to_string();
        if !list.iter().any(|r| r.address == address) {
            list.push(Recipient {
                notify: r.notify,
                orcpt: r.orcpt.clone(),
                ..Recipient::new(address, State::Queued)
            });
        }
    }
    by_domain
        .into_iter()
        .map(|(domain, recipients)| Group {
            domain: domain.to_string(),
            recipients,
            next_attempt: Some(now),
        })
        .collect()
}

/// Whether relaying needs SMTPUTF8 (RFC 6531): a UTF-8 reverse path or recipient, or
/// UTF-8 in the message's header section (RFC 6532). A body in UTF-8 needs only 8BITMIME.
pub fn needs_smtputf8<'a>(
    from: &str,
    mut rcpts: impl Iterator<Item = &'a str>,
    message: &[u8],
) -> bool {
    let end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    !from.is_ascii() || rcpts.any(|r| !r.is_ascii()) || !message[..end].is_ascii()
}

/// A message as it enters the spool.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub envelope: Envelope,
    pub groups: Vec<Group>,
    pub body: bytes::Bytes,
}

/// The header that names a message's stream at submission; knock removes it before the
/// message is stored, so receivers never see it.
pub const STREAM_HEADER: &str = "X-Knock-Stream";

/// `body` with every bare CR and bare LF (one not part of a CRLF pair) made a CRLF: lines
/// end in CRLF only (RFC 5321 section 2.3.8). Borrowed when it has none. A receiver that
/// ended DATA on a bare `LF . LF` or `CR . CR` would otherwise read what follows such a
/// line as commands of its own (SMTP smuggling); made CRLF, that line is dot-stuffed when
/// relayed and stays part of the message.
pub fn crlf(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare = |i: usize| match body[i] {
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        _ => i == 0 || body[i - 1] != b'\r',
    };
    let Some(first) = memchr::memchr2_iter(b'\r', b'\n', body).find(|&i| bare(i)) else {
        return std::borrow::Cow::Borrowed(body);
    };
    let mut out = Vec::with_capacity(body.len() + body.len() / 32 + 2);
    out.extend_from_slice(&body[..first]);
    let mut from = first;
    for i in memchr::memchr2_iter(b'\r', b'\n', &body[first..]).map(|i| i + first) {
        if bare(i) {
            out.extend_from_slice(&body[from..i]);
            out.extend_from_slice(b"\r\n");
            from = i + 1;
        }
    }
    out.extend_from_slice(&body[from..]);
    std::borrow::Cow::Owned(out)
}

/// Takes every `name:` field out of the header section of `message` (folded lines too)
/// and returns the first one's value, unfolded and trimmed, with the message without
/// them. A message without the field comes back as it was.
pub fn take_header(message: &[u8], name: &str) -> (Option<String>, Option<Vec<u8>>) {
    let mut value: Option<String> = None;
    let mut cut: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    // The field being taken: where it starts.
    let mut taking: Option<usize> = None;
    // The field being taken is the first: its folded lines are part of the value.
    let mut first = false;
    while at < message.len() {
        let end = message[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |n| at + n + 1);
        let line = &message[at..end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            break; // the end of the header section
        }
        let folded = matches!(content[0], b' ' | b'\t');
        if folded {
            if first && let Some(v) = value.as_mut() {
                v.push(' ');
                v.push_str(String::from_utf8_lossy(content).trim());
            }
        } else {
            first = false;
            if let Some(start) = taking.take() {
                cut.push(start..at);
            }
            let is_it = content.len() > name.len()
                && content[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && content[name.len()..].trim_ascii_start().first() == Some(&b':');
            if is_it {
                taking = Some(at);
                if value.is_none() {
                    first = true;
                    let colon = content.iter().position(|&b| b == b':').expect("checked");
                    value = Some(
                        String::from_utf8_lossy(&content[colon + 1..])
                            .trim()
                            .to_string(),
                    );
                }
            }
        }
        at = end;
    }
    if let Some(start) = taking {
        cut.push(start..at);
    }
    if cut.is_empty() {
        return (None, None);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut from = 0;
    for range in cut {
        out.extend_from_slice(&message[from..range.start]);
        from = range.end;
    }
    out.extend_from_slice(&message[from..]);
    (value.map(|v| v.trim().to_string()), Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_endings_become_crlf_and_clean_text_is_borrowed() {
        let clean = b"a\r\nb\r\n.\r\n";
        assert!(matches!(crlf(clean), std::borrow::Cow::Borrowed(_)));
        // The SMTP smuggling sequences, and the odd ends of a body.
        for (input, want) in [
            (&b"x\n.\nMAIL"[..], &b"x\r\n.\r\nMAIL"[..]),
            (b"x\n.\r\nMAIL", b"x\r\n.\r\nMAIL"),
            (b"x\r.\rMAIL", b"x\r\n.\r\nMAIL"),
            (b"x\r\n.\rMAIL", b"x\r\n.\r\nMAIL"),
            (b"x\r.\r\nMAIL", b"x\r\n.\r\nMAIL"),
            (b"\nstart", b"\r\nstart"),
            (b"end\r", b"end\r\n"),
            (b"\r\r\n\n", b"\r\n\r\n\r\n"),
        ] {
            let got = crlf(input);
            assert_eq!(got.as_ref(), want, "{:?}", String::from_utf8_lossy(input));
            assert!(matches!(crlf(&got), std::borrow::Cow::Borrowed(_)));
        }
    }
    use crate::address::Address;

    #[test]
    fn an_id_prefix_stands_for_the_range_of_ids_it_starts() {
        let id: MessageId = "01a20765-b5e3-77c1-9a3b-f54f15e7b095".parse().unwrap();
        let n = id.as_u128();
        for text in [
            "0",
            "01a2",
            "01A20765",
            "01a20765-",
            "01a20765-b5",
            "01a20765b5e377c1",
            "01a20765-b5e3-77c1-9a3b-f54f15e7b095",
            "01a20765b5e377c19a3bf54f15e7b095",
        ] {
            let p = IdPrefix::parse(text).unwrap();
            assert!(p.range().contains(&n), "{text}");
        }
        let whole = IdPrefix::parse(&id.to_string()).unwrap();
        assert!(whole.is_whole());
        assert_eq!(whole.range(), n..=n);
        let p = IdPrefix::parse("01a2").unwrap();
        assert!(!p.is_whole());
        assert_eq!(
            p.range(),
            0x01a2_0000_0000_0000_0000_0000_0000_0000..=0x01a2_ffff_ffff_ffff_ffff_ffff_ffff_ffff
        );
        for other in ["01a3", "01a20766", "01a20765-b5e4"] {
            let p = IdPrefix::parse(other).unwrap();
            assert!(!p.range().contains(&n), "{other}");
        }
        for (text, err) in [
            ("", IdPrefixError::Empty),
            ("01a2x", IdPrefixError::NotHex('x')),
            ("01a2-0765", IdPrefixError::Hyphen(5)),
            ("01a20765b-5e3", IdPrefixError::NoHyphen(9)),
            (
                "01a20765-b5e3-77c1-9a3b-f54f15e7b0951",
                IdPrefixError::TooLong,
            ),
            ("01a20765b5e377c19a3bf54f15e7b0951", IdPrefixError::TooLong),
        ] {
            assert_eq!(IdPrefix::parse(text), Err(err), "{text:?}");
        }
    }

    #[test]
    fn groups_by_domain_without_duplicates() {
        let rcpts: Vec<Rcpt> = ["a@x.test", "b@y.test", "c@X.test", "a@x.test"]
            .iter()
            .map(|t| Address::parse(t).unwrap().into())
            .collect();
        let groups = group_by_domain(&rcpts, Timestamp(5));
        let summary: Vec<(String, Vec<String>)> = groups
            .iter()
            .map(|g| {
                (
                    g.domain.clone(),
                    g.recipients.iter().map(|r| r.address.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "x.test".to_string(),
                    vec!["a@x.test".to_string(), "c@x.test".to_string()]
                ),
                ("y.test".to_string(), vec!["b@y.test".to_string()]),
            ]
        );
        assert!(groups.iter().all(|g| g.next_attempt == Some(Timestamp(5))));
    }

    #[test]
    fn the_stream_header_is_read_and_taken_out() {
        let m = b"From: a@b.test\r\nX-Knock-Stream:  transactional\r\nSubject: hi\r\n\r\nX-Knock-Stream: body\r\n";
        let (value, out) = take_header(m, STREAM_HEADER);
        assert_eq!(value.as_deref(), Some("transactional"));
        assert_eq!(
            out.unwrap(),
            b"From: a@b.test\r\nSubject: hi\r\n\r\nX-Knock-Stream: body\r\n"
        );
        // Folded, in other case, twice (the first counts), last in the header.
        let m = b"x-knock-stream:\r\n bulk\r\nTo: c@d.test\r\nX-KNOCK-STREAM: other\r\n\r\nbody";
        let (value, out) = take_header(m, STREAM_HEADER);
        assert_eq!(value.as_deref(), Some("bulk"));
        assert_eq!(out.unwrap(), b"To: c@d.test\r\n\r\nbody");
        // Absent, or only a longer name: nothing changes.
        let m = b"X-Knock-Streams: no\r\n\r\nX-Knock-Stream: body";
        assert_eq!(take_header(m, STREAM_HEADER), (None, None));
    }
}
