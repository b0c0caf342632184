//! The policy the engine applies: what a reply means ([`classify`]), when to try again
//! ([`schedule`]), how fast and how wide to send to a destination ([`shaping`]), which
//! receiving infrastructure a domain belongs to ([`provider`]), and which addresses are never
//! sent to again ([`suppress`]). Pure decisions on data; no sockets, no disk, no clock.

pub mod classify;
pub mod provider;
pub mod schedule;
pub mod shaping;
pub mod suppress;
