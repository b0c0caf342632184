//! Mailboxes over their own rate.
//!
//! Some receivers limit what one mailbox receives ("the user you are trying to contact is
//! receiving mail at a rate that prevents additional messages", `4.2.1`), whoever sends.
//! That defers the recipient, not the destination: the destination's allowance learns
//! nothing from it (`policy::react`). But a list that writes to the same people again and
//! again has many groups for one mailbox, each its own message: left alone, every one of
//! them is refused in turn and backs off on its own.
//!
//! So a mailbox refused for its rate gets an [`Allowance`] of its own, learned as a
//! destination's is (probes after the refusal, then windows), and a group with that one
//! pending recipient goes towards its destination only when the mailbox's allowance lets
//! it: later when a window must pass, and parked here while the mailbox's one probe is out.
//! Groups of several pending recipients are not held (one mailbox's rate must not hold the
//! others back); their refused recipients back off on their own.
//!
//! Mailboxes never refused for rate cost nothing; a mailbox's gate goes when it has been
//! quiet for a day.

use super::Key;
use crate::policy::shaping::allowance::{Allowance, Verdict};
use crate::time::Timestamp;
use foldhash::{HashMap, HashMapExt};
use std::time::Duration;

/// A gate no group has used for this long is forgotten.
const FORGET: Duration = Duration::from_secs(24 * 3600);
/// How far back a mailbox's acceptances are remembered, once its destination limits
/// mailboxes: what a gate made at its first refusal starts from.
const LOOKBACK: Duration = Duration::from_secs(3600);
/// Acceptances remembered per mailbox before it has a gate (held inline: a destination
/// that limits mailboxes may see a million of them in an hour).
const REMEMBER: usize = 4;
/// A group let through that has not reported after this long never will (it expired in a
/// ready queue, or its report was lost): it no longer counts as out.
const STALE: Duration = Duration::from_secs(30 * 60);

/// What a mailbox's gate says about a group due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Due again then.
    Until(Timestamp),
    /// Parked until the mailbox's probe reports.
    Parked,
}

#[derive(Debug, Default)]
struct MailboxGate {
    allowance: Allowance,
    /// Groups let through and not yet reported, since when.
    out: Vec<(Key, Timestamp)>,
    /// The one let through to learn, if out.
    probe: Option<Key>,
    /// Groups waiting for the probe's report.
    parked: Vec<Key>,
    used: Option<Timestamp>,
}

/// A mailbox's latest acceptances, oldest first (`None` where fewer were seen).
#[derive(Debug, Default)]
struct Recent([Option<Timestamp>; REMEMBER]);

#[derive(Debug, Default)]
pub struct Mailboxes {
    gates: HashMap<u64, MailboxGate>,
    /// Per destination (by index), the window its mailboxes were last found to have: a
    /// receiver limits every mailbox alike, so a mailbox refused for the first time starts
    /// from it instead of searching.
    learned: HashMap<usize, (u32, Duration)>,
    /// When mailboxes without a gate accepted lately (at destinations that limit
    /// mailboxes), newest last.
    recent: HashMap<u64, Recent>,
}

impl Mailboxes {
    pub fn new() -> Mailboxes {
        Mailboxes {
            gates: HashMap::new(),
            learned: HashMap::new(),
            recent: HashMap::new(),
        }
    }

    /// `mailbox`, with no gate, accepted at `now` at a destination that limits mailboxes.
    pub fn remember(&mut self, mailbox: u64, now: Timestamp) {
        if self.gates.contains_key(&mailbox) {
            return;
        }
        let seen = self.recent.entry(mailbox).or_default();
        seen.0.rotate_left(1);
        seen.0[REMEMBER - 1] = Some(now);
    }

    /// May the group `key`, whose one pending recipient is `mailbox`, go now?
    pub fn admit(&mut self, mailbox: u64, key: &Key, now: Timestamp) -> Admit {
        let Some(gate) = self.gates.get_mut(&mailbox) else {
            return Admit::Go;
        };
        gate.used = Some(now);
        if gate.out.iter().any(|(k, _)| k == key) {
            return Admit::Go;
        }
        let stale = |(_, at): &(Key, Timestamp)| now.since(*at) >= STALE;
        if let Some(p) = &gate.probe
            && gate.out.iter().any(|o| &o.0 == p && stale(o))
        {
            gate.probe = None;
            gate.allowance.probe_lost();
        }
        gate.out.retain(|o| !stale(o));
        match gate.allowance.admit(now, gate.out.len()) {
            Verdict::Go => {
                gate.out.push((key.clone(), now));
                Admit::Go
            }
            Verdict::Probe => {
                gate.out.push((key.clone(), now));
                gate.probe = Some(key.clone());
                Admit::Go
            }
            Verdict::Until(t) => Admit::Until(t),
            Verdict::AwaitReport => {
                gate.parked.push(key.clone());
                Admit::Parked
            }
        }
    }

    /// The group `key` to `mailbox` at destination `destination` reported: `accepted` when
    /// the recipient was taken, `over` when it was refused for the mailbox's rate. Returns
    /// the groups parked behind it, due again now.
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &mut self,
        mailbox: u64,
        destination: usize,
        key: &Key,
        now: Timestamp,
        started: Timestamp,
        accepted: bool,
        over: bool,
    ) -> Vec<Key> {
        if !over && !self.gates.contains_key(&mailbox) {
            return Vec::new();
        }
        let mut new = false;
        let gate = self.gates.entry(mailbox).or_insert_with(|| {
            new = true;
            let seen = self
                .recent
                .remove(&mailbox)
                .unwrap_or_default()
                .0
                .into_iter()
                .flatten();
            let mut allowance = Allowance::with_history(LOOKBACK, seen);
            if let Some(&(n, w)) = self.learned.get(&destination) {
                allowance.assume(now, n, w);
            }
            MailboxGate {
                allowance,
                ..MailboxGate::default()
            }
        });
        gate.used = Some(now);
        gate.out.retain(|(k, _)| k != key);
        let probe = gate.probe.take_if(|p| p == key).is_some();
        // A gate that starts from another mailbox's window has taken this refusal in.
        if !(new && gate.allowance.learned().is_some()) {
            gate.allowance
                .report(now, started, u32::from(accepted), over, probe);
        }
        if let Some(learned) = gate.allowance.learned() {
            self.learned.insert(destination, learned);
        }
        std::mem::take(&mut gate.parked)
    }

    /// The group `key` will not report (its worker was lost, or it was handed back): if it
    /// was the probe another may go. Returns the groups parked behind it.
    pub fn lost(&mut self, mailbox: u64, key: &Key) -> Vec<Key> {
        let Some(gate) = self.gates.get_mut(&mailbox) else {
            return Vec::new();
        };
        gate.out.retain(|(k, _)| k != key);
        if gate.probe.take_if(|p| p == key).is_some() {
            gate.allowance.probe_lost();
        }
        std::mem::take(&mut gate.parked)
    }

    /// The earliest the mailbox takes mail again, as far as its gate knows.
    pub fn ready_at(&self, mailbox: u64, now: Timestamp) -> Option<Timestamp> {
        self.gates.get(&mailbox).map(|g| g.allowance.ready_at(now))
    }

    /// Mailboxes held to a rate of their own.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.gates.len()
    }

    /// Forgets gates nobody used for a day, with nothing out or parked.
    pub fn sweep(&mut self, now: Timestamp) {
        self.recent
            .retain(|_, seen| seen.0[REMEMBER - 1].is_some_and(|t| now.since(t) < LOOKBACK));
        self.gates.retain(|_, g| {
            !g.out.is_empty()
                || !g.parked.is_empty()
                || g.used.is_some_and(|t| now.since(t) < FORGET)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;
    use std::sync::Arc;

    fn key(n: u128) -> Key {
        (MessageId::from_u128(n), Arc::from("example.com"))
    }

    const T0: Timestamp = Timestamp(1_700_000_000_000);

    #[test]
    fn a_mailbox_never_refused_is_not_held() {
        let mut m = Mailboxes::new();
        assert_eq!(m.admit(7, &key(1), T0), Admit::Go);
        assert!(m.report(7, 0, &key(1), T0, T0, true, false).is_empty());
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn after_a_refusal_one_probe_goes_and_the_rest_wait_for_it() {
        let mut m = Mailboxes::new();
        // Two went and were taken, the third was refused for the mailbox's rate.
        m.admit(7, &key(1), T0);
        m.report(7, 0, &key(1), T0, T0, false, true);
        assert_eq!(m.len(), 1);
        // Nothing goes before the first probe's time...
        let Admit::Until(at) = m.admit(7, &key(2), T0) else {
            panic!("held");
        };
        assert!(at > T0);
        // ... then one probe, and everything else parks behind it.
        assert_eq!(m.admit(7, &key(2), at), Admit::Go);
        assert_eq!(m.admit(7, &key(3), at), Admit::Parked);
        assert_eq!(m.admit(7, &key(4), at), Admit::Parked);
        // Other mailboxes are not held.
        assert_eq!(m.admit(8, &key(5), at), Admit::Go);
        // The probe is taken: the parked groups are due again.
        let released = m.report(7, 0, &key(2), at, at, true, false);
        assert_eq!(released, vec![key(3), key(4)]);
    }

    #[test]
    fn a_lost_probe_lets_another_go() {
        let mut m = Mailboxes::new();
        m.report(7, 0, &key(1), T0, T0, false, true);
        let at = m.ready_at(7, T0).expect("a gate");
        assert_eq!(m.admit(7, &key(2), at), Admit::Go);
        assert_eq!(m.admit(7, &key(3), at), Admit::Parked);
        assert_eq!(m.lost(7, &key(2)), vec![key(3)]);
        assert_eq!(m.admit(7, &key(3), at), Admit::Go);
    }

    #[test]
    fn a_mailbox_refused_first_starts_from_what_another_one_taught() {
        let mut m = Mailboxes::new();
        let ms = Duration::from_millis(1);
        // Mailbox 7 takes 3 in each 10 s from T0. Refused with nothing known, its probes
        // find when it takes mail again (10 s), then one goes at a time until it refuses
        // again.
        m.report(7, 0, &key(1), T0, T0, false, true);
        let mut now = T0;
        let mut taken = 0;
        for n in 2.. {
            match m.admit(7, &key(n), now) {
                Admit::Go => {}
                Admit::Until(t) => {
                    now = t;
                    continue;
                }
                Admit::Parked => panic!("one at a time, and nothing else out"),
            }
            let window = now.since(T0).as_secs() / 10;
            let accepted = window >= 1 && taken < 3;
            taken += u32::from(accepted);
            m.report(7, 0, &key(n), now + ms, now, accepted, !accepted);
            now += 10 * ms;
            if taken == 3 && !accepted {
                break;
            }
        }
        let (count, window) = m.gates[&7].allowance.learned().expect("counted");
        assert_eq!(count, 3, "{window:?}");
        assert!(window >= Duration::from_secs(10), "{window:?}");
        // Mailbox 8 at the same destination: its first refusal holds it for that window,
        // with no search (no probe a second later).
        m.report(8, 0, &key(100), now, now, false, true);
        let again = m.ready_at(8, now).unwrap();
        assert!(again >= now + window, "{:?}", again.since(now));
        // At another destination, a mailbox searches from scratch.
        m.report(9, 1, &key(200), now, now, false, true);
        assert!(m.ready_at(9, now).unwrap() <= now + Duration::from_secs(1));
    }

    #[test]
    fn quiet_gates_are_forgotten() {
        let mut m = Mailboxes::new();
        m.report(7, 0, &key(1), T0, T0, false, true);
        m.sweep(T0 + Duration::from_secs(3600));
        assert_eq!(m.len(), 1);
        m.sweep(T0 + FORGET + Duration::from_secs(1));
        assert_eq!(m.len(), 0);
    }
}
