//! The suppression list: addresses that bounced hard. Later mail to them is marked
//! `suppressed` at acceptance (with an event) and never sent, which protects the sender's
//! reputation. Mail from the null sender (DSNs) is never suppressed. The list is kept in the
//! spool (the engine writes it there, then here); this is its in-memory copy, read on every
//! acceptance.

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

#[derive(Default)]
pub struct Suppressions {
    map: RwLock<HashMap<String, Suppression>>,
}

impl Suppressions {
    pub fn new(entries: Vec<(String, Suppression)>) -> Suppressions {
        Suppressions {
            map: RwLock::new(entries.into_iter().map(|(a, s)| (key(&a), s)).collect()),
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
            .insert(key(address), s);
    }

    pub fn remove(&self, address: &str) -> bool {
        self.map
            .write()
            .expect("suppressions lock")
            .remove(&key(address))
            .is_some()
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
