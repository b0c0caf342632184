//! Streams: classes of traffic (`transactional`, `bulk`, the operator's own) that share a
//! destination's gate but not its queue. Each has its own retry rules and lifetime (a
//! deadline, for mail that is useless late), and a share of the destination's starts; of
//! two streams owed the same, the one of higher priority goes first.

use crate::config::Config;
use crate::policy::react::Rules;
use crate::policy::schedule::Schedule;
use std::sync::Arc;
use std::time::Duration;

/// One stream, as the scheduler applies it.
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: Arc<str>,
    pub priority: i32,
    /// Its weight in a destination's starts (see [`Lanes`]).
    pub share: f64,
    /// Its retry schedule (with its lifetime or deadline) and greylist window.
    pub rules: Rules,
}

impl Stream {
    /// How long its mail may wait in all.
    pub fn lifetime(&self) -> Duration {
        self.rules.schedule.max_age()
    }
}

/// The streams by index (a queued group keeps its stream's index), and the one for mail
/// that names none.
#[derive(Debug, Clone)]
pub struct Streams {
    list: Vec<Stream>,
    default: usize,
}

/// A stream's index in [`Streams`].
pub type StreamIx = u16;

impl Streams {
    pub fn from_config(config: &Config) -> Streams {
        let retry = &config.retry;
        let list: Vec<Stream> = config
            .streams
            .0
            .iter()
            .map(|(name, s)| {
                let steps = s.retry.clone().unwrap_or_else(|| retry.schedule.clone());
                let schedule = match s.deadline {
                    Some(deadline) => Schedule::with_deadline(steps, deadline, retry.jitter),
                    None => Schedule::new(steps, s.lifetime(retry), retry.jitter),
                };
                Stream {
                    name: name.as_str().into(),
                    priority: s.priority,
                    share: s.share,
                    rules: Rules {
                        schedule,
                        greylist_window: config.greylist.window,
                    },
                }
            })
            .collect();
        let default = list
            .iter()
            .position(|s| *s.name == *crate::config::DEFAULT_STREAM)
            .unwrap_or(0);
        assert!(!list.is_empty(), "the config always has streams");
        Streams { list, default }
    }

    /// The index of the stream `name`; the default stream's for none, or for a name no
    /// longer configured (mail spooled before the stream was removed).
    pub fn ix(&self, name: Option<&str>) -> StreamIx {
        name.and_then(|n| self.list.iter().position(|s| *s.name == *n))
            .unwrap_or(self.default) as StreamIx
    }

    pub fn get(&self, ix: StreamIx) -> &Stream {
        &self.list[usize::from(ix)]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.list.iter()
    }

    /// The shortest lifetime of any stream.
    pub fn shortest_lifetime(&self) -> Duration {
        self.list
            .iter()
            .map(Stream::lifetime)
            .min()
            .expect("never empty")
    }
}

/// Which stream's queue a destination's next start goes to: stride scheduling. Each
/// stream has a pass; the stream with mail ready and the lowest pass goes (the higher
/// priority on a tie), and its pass grows by `1 / share`. A stream that had nothing ready
/// joins at the current pass, so it cannot bank starts while idle. Over any stretch where
/// several streams have mail ready each gets its share of the starts, and a stream alone
/// gets them all.
#[derive(Debug, Clone, Default)]
pub struct Lanes {
    pass: Vec<f64>,
    /// The pass of the last stream chosen.
    now: f64,
}

impl Lanes {
    pub fn new(streams: usize) -> Lanes {
        Lanes {
            pass: vec![0.0; streams],
            now: 0.0,
        }
    }

    /// Stream `ix` has mail ready again after having none.
    pub fn joined(&mut self, ix: StreamIx) {
        let p = &mut self.pass[usize::from(ix)];
        *p = p.max(self.now);
    }

    /// The stream to start next among those for which `ready` holds.
    pub fn pick(&self, streams: &Streams, ready: impl Fn(StreamIx) -> bool) -> Option<StreamIx> {
        (0..self.pass.len() as StreamIx)
            .filter(|&ix| ready(ix))
            .min_by(|&a, &b| {
                self.pass[usize::from(a)]
                    .total_cmp(&self.pass[usize::from(b)])
                    .then(streams.get(b).priority.cmp(&streams.get(a).priority))
            })
    }

    /// Stream `ix` got a start.
    pub fn started(&mut self, streams: &Streams, ix: StreamIx) {
        let p = &mut self.pass[usize::from(ix)];
        self.now = *p;
        *p += 1.0 / streams.get(ix).share;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(extra: &str) -> Streams {
        Streams::from_config(&Config::parse(extra).unwrap())
    }

    #[test]
    fn transactional_and_bulk_ship_and_mail_without_a_stream_is_bulk() {
        let s = streams("");
        let names: Vec<&str> = s.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["bulk", "transactional"]);
        assert_eq!(&*s.get(s.ix(None)).name, "bulk");
        assert_eq!(&*s.get(s.ix(Some("gone"))).name, "bulk");
        let t = s.get(s.ix(Some("transactional")));
        assert!(t.lifetime() < s.get(s.ix(None)).lifetime());
    }

    #[test]
    fn a_deadline_is_the_lifetime_and_is_strict() {
        let s = streams("[stream.otp]\ndeadline = \"10m\"\nretry = [\"30s\", \"1m\"]\n");
        let otp = s.get(s.ix(Some("otp")));
        assert_eq!(otp.lifetime(), Duration::from_secs(600));
        assert!(otp.rules.schedule.is_strict());
        assert_eq!(s.shortest_lifetime(), Duration::from_secs(600));
    }

    /// Starts given out while both streams have mail ready, and while only one has.
    fn run(lanes: &mut Lanes, s: &Streams, n: usize, ready: &[StreamIx]) -> Vec<usize> {
        let mut got = vec![0; s.len()];
        for _ in 0..n {
            let ix = lanes.pick(s, |ix| ready.contains(&ix)).unwrap();
            lanes.started(s, ix);
            got[usize::from(ix)] += 1;
        }
        got
    }

    #[test]
    fn each_stream_gets_its_share_and_an_idle_one_banks_nothing() {
        let s = streams("[stream.bulk]\nshare = 0.75\n[stream.transactional]\nshare = 0.25\n");
        let (bulk, tx) = (s.ix(Some("bulk")), s.ix(Some("transactional")));
        let mut lanes = Lanes::new(s.len());
        // Both ready: 3 to 1.
        assert_eq!(run(&mut lanes, &s, 400, &[bulk, tx]), [300, 100]);
        // Bulk alone takes every start...
        assert_eq!(run(&mut lanes, &s, 1000, &[bulk]), [1000, 0]);
        // ...and transactional, back, goes first (priority on the tie) but gets no more
        // than its share for having been away.
        lanes.joined(tx);
        assert_eq!(lanes.pick(&s, |_| true), Some(tx));
        assert_eq!(run(&mut lanes, &s, 400, &[bulk, tx]), [300, 100]);
    }
}
