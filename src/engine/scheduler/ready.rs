//! A destination's ready queue: the groups that are due, first come first served, waiting
//! for the destination's shaping to let them go.
//!
//! The queue is bounded in what it keeps in memory: the first `hot` groups may keep their
//! envelope, recipients and body (a new message goes out without a read of the spool);
//! groups further back are small entries only, and the worker that gets one reads it back
//! from the spool. A flood of new mail to a destination that is paused or slow therefore
//! costs a few hundred bytes a message, never the messages themselves.

use super::Key;
use std::collections::VecDeque;

#[derive(Debug)]
pub struct ReadyQueue {
    keys: VecDeque<Key>,
    hot: usize,
}

/// Where a group landed in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Placed {
    /// Within the first `hot` places: it may stay held in memory.
    Hot,
    /// Further back: its memory copy should go (once its state is on disk).
    Cold,
}

impl ReadyQueue {
    pub fn new(hot: usize) -> ReadyQueue {
        ReadyQueue {
            keys: VecDeque::new(),
            hot: hot.max(1),
        }
    }

    pub fn push_back(&mut self, key: Key) -> Placed {
        self.keys.push_back(key);
        match self.keys.len() <= self.hot {
            true => Placed::Hot,
            false => Placed::Cold,
        }
    }

    /// Puts a group back in front (its start did not happen).
    pub fn push_front(&mut self, key: Key) {
        self.keys.push_front(key);
    }

    pub fn pop_front(&mut self) -> Option<Key> {
        self.keys.pop_front()
    }

    pub fn front(&self) -> Option<&Key> {
        self.keys.front()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn retain(&mut self, keep: impl FnMut(&Key) -> bool) {
        self.keys.retain(keep);
    }

    /// Empties the queue, handing back what it held.
    pub fn drain(&mut self) -> impl Iterator<Item = Key> + '_ {
        self.keys.drain(..)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(n: u128) -> Key {
        (uuid::Uuid::from_u128(n), Arc::from("a.test"))
    }

    #[test]
    fn first_come_first_served_and_only_the_front_is_hot() {
        let mut q = ReadyQueue::new(2);
        assert_eq!(q.push_back(key(1)), Placed::Hot);
        assert_eq!(q.push_back(key(2)), Placed::Hot);
        assert_eq!(q.push_back(key(3)), Placed::Cold);
        q.push_front(key(0));
        let order: Vec<u128> = std::iter::from_fn(|| q.pop_front())
            .map(|k| k.0.as_u128())
            .collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }
}
