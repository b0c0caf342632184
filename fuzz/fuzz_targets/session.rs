//! A whole inbound SMTP session over an in-memory pipe: whatever a client sends (commands,
//! pipelining, DATA with any line endings, AUTH, garbage), the server neither panics nor
//! hangs, answers only in well-formed reply lines, and hands the handler only messages
//! that ended on CRLF . CRLF; made CRLF as ingest makes them, no bare CR or LF is left.
#![no_main]

use async_trait::async_trait;
use knock::address::Address;
use knock::net::smtp::server::{EhloMode, Extensions, Handler, Limits, Session, converse};
use knock::reply::Reply;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Duration;

struct Accept;

#[async_trait]
impl Handler for Accept {
    async fn mail(&self, _: &Session, _: &str) -> Reply {
        Reply::new(250, "2.1.0", "Ok")
    }
    async fn rcpt(&self, _: &Session, _: &Address) -> Reply {
        Reply::new(250, "2.1.5", "Ok")
    }
    async fn data(&self, _: &Session, body: Vec<u8>) -> Reply {
        let fixed = knock::message::crlf(&body);
        assert!(matches!(knock::message::crlf(&fixed), std::borrow::Cow::Borrowed(_)));
        Reply::new(250, "2.0.0", "Ok: queued")
    }
    fn offers_auth(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let limits = Arc::new(Limits {
        hostname: "knock.test".into(),
        max_message_size: 64 * 1024,
        max_recipients: 10,
        idle_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(10),
        max_errors: 10,
        ehlo: EhloMode::Full,
        tls: None,
        extensions: Extensions::ALL,
    });
    let out = runtime.block_on(converse(data, Arc::new(Accept), limits));
    // Every line the server wrote is a reply line: three digits, then space or hyphen.
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "{:?}", String::from_utf8_lossy(line));
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-' | b'\r'),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
});
