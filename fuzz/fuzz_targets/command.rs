//! Whatever a client sends, line framing and command parsing answer without panicking, and
//! every answer is a well-formed reply with an enhanced status code.
#![no_main]

use knock::address::Address;
use knock::smtp::server::parse_command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        match parse_command(line) {
            Ok(smtp_proto::Request::Mail { from }) => {
                let _ = Address::parse(&from.address);
            }
            Ok(smtp_proto::Request::Rcpt { to }) => {
                let _ = Address::parse(&to.address);
            }
            Ok(_) => {}
            Err(reply) => {
                assert!(
                    reply.enhanced.is_some(),
                    "every error reply has an enhanced code"
                );
                let mut out = Vec::new();
                reply.write_to(&mut out);
                assert!(out.ends_with(b"\r\n"));
            }
        }
    }
});
