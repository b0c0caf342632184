//! What knock writes on stderr for operators: the `tracing` subscriber, in plain text or as
//! JSON lines (`[log] format`), filtered by `KNOCK_LOG`. Not the event log (`event`), which
//! records what happened to each recipient in a file of its own.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// The filter when `KNOCK_LOG` is not set (or cannot be read).
const DEFAULT_FILTER: &str = "knock=info";

/// Installs the process's subscriber on stderr, in `format`; plain text is coloured only
/// when stderr is a terminal, so a file or a pipe gets no escape codes. The first call
/// wins: later ones change nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KNOCK_LOG").unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An error means a subscriber is installed already (a test, or a second call).
    let _ = match format {
        LogFormat::Plain => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
