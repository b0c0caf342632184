//! Protocol and network: the SMTP wire code both ways ([`smtp`]), the delivery client behind
//! the `Transport` seam ([`transport`]), MX and address lookup behind the `Resolver` seam
//! ([`resolve`]), STARTTLS ([`tls`]), SMTP AUTH credentials ([`auth`]), per-client
//! limits on the listener ([`limit`]) and the fleet's registry in Redis ([`fleet`]).

pub mod auth;
pub mod fleet;
pub mod limit;
pub mod resolve;
pub mod smtp;
pub mod tls;
pub mod transport;
