//! The shape of the queue, as Postfix's `qshape` shows it: per domain (or provider), how
//! many pending recipients have waited how long, in buckets that double (0–5 minutes, 5–10,
//! 10–20, … 640–1280, and over 1280). A backlog at one domain stands out as a row; whether
//! it is new mail or old shows in where the row's numbers sit.
//!
//! Only the counting is here; the scheduler feeds it what it holds.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The upper bounds of the buckets, in minutes; the last bucket has none.
pub const BUCKET_MINUTES: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Buckets: one per bound, and one for everything older.
pub const BUCKETS: usize = BUCKET_MINUTES.len() + 1;

/// What the rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapeBy {
    #[default]
    Domain,
    Provider,
}

impl ShapeBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ShapeBy::Domain => "domain",
            ShapeBy::Provider => "provider",
        }
    }
}

/// One bucket's label (`5m`: up to 5 minutes; `1280m+`: older) and upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub label: String,
    /// Recipients in it have waited less than this; absent for the last bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seconds: Option<u64>,
}

/// One row: a domain or provider (or `TOTAL`), its pending recipients, and how many of
/// them fall in each bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeRow {
    pub name: String,
    pub total: u64,
    pub counts: Vec<u64>,
}

/// `GET /api/v1/queue/shape`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueShape {
    pub by: ShapeBy,
    pub buckets: Vec<Bucket>,
    /// Every row added up.
    pub total: ShapeRow,
    /// The biggest first (then by name).
    pub rows: Vec<ShapeRow>,
}

/// The bucket of a recipient that has waited `age`.
pub fn bucket(age: Duration) -> usize {
    let minutes = age.as_secs_f64() / 60.0;
    BUCKET_MINUTES
        .iter()
        .position(|&m| minutes < m as f64)
        .unwrap_or(BUCKET_MINUTES.len())
}

/// Adds up pending recipients into a [`QueueShape`].
#[derive(Debug, Default)]
pub struct ShapeCounter {
    rows: HashMap<String, [u64; BUCKETS]>,
}

impl ShapeCounter {
    /// Counts `recipients` of row `name` that have waited `age`.
    pub fn add(&mut self, name: &str, age: Duration, recipients: u64) {
        if recipients == 0 {
            return;
        }
        let row = match self.rows.get_mut(name) {
            Some(row) => row,
            None => self.rows.entry(name.to_string()).or_default(),
        };
        row[bucket(age)] += recipients;
    }

    pub fn finish(self, by: ShapeBy) -> QueueShape {
        let mut total = [0u64; BUCKETS];
        let mut rows: Vec<ShapeRow> = self
            .rows
            .into_iter()
            .map(|(name, counts)| {
                for (t, c) in total.iter_mut().zip(counts) {
                    *t += c;
                }
                ShapeRow {
                    name,
                    total: counts.iter().sum(),
                    counts: counts.to_vec(),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
        QueueShape {
            by,
            buckets: buckets(),
            total: ShapeRow {
                name: "TOTAL".into(),
                total: total.iter().sum(),
                counts: total.to_vec(),
            },
            rows,
        }
    }
}

fn buckets() -> Vec<Bucket> {
    let mut all: Vec<Bucket> = BUCKET_MINUTES
        .iter()
        .map(|m| Bucket {
            label: format!("{m}m"),
            max_seconds: Some(m * 60),
        })
        .collect();
    all.push(Bucket {
        label: format!("{}m+", BUCKET_MINUTES[BUCKET_MINUTES.len() - 1]),
        max_seconds: None,
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(m: f64) -> Duration {
        Duration::from_secs_f64(m * 60.0)
    }

    #[test]
    fn ages_fall_in_doubling_buckets() {
        let table = [
            (0.0, 0),
            (4.99, 0),
            (5.0, 1),
            (9.9, 1),
            (10.0, 2),
            (39.0, 3),
            (79.0, 4),
            (159.0, 5),
            (319.0, 6),
            (639.0, 7),
            (1279.0, 8),
            (1280.0, 9),
            (100_000.0, 9),
        ];
        let seen: Vec<(f64, usize)> = table.iter().map(|&(m, _)| (m, bucket(min(m)))).collect();
        assert_eq!(seen, table);
    }

    #[test]
    fn rows_add_up_biggest_first_under_a_total() {
        let mut c = ShapeCounter::default();
        c.add("b.test", min(1.0), 2);
        c.add("a.test", min(7.0), 1);
        c.add("b.test", min(2000.0), 1);
        c.add("c.test", min(30.0), 3);
        c.add("a.test", min(7.5), 2);
        c.add("d.test", min(1.0), 0);
        let shape = c.finish(ShapeBy::Domain);
        let rows: Vec<(&str, u64, &[u64])> = shape
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.total, r.counts.as_slice()))
            .collect();
        assert_eq!(
            rows,
            [
                ("a.test", 3, &[0, 3, 0, 0, 0, 0, 0, 0, 0, 0][..]),
                ("b.test", 3, &[2, 0, 0, 0, 0, 0, 0, 0, 0, 1][..]),
                ("c.test", 3, &[0, 0, 0, 3, 0, 0, 0, 0, 0, 0][..]),
            ]
        );
        assert_eq!(shape.total.name, "TOTAL");
        assert_eq!(shape.total.total, 9);
        assert_eq!(shape.total.counts, [2, 3, 0, 3, 0, 0, 0, 0, 0, 1]);
        let labels: Vec<&str> = shape.buckets.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+"
            ]
        );
        assert_eq!(shape.buckets[0].max_seconds, Some(300));
        assert_eq!(shape.buckets[9].max_seconds, None);
    }
}
