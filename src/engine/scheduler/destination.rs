//! A destination: where a ready queue delivers (today a provider). It owns its ready queue,
//! counts its workers (each holds one connection), keeps the idle ones waiting for a
//! moment, and carries its shaping and the greylist delay learned for it.

use super::WorkerId;
use super::ready::ReadyQueue;
use crate::policy::shaping::{Report, Shaping};
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

pub struct Destination {
    pub name: Arc<str>,
    pub ready: ReadyQueue,
    /// Workers alive for this destination, busy or idle.
    pub workers: usize,
    /// Workers holding a connection open, each until its time: for the rate to let it go
    /// on, or for the next message.
    pub idle: VecDeque<(WorkerId, Timestamp)>,
    pub shaping: Shaping,
    /// The greylist delay that cleared here (the shortest seen, within bounds).
    pub greylist_delay: Option<Duration>,
    /// The group out as the outage's probe, if one is.
    pub probe: Option<super::Key>,
    /// It refused a recipient for the mailbox's own rate: its mailboxes' acceptances are
    /// remembered.
    pub limits_mailboxes: bool,
}

impl Destination {
    pub fn new(name: Arc<str>, shaping: Shaping, hot: usize) -> Destination {
        Destination {
            name,
            ready: ReadyQueue::new(hot),
            workers: 0,
            idle: VecDeque::new(),
            shaping,
            greylist_delay: None,
            probe: None,
            limits_mailboxes: false,
        }
    }

    /// Learns from one delivery: the shaping adapts, and a greylist delay that cleared is
    /// kept within `floor` and `ceiling` (the ceiling wins over the floor).
    pub fn learn(&mut self, report: &Report, now: Timestamp, floor: Duration, ceiling: Duration) {
        self.shaping.report(now, report);
        if let Some(cleared) = report.greylist_cleared {
            let learned = cleared.clamp(floor.min(ceiling), ceiling);
            self.greylist_delay = Some(self.greylist_delay.map_or(learned, |g| g.min(learned)));
        }
    }

    /// Takes `worker` off the idle list; `true` when it was on it.
    pub fn forget_idle(&mut self, worker: WorkerId) -> bool {
        let before = self.idle.len();
        self.idle.retain(|(w, _)| *w != worker);
        self.idle.len() != before
    }
}
