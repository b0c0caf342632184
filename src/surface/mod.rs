//! What operators and programs talk to: the HTTP API ([`api`]) and the [`dashboard`] page it
//! serves at `/`, the client the CLI uses to call it ([`client`]), the per-provider verdicts of [`diagnose`], the [`webhook`]s events
//! are POSTed to, and the reading of a growing event log that `knock events --follow` does
//! ([`tail`]).

pub mod api;
pub mod check_domain;
pub mod cli;
pub mod client;
pub mod dashboard;
pub mod diagnose;
pub mod tail;
pub mod webhook;
