//! Delivery status notifications (RFC 3464): what a sender hears of its message. A
//! `multipart/report` with a human part, the machine-readable `message/delivery-status`
//! part (with the receiver's reply as Diagnostic-Code) and the original: its headers, or
//! the whole message when the sender asked `RET=FULL` and something failed. Failures are
//! reported unless the sender's NOTIFY left them out; delays (once, after `[dsn]
//! delay_warning`) likewise; success only when NOTIFY asked for it (RFC 3461). It is sent
//! from the null sender, so it never loops.

use crate::address::Address;
use crate::message::{Envelope, NewMessage, Ret, State, group_by_domain, new_id};
use crate::outcome::Outcome;
use crate::time::{Timestamp, rfc5322};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as MailAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use std::fmt::Write;

/// The largest original a DSN returns whole (`RET=FULL`); a larger one is returned as its
/// headers (Postfix's `bounce_size_limit` is 50,000 bytes).
pub const MAX_RETURNED: usize = 50 * 1024;

/// What a DSN says became of a recipient (RFC 3464 section 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bounced or expired: knock gives up.
    Failed,
    /// Still deferred after `[dsn] delay_warning`: knock goes on trying.
    Delayed,
    /// Taken by a receiver that does not offer DSN, so it will report nothing more. (One
    /// that offers DSN got the sender's NOTIFY and reports success itself; knock, which
    /// always hands mail on, never says `delivered`.)
    Relayed,
}

impl Action {
    /// Whether `rcpt`'s sender wants a DSN that says this of it: failures unless NOTIFY
    /// left them out, delays and success only when NOTIFY asked for them (a bulk sender
    /// that says nothing is not sent a warning per deferred recipient).
    pub fn wanted_for(self, rcpt: &crate::message::Recipient) -> bool {
        match (rcpt.notify, self) {
            (None, Action::Failed) => true,
            (None, Action::Delayed | Action::Relayed) => false,
            (Some(n), Action::Failed) => n.failure,
            (Some(n), Action::Delayed) => n.delay,
            (Some(n), Action::Relayed) => n.success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient the sender must hear about.
#[derive(Debug, Clone)]
pub struct Report {
    pub recipient: String,
    /// RFC 3461 ORCPT, given back as Original-Recipient.
    pub orcpt: Option<String>,
    pub action: Action,
    /// The attempt that led to it (the last one, for an expiry).
    pub outcome: Outcome,
    pub mx: Option<String>,
    pub state: State,
    /// Returned by the operator (`knock bounce`), not refused by a receiver.
    pub operator: bool,
    /// For a delay: until when knock goes on trying.
    pub until: Option<Timestamp>,
}

/// The DSN for `reports` of `envelope`, made at `now`, ready for the spool. `None` when
/// the sender cannot receive one (the null sender, or an address that does not parse) or
/// there is nothing to report.
pub fn build(
    hostname: &str,
    envelope: &Envelope,
    original: &[u8],
    reports: &[Report],
    now: Timestamp,
) -> Option<NewMessage> {
    if envelope.is_null_sender() || reports.is_empty() {
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
        .subject(subject(reports))
        .message_id(format!("{id}@{hostname}"))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            vec![
                MimePart::new("text/plain", human_text(hostname, envelope, reports)),
                MimePart::raw(delivery_status(hostname, envelope, reports, now)),
                MimePart::raw(returned(envelope, original, reports)),
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
            params: Default::default(),
        },
        groups: group_by_domain(&[sender.into()], now),
        body: raw.into(),
    })
}

fn subject(reports: &[Report]) -> &'static str {
    let failed = reports.iter().filter(|r| r.action == Action::Failed);
    if failed.clone().count() > 0 {
        return match failed.clone().all(|f| f.state == State::Expired) {
            true => "Undelivered Mail Returned to Sender (delivery time expired)",
            false => "Undelivered Mail Returned to Sender",
        };
    }
    match reports.iter().any(|r| r.action == Action::Delayed) {
        true => "Delayed Mail (still being retried)",
        false => "Successful Mail Delivery Report",
    }
}

fn human_text(hostname: &str, envelope: &Envelope, reports: &[Report]) -> String {
    let failed = reports.iter().any(|r| r.action == Action::Failed);
    let delayed = reports.iter().any(|r| r.action == Action::Delayed);
    let what = match (failed, delayed) {
        (true, _) => {
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients."
        }
        (false, true) => {
            "Your message could not be delivered yet to one or more\r\nrecipients. It is still in the queue and will be tried again:\r\nyou do not need to send it again."
        }
        (false, false) => {
            "Your message was delivered to the recipients below,\r\nas you asked to be told."
        }
    };
    let mut t = format!(
        "This is the mail system at host {hostname}.\r\n\r\n{what}\r\n\r\n\
         Message {} was accepted on {}.\r\n\r\n",
        envelope.id,
        rfc5322(envelope.received_at)
    );
    for r in reports {
        let why = match (r.action, r.state) {
            (Action::Failed, _) if r.operator => "returned by the operator of this mail system",
            (Action::Failed, State::Expired) => {
                "gave up after the message stayed in the queue too long; the last attempt said"
            }
            (Action::Failed, _) => "the receiving server said",
            (Action::Delayed, _) => "not delivered yet; the last attempt said",
            (Action::Relayed, _) => "delivered to a server that sends no further notices; it said",
        };
        let at =
            r.mx.as_deref()
                .map(|mx| format!(" (host {mx})"))
                .unwrap_or_default();
        let _ = write!(
            t,
            "<{}>{at}: {why}:\r\n    {}\r\n",
            r.recipient,
            r.outcome.diagnostic()
        );
        if let Some(until) = r.until {
            let _ = write!(t, "    It will be tried until {}.\r\n", rfc5322(until));
        }
        t.push_str("\r\n");
    }
    t
}

fn delivery_status(
    hostname: &str,
    envelope: &Envelope,
    reports: &[Report],
    now: Timestamp,
) -> String {
    let mut s = String::from("Content-Type: message/delivery-status\r\n\r\n");
    if let Some(envid) = &envelope.params.envid {
        let _ = write!(s, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(
        s,
        "Reporting-MTA: dns; {hostname}\r\nX-Knock-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        envelope.id,
        rfc5322(envelope.received_at)
    );
    for r in reports {
        s.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            let _ = write!(s, "Original-Recipient: rfc822; {}\r\n", one_line(orcpt));
        }
        let _ = write!(
            s,
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            r.recipient,
            r.action.as_str(),
            r.outcome.status()
        );
        if let Some(mx) = &r.mx {
            let _ = write!(s, "Remote-MTA: dns; {mx}\r\n");
        }
        let kind = if r.outcome.code.is_some() {
            "smtp"
        } else {
            "X-knock"
        };
        let _ = write!(
            s,
            "Diagnostic-Code: {kind}; {}\r\nLast-Attempt-Date: {}\r\n",
            r.outcome.diagnostic(),
            rfc5322(now)
        );
        if let Some(until) = r.until {
            let _ = write!(s, "Will-Retry-Until: {}\r\n", rfc5322(until));
        }
    }
    s
}

/// A sender's text in a DSN field: one line (ENVID and ORCPT are checked at ingest; an
/// older spool's are not).
fn one_line(text: &str) -> String {
    text.replace(|c: char| c.is_control(), " ")
}

/// The third part: the whole original when the sender asked `RET=FULL`, something
/// failed and it is small enough; else its header section.
fn returned(envelope: &Envelope, original: &[u8], reports: &[Report]) -> String {
    let full = envelope.params.ret == Some(Ret::Full)
        && reports.iter().any(|r| r.action == Action::Failed)
        && original.len() <= MAX_RETURNED;
    match full {
        true => format!(
            "Content-Type: message/rfc822\r\n\r\n{}",
            String::from_utf8_lossy(&crate::message::crlf(original))
        ),
        false => format!(
            "Content-Type: text/rfc822-headers\r\n\r\n{}",
            header_section(original)
        ),
    }
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
            params: Default::default(),
        }
    }

    #[test]
    fn dsn_has_the_three_parts_and_the_diagnostic() {
        let reply = Reply::parse(
            b"550 5.1.1 <nobody@b.test>: Recipient address rejected: User unknown\r\n",
        )
        .unwrap();
        let failed = [Report {
            recipient: "nobody@b.test".into(),
            orcpt: None,
            action: Action::Failed,
            outcome: crate::policy::classify::Classifier::default().reply(&reply),
            mx: Some("mx.b.test".into()),
            operator: false,
            state: State::Bounced,
            until: None,
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
        let failed = [Report {
            recipient: "x@b.test".into(),
            orcpt: None,
            action: Action::Failed,
            until: None,
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

    fn report(recipient: &str, action: Action, until: Option<Timestamp>) -> Report {
        Report {
            recipient: recipient.into(),
            orcpt: Some("Original@B.test".into()),
            action,
            outcome: crate::policy::classify::Classifier::default()
                .reply(&Reply::parse(b"450 4.2.0 try later\r\n").unwrap()),
            mx: Some("mx.b.test".into()),
            operator: false,
            state: State::Deferred,
            until,
        }
    }

    #[test]
    fn ret_full_returns_the_whole_message_with_envid_and_orcpt() {
        let mut e = envelope("s@a.test");
        e.params.ret = Some(Ret::Full);
        e.params.envid = Some("QQ314159".into());
        let original = b"From: s@a.test\r\nSubject: hi\r\n\r\nthe whole body\r\n";
        let failed = [Report {
            state: State::Bounced,
            ..report("b@b.test", Action::Failed, None)
        }];
        let dsn = build("knock.test", &e, original, &failed, Timestamp(1)).unwrap();
        let text = String::from_utf8(dsn.body.to_vec()).unwrap();
        for needle in [
            "Original-Envelope-Id: QQ314159\r\nReporting-MTA: dns; knock.test",
            "Original-Recipient: rfc822; Original@B.test\r\nFinal-Recipient: rfc822; b@b.test\r\nAction: failed",
            "Content-Type: message/rfc822",
            "the whole body",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Too big to return whole: its headers.
        let mut big = original.to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_RETURNED));
        let dsn = build("knock.test", &e, &big, &failed, Timestamp(1)).unwrap();
        let text = String::from_utf8_lossy(&dsn.body).into_owned();
        assert!(text.contains("text/rfc822-headers"), "{text}");
        assert!(!text.contains("xxxxxxxx"), "{text}");
    }

    #[test]
    fn a_delay_and_a_relay_are_told_as_such() {
        let mut e = envelope("s@a.test");
        e.params.ret = Some(Ret::Full);
        let original = b"Subject: hi\r\n\r\nthe whole body\r\n";
        let until = Timestamp(1_700_259_200_000);
        let delayed = [report("b@b.test", Action::Delayed, Some(until))];
        let dsn = build("knock.test", &e, original, &delayed, Timestamp(1)).unwrap();
        let text = String::from_utf8(dsn.body.to_vec()).unwrap();
        assert!(
            text.contains("Subject: Delayed Mail (still being retried)"),
            "{text}"
        );
        assert!(text.contains("Action: delayed\r\nStatus: 4.2.0"), "{text}");
        assert!(
            text.contains(&format!("Will-Retry-Until: {}", rfc5322(until))),
            "{text}"
        );
        assert!(
            !text.contains("the whole body"),
            "RET=FULL is for failures: {text}"
        );
        let relayed = [report("b@b.test", Action::Relayed, None)];
        let dsn = build("knock.test", &e, original, &relayed, Timestamp(1)).unwrap();
        let text = String::from_utf8(dsn.body.to_vec()).unwrap();
        assert!(
            text.contains("Subject: Successful Mail Delivery Report"),
            "{text}"
        );
        assert!(text.contains("Action: relayed"), "{text}");
        assert!(build("knock.test", &e, original, &[], Timestamp(1)).is_none());
    }
}
