//! What operators and programs talk to: the HTTP API ([`api`]), the client the CLI uses to
//! call it ([`client`]), and the per-provider verdicts of [`diagnose`].

pub mod api;
pub mod cli;
pub mod client;
pub mod diagnose;
