//! knock: an outbound mail delivery engine that understands deferrals.
//!
//! Mail comes in over SMTP and HTTP (`engine::ingest`, `surface::api`), is made durable in
//! the spool before it is acknowledged, and is delivered to the recipients' MX hosts. What
//! decides *when* and *how fast* is one state machine with no I/O and no clock
//! (`engine::scheduler`): the engine runs it on wall time, `knock simulate` on virtual time.
//!
//! Layout, from the bottom up:
//!
//! | layer | modules | owns |
//! | --- | --- | --- |
//! | vocabulary | [`time`], [`config`], [`address`], [`reply`], [`outcome`], [`message`], [`event`], [`metrics`], [`stats`], [`dsn`], [`control`] | the plain types everything speaks: timestamps and the engine's clock, the configuration, addresses, replies, outcomes and typed failures, messages and attempts, events and the metrics and time series counted from them, DSNs, an operator's operations on the queue |
//! | protocol and network | [`net`]: [`net::smtp`] ([`net::smtp::wire`], [`net::smtp::server`], [`net::smtp::client`]), [`net::transport`], [`net::resolve`], [`net::tls`], [`net::auth`], [`net::limit`] | SMTP both ways, the `Transport` and `Resolver` seams, STARTTLS, AUTH, per-client limits |
//! | policy | [`policy`]: [`policy::classify`], [`policy::logline`], [`policy::schedule`], [`policy::shaping`], [`policy::react`], [`policy::provider`], [`policy::suppress`] | what a reply means, when to try again, how fast to send, which knob an outcome turns, providers, suppressions |
//! | engine core | [`engine`]: [`engine::ingest`], [`engine::spool`], [`engine::scheduler`], [`engine::driver`], [`engine::handle`], [`engine::dispatch`] | taking mail in, keeping it, the scheduler state machine, running it on wall time, delivering |
//! | tools | [`tools`]: [`tools::receiver`], [`tools::sink`], [`tools::bench`], [`tools::simulate`] | receiver models, `knock sink`, `knock bench`, `knock simulate` |
//! | surfaces | [`surface`]: [`surface::api`], [`surface::dashboard`], [`surface::client`], [`surface::diagnose`], [`surface::tail`], [`surface::cli`] | the HTTP API and the dashboard, its client, diagnosis, following the event log, the command line |
//! | wiring | [`serve`], [`logging`] | one running knock: engine, listeners and API started and stopped in order; what it logs on stderr |
//!
//! No two files import each other; `docs/architecture.md` draws the flow.

pub mod address;
pub mod config;
pub mod control;
pub mod dkim;
pub mod dsn;
pub mod engine;
pub mod event;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod net;
pub mod outcome;
pub mod policy;
pub mod reload;
pub mod reply;
pub mod serve;
pub mod stats;
pub mod surface;
pub mod time;
pub mod tools;

/// Installs the process-wide rustls crypto provider (ring). Call once at start-up and in
/// test helpers: the HTTP client panics without one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
