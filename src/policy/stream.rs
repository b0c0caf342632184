//! Streams: classes of traffic (`transactional`, `bulk`, the operator's own) that share a
//! destination's gate but not its queue. Each has its own retry rules and lifetime (a
//! deadline, for mail that is useless late), and a share of the destination's starts; of
//! two streams owed the same, the one of higher priority goes first.

use crate::config::Config;
use crate::policy::react::Rules;
use crate::policy::schedule::Schedule;
use crate::time::Timestamp;
use std::collections::VecDeque;
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
    /// The pool it sends from (`policy::egress::Egress::pool_ix`).
    pub pool: usize,
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
        let pools: Vec<String> = config.effective_pools().into_keys().collect();
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
                        delay_warning: Some(retry.delay_warning).filter(|w| !w.is_zero()),
                    },
                    pool: pools.iter().position(|p| p == s.pool()).unwrap_or(0),
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

    /// Takes the pools `old` sends from: pools and sources change only at a restart, and
    /// a reloaded config's pool indexes may not be the running egress's.
    pub fn keep_pools(&mut self, old: &Streams) {
        for (new, old) in self.list.iter_mut().zip(&old.list) {
            new.pool = old.pool;
        }
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
///
/// Order is not enough where the destination's allowance is a window ("n in any w"): the
/// stream with a backlog would fill each window the moment it opens and leave a stream
/// that sends a trickle waiting for the next one. So while several streams are active (mail
/// ready, or a start within the window), each keeps room free in the window for what it is
/// sending, up to its guarantee: of `n`, `share` over the sum of the active streams'
/// shares. A stream that just became active keeps its whole guarantee until its pace is
/// known (half a window), then its pace and a margin. A stream starts only while the window
/// has room for it beyond what the others keep. A stream alone fills it all, and a light
/// stream holds back little more than it uses.
#[derive(Debug, Clone, Default)]
pub struct Lanes {
    pass: Vec<f64>,
    /// The pass of the last stream chosen.
    now: f64,
    /// Each stream's recent starts, oldest first.
    starts: Vec<VecDeque<Timestamp>>,
}

/// Why no stream may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneWait {
    /// No stream has mail ready.
    Empty,
    /// Every stream with mail ready has filled its share of the window, until then.
    Until(Timestamp),
}

impl Lanes {
    pub fn new(streams: usize) -> Lanes {
        Lanes {
            pass: vec![0.0; streams],
            now: 0.0,
            starts: vec![VecDeque::new(); streams],
        }
    }

    /// Stream `ix` has mail ready again after having none.
    pub fn joined(&mut self, ix: StreamIx) {
        let p = &mut self.pass[usize::from(ix)];
        *p = p.max(self.now);
    }

    /// The stream to start next among those for which `ready` holds, under the
    /// destination's learned `window` (`n` in any `w`), if it has one.
    pub fn pick(
        &mut self,
        streams: &Streams,
        now: Timestamp,
        window: Option<(u32, Duration)>,
        ready: impl Fn(StreamIx) -> bool,
    ) -> Result<StreamIx, LaneWait> {
        let all = 0..self.pass.len() as StreamIx;
        let mut capped: Option<Timestamp> = None;
        let mut open: Vec<StreamIx> = all.clone().filter(|&ix| ready(ix)).collect();
        if open.is_empty() {
            return Err(LaneWait::Empty);
        }
        let Some((n, w)) = window else {
            // Nothing to share a window of: what was counted for one is of no more use
            // (and would only grow).
            self.starts.iter_mut().for_each(VecDeque::clear);
            return Ok(self.by_turn(streams, open));
        };
        let since = Timestamp(now.0.saturating_sub(w.as_millis() as u64));
        for log in &mut self.starts {
            while log.front().is_some_and(|t| *t <= since) {
                log.pop_front();
            }
        }
        let active: Vec<StreamIx> = all
            .filter(|&ix| ready(ix) || !self.starts[usize::from(ix)].is_empty())
            .collect();
        if active.len() < 2 {
            return Ok(self.by_turn(streams, open));
        }
        // What each active stream keeps free in the window beyond what it used,
        // never more than its guarantee: until it has sent for half a window, the
        // whole of it (its pace is not known); then room for its pace over a whole
        // window and three standard deviations more.
        let shares: f64 = active.iter().map(|&ix| streams.get(ix).share).sum();
        let used = |ix: StreamIx| self.starts[usize::from(ix)].len();
        let spare = |ix: StreamIx| {
            let guarantee = (f64::from(n) * streams.get(ix).share / shares) as usize;
            let log = &self.starts[usize::from(ix)];
            let free = guarantee.saturating_sub(log.len());
            let span = log.front().map_or(Duration::ZERO, |t| now.since(*t));
            if span < w / 2 {
                return free;
            }
            let pace = log.len() as f64 * w.as_secs_f64() / span.as_secs_f64();
            let room = pace - log.len() as f64 + 3.0 * pace.sqrt() + 2.0;
            free.min(room.max(0.0).ceil() as usize)
        };
        let total: usize = active.iter().map(|&ix| used(ix)).sum();
        let spares: usize = active.iter().map(|&ix| spare(ix)).sum();
        let n = n as usize;
        let mut blocked = false;
        open.retain(|&ix| {
            let go = total + spares - spare(ix) < n;
            blocked |= !go;
            go
        });
        if blocked {
            // When enough of the window has aged out for one more (a guess: the
            // spares grow back too; the next look checks).
            let over = (total + spares + 1).saturating_sub(n);
            let mut all: Vec<Timestamp> = self.starts.iter().flatten().copied().collect();
            let t = match all.is_empty() {
                true => now + w,
                false => {
                    let k = over.saturating_sub(1).min(all.len() - 1);
                    *all.select_nth_unstable(k).1 + w
                }
            };
            capped = Some(t.max(now + Duration::from_millis(1)));
        }
        match open.is_empty() {
            true => Err(LaneWait::Until(capped.expect("a ready stream was capped"))),
            false => Ok(self.by_turn(streams, open)),
        }
    }

    /// Of `open` (not empty), the stream with the lowest pass, the higher priority on a tie.
    fn by_turn(&self, streams: &Streams, open: Vec<StreamIx>) -> StreamIx {
        open.into_iter()
            .min_by(|&a, &b| {
                self.pass[usize::from(a)]
                    .total_cmp(&self.pass[usize::from(b)])
                    .then(streams.get(b).priority.cmp(&streams.get(a).priority))
            })
            .expect("not empty")
    }

    /// Stream `ix` got a start at `now`.
    pub fn started(&mut self, streams: &Streams, ix: StreamIx, now: Timestamp) {
        let p = &mut self.pass[usize::from(ix)];
        self.now = *p;
        *p += 1.0 / streams.get(ix).share;
        self.starts[usize::from(ix)].push_back(now);
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
    fn a_shipped_stream_keeps_what_the_file_does_not_set() {
        let s = streams("[stream.transactional]\npool = \"default\"\n");
        let t = s.get(s.ix(Some("transactional")));
        assert_eq!((t.share, t.priority), (0.75, 10));
        assert_eq!(t.lifetime(), Duration::from_secs(24 * 3600));
        assert_eq!(t.rules.schedule.delay(1), Duration::from_secs(60));
        let e = Config::parse("[stream.bulk]\nshar = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shar"), "{e}");
    }

    #[test]
    fn a_deadline_is_the_lifetime_and_is_strict() {
        let s = streams("[stream.otp]\ndeadline = \"10m\"\nretry = [\"30s\", \"1m\"]\n");
        let otp = s.get(s.ix(Some("otp")));
        assert_eq!(otp.lifetime(), Duration::from_secs(600));
        assert!(otp.rules.schedule.is_strict());
        assert_eq!(s.shortest_lifetime(), Duration::from_secs(600));
    }

    /// Starts given out while the streams `ready` have mail ready, one a millisecond.
    fn run(
        lanes: &mut Lanes,
        s: &Streams,
        n: usize,
        ready: &[StreamIx],
        window: Option<(u32, Duration)>,
        t: &mut Timestamp,
    ) -> Vec<usize> {
        let mut got = vec![0; s.len()];
        for _ in 0..n {
            *t += Duration::from_millis(1);
            let Ok(ix) = lanes.pick(s, *t, window, |ix| ready.contains(&ix)) else {
                continue;
            };
            lanes.started(s, ix, *t);
            got[usize::from(ix)] += 1;
        }
        got
    }

    #[test]
    fn each_stream_gets_its_share_and_an_idle_one_banks_nothing() {
        let s = streams("[stream.bulk]\nshare = 0.75\n[stream.transactional]\nshare = 0.25\n");
        let (bulk, tx) = (s.ix(Some("bulk")), s.ix(Some("transactional")));
        let mut lanes = Lanes::new(s.len());
        let t = &mut Timestamp(0);
        // Both ready: 3 to 1.
        assert_eq!(run(&mut lanes, &s, 400, &[bulk, tx], None, t), [300, 100]);
        // Bulk alone takes every start...
        assert_eq!(run(&mut lanes, &s, 1000, &[bulk], None, t), [1000, 0]);
        // ...and transactional, back, goes first (priority on the tie) but gets no more
        // than its share for having been away.
        lanes.joined(tx);
        assert_eq!(lanes.pick(&s, *t, None, |_| true), Ok(tx));
        assert_eq!(run(&mut lanes, &s, 400, &[bulk, tx], None, t), [300, 100]);
    }

    #[test]
    fn under_a_window_a_backlog_leaves_room_for_a_trickle() {
        let s = streams("");
        let (bulk, tx) = (s.ix(Some("bulk")), s.ix(Some("transactional")));
        let (n, w) = (100u32, Duration::from_secs(10));
        let mut lanes = Lanes::new(s.len());
        // One start a millisecond at most, and never more than `n` in any `w` (what the
        // allowance itself enforces); bulk always has mail, a transactional message comes
        // every 200 ms for a minute, then none.
        let mut window: VecDeque<Timestamp> = VecDeque::new();
        let (mut waiting, mut waited_max, mut bulk_starts) = (0u32, 0u128, Vec::new());
        let mut since: Option<Timestamp> = None;
        for ms in 0..120_000u64 {
            let now = Timestamp(1_000_000 + ms);
            if ms < 60_000 && ms % 200 == 0 {
                waiting += 1;
                lanes.joined(tx);
                since.get_or_insert(now);
            }
            while window.front().is_some_and(|t| *t + w <= now) {
                window.pop_front();
            }
            if window.len() >= n as usize {
                continue;
            }
            let ready = |ix: StreamIx| ix == bulk || (ix == tx && waiting > 0);
            let Ok(ix) = lanes.pick(&s, now, Some((n, w)), ready) else {
                continue;
            };
            lanes.started(&s, ix, now);
            window.push_back(now);
            match ix == tx {
                true => {
                    waiting -= 1;
                    waited_max = waited_max.max(now.since(since.take().unwrap()).as_millis());
                    if waiting > 0 {
                        since = Some(now);
                    }
                }
                false => bulk_starts.push(ms),
            }
        }
        // Transactional mail never waited for the window to turn.
        assert!(
            waited_max < 100,
            "a transactional message waited {waited_max} ms"
        );
        // Bulk had what transactional left (5 a second of 10) less the margin kept for it
        // (3 standard deviations of 50 a window, and 2): 26 a window.
        let in_minute = bulk_starts
            .iter()
            .filter(|&&t| (10_000..60_000).contains(&t))
            .count();
        assert!(in_minute >= 125, "bulk started {in_minute} in 50 s");
        // Once transactional mail is gone for a window, bulk has the window to itself.
        let late = bulk_starts.iter().filter(|&&t| t >= 80_000).count();
        assert_eq!(late, 4 * n as usize, "40 s alone: four whole windows");
    }
}
