//! Whatever a server answers, reply parsing returns a reply or an error, never panics, and
//! a parsed reply survives being written and read again.
#![no_main]

use knock::policy::classify::Classifier;
use knock::reply::Reply;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = Reply::parse(data) else {
        return;
    };
    let classifier = CLASSIFIER.get_or_init(Classifier::default);
    let _ = classifier.reply(&reply);
    let _ = knock::policy::classify::stated_delay(&reply.text);
    let mut out = Vec::new();
    reply.write_to(&mut out);
    // Invalid UTF-8 comes back as U+FFFD, three bytes each: the written reply can outgrow
    // the parser's 4 KiB cap, and then it is refused, which is right.
    if out.len() <= smtp_proto::response::parser::MAX_RESPONSE_LENGTH {
        let again = Reply::parse(&out).expect("a written reply parses");
        assert_eq!(again.code, reply.code);
    }
});
