//! SMTP replies: a three-digit code, an enhanced status code (RFC 3463) and text. Both
//! directions speak this type: the server writes it, the client parses it (through
//! smtp-proto's reply parser) and hands it to classification.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An enhanced status code `class.subject.detail`, e.g. `4.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Enhanced {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    pub fn parse(text: &str) -> Option<Enhanced> {
        let mut parts = text.split('.');
        let class = parts.next()?.parse().ok()?;
        let subject = parts.next()?.parse().ok()?;
        let detail = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Enhanced::new(class, subject, detail))
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Serialize for Enhanced {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Enhanced {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Enhanced::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad enhanced status code {text:?}")))
    }
}

/// One SMTP reply. `text` holds the lines without code prefixes, joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub text: String,
}

/// Why bytes from a server are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("incomplete reply")]
    Incomplete,
    #[error("malformed reply: {0}")]
    Malformed(String),
}

impl Reply {
    /// A reply with an enhanced code given as text: `Reply::new(250, "2.0.0", "Ok")`.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Enhanced::parse(enhanced),
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Parses one complete reply (all its lines) from `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Reply, ReplyError> {
        let mut receiver = smtp_proto::response::parser::ResponseReceiver::default();
        let mut iter = bytes.iter();
        match receiver.parse(&mut iter) {
            Ok(r) => {
                // smtp-proto keeps each part in a byte, so `5.7.708` does not fit: read the
                // code from the first line, where smtp-proto found one.
                let enhanced = (r.esc[0] != 0).then(|| leading_enhanced(bytes)).flatten();
                if !(200..600).contains(&r.code) {
                    return Err(ReplyError::Malformed(format!("reply code {}", r.code)));
                }
                Ok(Reply {
                    code: r.code,
                    enhanced,
                    text: r.message.trim_end().to_string(),
                })
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => Err(ReplyError::Incomplete),
            Err(e) => Err(ReplyError::Malformed(e.to_string())),
        }
    }

    /// The reply as it goes on the wire, one line per text line, CRLF-terminated.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let line = line.trim_end_matches('\r');
            match self.enhanced {
                Some(e) => {
                    out.extend_from_slice(format!("{}{sep}{e} {line}\r\n", self.code).as_bytes())
                }
                None => out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes()),
            }
        }
    }

    /// The reply on one line, as logs, events and DSNs show it.
    pub fn one_line(&self) -> String {
        let text = self.text.replace('\n', " ");
        match self.enhanced {
            Some(e) => format!("{} {e} {text}", self.code),
            None => format!("{} {text}", self.code),
        }
    }
}

/// The enhanced code at the start of a reply's first line (`250 2.1.0 Ok` → `2.1.0`).
fn leading_enhanced(raw: &[u8]) -> Option<Enhanced> {
    let line = raw.get(4..)?;
    let end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    Enhanced::parse(std::str::from_utf8(&line[..end]).ok()?)
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_replies() {
        let cases: &[(&str, u16, Option<&str>, &str)] = &[
            (
                "250 2.0.0 Ok: queued as 4Xyz\r\n",
                250,
                Some("2.0.0"),
                "Ok: queued as 4Xyz",
            ),
            (
                "450 4.2.0 <a@b.test>: Recipient address rejected: Greylisted\r\n",
                450,
                Some("4.2.0"),
                "<a@b.test>: Recipient address rejected: Greylisted",
            ),
            (
                "421 4.7.28 Gmail has detected an unusual rate\r\n",
                421,
                Some("4.7.28"),
                "Gmail has detected an unusual rate",
            ),
            (
                "554 Transaction failed\r\n",
                554,
                None,
                "Transaction failed",
            ),
            (
                "550-5.1.1 The email account does not exist.\r\n550 5.1.1 Try again.\r\n",
                550,
                Some("5.1.1"),
                "The email account does not exist.\nTry again.",
            ),
            ("220 mx.test ESMTP\r\n", 220, None, "mx.test ESMTP"),
        ];
        for (raw, code, enhanced, text) in cases {
            let r = Reply::parse(raw.as_bytes()).unwrap();
            assert_eq!(r.code, *code, "{raw}");
            assert_eq!(
                r.enhanced.map(|e| e.to_string()).as_deref(),
                *enhanced,
                "{raw}"
            );
            assert_eq!(r.text, *text, "{raw}");
        }
    }

    #[test]
    fn incomplete_and_malformed() {
        assert_eq!(Reply::parse(b"250-first\r\n"), Err(ReplyError::Incomplete));
        assert_eq!(Reply::parse(b"25"), Err(ReplyError::Incomplete));
        assert!(matches!(
            Reply::parse(b"hello\r\n"),
            Err(ReplyError::Malformed(_))
        ));
    }

    #[test]
    fn writes_multiline_with_codes() {
        let mut out = Vec::new();
        Reply::new(250, "2.0.0", "one\ntwo").write_to(&mut out);
        assert_eq!(out, b"250-2.0.0 one\r\n250 2.0.0 two\r\n");
        let back = Reply::parse(&out).unwrap();
        assert_eq!(back.text, "one\ntwo");
    }
}
