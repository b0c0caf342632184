//! Reading one line of text as what an attempt observed, for `knock classify`: a reply as a
//! receiver sends it, a reply as MTAs log or report it, the sending MTA's own words when
//! there was no reply, or, failing all of these, a bare text. It only reads;
//! [`classify`](crate::policy::classify) decides what the line means.
//!
//! Logged forms it takes:
//! - a reply quoted after a `:`, `;` or quote: `host mx.example[192.0.2.1] said: 550 5.1.1
//!   ...`, `smtp; 550 ...` (DSNs), `SMTP error from remote mail server after RCPT TO:<a@b>:
//!   550 ...` (Exim), `Remote server returned '550 ...'` (Exchange), with Postfix's `(in reply
//!   to RCPT TO command)` and the brackets and quotes around the reply dropped;
//! - a multi-line reply joined on one line (`421-4.7.28 ... 421-4.7.28 ... 421 4.7.28 ...`),
//!   also when the log cut it short before its last line;
//! - an enhanced code with no basic code (`5.7.606 Access denied`), as Exchange NDRs and some
//!   logs give it, and qmail's `... (#5.1.1)`;
//! - a sending MTA's diagnostic (`connect to mx.example[192.0.2.1]:25: Connection timed out`),
//!   read as the [`FailureKind`] knock gives the same event itself;
//! - Postfix's `delivery temporarily suspended:` and Exim's `: retry timeout exceeded` around
//!   either of these are set aside: the words inside say what happened.

use crate::outcome::{Failure, FailureKind};
use crate::reply::{Enhanced, Reply};

/// What one line was read as.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// The line is a reply, exactly as a receiver sends it.
    Reply(Reply),
    /// A reply inside a log line or a bounce, or joined from several lines.
    Logged(Reply),
    /// A status with an enhanced code and no basic code.
    Status(Enhanced, String),
    /// The sending MTA's own diagnostic: the receiver said nothing.
    Diagnostic(Failure),
    /// Words with no code and no diagnostic knock knows: only phrases can tell.
    Text(String),
}

impl Line {
    /// What the line was read as, for people and JSON.
    pub fn read_as(&self) -> &'static str {
        match self {
            Line::Reply(_) => "reply",
            Line::Logged(_) => "logged reply",
            Line::Status(..) => "status",
            Line::Diagnostic(_) => "diagnostic",
            Line::Text(_) => "text",
        }
    }
}

/// Reads one line. A reply anywhere in the line wins over the words around it: Postfix's
/// `host ... refused to talk to me: 554 ...` is about the 554, not about talking.
pub fn read(line: &str) -> Line {
    let line = without_wrappers(line.trim());
    if let Some(reply) = quoted_reply(line) {
        return reply;
    }
    if let Some(kind) = diagnostic(line) {
        return Line::Diagnostic(Failure::new(kind, line));
    }
    if let Some((enhanced, text)) = status(line) {
        return Line::Status(enhanced, text);
    }
    Line::Text(line.to_string())
}

/// The line without the sending MTA's wrappers that only say it gave up or waits.
fn without_wrappers(line: &str) -> &str {
    let mut line = line;
    for prefix in ["delivery temporarily suspended:", "deferred:"] {
        if line.len() > prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix) {
            line = line[prefix.len()..].trim_start();
        }
    }
    let suffix = ": retry timeout exceeded";
    if line.len() > suffix.len()
        && line.is_char_boundary(line.len() - suffix.len())
        && line[line.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    {
        line = line[..line.len() - suffix.len()].trim_end();
    }
    line
}

/// The reply in `line` that starts with a basic code, at the start or after a lead-in.
fn quoted_reply(line: &str) -> Option<Line> {
    let start = code_starts(line).find(|&i| basic_code_at(line.as_bytes(), i))?;
    let (quoted, trimmed) = drop_trailer(&line[start..], &line[..start]);
    let (wire, mended) = unfold(quoted);
    let reply = Reply::parse(wire.as_bytes()).ok()?;
    Some(if start == 0 && !trimmed && !mended {
        Line::Reply(reply)
    } else {
        Line::Logged(reply)
    })
}

/// A status with an enhanced code and no basic code: at the start or after a lead-in
/// (`4.7.1 Try again later`, `milter-reject: ...: 4.7.1 ...`), or qmail's `(#5.1.1)`.
fn status(line: &str) -> Option<(Enhanced, String)> {
    if let Some(i) = code_starts(line).find(|&i| enhanced_code_at(line, i)) {
        let rest = &line[i..];
        let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
        return Some((Enhanced::parse(code)?, text.trim().to_string()));
    }
    let (enhanced, at) = hash_code(line)?;
    let text = line[..at].trim_end().trim_end_matches('(').trim_end();
    Some((enhanced, text.to_string()))
}

/// An enhanced code written qmail's way, `#5.1.1` (`(#5.1.1)`, `(#5.5.3 - chkuser)`, `550
/// #5.1.0 ...`), and where its `#` stands. The first wins.
pub fn hash_code(text: &str) -> Option<(Enhanced, usize)> {
    text.match_indices('#').find_map(|(at, _)| {
        let code = text[at + 1..]
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .trim_end_matches('.');
        let enhanced = Enhanced::parse(code)?;
        (enhanced.class != 2 && enhanced.subject <= 7).then_some((enhanced, at))
    })
}

/// Where a code may start: at the start of the line, after `: ` or `; `, or right after a
/// quote. A code inside a word, a number or an address (`[192.0.2.1]`, `2001:db8::250`,
/// `dsn=5.1.1`, `:25`) does not.
fn code_starts(line: &str) -> impl Iterator<Item = usize> + '_ {
    let b = line.as_bytes();
    (0..b.len()).filter(move |&i| {
        if !b[i].is_ascii_digit() {
            return false;
        }
        let before = line[..i].trim_end();
        let spaced = before.len() < i;
        match before.chars().last() {
            None => true,
            Some(':' | ';') => spaced,
            Some('\'' | '"') => !spaced,
            Some(_) => false,
        }
    })
}

/// A basic reply code at `i`: `[2-5]xx` then a space, a dash or the end.
fn basic_code_at(b: &[u8], i: usize) -> bool {
    b.len() >= i + 3
        && (b'2'..=b'5').contains(&b[i])
        && b[i + 1].is_ascii_digit()
        && b[i + 2].is_ascii_digit()
        && matches!(b.get(i + 3), None | Some(b' ' | b'-'))
}

/// An enhanced code at `i` (`5.7.1`, `4.4.316`) followed by a space or the end. The subject
/// must be a real one (0 to 7), so that `Exim 4.94.2` is not read as a code.
fn enhanced_code_at(line: &str, i: usize) -> bool {
    let token = line[i..].split(' ').next().unwrap_or("");
    Enhanced::parse(token).is_some_and(|e| e.class != 2 && e.subject <= 7)
}

/// The quoted reply without what the log put after it: Postfix's `(in reply to RCPT TO
/// command)`, the bracket or quote that opened before the reply. Says whether it dropped any.
fn drop_trailer<'a>(quoted: &'a str, before: &str) -> (&'a str, bool) {
    let mut rest = quoted.trim_end();
    if let Some(at) = rest.to_ascii_lowercase().rfind("(in reply to ") {
        rest = rest[..at].trim_end();
    }
    let open = before
        .matches('(')
        .count()
        .saturating_sub(before.matches(')').count());
    for _ in 0..open {
        rest = rest.strip_suffix(')').unwrap_or(rest).trim_end();
    }
    if let Some(q @ ('\'' | '"')) = before.trim_end().chars().last() {
        rest = rest.strip_suffix(q).unwrap_or(rest);
    }
    (rest, rest.len() != quoted.len())
}

/// The reply as it came over the wire, CRLF-terminated. A multi-line reply joined on one
/// line (`550-5.7.1 first 550-5.7.1 second 550 5.7.1 last`) is split back at its codes; one
/// cut short before its last line gets a last line. Says whether it split or mended anything.
fn unfold(quoted: &str) -> (String, bool) {
    let code = &quoted[..3];
    if !quoted[3..].starts_with('-') {
        let sep = if quoted.len() == 3 { " " } else { "" };
        return (format!("{quoted}{sep}\r\n"), false);
    }
    let markers = [format!(" {code}-"), format!(" {code} ")];
    let mut lines: Vec<&str> = Vec::new();
    let mut rest = quoted;
    loop {
        let next = markers
            .iter()
            .filter_map(|m| rest.get(4..)?.find(m.as_str()).map(|at| at + 4))
            .min();
        match next {
            Some(at) => {
                lines.push(rest[..at].trim_end());
                rest = rest[at + 1..].trim_start();
            }
            None => {
                lines.push(rest.trim_end());
                break;
            }
        }
    }
    let last = lines.len() - 1;
    let mut wire = String::new();
    for (n, line) in lines.iter().enumerate() {
        if n == last && line.as_bytes().get(3) == Some(&b'-') {
            wire.push_str(&format!("{code} {}\r\n", &line[4..]));
        } else {
            wire.push_str(line);
            wire.push_str("\r\n");
        }
    }
    (wire, true)
}

/// Sending MTAs' words for failures that had no reply (Postfix, Exim, Sendmail, qmail,
/// Exchange), and the kind knock gives the same failure itself. Every fragment of an entry
/// must occur (case-insensitively); the first entry that matches wins, so the more precise
/// entries come first.
const DIAGNOSTICS: &[(&[&str], FailureKind)] = &[
    (
        &["tls is required, but was not offered"],
        FailureKind::TlsNotOffered,
    ),
    (&["starttls not offered"], FailureKind::TlsNotOffered),
    (&["refused to start tls"], FailureKind::TlsRefused),
    (&["tls", "handshake"], FailureKind::TlsHandshake),
    (&["ssl", "handshake"], FailureKind::TlsHandshake),
    (&["certificate verif"], FailureKind::TlsHandshake),
    (&["cannot start tls"], FailureKind::TlsHandshake),
    (&["null mx"], FailureKind::NullMx),
    (&["nullmx"], FailureKind::NullMx),
    // Postfix says "try again" when DNS failed, and nothing when the name does not exist.
    (&["host not found, try again"], FailureKind::DnsTemporary),
    (
        &["temporary failure in name resolution"],
        FailureKind::DnsTemporary,
    ),
    (&["name server timeout"], FailureKind::DnsTemporary),
    (&["host name lookup failure"], FailureKind::DnsTemporary),
    (&["lookup failed temporarily"], FailureKind::DnsTemporary),
    (&["mx resolution error"], FailureKind::DnsTemporary),
    (&["dns lookup fail"], FailureKind::DnsTemporary),
    (&["servfail"], FailureKind::DnsTemporary),
    // qmail: "(#4.1.2)" for a DNS failure, "(#5.1.2)" for a name that does not exist.
    (
        &["couldn't find any host by that name"],
        FailureKind::DnsTemporary,
    ),
    (&["host not found"], FailureKind::NoSuchDomain),
    (&["couldn't find any host named"], FailureKind::NoSuchDomain),
    (
        &["couldn't find a mail exchanger or ip address"],
        FailureKind::NoSuchDomain,
    ),
    (&["nxdomain"], FailureKind::NoSuchDomain),
    (&["has no address"], FailureKind::NoAddress),
    (&["connect to", "timed out"], FailureKind::ConnectTimeout),
    (&["connection timed out"], FailureKind::ConnectTimeout),
    (&["connection refused"], FailureKind::ConnectFailed),
    (&["no route to host"], FailureKind::ConnectFailed),
    (&["network is unreachable"], FailureKind::ConnectFailed),
    (&["host is unreachable"], FailureKind::ConnectFailed),
    (
        &["cannot assign requested address"],
        FailureKind::ConnectFailed,
    ),
    (
        &["establish an smtp connection"],
        FailureKind::NoMailExchanger,
    ),
    (
        &["all hosts", "have been failing"],
        FailureKind::NoMailExchanger,
    ),
    (
        &["retry time not reached for any host"],
        FailureKind::NoMailExchanger,
    ),
    (&["connection reset"], FailureKind::Reset),
    (&["broken pipe"], FailureKind::Reset),
    (&["connection died"], FailureKind::Reset),
    (&["connection", "is broken"], FailureKind::Reset),
    (&["read error"], FailureKind::Reset),
    (&["lost connection"], FailureKind::Closed),
    (&["connection closed"], FailureKind::Closed),
    (&["conversation with", "timed out"], FailureKind::Timeout),
    (&["timed out"], FailureKind::Timeout),
    (&["timeout"], FailureKind::Timeout),
    (&["protocol error"], FailureKind::Protocol),
    (&["malformed reply"], FailureKind::Protocol),
];

/// The kind of failure a sending MTA's diagnostic describes.
fn diagnostic(line: &str) -> Option<FailureKind> {
    let lower = line.to_ascii_lowercase();
    DIAGNOSTICS
        .iter()
        .find(|(fragments, _)| fragments.iter().all(|f| lower.contains(f)))
        .map(|&(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> (String, u16, Option<String>, String) {
        let (kind, r) = match read(line) {
            Line::Reply(r) => ("reply", r),
            Line::Logged(r) => ("logged reply", r),
            other => panic!("{line:?} read as {other:?}"),
        };
        (
            kind.to_string(),
            r.code,
            r.enhanced.map(|e| e.to_string()),
            r.text.replace('\n', " | "),
        )
    }

    #[test]
    fn logged_replies() {
        let cases = [
            (
                "550 5.1.1 User unknown",
                ("reply", 550, Some("5.1.1"), "User unknown"),
            ),
            (
                "host mx.example.com[192.0.2.1] said: 550 5.1.1 <a@b.example>: Recipient \
                 address rejected: User unknown (in reply to RCPT TO command)",
                (
                    "logged reply",
                    550,
                    Some("5.1.1"),
                    "<a@b.example>: Recipient address rejected: User unknown",
                ),
            ),
            (
                "status=bounced (host mx.example[192.0.2.1] said: 554 5.7.1 Rejected (in reply \
                 to end of DATA command))",
                ("logged reply", 554, Some("5.7.1"), "Rejected"),
            ),
            (
                "smtp; 550 5.7.1 Service unavailable",
                ("logged reply", 550, Some("5.7.1"), "Service unavailable"),
            ),
            (
                "421-4.7.28 [192.0.2.1] Our system has detected 421-4.7.28 an unusual rate \
                 421 4.7.28 of mail. gsmtp",
                (
                    "logged reply",
                    421,
                    Some("4.7.28"),
                    "[192.0.2.1] Our system has detected | an unusual rate | of mail. gsmtp",
                ),
            ),
            (
                "550-5.7.1 Unauthenticated email is not accepted due to 550-5.7.1 DMARC policy",
                (
                    "logged reply",
                    550,
                    Some("5.7.1"),
                    "Unauthenticated email is not accepted due to | DMARC policy",
                ),
            ),
            (
                "H=mx.example [192.0.2.2]: SMTP error from remote mail server after RCPT \
                 TO:<a@b.example>: 451 Internal resource temporarily unavailable",
                (
                    "logged reply",
                    451,
                    None,
                    "Internal resource temporarily unavailable",
                ),
            ),
            (
                "Remote server returned '550 5.4.1 Recipient address rejected: Access denied'",
                (
                    "logged reply",
                    550,
                    Some("5.4.1"),
                    "Recipient address rejected: Access denied",
                ),
            ),
            (
                "host mx2.free.fr[192.0.2.58] refused to talk to me: 421 Refused.",
                ("logged reply", 421, None, "Refused."),
            ),
        ];
        for (line, (kind, code, enhanced, text)) in cases {
            assert_eq!(
                reply(line),
                (
                    kind.to_string(),
                    code,
                    enhanced.map(str::to_string),
                    text.to_string()
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn statuses_without_a_basic_code() {
        let cases = [
            ("5.7.606 Access denied, banned sending IP", "5.7.606"),
            (
                "milter-reject: END-OF-MESSAGE from a.example[192.0.2.1]: 4.7.1 Try again later",
                "4.7.1",
            ),
            (
                "Sorry, no mailbox here by that name. vpopmail (#5.1.1)",
                "5.1.1",
            ),
            (
                "SMTP cannot transfer messages with partial final lines. (#5.6.2)",
                "5.6.2",
            ),
        ];
        for (line, code) in cases {
            match read(line) {
                Line::Status(e, _) => assert_eq!(e.to_string(), code, "{line}"),
                other => panic!("{line:?} read as {other:?}"),
            }
        }
    }

    #[test]
    fn sending_mta_diagnostics() {
        use FailureKind::*;
        let cases = [
            (
                "connect to mx.example.com[192.0.2.1]:25: Connection timed out",
                ConnectTimeout,
            ),
            (
                "connect to mx.example.com[192.0.2.1]:25: Connection refused",
                ConnectFailed,
            ),
            (
                "lost connection with mx.example[192.0.2.1] while sending end of data -- \
                 message may be sent more than once",
                Closed,
            ),
            (
                "conversation with mx.example[192.0.2.1] timed out while receiving the \
                 initial server greeting",
                Timeout,
            ),
            (
                "Host or domain name not found. Name service error for name=example.com \
                 type=MX: Host not found, try again",
                DnsTemporary,
            ),
            (
                "Host or domain name not found. Name service error for name=example.invalid \
                 type=A: Host not found",
                NoSuchDomain,
            ),
            (
                "delivery temporarily suspended: connect to mx.example[192.0.2.1]:25: No \
                 route to host",
                ConnectFailed,
            ),
            (
                "TLS handshake failed: certificate has expired",
                TlsHandshake,
            ),
            (
                "R=dnslookup T=remote_smtp defer (110): Connection timed out",
                ConnectTimeout,
            ),
            (
                "Connected to 192.0.2.1 but connection died. (#4.4.2)",
                Reset,
            ),
            (
                "Sorry, I couldn't find any host named example.invalid. (#5.1.2)",
                NoSuchDomain,
            ),
        ];
        for (line, kind) in cases {
            match read(line) {
                Line::Diagnostic(f) => assert_eq!(f.kind, kind, "{line}"),
                other => panic!("{line:?} read as {other:?}"),
            }
        }
    }

    #[test]
    fn numbers_that_are_not_codes() {
        for line in [
            "Temporary error 249 (temporary MX resolution error) resolving .gmail.com",
            "host 192.0.4.255 is listed at combined.mail.abusix.zone",
        ] {
            assert!(
                !matches!(
                    read(line),
                    Line::Reply(_) | Line::Logged(_) | Line::Status(..)
                ),
                "{line}"
            );
        }
        assert_eq!(
            read("Mailbox size exceeded"),
            Line::Text("Mailbox size exceeded".to_string())
        );
        assert_eq!(
            read("mailbox is full: retry timeout exceeded"),
            Line::Text("mailbox is full".to_string())
        );
    }
}
