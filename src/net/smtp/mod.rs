//! The SMTP wire protocol, both directions: line framing over a byte stream ([`wire`]),
//! the server session engine that ingest and the sink share ([`server`]), and the client
//! that delivery and the load generator share ([`client`]). Command and reply *parsing* is
//! smtp-proto's, behind knock's own [`crate::reply::Reply`] type; this module owns the
//! sequencing, limits and timeouts.

pub mod client;
pub mod server;
pub mod wire;

/// Dot-stuffs a message for DATA (RFC 5321 section 4.5.2) and appends the terminating
/// `CRLF . CRLF`, adding a final CRLF first when the body does not end with one. Every line
/// goes out ending in CRLF: a bare CR or LF (a message spooled before ingest made them
/// CRLF) becomes one first, so the dot-stuffing sees every line break and no receiver can
/// read a line of the message as the end of DATA (SMTP smuggling).
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let body = &*crate::message::crlf(body);
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    let mut rest = body;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    if !out.ends_with(b"\r\n") && !body.is_empty() {
        if out.ends_with(b"\n") {
            out.pop();
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"hello\r\n", b"hello\r\n.\r\n"),
            (b"hello", b"hello\r\n.\r\n"),
            (b".leading\r\n", b"..leading\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..two\r\n", b"a\r\n...two\r\n.\r\n"),
            (b"no.dot.here\r\n", b"no.dot.here\r\n.\r\n"),
            (b"bare\n.lf\n", b"bare\r\n..lf\r\n.\r\n"),
            (b"a\r.\rMAIL\r\n", b"a\r\n..\r\nMAIL\r\n.\r\n"),
            (b"a\r\n.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            dot_stuff(input, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
