//! Egress: the sources knock sends from (a local address and the name it says in EHLO),
//! grouped into pools that streams send from, and which source of a pool the next group
//! for a provider goes out of. A receiver limits per client address, so a destination is a
//! provider and a source: each pair is paced and learns on its own.

use crate::config::Config;
pub use crate::net::transport::Source;
use std::sync::Arc;

/// A source's index in [`Egress`].
pub type SourceIx = u16;

/// The sources and pools, by index.
#[derive(Debug, Clone)]
pub struct Egress {
    sources: Vec<Arc<Source>>,
    /// Each source's own hourly and daily limits per provider.
    limits: Vec<(Option<u32>, Option<u32>)>,
    /// Each source's warm-up plan, if it has one.
    ramps: Vec<Option<crate::policy::warmup::Ramp>>,
    /// Each source's cap on connections open at once, if it has one.
    max_connections: Vec<Option<usize>>,
    /// Each pool's members and weights, in the order of the pools' names.
    pools: Vec<Vec<(SourceIx, u32)>>,
    pool_names: Vec<String>,
}

impl Egress {
    pub fn from_config(config: &Config) -> Egress {
        let configured = config.effective_sources();
        let limits = configured.iter().map(|s| (s.hourly, s.daily)).collect();
        let max_connections = configured.iter().map(|s| s.max_connections).collect();
        let ramps = configured
            .iter()
            .map(|s| {
                let plan = s.warmup.clone()?;
                Some(crate::policy::warmup::Ramp {
                    plan,
                    cap_hourly: s.hourly?,
                    cap_daily: s.daily?,
                })
            })
            .collect();
        let sources: Vec<Arc<Source>> = configured
            .into_iter()
            .map(|s| {
                Arc::new(Source {
                    name: s.name.into(),
                    ip: s.ip,
                    ehlo: s.ehlo,
                })
            })
            .collect();
        let ix = |name: &str| {
            sources
                .iter()
                .position(|s| &*s.name == name)
                .expect("validated: pools name sources") as SourceIx
        };
        let mut pools = Vec::new();
        let mut pool_names = Vec::new();
        for (name, pool) in config.effective_pools() {
            pools.push(
                pool.sources
                    .iter()
                    .map(|m| (ix(m.source()), m.weight()))
                    .collect(),
            );
            pool_names.push(name);
        }
        Egress {
            sources,
            limits,
            ramps,
            max_connections,
            pools,
            pool_names,
        }
    }

    /// The index of pool `name`; the default pool's when there is no such pool.
    pub fn pool_ix(&self, name: &str) -> usize {
        self.pool_names
            .iter()
            .position(|n| n == name)
            .or_else(|| {
                self.pool_names
                    .iter()
                    .position(|n| n == crate::config::DEFAULT_POOL)
            })
            .unwrap_or(0)
    }

    pub fn members(&self, pool: usize) -> &[(SourceIx, u32)] {
        &self.pools[pool]
    }

    pub fn source(&self, ix: SourceIx) -> &Arc<Source> {
        &self.sources[usize::from(ix)]
    }

    /// A new count of source `ix`'s own limits, for one provider.
    pub fn quota(&self, ix: SourceIx) -> crate::policy::quota::Quota {
        let (hourly, daily) = self.limits[usize::from(ix)];
        crate::policy::quota::Quota::new(hourly, daily)
    }

    /// Source `ix`'s cap on connections open at once, if it has one.
    pub fn max_connections(&self, ix: SourceIx) -> Option<usize> {
        self.max_connections[usize::from(ix)]
    }

    /// Source `ix`'s warm-up plan, if it has one.
    pub fn ramp(&self, ix: SourceIx) -> Option<&crate::policy::warmup::Ramp> {
        self.ramps[usize::from(ix)].as_ref()
    }

    /// How an event names source `ix`: its name, and its address when it binds one.
    pub fn describe(&self, ix: SourceIx) -> String {
        let s = self.source(ix);
        match s.ip {
            Some(ip) => format!("{} ({ip})", s.name),
            None => s.name.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Whether the configuration names sources at all (else the one `default`).
    pub fn has_several(&self) -> bool {
        self.sources.len() > 1
    }
}

/// Smooth weighted round robin over a pool's members (nginx's): each turn every usable
/// member gains its weight, the one with the most goes and loses the sum. Over any run a
/// member gets its weight's part of the turns, interleaved rather than in runs.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    current: Vec<i64>,
}

impl Rotation {
    /// The next member for which `usable` holds, if any.
    pub fn next(
        &mut self,
        members: &[(SourceIx, u32)],
        usable: impl Fn(SourceIx) -> bool,
    ) -> Option<SourceIx> {
        self.current.resize(members.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, (source, weight)) in members.iter().enumerate() {
            if !usable(*source) {
                continue;
            }
            self.current[i] += i64::from(*weight);
            total += i64::from(*weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(members[b].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(text: &str) -> Egress {
        Egress::from_config(&Config::parse(text).unwrap())
    }

    #[test]
    fn without_sources_there_is_one_and_a_default_pool() {
        let e = egress("");
        assert_eq!(e.len(), 1);
        assert_eq!(&*e.source(0).name, "default");
        assert_eq!(e.members(e.pool_ix("default")), &[(0, 1)]);
    }

    #[test]
    fn weights_share_the_turns_and_a_member_left_out_gets_none() {
        let e = egress(
            "[[source]]\nname = \"a\"\n[[source]]\nname = \"b\"\n[pool.p]\nsources = [{ source = \"a\", weight = 3 }, \"b\"]\n",
        );
        let members = e.members(e.pool_ix("p"));
        let mut r = Rotation::default();
        let turns: Vec<SourceIx> = (0..8).map(|_| r.next(members, |_| true).unwrap()).collect();
        assert_eq!(turns.iter().filter(|&&s| s == 0).count(), 6);
        // Interleaved, not in runs.
        assert_eq!(&turns[..4], &[0, 0, 1, 0]);
        assert!((0..5).all(|_| r.next(members, |s| s == 1) == Some(1)));
        assert_eq!(r.next(members, |_| false), None);
        // The default pool holds every source.
        assert_eq!(e.members(e.pool_ix("default")).len(), 2);
    }

    #[test]
    fn bad_pools_and_streams_name_their_key() {
        let bad = [
            ("[pool.p]\nsources = []\n", "pool.p.sources"),
            ("[pool.p]\nsources = [\"nope\"]\n", "pool.p.sources[0]"),
            ("[stream.bulk]\npool = \"nope\"\n", "stream.bulk.pool"),
            (
                "[[source]]\nname = \"a\"\n[[source]]\nname = \"a\"\n",
                "source[1].name",
            ),
            (
                "[[source]]\nname = \"a\"\nehlo = \"not a name\"\n",
                "source[0].ehlo",
            ),
        ];
        for (text, key) in bad {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        let host = Config::parse("[[source]]\nname = \"a\"\nip = \"192.0.2.77\"\n").unwrap();
        let e = host.check_host().unwrap_err().to_string();
        assert!(
            e.starts_with("source[0].ip: 192.0.2.77 is not an address"),
            "{e}"
        );
        let local = Config::parse("[[source]]\nname = \"a\"\nip = \"127.0.0.2\"\n").unwrap();
        local.check_host().unwrap();
    }
}
