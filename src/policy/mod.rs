//! The policy the engine applies: what a reply means ([`classify`], and [`logline`] for
//! reading replies and diagnostics out of log lines), when to try again ([`schedule`]), how
//! fast and how wide to send to a destination ([`shaping`]), how streams of traffic share it
//! ([`stream`]), which knob each outcome turns
//! ([`react`]), which receiving infrastructure a domain belongs to ([`provider`]), and which
//! addresses are never sent to again ([`suppress`]). Decisions on data: no sockets, no disk,
//! and no clock (the time is passed in).

pub mod classify;
pub mod egress;
pub mod logline;
pub mod provider;
pub mod quota;
pub mod react;
pub mod schedule;
pub mod shaping;
pub mod stream;
pub mod suppress;
pub mod warmup;
