//! A scenario: the traffic and the receivers it meets, read from a TOML file that
//! `knock simulate` and `knock sink --scenario` both read. Unknown keys, bad durations and
//! impossible values are refused with an error that names the key and its line, before
//! anything runs.

use crate::time::Timestamp;
use crate::tools::receiver::ReceiverModel;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Where a scenario's virtual time starts (2026-01-01T00:00:00Z): its traffic's times and
/// its outages count from here.
pub const T0: Timestamp = Timestamp(1_767_225_600_000);

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub simulation: Simulation,
    pub traffic: Traffic,
    /// More traffic beside `[traffic]`, each with its own arrivals (another stream's mail,
    /// say): `[[flow]]` tables with the keys of `[traffic]`.
    #[serde(default, rename = "flow", skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<Traffic>,
    /// The receivers, by name.
    #[serde(rename = "receiver")]
    pub receivers: BTreeMap<String, ReceiverModel>,
}

/// How the simulation runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Simulation {
    /// Seeds every random choice: the same seed, the same run.
    pub seed: u64,
    /// Stop at this virtual time even if mail is still queued (default: the config's
    /// `[retry] max_age` and an hour).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub until: Option<Duration>,
    /// The address knock sends from, as the receivers see it.
    pub client: String,
    /// How long an MX lookup takes.
    #[serde(with = "humantime_serde")]
    pub dns_latency: Duration,
    /// Bytes per second one connection carries (the message's transfer time).
    #[serde(deserialize_with = "positive")]
    pub bandwidth: u64,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            seed: 1,
            until: None,
            client: "192.0.2.1".into(),
            dns_latency: Duration::from_millis(5),
            bandwidth: 12_500_000,
        }
    }
}

/// The mail to send.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// How many messages.
    #[serde(deserialize_with = "positive")]
    pub messages: u64,
    /// Arrivals spread evenly over this long; all at once when left out.
    #[serde(default, with = "humantime_serde")]
    pub over: Duration,
    /// Recipients per message (all at one domain).
    #[serde(default = "one", deserialize_with = "positive")]
    pub recipients: u64,
    /// Message sizes, by weight; 5 KiB when left out.
    #[serde(default = "default_sizes", rename = "size")]
    pub sizes: Vec<Size>,
    /// The envelope senders, taken in turn.
    #[serde(default = "default_senders")]
    pub senders: Vec<String>,
    /// Where recipients go, by weight.
    pub to: Vec<Destination>,
    /// Draw recipients from this many mailboxes per domain (a list that writes to the
    /// same people again); every recipient its own mailbox when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<u64>,
    /// Exactly these arrivals (seconds after the start, domain, recipients), instead of
    /// `messages` spread over `over`: what `--replay` writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrivals: Vec<Arrival>,
    /// The stream its messages go in (a `[stream.NAME]` of the config); the default
    /// stream when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

fn one() -> u64 {
    1
}

fn default_sizes() -> Vec<Size> {
    vec![Size {
        bytes: 5 * 1024,
        weight: 1,
    }]
}

fn default_senders() -> Vec<String> {
    vec!["sender@knock.example".into()]
}

/// One recorded arrival.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    pub at: f64,
    pub domain: String,
    #[serde(default = "one")]
    pub recipients: u64,
}

/// One message size and its weight.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Size {
    #[serde(deserialize_with = "size", serialize_with = "show_size")]
    pub bytes: u64,
    #[serde(default = "one", deserialize_with = "positive")]
    pub weight: u64,
}

/// A share of the recipients, to a receiver's domains.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A `[receiver.NAME]`.
    pub receiver: String,
    #[serde(default = "one", deserialize_with = "positive")]
    pub weight: u64,
    /// The receiver's domains: these names (`["gmail.com"]`), or so many made up.
    #[serde(default)]
    pub domains: Domains,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Domains {
    Count(u64),
    Names(Vec<String>),
}

impl Default for Domains {
    fn default() -> Self {
        Domains::Count(1)
    }
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(v)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| serde::de::Error::custom(format!("bad size {text:?}: {e}")))?
        .as_u64();
    if bytes == 0 {
        return Err(serde::de::Error::custom("a message has at least one byte"));
    }
    Ok(bytes)
}

fn show_size<S: serde::Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&bytes.to_string())
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading scenario {}: {e}", path.display()))?;
        Scenario::parse(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))
    }

    /// Parses and checks scenario text; every error names the key and, where it can be
    /// found, its line.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| crate::config::toml_error(text, &e))?;
        if let Err((table, key, error)) = scenario.check() {
            let at = locate(text, &table, &key)
                .map(|line| format!("line {line}: "))
                .unwrap_or_default();
            let name = match table.is_empty() {
                true => key,
                false => format!("{table}.{key}"),
            };
            anyhow::bail!("{at}{name}: {error}");
        }
        Ok(scenario)
    }

    /// `[traffic]` and every `[[flow]]`, with the name of its table.
    pub fn traffics(&self) -> impl Iterator<Item = (String, &Traffic)> {
        std::iter::once(("traffic".to_string(), &self.traffic)).chain(
            self.flows
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("flow[{i}]"), f)),
        )
    }

    /// Every destination entry of every traffic.
    pub fn destinations(&self) -> impl Iterator<Item = &Destination> {
        self.traffics().flat_map(|(_, t)| t.to.iter())
    }

    /// What serde cannot check: the error's table, key and what is wrong.
    fn check(&self) -> Result<(), (String, String, String)> {
        for (name, t) in self.traffics() {
            self.check_traffic(&name, t)?;
        }
        for (name, model) in &self.receivers {
            model.validate().map_err(|e| {
                let (key, error) = e.split_once(": ").unwrap_or(("", &e));
                // `outage[0].to` lives in the table `receiver.NAME.outage[0]`.
                let (sub, key) = key.rsplit_once('.').unwrap_or(("", key));
                let table = match sub {
                    "" => format!("receiver.{name}"),
                    sub => format!("receiver.{name}.{sub}"),
                };
                (table, key.to_string(), error.to_string())
            })?;
        }
        Ok(())
    }

    fn check_traffic(&self, name: &str, t: &Traffic) -> Result<(), (String, String, String)> {
        if t.to.is_empty() && t.arrivals.is_empty() {
            return Err((
                name.into(),
                "to".into(),
                format!("needs at least one destination ([[{name}.to]])"),
            ));
        }
        for (i, d) in t.to.iter().enumerate() {
            let table = format!("{name}.to[{i}]");
            if !self.receivers.contains_key(&d.receiver) {
                return Err((
                    table,
                    "receiver".into(),
                    format!("no [receiver.{}] in the scenario", d.receiver),
                ));
            }
            match &d.domains {
                Domains::Count(0) => {
                    return Err((table, "domains".into(), "must be at least 1".into()));
                }
                Domains::Names(names) if names.is_empty() => {
                    return Err((table, "domains".into(), "names no domain".into()));
                }
                Domains::Names(names) => {
                    if let Some(bad) = names
                        .iter()
                        .find(|n| crate::address::check_domain(n).is_err())
                    {
                        return Err((table, "domains".into(), format!("{bad:?} is not a domain")));
                    }
                }
                Domains::Count(_) => {}
            }
        }
        if t.senders.is_empty() {
            return Err((name.into(), "senders".into(), "needs a sender".into()));
        }
        for (i, a) in t.arrivals.iter().enumerate() {
            if !(a.at.is_finite() && a.at >= 0.0) {
                return Err((
                    format!("{name}.arrivals[{i}]"),
                    "at".into(),
                    "must be a time in seconds from the start".into(),
                ));
            }
        }
        Ok(())
    }

    /// Where the recipients of message `n` go: the destination entry and the domain.
    pub fn domains_of(&self, d: &Destination, receiver: &str) -> Vec<String> {
        match &d.domains {
            Domains::Names(names) => names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            Domains::Count(n) => (0..*n).map(|i| format!("d{i}.{receiver}.sim")).collect(),
        }
    }
}

/// The line (1-based) of `key` in the table `table` (`receiver.a.outage[1]` is the second
/// `[[receiver.a.outage]]`, `traffic.to[0]` the first `[[traffic.to]]`).
fn locate(text: &str, table: &str, key: &str) -> Option<usize> {
    let (path, index) = match table.rsplit_once('[') {
        Some((path, rest)) => (path, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let mut in_table = table.is_empty();
    let mut seen = 0usize;
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            let header = l.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = match index {
                Some(i) if l.starts_with("[[") && header == path => {
                    seen += 1;
                    seen == i + 1
                }
                None => header == path,
                _ => false,
            };
            continue;
        }
        if in_table
            && let Some((k, _)) = l.split_once('=')
            && k.trim() == key
        {
            return Some(n + 1);
        }
    }
    // A key that is missing: the table's own line.
    text.lines()
        .position(|l| {
            let h = l.trim().trim_matches(|c| c == '[' || c == ']').trim();
            l.trim().starts_with('[') && h == path
        })
        .map(|n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[traffic]
messages = 100
over = "1m"

[[traffic.to]]
receiver = "grey"
domains = 3

[[traffic.to]]
receiver = "busy"
weight = 2
domains = ["gmail.com"]

[receiver.grey]
greylist = { window = "5m" }

[receiver.busy]
connections = 2

[[receiver.busy.limit]]
shape = "fixed_window"
rate = "10/10s"

[[receiver.busy.outage]]
from = "1m"
to = "2m"
kind = "greeting"
"#;

    #[test]
    fn a_scenario_reads() {
        let s = Scenario::parse(GOOD).unwrap();
        assert_eq!(s.traffic.messages, 100);
        assert_eq!(s.traffic.over, Duration::from_secs(60));
        assert_eq!(s.traffic.sizes[0].bytes, 5 * 1024);
        assert_eq!(s.receivers["busy"].limits[0].rate.count, 10);
        assert_eq!(
            s.domains_of(&s.traffic.to[0], "grey"),
            ["d0.grey.sim", "d1.grey.sim", "d2.grey.sim"]
        );
        // What is written reads back the same.
        let again = Scenario::parse(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn bad_scenarios_name_the_key_and_line() {
        let cases = [
            ("messages = 100", "messages = 0", "line 3", "messages"),
            ("over = \"1m\"", "over = \"1 fortnight\"", "line 4", "over"),
            ("over = \"1m\"", "ovr = \"1m\"", "line 4", "ovr"),
            (
                "receiver = \"grey\"",
                "receiver = \"gray\"",
                "line 7",
                "traffic.to[0].receiver",
            ),
            (
                "domains = 3",
                "domains = 0",
                "line 8",
                "traffic.to[0].domains",
            ),
            (
                "rate = \"10/10s\"",
                "rate = \"10 per 10s\"",
                "line 23",
                "rate",
            ),
            (
                "shape = \"fixed_window\"",
                "shape = \"leaky\"",
                "line 22",
                "shape",
            ),
            (
                "connections = 2",
                "connections = 0",
                "line 19",
                "connections",
            ),
            (
                "to = \"2m\"",
                "to = \"30s\"",
                "line 27",
                "receiver.busy.outage[0].to",
            ),
            (
                "greylist = { window = \"5m\" }",
                "greylist = { window = \"5m\", after = 1 }",
                "line 16",
                "after",
            ),
        ];
        for (from, to, line, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let err = format!("{:#}", Scenario::parse(&text).unwrap_err());
            assert!(
                err.contains(line) && err.contains(key),
                "{to}: {err} should name {key} at {line}"
            );
        }
    }
}
