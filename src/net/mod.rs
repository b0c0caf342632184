//! Protocol and network: the SMTP wire code both ways ([`smtp`]), the delivery client behind
//! the `Transport` seam ([`transport`]), MX and address lookup behind the `Resolver` seam
//! ([`resolve`]), STARTTLS ([`tls`]), SMTP AUTH credentials ([`auth`]) and per-client
//! limits on the listener ([`limit`]).

pub mod auth;
pub mod limit;
pub mod resolve;
pub mod smtp;
pub mod tls;
pub mod transport;
