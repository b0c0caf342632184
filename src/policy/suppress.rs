//! The suppression list: addresses that bounced hard. Later mail to them is marked
//! `suppressed` at acceptance (with an event) and never sent, which protects the sender's
//! reputation. Mail from the null sender (DSNs) is never suppressed. The list is kept in the
//! spool (the engine writes it there, then here); this is its in-memory copy, read on every
//! acceptance. In a fleet it also keeps the changes made here until they are passed on to
//! the other nodes (`engine::fleet`).

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;

/// Why an address is on the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    pub added_at: Timestamp,
    /// The reply that put it there, or the operator's note.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// Addresses are compared lowercased: receivers treat local parts case-insensitively in
/// practice, and a suppression must not be dodged by case.
pub fn key(address: &str) -> String {
    address.to_lowercase()
}

/// A change to the list, as the fleet passes it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Add { address: String, entry: Suppression },
    Remove { address: String },
}

#[derive(Default)]
pub struct Suppressions {
    map: RwLock<HashMap<String, Suppression>>,
    /// In a fleet: the changes made on this node not yet passed on.
    changes: std::sync::Mutex<Option<Vec<Change>>>,
}

impl Suppressions {
    pub fn new(entries: Vec<(String, Suppression)>) -> Suppressions {
        Suppressions {
            map: RwLock::new(entries.into_iter().map(|(a, s)| (key(&a), s)).collect()),
            changes: Default::default(),
        }
    }

    /// From now on, the changes made here are kept for [`Suppressions::take_changes`].
    pub fn share(&self) {
        let mut c = self.changes.lock().expect("suppression changes lock");
        c.get_or_insert_with(Vec::new);
    }

    /// The changes made here since the last call (none outside a fleet).
    pub fn take_changes(&self) -> Vec<Change> {
        let mut c = self.changes.lock().expect("suppression changes lock");
        c.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Changes that could not be passed on: kept, before any made since, for the next try.
    pub fn put_back(&self, mut changes: Vec<Change>) {
        if let Some(c) = self
            .changes
            .lock()
            .expect("suppression changes lock")
            .as_mut()
        {
            changes.append(c);
            *c = changes;
        }
    }

    fn changed(&self, change: Change) {
        if let Some(c) = self
            .changes
            .lock()
            .expect("suppression changes lock")
            .as_mut()
        {
            c.push(change);
        }
    }

    /// A change another node made (kept in the spool first): applied, not passed on again.
    pub fn apply(&self, change: &Change) {
        let mut map = self.map.write().expect("suppressions lock");
        match change {
            Change::Add { address, entry } => {
                map.insert(key(address), entry.clone());
            }
            Change::Remove { address } => {
                map.remove(&key(address));
            }
        }
    }

    pub fn contains(&self, address: &str) -> bool {
        self.map
            .read()
            .expect("suppressions lock")
            .contains_key(&key(address))
    }

    /// Why `address` is on the list and since when, if it is.
    pub fn get(&self, address: &str) -> Option<Suppression> {
        self.map
            .read()
            .expect("suppressions lock")
            .get(&key(address))
            .cloned()
    }

    pub fn insert(&self, address: &str, s: Suppression) {
        self.map
            .write()
            .expect("suppressions lock")
            .insert(key(address), s.clone());
        self.changed(Change::Add {
            address: key(address),
            entry: s,
        });
    }

    pub fn remove(&self, address: &str) -> bool {
        let removed = self
            .map
            .write()
            .expect("suppressions lock")
            .remove(&key(address))
            .is_some();
        if removed {
            self.changed(Change::Remove {
                address: key(address),
            });
        }
        removed
    }

    pub fn list(&self) -> Vec<(String, Suppression)> {
        let mut all: Vec<(String, Suppression)> = self
            .map
            .read()
            .expect("suppressions lock")
            .iter()
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Suppression {
        Suppression {
            added_at: Timestamp(1),
            reason: "550 5.1.1".into(),
            message_id: None,
        }
    }

    #[test]
    fn a_fleet_member_keeps_its_own_changes_and_not_the_fleets() {
        let s = Suppressions::default();
        s.insert("a@x.test", entry());
        assert!(s.take_changes().is_empty(), "alone, nothing is kept");
        s.share();
        s.insert("B@x.test", entry());
        assert!(s.remove("a@x.test"));
        assert!(!s.remove("nobody@x.test"));
        // Another node's change applies and is not passed on again.
        s.apply(&Change::Add {
            address: "c@x.test".into(),
            entry: entry(),
        });
        assert!(s.contains("C@x.test"));
        let changes = s.take_changes();
        assert_eq!(
            changes,
            [
                Change::Add {
                    address: "b@x.test".into(),
                    entry: entry()
                },
                Change::Remove {
                    address: "a@x.test".into()
                },
            ]
        );
        assert!(s.take_changes().is_empty());
        // Not passed on: back in front of what came since.
        s.insert("d@x.test", entry());
        s.put_back(changes);
        let again = s.take_changes();
        assert_eq!(again.len(), 3);
        assert!(matches!(&again[2], Change::Add { address, .. } if address == "d@x.test"));
    }
}
