//! Delivery status notifications (RFC 3464): the bounce a sender gets when recipients
//! bounced or expired. A `multipart/report` with a human part, the machine-readable
//! `message/delivery-status` part (with the receiver's reply as Diagnostic-Code) and the
//! original message's headers. It is sent from the null sender, so it never loops.

use crate::address::Address;
use crate::message::{Envelope, NewMessage, State, group_by_domain, new_id};
use crate::outcome::Outcome;
use crate::time::{Timestamp, rfc5322};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as MailAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use std::fmt::Write;

/// One recipient the sender must hear about.
#[derive(Debug, Clone)]
pub struct Failure {
    pub recipient: String,
    pub outcome: Outcome,
    pub mx: Option<String>,
    pub state: State,
    /// Returned by the operator (`knock bounce`), not refused by a receiver.
    pub operator: bool,
}

/// The DSN for `failed` recipients of `envelope`, made at `now`, ready for the spool.
/// `None` when the sender cannot receive one (the null sender, or an address that does not
/// parse).
pub fn build(
    hostname: &str,
    envelope: &Envelope,
    original: &[u8],
    failed: &[Failure],
    now: Timestamp,
) -> Option<NewMessage> {
    if envelope.is_null_sender() {
        return None;
    }
    let sender = Address::parse(&envelope.from).ok()?;
    let id = new_id();
    let raw = MessageBuilder::new()
        .from(MailAddress::new_address(
            Some("Mail Delivery System"),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(sender.to_string())
        .subject(subject(failed))
        .message_id(format!("{id}@{hostname}"))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            vec![
                MimePart::new("text/plain", human_text(hostname, envelope, failed)),
                MimePart::raw(delivery_status(hostname, envelope, failed, now)),
                MimePart::raw(format!(
                    "Content-Type: text/rfc822-headers\r\n\r\n{}",
                    header_section(original)
                )),
            ],
        ))
        .write_to_vec()
        .ok()?;
    let size = raw.len() as u64;
    Some(NewMessage {
        envelope: Envelope {
            id,
            from: String::new(),
            received_at: now,
            size,
            source: format!("dsn for {}", envelope.id),
            stream: None,
            done_at: None,
        },
        groups: group_by_domain(&[sender], now),
        body: raw.into(),
    })
}

fn subject(failed: &[Failure]) -> &'static str {
    if failed.iter().all(|f| f.state == State::Expired) {
        "Undelivered Mail Returned to Sender (delivery time expired)"
    } else {
        "Undelivered Mail Returned to Sender"
    }
}

fn human_text(hostname: &str, envelope: &Envelope, failed: &[Failure]) -> String {
    let mut t = format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\r\n\
         Message {} was accepted on {}.\r\n\r\n",
        envelope.id,
        rfc5322(envelope.received_at)
    );
    for f in failed {
        let why = match f.state {
            _ if f.operator => "returned by the operator of this mail system",
            State::Expired => {
                "gave up after the message stayed in the queue too long; the last attempt said"
            }
            _ => "the receiving server said",
        };
        let at =
            f.mx.as_deref()
                .map(|mx| format!(" (host {mx})"))
                .unwrap_or_default();
        let _ = write!(
            t,
            "<{}>{at}: {why}:\r\n    {}\r\n\r\n",
            f.recipient,
            f.outcome.diagnostic()
        );
    }
    t
}

fn delivery_status(
    hostname: &str,
    envelope: &Envelope,
    failed: &[Failure],
    now: Timestamp,
) -> String {
    let mut s = String::from("Content-Type: message/delivery-status\r\n\r\n");
    let _ = write!(
        s,
        "Reporting-MTA: dns; {hostname}\r\nX-Knock-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        envelope.id,
        rfc5322(envelope.received_at)
    );
    for f in failed {
        let _ = write!(
            s,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.recipient,
            f.outcome.status()
        );
        if let Some(mx) = &f.mx {
            let _ = write!(s, "Remote-MTA: dns; {mx}\r\n");
        }
        let kind = if f.outcome.code.is_some() {
            "smtp"
        } else {
            "X-knock"
        };
        let _ = write!(
            s,
            "Diagnostic-Code: {kind}; {}\r\nLast-Attempt-Date: {}\r\n",
            f.outcome.diagnostic(),
            rfc5322(now)
        );
    }
    s
}

/// The original message's header section, up to the blank line, every line ending in
/// CRLF (a bare CR or LF in a message spooled before ingest normalized them included:
/// found by fuzzing).
fn header_section(original: &[u8]) -> String {
    let original = crate::message::crlf(original);
    let end = find(&original, b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(original.len());
    let mut out = String::from_utf8_lossy(&original[..end]).into_owned();
    if !out.is_empty() && !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;

    #[test]
    fn the_returned_headers_end_every_line_in_crlf_whatever_the_original() {
        // The input the fuzzer found: an original spooled with bare LF and CR.
        let original = b"From: a@x.test\n\r.\rMAIL FRO\nbody\r.\rMAIL FROM:<e@x>\n";
        let headers = header_section(original);
        assert!(
            matches!(
                crate::message::crlf(headers.as_bytes()),
                std::borrow::Cow::Borrowed(_)
            ),
            "{headers:?}"
        );
        assert!(headers.starts_with("From: a@x.test\r\n"), "{headers:?}");
        assert_eq!(
            header_section(b"Subject: s\r\n\r\nbody\r\n"),
            "Subject: s\r\n"
        );
    }

    #[test]
    fn a_reply_text_with_a_cr_or_lf_stays_one_line_in_the_dsn() {
        let outcome = Outcome {
            disposition: crate::outcome::Disposition::Permanent,
            class: None,
            code: Some(550),
            enhanced: None,
            text: "User u\rX-Injected: yes\nmore".into(),
            failure: None,
        };
        assert_eq!(outcome.diagnostic(), "550 User u X-Injected: yes more");
    }

    fn envelope(from: &str) -> Envelope {
        Envelope {
            id: new_id(),
            from: from.into(),
            received_at: Timestamp(1_700_000_000_000),
            size: 10,
            source: "test".into(),
            stream: None,
            done_at: None,
        }
    }

    #[test]
    fn dsn_has_the_three_parts_and_the_diagnostic() {
        let reply = Reply::parse(
            b"550 5.1.1 <nobody@b.test>: Recipient address rejected: User unknown\r\n",
        )
        .unwrap();
        let failed = [Failure {
            recipient: "nobody@b.test".into(),
            outcome: crate::policy::classify::Classifier::default().reply(&reply),
            mx: Some("mx.b.test".into()),
            operator: false,
            state: State::Bounced,
        }];
        let original =
            b"From: s@a.test\r\nTo: nobody@b.test\r\nSubject: hi there\r\n\r\nsecret body\r\n";
        let now = Timestamp(1_700_000_100_000);
        let dsn = build("knock.test", &envelope("s@a.test"), original, &failed, now).unwrap();
        assert_eq!(dsn.envelope.received_at, now);
        assert_eq!(dsn.envelope.from, "");
        assert_eq!(dsn.groups[0].recipients[0].address, "s@a.test");
        let text = String::from_utf8(dsn.body.to_vec()).unwrap();
        for needle in [
            "Content-Type: multipart/report",
            "report-type=\"delivery-status\"",
            "Auto-Submitted: auto-replied",
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; knock.test",
            "Final-Recipient: rfc822; nobody@b.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.b.test",
            "Diagnostic-Code: smtp; 550 5.1.1 <nobody@b.test>: Recipient address rejected: User unknown",
            "Content-Type: text/rfc822-headers\r\n\r\nFrom: s@a.test\r\nTo: nobody@b.test\r\nSubject: hi there\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(
            !text.contains("secret body"),
            "only the headers of the original are returned"
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(&dsn.body[..])
            .unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
    }

    #[test]
    fn no_dsn_to_the_null_sender() {
        let failed = [Failure {
            recipient: "x@b.test".into(),
            outcome: crate::policy::classify::Classifier::default().outcome(
                &crate::outcome::Observed::Failure(crate::outcome::Failure::new(
                    crate::outcome::FailureKind::ConnectFailed,
                    "down",
                )),
            ),
            mx: None,
            operator: false,
            state: State::Expired,
        }];
        assert!(build("knock.test", &envelope(""), b"", &failed, Timestamp(0)).is_none());
    }
}
