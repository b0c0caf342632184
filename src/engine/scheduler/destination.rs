//! A destination: where ready queues deliver: a provider, from one source. It owns a ready queue per
//! stream and shares its starts between them (`policy::stream::Lanes`), counts its workers
//! (each holds one connection), keeps the idle ones waiting for a moment, and carries its
//! shaping and the greylist delay learned for it.

use super::ready::{Placed, ReadyQueue};
use super::{Key, WorkerId};
use crate::policy::egress::SourceIx;
use crate::policy::quota::Quota;
use crate::policy::shaping::{Report, Shaping};
use crate::policy::stream::{LaneWait, Lanes, StreamIx, Streams};
use crate::policy::warmup::{Ramp, WarmupState};
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

pub struct Destination {
    /// The provider.
    pub name: Arc<str>,
    /// The source it is reached from.
    pub source: SourceIx,
    /// Due groups by stream, each first come first served.
    ready: Vec<ReadyQueue>,
    lanes: Lanes,
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
    /// The source's own hourly and daily limits for this provider.
    pub quota: Quota,
    /// The source's warm-up with this provider: its plan and where it stands.
    pub warmup: Option<(Ramp, WarmupState)>,
}

impl Destination {
    pub fn new(
        name: Arc<str>,
        source: SourceIx,
        shaping: Shaping,
        quota: Quota,
        hot: usize,
        streams: usize,
    ) -> Destination {
        Destination {
            name,
            source,
            ready: (0..streams).map(|_| ReadyQueue::new(hot)).collect(),
            lanes: Lanes::new(streams),
            workers: 0,
            idle: VecDeque::new(),
            shaping,
            greylist_delay: None,
            probe: None,
            limits_mailboxes: false,
            quota,
            warmup: None,
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

    /// Appends a due group to its stream's queue.
    pub fn push_back(&mut self, stream: StreamIx, key: Key) -> Placed {
        let queue = &mut self.ready[usize::from(stream)];
        if queue.is_empty() {
            self.lanes.joined(stream);
        }
        queue.push_back(key)
    }

    /// Puts a group back in front of its stream's queue (its start did not happen).
    pub fn push_front(&mut self, stream: StreamIx, key: Key) {
        let queue = &mut self.ready[usize::from(stream)];
        if queue.is_empty() {
            self.lanes.joined(stream);
        }
        queue.push_front(key);
    }

    /// The stream whose turn it is, among those with groups ready, under the allowance's
    /// window ([`Lanes::pick`]).
    pub fn pick(&mut self, streams: &Streams, now: Timestamp) -> Result<StreamIx, LaneWait> {
        let window = self.shaping.window();
        let ready = &self.ready;
        self.lanes
            .pick(streams, now, window, |s| !ready[usize::from(s)].is_empty())
    }

    /// The group at the front of `stream`'s queue.
    pub fn front_of(&self, stream: StreamIx) -> Option<&Key> {
        self.ready[usize::from(stream)].front()
    }

    /// Takes the group at the front of `stream`'s queue.
    pub fn pop_from(&mut self, stream: StreamIx) -> Option<Key> {
        self.ready[usize::from(stream)].pop_front()
    }

    /// A group of `stream` was started at `now`: the stream's turn moves on.
    pub fn started(&mut self, streams: &Streams, stream: StreamIx, now: Timestamp) {
        self.lanes.started(streams, stream, now);
    }

    /// Groups ready, in every stream.
    pub fn ready_len(&self) -> usize {
        self.ready.iter().map(ReadyQueue::len).sum()
    }

    /// Groups ready per stream, by index.
    pub fn ready_by_stream(&self) -> impl Iterator<Item = usize> + '_ {
        self.ready.iter().map(ReadyQueue::len)
    }

    pub fn nothing_ready(&self) -> bool {
        self.ready.iter().all(ReadyQueue::is_empty)
    }

    pub fn retain_ready(&mut self, mut keep: impl FnMut(&Key) -> bool) {
        for queue in &mut self.ready {
            queue.retain(&mut keep);
        }
    }

    /// Empties every queue.
    pub fn clear_ready(&mut self) {
        for queue in &mut self.ready {
            queue.drain().for_each(drop);
        }
    }
}
