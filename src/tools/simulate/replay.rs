//! A scenario from a recorded event log: `knock simulate --replay events.jsonl`.

use super::scenario::Scenario;
use std::path::Path;

/// The scenario the log at `path` describes.
pub fn scenario(path: &Path) -> anyhow::Result<Scenario> {
    anyhow::bail!("--replay: not yet ({})", path.display())
}
