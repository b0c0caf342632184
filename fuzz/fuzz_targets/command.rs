//! Whatever a client sends, line framing, command parsing and the decoding of AUTH
//! responses answer without panicking, and every answer is a well-formed reply with an
//! enhanced status code.
#![no_main]

use knock::address::Address;
use knock::reply::Reply;
use knock::net::smtp::server::{decode_plain, decode_sasl_response, parse_command};
use libfuzzer_sys::fuzz_target;

fn well_formed(reply: Reply) {
    assert!(
        reply.enhanced.is_some(),
        "every error reply has an enhanced code"
    );
    let mut out = Vec::new();
    reply.write_to(&mut out);
    assert!(out.ends_with(b"\r\n"));
}

/// An AUTH response as the server takes it: decoded, then read as a PLAIN message.
fn sasl(line: &[u8]) {
    match decode_sasl_response(line) {
        Ok(message) => {
            if let Err(reply) = decode_plain(&message) {
                well_formed(reply);
            }
        }
        Err(reply) => well_formed(reply),
    }
}

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        sasl(line);
        match parse_command(line) {
            Ok(smtp_proto::Request::Mail { from }) => {
                let _ = Address::parse(&from.address);
            }
            Ok(smtp_proto::Request::Rcpt { to }) => {
                let _ = Address::parse(&to.address);
            }
            Ok(smtp_proto::Request::Auth {
                initial_response, ..
            }) => sasl(initial_response.as_bytes()),
            Ok(_) => {}
            Err(reply) => well_formed(reply),
        }
    }
});
