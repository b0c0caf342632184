//! End-to-end tests: knock for real, over real sockets on 127.0.0.1, delivering to
//! `knock sink` receivers through a static resolver, with a temporary spool. Timing tests
//! use short schedules (hundreds of milliseconds) instead of sleeping through real ones.

mod world;

mod cli;
mod crash;
mod dashboard;
mod delivery;
mod disk;
mod dkim;
mod dns;
mod extensions;
mod fleet;
mod http;
mod knobs;
mod logging;
mod metrics;
mod openapi;
mod protocol;
mod queue;
mod reload;
mod security;
mod simulate;
mod sink;
mod smuggling;
mod sources;
mod stats;
mod steer;
mod streams;
mod webhook;
