//! DSNs built from arbitrary original messages, reply texts and a sender's ENVID and ORCPT,
//! of every action, returning the headers or (RET=FULL) the whole message: mail-builder
//! never panics, and what knock would queue is a message whose every line ends in CRLF.
#![no_main]

use knock::dsn::{Action, Report, build};
use knock::message::{Envelope, MailParams, Ret, State};
use knock::outcome::{Class, Disposition, Outcome};
use knock::time::Timestamp;
use libfuzzer_sys::fuzz_target;

/// The next line of `data` (up to LF), and the rest.
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    }
}

fuzz_target!(|data: &[u8]| {
    // A byte of choices, a line of reply text, a line of the sender's ENVID and ORCPT
    // (older spools may hold any), then the original message.
    let Some((&choice, data)) = data.split_first() else {
        return;
    };
    let (text, data) = line(data);
    let (sender, original) = line(data);
    let sender = String::from_utf8_lossy(sender).into_owned();
    let envelope = Envelope {
        id: knock::message::new_id(),
        from: "sender@example.test".into(),
        received_at: Timestamp(0),
        size: original.len() as u64,
        source: "fuzz".into(),
        stream: None,
        done_at: None,
        params: MailParams {
            ret: (choice & 1 == 1).then_some(Ret::Full),
            envid: (choice & 2 == 2).then(|| sender.clone()),
            smtputf8: false,
        },
    };
    let action = match (choice >> 2) % 3 {
        0 => Action::Failed,
        1 => Action::Delayed,
        _ => Action::Relayed,
    };
    let report = Report {
        recipient: "rcpt@example.test".into(),
        orcpt: (choice & 32 == 32).then_some(sender),
        action,
        outcome: Outcome {
            disposition: Disposition::Permanent,
            class: Some(Class::Hard),
            code: Some(550),
            enhanced: None,
            text: String::from_utf8_lossy(text).into_owned(),
            failure: None,
        },
        mx: Some("mx.example.test".into()),
        state: State::Bounced,
        operator: false,
        until: (action == Action::Delayed).then_some(Timestamp(86_400_000)),
    };
    if let Some(dsn) = build("knock.test", &envelope, original, &[report], Timestamp(0)) {
        let body = &dsn.body;
        assert!(matches!(knock::message::crlf(body), std::borrow::Cow::Borrowed(_)));
    }
});
