//! knock: an outbound mail delivery engine that understands deferrals.
//!
//! Mail comes in over SMTP ([`ingest`]) and HTTP ([`api`]), is made durable in the
//! [`spool`] before it is acknowledged, and is delivered to the recipients' MX hosts by
//! the [`dispatch`] workers, which the [`scheduler`] feeds. Every reply or error becomes an
//! [`outcome::Outcome`] with a [`outcome::Class`]; the retry [`schedule`] says when a
//! deferred recipient is tried again; permanent failures and expiry produce a [`dsn`] to the
//! sender; everything that happens is written as an [`event`].
//!
//! Layout:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the TOML configuration, its defaults and validation |
//! | [`address`] | mailbox syntax and domains |
//! | [`reply`] | SMTP replies with enhanced status codes |
//! | [`smtp`] | the wire protocol: line framing, the server session engine, the client |
//! | [`tls`] | STARTTLS both ways: certificates, policies, the plain-or-TLS stream |
//! | [`auth`] | SMTP AUTH users and their argon2 password hashes |
//! | [`limit`] | per-client limits on the SMTP listener |
//! | [`message`] | message, recipient, attempt and state types |
//! | [`suppress`] | the suppression list of addresses that bounced hard |
//! | [`spool`] | durable storage with group commit |
//! | [`schedule`] | the pure retry arithmetic |
//! | [`outcome`] | what an attempt observed, and outcomes with their classes |
//! | [`classify`] | the one classifier: enhanced codes, then receivers' phrases (data) |
//! | [`provider`] | which receiving infrastructure a domain belongs to |
//! | [`resolve`] | MX and address lookup behind the `Resolver` trait |
//! | [`transport`] | the SMTP client behind the `Transport` trait |
//! | [`scheduler`] | the one task that owns queue state and timing |
//! | [`dispatch`] | delivery workers, one per open connection |
//! | [`dsn`] | delivery status notifications (RFC 3464) |
//! | [`event`] | the event log |
//! | [`ingest`] | the SMTP listener that accepts mail into the spool |
//! | [`api`] | the HTTP API |
//! | [`engine`] | wires the parts together and runs them |
//! | [`sink`] | a scriptable receiving MX for tests and benchmarks |
//! | [`bench`] | the SMTP load generator |
//! | [`client`] | the HTTP client behind `knock send` and `knock queue` |
//! | [`time`] | timestamps as persisted and shown |

pub mod address;
pub mod config;
pub mod dsn;
pub mod engine;
pub mod event;
pub mod message;
pub mod net;
pub mod outcome;
pub mod policy;
pub mod reply;
pub mod surface;
pub mod time;
pub mod tools;

/// Installs the process-wide rustls crypto provider (ring). Call once at start-up and in
/// test helpers: the HTTP client panics without one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
