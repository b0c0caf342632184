//! The retry schedule: when a recipient that failed temporarily is tried again, and when
//! knock gives up on it. Pure arithmetic, no clock and no randomness of its own (the caller
//! passes both in), so it is tested as a table.

use crate::config::RetryConfig;
use crate::time::Timestamp;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Schedule {
    steps: Vec<Duration>,
    max_age: Duration,
    jitter: f64,
    /// `max_age` is a delivery deadline: an attempt that could only come after it is not
    /// made (the recipient expires at once), rather than made on the deadline.
    strict: bool,
}

/// What to do after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Next {
    RetryAt(Timestamp),
    /// The message is older than `max_age`: give up and tell the sender.
    Expire,
}

impl Schedule {
    pub fn new(steps: Vec<Duration>, max_age: Duration, jitter: f64) -> Self {
        assert!(!steps.is_empty(), "a schedule needs at least one step");
        Self {
            steps,
            max_age,
            jitter,
            strict: false,
        }
    }

    /// A schedule whose lifetime is a delivery deadline (see [`Schedule::is_strict`]).
    pub fn with_deadline(steps: Vec<Duration>, deadline: Duration, jitter: f64) -> Self {
        Self {
            strict: true,
            ..Self::new(steps, deadline, jitter)
        }
    }

    /// Whether the lifetime is a deadline: mail late is mail useless (a one-time code).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    pub fn from_config(c: &RetryConfig) -> Self {
        Self::new(c.schedule.clone(), c.max_age, c.jitter)
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The wait after the `failures`th temporary failure (1-based); the last step repeats.
    pub fn delay(&self, failures: u32) -> Duration {
        let i = (failures.max(1) as usize - 1).min(self.steps.len() - 1);
        self.steps[i]
    }

    /// The deadline after which a message accepted at `received` expires.
    pub fn deadline(&self, received: Timestamp) -> Timestamp {
        received + self.max_age
    }

    /// After the `failures`th temporary failure at `now`: retry when, or expire.
    /// `roll` in `[0, 1)` picks the jitter, which only ever lengthens the wait (a retry
    /// before the receiver's window resets its clock). The last try falls on the deadline.
    pub fn next(&self, received: Timestamp, now: Timestamp, failures: u32, roll: f64) -> Next {
        self.after(received, now, self.wait(failures, roll))
    }

    /// The wait after the `failures`th temporary failure, with the jitter `roll` picks.
    pub fn wait(&self, failures: u32, roll: f64) -> Duration {
        self.delay(failures)
            .mul_f64(1.0 + self.jitter * roll.clamp(0.0, 1.0))
    }

    /// After a temporary failure at `now`: retry once `wait` has passed (a class's own
    /// wait, such as a greylist window), or expire. The last try falls on the deadline.
    pub fn after(&self, received: Timestamp, now: Timestamp, wait: Duration) -> Next {
        let deadline = self.deadline(received);
        if now >= deadline || (self.strict && now + wait >= deadline) {
            return Next::Expire;
        }
        Next::RetryAt((now + wait).min(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    fn default_schedule() -> Schedule {
        Schedule::new(
            vec![min(5), min(15), min(30), min(60), min(120), min(240)],
            min(72 * 60),
            0.1,
        )
    }

    #[test]
    fn delay_table() {
        let s = default_schedule();
        let table = [
            (0, 5),
            (1, 5),
            (2, 15),
            (3, 30),
            (4, 60),
            (5, 120),
            (6, 240),
            (7, 240),
            (100, 240),
        ];
        for (failures, minutes) in table {
            assert_eq!(s.delay(failures), min(minutes), "after {failures} failures");
        }
    }

    #[test]
    fn next_table() {
        let s = default_schedule();
        let t0 = Timestamp(1_000_000_000_000);
        let at = |d: Duration| Next::RetryAt(t0 + d);
        let cases = [
            // (now, failures, roll, expected)
            (t0, 1, 0.0, at(min(5))),
            (t0, 1, 0.5, at(min(5).mul_f64(1.05))),
            (t0, 1, 0.999, at(min(5).mul_f64(1.0999))),
            (t0, 3, 0.0, at(min(30))),
            (t0 + min(72 * 60 - 60), 9, 0.0, at(min(72 * 60))),
            (t0 + min(72 * 60), 9, 0.0, Next::Expire),
            (t0 + min(80 * 60), 1, 0.0, Next::Expire),
        ];
        for (now, failures, roll, expected) in cases {
            assert_eq!(
                s.next(t0, now, failures, roll),
                expected,
                "now {now:?} failures {failures} roll {roll}"
            );
        }
    }

    #[test]
    fn a_deadline_expires_what_could_only_come_late() {
        let s = Schedule::with_deadline(vec![min(1), min(2), min(4)], min(10), 0.0);
        let t0 = Timestamp(0);
        assert!(s.is_strict());
        assert_eq!(s.next(t0, t0 + min(3), 2, 0.0), Next::RetryAt(t0 + min(5)));
        // The third wait (4m) from 7m ends past the 10m deadline: no try on the edge.
        assert_eq!(s.next(t0, t0 + min(7), 3, 0.0), Next::Expire);
        // Without a deadline the last try falls on the lifetime's end.
        let lax = Schedule::new(vec![min(1), min(2), min(4)], min(10), 0.0);
        assert_eq!(
            lax.next(t0, t0 + min(7), 3, 0.0),
            Next::RetryAt(t0 + min(10))
        );
    }

    #[test]
    fn jitter_never_shortens_the_wait() {
        let s = default_schedule();
        let t0 = Timestamp(0);
        for i in 0..100 {
            let roll = i as f64 / 100.0;
            let Next::RetryAt(at) = s.next(t0, t0, 1, roll) else {
                panic!()
            };
            assert!(at.since(t0) >= min(5) && at.since(t0) <= min(5).mul_f64(1.1));
        }
    }
}
