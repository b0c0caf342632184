//! The operator's hands on the queue, inside the state machine: suspending a provider or a
//! domain and holding a message (its groups wait, parked, out of every ready queue, and
//! still expire), retrying now (through the destination's shaping, never before a known
//! greylisting time), and ending recipients by cancelling or bouncing them (at once when
//! they wait, after the attempt under way when they are in flight). Each answers how many
//! groups and recipients it touched, or would touch when it is a dry run.

use super::{Effect, Held, Key, Persist, Scheduler};
use crate::control::{Ending, Selector, Steer, Steered, Suspension, Target};
use crate::policy::react;
use crate::time::Timestamp;

impl Scheduler {
    /// Carries out an operator's operation at `now`; its effects are taken with the next
    /// [`Scheduler::handle`] or right after (see [`Scheduler::take_effects`]).
    pub fn steer(&mut self, op: Steer, now: Timestamp) -> Steered {
        match op {
            Steer::Suspend { target, suspension } => self.suspend(target, suspension),
            Steer::Resume { target } => self.resume(&target, now),
            Steer::Retry { selector, dry_run } => self.retry(&selector, dry_run, now),
            Steer::End {
                selector,
                how,
                actor,
                dry_run,
            } => self.end(&selector, how, &actor, dry_run, now),
            Steer::Select { selector } => {
                let keys = self.picked(|k| self.selects(&selector, k));
                let mut s = self.count(&keys);
                s.messages = keys.iter().map(|k| k.0).collect();
                s.messages.dedup();
                s
            }
        }
    }

    /// The effects of the last [`Scheduler::steer`].
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// The suspensions in force.
    pub fn suspensions(&self) -> Vec<(Target, Suspension)> {
        self.suspensions
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect()
    }

    /// Whether the group `key` (of destination `destination`, when known) is to wait.
    pub(super) fn suspended(&self, key: &Key, destination: Option<&str>) -> bool {
        if self.suspensions.is_empty() {
            return false;
        }
        let destination = destination.or_else(|| self.provider_name(key));
        suspended_in(&self.suspensions, key, destination, self.stream_name(key))
    }

    fn stream_name(&self, key: &Key) -> Option<&str> {
        let e = self.entries.get(key)?;
        Some(&self.policy.streams.get(e.stream).name)
    }

    fn provider_name(&self, key: &Key) -> Option<&str> {
        self.provider_of.get(&key.1).map(|(p, _)| &**p)
    }

    fn selects(&self, selector: &Selector, key: &Key) -> bool {
        (selector.messages.is_empty() || selector.messages.contains(&key.0))
            && selector
                .domain
                .as_deref()
                .is_none_or(|d| d.eq_ignore_ascii_case(&key.1))
            && selector
                .provider
                .as_deref()
                .is_none_or(|p| self.provider_name(key) == Some(p))
    }

    fn target_selects(&self, target: &Target, key: &Key) -> bool {
        match target {
            Target::Provider(p) => self.provider_name(key) == Some(p.as_str()),
            Target::Domain(d) => d.eq_ignore_ascii_case(&key.1),
            Target::Message(id) => key.0 == *id,
            Target::Stream(s) => self.stream_name(key) == Some(s.as_str()),
        }
    }

    /// The groups `pick` selects, in a stable order.
    fn picked(&self, pick: impl Fn(&Key) -> bool) -> Vec<Key> {
        let mut keys: Vec<Key> = self.entries.keys().filter(|k| pick(k)).cloned().collect();
        keys.sort();
        keys
    }

    fn count(&self, keys: &[Key]) -> Steered {
        let mut s = Steered::default();
        for key in keys {
            if let Some(e) = self.entries.get(key) {
                s.groups += 1;
                s.recipients += e.pending as usize;
                s.in_flight += usize::from(e.in_flight);
            }
        }
        s
    }

    fn suspend(&mut self, target: Target, suspension: Suspension) -> Steered {
        let keys = self.picked(|k| self.target_selects(&target, k));
        self.suspensions.insert(target, suspension);
        // Out of the ready queues now; the rest is parked as it comes due.
        let mut moved = Vec::new();
        for ix in 0..self.destinations.len() {
            let name = self.destinations[ix].name.clone();
            let (suspensions, entries, streams) =
                (&self.suspensions, &self.entries, &self.policy.streams);
            let mut out = Vec::new();
            self.destinations[ix].retain_ready(|key| {
                let stream = entries.get(key).map(|e| &*streams.get(e.stream).name);
                let stop = suspended_in(suspensions, key, Some(&name), stream);
                if stop {
                    out.push(key.clone());
                }
                !stop
            });
            moved.extend(out);
        }
        for key in moved {
            if self.entries.get(&key).is_some_and(|e| !e.in_flight) {
                self.park(key);
            }
        }
        self.count(&keys)
    }

    fn resume(&mut self, target: &Target, now: Timestamp) -> Steered {
        if self.suspensions.remove(target).is_none() {
            return Steered::default();
        }
        let keys = self.picked(|k| self.target_selects(target, k));
        // Due now: through the due index to the ready queue and its shaping, at the
        // destination's pace.
        let free: Vec<Key> = self
            .parked
            .iter()
            .filter(|k| !self.suspended(k, None))
            .cloned()
            .collect();
        for key in free {
            self.parked.remove(&key);
            let due = self.entries.get(&key).map_or(now, |e| e.due.min(now));
            self.reschedule(key, due);
        }
        self.release_due(now);
        self.count(&keys)
    }

    /// Keeps a group out of the queues until its suspension ends; its memory copy goes if
    /// the spool has its state.
    pub(super) fn park(&mut self, key: Key) {
        if let Some(entry) = self.entries.get_mut(&key)
            && entry.uncommitted.is_none()
        {
            entry.held = None;
        }
        self.parked.insert(key);
    }

    fn retry(&mut self, selector: &Selector, dry_run: bool, now: Timestamp) -> Steered {
        let keys = self.picked(|k| self.selects(selector, k) && !self.suspended(k, None));
        let mut s = self.count(&keys);
        for key in &keys {
            let Some(e) = self.entries.get(key) else {
                continue;
            };
            if let Some(t) = e.not_before.filter(|t| *t > now) {
                s.greylisted += 1;
                s.not_before = s.not_before.max(Some(t));
                continue;
            }
            if dry_run || e.in_flight || e.due <= now {
                continue;
            }
            self.reschedule(key.clone(), now);
        }
        if !dry_run {
            self.release_due(now);
        }
        s
    }

    fn end(
        &mut self,
        selector: &Selector,
        how: Ending,
        actor: &str,
        dry_run: bool,
        now: Timestamp,
    ) -> Steered {
        let keys = self.picked(|k| self.selects(selector, k));
        let s = self.count(&keys);
        if dry_run {
            return s;
        }
        for key in keys {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.in_flight {
                // Its attempt reports first; what is still pending then is ended.
                self.ending.insert(key, (how.clone(), actor.to_string()));
                continue;
            }
            entry.in_flight = true;
            self.parked.remove(&key);
            let held = entry.held.take();
            self.ending
                .insert(key.clone(), (how.clone(), actor.to_string()));
            match held {
                Some(held) => self.end_loaded(*held, now),
                None => self.out.push(Effect::Load {
                    id: key.0,
                    domain: key.1.to_string(),
                }),
            }
        }
        s
    }

    /// Ends a group read back for an operator's cancel or bounce.
    pub(super) fn end_loaded(&mut self, held: Held, now: Timestamp) {
        let key = (held.envelope.id, self.intern(&held.group.domain));
        let Some((how, actor)) = self.ending.remove(&key) else {
            return;
        };
        self.entries.remove(&key);
        self.parked.remove(&key);
        let updated = react::end_by_operator(&held.envelope, held.group, &how, &actor, now);
        self.out.push(Effect::Persist(Box::new(Persist {
            envelope: held.envelope,
            updated,
            body: held.body,
            pending: None,
        })));
    }

    /// After an attempt reported: ends what it left pending if an operator asked to.
    pub(super) fn end_after_attempt(
        &mut self,
        key: &Key,
        envelope: &crate::message::Envelope,
        updated: react::Updated,
        now: Timestamp,
    ) -> react::Updated {
        let Some((how, actor)) = self.ending.remove(key) else {
            return updated;
        };
        if updated.group.is_done() {
            return updated;
        }
        let ended = react::end_by_operator(envelope, updated.group, &how, &actor, now);
        let mut events = updated.events;
        events.extend(ended.events);
        let mut reports = updated.reports;
        reports.extend(ended.reports);
        react::Updated {
            group: ended.group,
            events,
            reports,
            suppress: updated.suppress,
        }
    }
}

/// Whether `key` of destination `destination` is suspended by one of `suspensions`.
fn suspended_in(
    suspensions: &std::collections::BTreeMap<Target, Suspension>,
    key: &Key,
    destination: Option<&str>,
    stream: Option<&str>,
) -> bool {
    suspensions.contains_key(&Target::Message(key.0))
        || suspensions.contains_key(&Target::Domain(key.1.to_string()))
        || destination.is_some_and(|p| suspensions.contains_key(&Target::Provider(p.to_string())))
        || stream.is_some_and(|s| suspensions.contains_key(&Target::Stream(s.to_string())))
}
