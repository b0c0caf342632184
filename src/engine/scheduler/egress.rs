//! Egress inside the state machine: which source of its stream's pool a group goes out
//! of (`destination_for`), a source a provider blocks set aside for it (`block_source`),
//! the connection caps across destinations (`slot_free`), a source's own limits and its
//! warm-up (`hold_back`, `warmup_roll`): internal deferrals, events without attempts.

use super::{Effect, Held, Key, Persist, Scheduler};
use crate::engine::spool::{SourceRecord, SourceState};
use crate::policy::egress::SourceIx;
use crate::policy::react;
use crate::policy::stream::StreamIx;
use crate::policy::warmup::Step;
use crate::time::Timestamp;
use std::collections::BTreeSet;
use std::sync::Arc;

impl Scheduler {
    /// The destination a group goes to at `provider`: the next source of its stream's
    /// pool that the provider has not blocked (the next of them all when it blocked every
    /// one: the group waits there).
    pub(super) fn destination_for(
        &mut self,
        provider: &Arc<str>,
        key: &Key,
        now: Timestamp,
    ) -> usize {
        let (stream, last) = self
            .entries
            .get(key)
            .map_or((0, None), |e| (e.stream, e.last_source));
        // Mail against a deadline tries another source than the one that just deferred it.
        let avoid = last.filter(|_| self.policy.streams.get(stream).rules.schedule.is_strict());
        let pool = self.policy.streams.get(stream).pool;
        let members = self.policy.egress.members(pool);
        let rotation = self.rotations.entry((provider.clone(), pool)).or_default();
        let blocked = &self.blocked;
        let usable = |s: SourceIx| {
            blocked
                .get(&(provider.clone(), s))
                .is_none_or(|until| *until <= now)
        };
        let source = rotation
            .next(members, |s| usable(s) && Some(s) != avoid)
            .or_else(|| rotation.next(members, usable))
            .or_else(|| rotation.next(members, |_| true))
            .expect("a pool has a source");
        self.destination(provider, source, now)
    }

    /// Why one more connection may not open from `source`: its own cap or the total's is
    /// reached; `None` when it may.
    pub(super) fn slot_cap(&self, source: SourceIx) -> Option<String> {
        if let Some(cap) = self.policy.total_connections
            && self.workers.len() >= cap
        {
            return Some(format!(
                "knock has its {cap} connections open ([delivery] total_connections)"
            ));
        }
        let cap = self.policy.egress.max_connections(source)?;
        let open: usize = self
            .destinations
            .iter()
            .filter(|d| d.source == source)
            .map(|d| d.workers)
            .sum();
        (open >= cap).then(|| {
            format!(
                "source {} has its {cap} connections open (max_connections)",
                self.policy.egress.describe(source)
            )
        })
    }

    /// Provider `ix` blocked its source: when the pool of `stream` has another source the
    /// provider does not block, the source is not used for it for `block_pause` and the
    /// groups waiting for it go to the others; `true` then.
    pub(super) fn block_source(&mut self, ix: usize, stream: StreamIx, now: Timestamp) -> bool {
        let (provider, source) = (
            self.destinations[ix].name.clone(),
            self.destinations[ix].source,
        );
        let pool = self.policy.streams.get(stream).pool;
        let other = self.policy.egress.members(pool).iter().any(|(s, _)| {
            *s != source
                && self
                    .blocked
                    .get(&(provider.clone(), *s))
                    .is_none_or(|until| *until <= now)
        });
        if !other {
            return false;
        }
        let until = now + self.policy.block_pause;
        let fresh = self
            .blocked
            .insert((provider.clone(), source), until)
            .is_none_or(|was| was <= now);
        if fresh {
            let name = &self.policy.egress.source(source).name;
            tracing::warn!(provider = %provider, source = %name, until = %until, "the provider blocks this source: its mail goes out of the pool's other sources");
            crate::metrics::source_blocked(&provider, name);
        }
        // What waits for the blocked source goes to the others.
        let mut waiting = Vec::new();
        self.destinations[ix].retain_ready(|key| {
            waiting.push(key.clone());
            false
        });
        let mut touched = BTreeSet::new();
        for key in waiting {
            if self.entries.get(&key).is_some_and(|e| !e.in_flight) {
                let to = self.destination_for(&provider, &key, now);
                self.make_ready(to, key);
                touched.insert(to);
            }
        }
        for to in touched {
            self.start_workers(to, now);
        }
        true
    }

    /// When the source of destination `ix` has reached one of its own limits for the
    /// provider: every group ready there is deferred internally (an event each, no
    /// attempt) until the limit's window turns; `true` then.
    pub(super) fn hold_back(&mut self, ix: usize, now: Timestamp) -> bool {
        self.warmup_roll(ix, now);
        let d = &mut self.destinations[ix];
        let Err(full) = d.quota.check(now) else {
            return false;
        };
        if d.nothing_ready() {
            return true;
        }
        let limit = match &d.warmup {
            Some((ramp, state)) if !ramp.done(state.day) => {
                format!("warm-up limit (day {} of its ramp)", state.day)
            }
            _ => "limit".to_string(),
        };
        let reason = format!(
            "source {} reached its {limit} of {}/{} for {}",
            self.policy.egress.describe(d.source),
            full.limit,
            full.period.unit(),
            d.name
        );
        let mut ready = Vec::new();
        d.retain_ready(|key| {
            ready.push(key.clone());
            false
        });
        for key in ready {
            let Some(entry) = self.entries.get_mut(&key).filter(|e| !e.in_flight) else {
                continue;
            };
            entry.in_flight = true;
            match entry.held.take() {
                Some(held) => self.defer_loaded(*held, ix, full.until, &reason, now),
                None => {
                    self.out.push(Effect::Load {
                        id: key.0,
                        domain: key.1.to_string(),
                    });
                    self.deferring.insert(key, (full.until, reason.clone(), ix));
                }
            }
        }
        true
    }

    /// The day of destination `ix`'s warm-up ended: its ramp moves a step (kept in the
    /// spool) and its limits follow.
    pub(super) fn warmup_roll(&mut self, ix: usize, now: Timestamp) {
        let d = &mut self.destinations[ix];
        let Some((ramp, state)) = &mut d.warmup else {
            return;
        };
        let Some(step) = state.roll(now, ramp) else {
            return;
        };
        let (hourly, daily) = ramp.limits(state.day);
        d.quota.set(hourly, daily);
        let source = self.policy.egress.source(d.source).name.to_string();
        let why = state.last.as_ref().map_or("", |(_, why)| why.as_str());
        match step {
            Step::SteppedBack => {
                tracing::warn!(provider = %d.name, source, day = state.day, hourly, daily, why, "warm-up stepped back a day")
            }
            Step::Held => {
                tracing::info!(provider = %d.name, source, day = state.day, hourly, daily, why, "warm-up held")
            }
            Step::Advanced => {
                tracing::info!(provider = %d.name, source, day = state.day, hourly, daily, why, "warm-up advanced")
            }
        }
        self.save_source(ix);
    }

    /// Keeps what destination `ix`'s source has with its provider (its warm-up, its
    /// limits' counts) in the spool.
    pub(super) fn save_source(&mut self, ix: usize) {
        let d = &self.destinations[ix];
        self.out.push(Effect::SaveSource(SourceRecord {
            source: self.policy.egress.source(d.source).name.to_string(),
            provider: d.name.to_string(),
            state: SourceState {
                warmup: d.warmup.as_ref().map(|(_, state)| state.clone()),
                used: d.quota.used(),
            },
        }));
    }

    /// Defers a group internally until `until` (its events say `reason`), without an
    /// attempt; it comes due again then.
    pub(super) fn defer_loaded(
        &mut self,
        held: Held,
        ix: usize,
        until: Timestamp,
        reason: &str,
        now: Timestamp,
    ) {
        let key = (held.envelope.id, self.intern(&held.group.domain));
        let stream = self.entries.get(&key).map_or(0, |e| e.stream);
        let schedule = &self.policy.streams.get(stream).rules.schedule;
        if schedule.is_strict() && until >= schedule.deadline(held.envelope.received_at) {
            // Its deadline passes before the limit lets it go.
            self.expire_loaded(held, now);
            return;
        }
        let d = &self.destinations[ix];
        let at = react::Imposed {
            provider: &d.name,
            source: &self.policy.egress.source(d.source).name,
            now,
        };
        let updated = react::defer_internal(&held.envelope, held.group, at, until, reason);
        let pending = self.finish(&held.envelope, &updated.group);
        self.out.push(Effect::Persist(Box::new(Persist {
            envelope: held.envelope,
            updated,
            body: held.body,
            pending,
        })));
    }
}
