//! DSNs built from arbitrary original messages and reply texts: mail-builder never panics,
//! and what knock would queue is a message whose every line ends in CRLF.
#![no_main]

use knock::dsn::{Failure, build};
use knock::message::{Envelope, State};
use knock::outcome::{Class, Disposition, Outcome};
use knock::time::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the reply text, the rest the original message.
    let (text, original) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let envelope = Envelope {
        id: knock::message::new_id(),
        from: "sender@example.test".into(),
        received_at: Timestamp(0),
        size: original.len() as u64,
        source: "fuzz".into(),
        stream: None,
        done_at: None,
    };
    let failure = Failure {
        recipient: "rcpt@example.test".into(),
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
    };
    if let Some(dsn) = build("knock.test", &envelope, original, &[failure], Timestamp(0)) {
        let body = &dsn.body;
        assert!(matches!(knock::message::crlf(body), std::borrow::Cow::Borrowed(_)));
    }
});
