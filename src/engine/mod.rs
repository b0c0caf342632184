//! The engine core: taking mail in ([`ingest`]), keeping it ([`spool`]), deciding when and
//! how fast ([`scheduler`], a state machine with no I/O), running that on wall time
//! ([`driver`], reached through [`handle`]), delivering ([`dispatch`]), and the operator's
//! actions on the queue ([`operator`]), and what a node shares with the rest of a fleet
//! through Redis ([`fleet`]). `serve` wires it to the listeners and the API.

pub mod dispatch;
pub mod drain;
pub mod driver;
pub mod fleet;
pub mod handle;
pub mod ingest;
pub mod operator;
pub mod scheduler;
pub mod spool;
