//! A destination's allowance: how many it takes per window, learned from when it refuses.
//!
//! Receivers limit by fixed windows, sliding windows, buckets, smoothed rates and quotas of
//! an hour or a day (`../shared/RECEIVERS.md`); none says which, and most texts name no
//! number. What every shape has in common: past its allowance it refuses, and some time
//! later it takes mail again. So knock learns *windows*: "at most `n` in any `w`".
//!
//! - Until the first refusal nothing is assumed.
//! - A refusal for rate that no learned window explains starts a *search*: nothing more
//!   goes out; one probe goes at growing delays after the refusal (1 s, 3 s, 10 s, 30 s, …,
//!   24 h). The first probe accepted bounds the window: its length is the probe's delay plus
//!   how long the exhausted run had lasted; its count is what that run carried. Where the
//!   run was a burst shorter than the step's length, the probe goes when a window of that
//!   length, counted from the run's first acceptance, would free up (sooner than the delay):
//!   a fixed window opened by a campaign is found at its own length, at its reset.
//! - From then on a delivery starts only while fewer than `n` were accepted (or are in
//!   flight) in the last `w`: the window's count ages out as the receiver's does. Counting
//!   over a sliding window is never looser than the receiver's own fixed window, bucket or
//!   quota with the same `n` and `w`.
//! - The length is refined: while mail waits for the window to pass, one *trial* goes out a
//!   twentieth short of it. Accepted, the window is that much shorter, and the next trial
//!   goes a twentieth shorter again; refused, the length is known within a twentieth and
//!   stays. So a window found too long by the probes' coarse steps comes down, window by
//!   window, at the cost of one refusal.
//! - A refusal inside a learned window lowers its count to what the window held (after a
//!   refusal, deliveries go one at a time until one is taken); a refusal with nothing in
//!   the window but mail taken within the length first found means the trials shortened it
//!   too far: it grows a tenth. A refusal with nothing in any of those means a longer
//!   window is full (an hourly quota behind a per-minute rate): the search resumes above
//!   the longest window known.
//! - The count creeps up by one now and then while mail waits and nothing is refused, so an
//!   allowance that grew (a reputation that improved) is found again: the learned limit
//!   decays towards what the receiver really takes.
//!
//! Nothing here reads a clock: every call is told the time.

use crate::time::Timestamp;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

/// The delays after a refusal at which probes go, in seconds. Windows real receivers use
/// (a second to a day) each lie close above one of them.
const LADDER: [u64; 16] = [
    1, 3, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14_400, 28_800, 43_200, 86_400,
];
/// The length is settled when the bounds are this close (a share of the window), or closer
/// than `SETTLED_MIN`; trials go this share short of the window.
const SETTLED_SHARE: f64 = 0.05;
const SETTLED_MIN: Duration = Duration::from_millis(100);
/// A margin past a window's edge, so a start lands after the receiver's count aged out.
const MARGIN: Duration = Duration::from_millis(50);
/// The count is tried one higher once in this many window lengths (and at least this long).
const RAISE_EVERY: u32 = 10;
const RAISE_MIN: Duration = Duration::from_secs(30);
const RAISE_EVERY_SMOOTH: u32 = 3;
const RAISE_EVERY_MAILBOX: u32 = 40;
const RAISE_MIN_SMOOTH: Duration = Duration::from_secs(10);
/// Below this count a window lengthens rather than counting fewer.
const MIN_COUNT: u32 = 4;
/// The log keeps this much history and at most so many entries; older entries merge.
const KEEP: Duration = Duration::from_secs(25 * 3600);
const LOG_CAP: usize = 8192;

/// What the allowance says about a start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go.
    Go,
    /// Go: this start is the one probe or trial whose report teaches something.
    Probe,
    /// Not before then.
    Until(Timestamp),
    /// Not before a delivery in flight reports.
    AwaitReport,
}

/// One learned limit: at most `n` in any `w`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    n: u32,
    w: Duration,
    /// The longest span known to be too short for the window (a refused probe or trial).
    lo: Duration,
    /// When the count was last tried one higher.
    raised_at: Timestamp,
    /// `Some` while the count is being tried one higher, since then.
    raising: Option<Timestamp>,
    /// The length the probes found: trials shorten the window from there, and a refusal
    /// inside it lengthens it back towards it before the count is cut (an accepted trial
    /// misleads when the receiver's window began later than knock's count shows, or when a
    /// bucket had refilled).
    found: Duration,
    /// The receiver refused inside the window: it smooths (a bucket, a smoothed rate), so
    /// starts are spread evenly over the window instead of going as a burst.
    smooth: bool,
    /// Its count is not known yet: nothing was known to be accepted before the refusal
    /// that found it (a mailbox's first). Deliveries go one at a time until the next
    /// refusal, and the count is what the window then holds.
    uncounted: bool,
}

impl Window {
    fn settled(&self) -> bool {
        let gap = self.w.saturating_sub(self.lo);
        gap <= SETTLED_MIN || gap.as_secs_f64() <= SETTLED_SHARE * self.w.as_secs_f64()
    }
}

/// After a refusal nothing explains: probes at the ladder's delays.
#[derive(Debug, Clone, Copy)]
struct Search {
    refused_at: Timestamp,
    /// The ladder step of the next probe.
    step: usize,
    /// The probe out, since when.
    out: Option<Timestamp>,
    /// The windows already known are shorter than this.
    above: Duration,
    /// The delay after the refusal of the last probe refused (zero before the first).
    tried: Duration,
}

/// A bisection trial out: started at `at`, for the window at `window`, whose oldest
/// acceptance then was `from`.
#[derive(Debug, Clone, Copy)]
struct Trial {
    window: usize,
    from: Timestamp,
    at: Timestamp,
}

/// When the receiver accepted, and how many: oldest first.
#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<(Timestamp, u32)>,
}

impl Log {
    fn push(&mut self, at: Timestamp, n: u32) {
        match self.entries.back_mut() {
            Some((t, k)) if *t >= at => *k += n,
            _ => self.entries.push_back((at, n)),
        }
        while self
            .entries
            .front()
            .is_some_and(|(t, _)| at.since(*t) > KEEP)
        {
            self.entries.pop_front();
        }
        if self.entries.len() > LOG_CAP {
            // The older half merges in pairs, each pair at its later time: counts then age
            // out a little late, never early.
            let half = self.entries.len() / 2;
            let mut merged: VecDeque<(Timestamp, u32)> = VecDeque::with_capacity(LOG_CAP);
            let mut i = 0;
            while i < half {
                let (t0, n0) = self.entries[i];
                match self.entries.get(i + 1).filter(|_| i + 1 < half) {
                    Some(&(t1, n1)) => merged.push_back((t1.max(t0), n0 + n1)),
                    None => merged.push_back((t0, n0)),
                }
                i += 2;
            }
            merged.extend(self.entries.iter().skip(half).copied());
            self.entries = merged;
        }
    }

    /// Accepted in `(to - span, to]`.
    fn count(&self, to: Timestamp, span: Duration) -> u32 {
        self.within(to, span).map(|(_, n)| n).sum()
    }

    /// The entries in `(to - span, to]`, newest first.
    fn within(&self, to: Timestamp, span: Duration) -> impl Iterator<Item = (Timestamp, u32)> {
        self.entries
            .iter()
            .rev()
            .skip_while(move |(t, _)| *t > to)
            .take_while(move |(t, _)| to.since(*t) < span)
            .copied()
    }

    /// The oldest acceptance in `(to - span, to]`.
    fn oldest(&self, to: Timestamp, span: Duration) -> Option<Timestamp> {
        self.within(to, span).last().map(|(t, _)| t)
    }

    /// When the window `(t - span, t]` will hold at most `keep` of what it holds at `now`:
    /// the time the entry that must age out does, plus the margin.
    fn frees(&self, now: Timestamp, span: Duration, keep: u32) -> Option<Timestamp> {
        let mut newer = 0;
        for (t, n) in self.within(now, span) {
            newer += n;
            if newer > keep {
                return Some(t + span + MARGIN);
            }
        }
        None
    }
}

/// The learned allowance of one destination.
#[derive(Debug, Default)]
pub struct Allowance {
    log: Log,
    /// Learned windows, shortest first.
    windows: Vec<Window>,
    search: Option<Search>,
    trial: Option<Trial>,
    /// Refusals of deliveries that started before this are old news.
    reacted_at: Option<Timestamp>,
    /// The last start let through.
    last_start: Option<Timestamp>,
    /// How far back before a refusal the exhausted run may have begun (beyond the probe's
    /// delay): zero for a destination, whose runs are bursts; longer for a mailbox, whose
    /// mail may trickle in at its limit.
    lookback: Duration,
    /// Refused inside a learned window: until one is accepted again, one goes at a time,
    /// so the next refusal (a smoothed rate that counts refusals, a window still full) costs
    /// one attempt, not one per connection.
    wary: bool,
}

impl Allowance {
    pub fn new() -> Allowance {
        Allowance::default()
    }

    /// An allowance that knows when the receiver accepted before (oldest first), and
    /// looks that far back for the run a refusal ends.
    pub fn with_history(
        lookback: Duration,
        accepted: impl IntoIterator<Item = Timestamp>,
    ) -> Allowance {
        let mut a = Allowance {
            lookback,
            ..Allowance::default()
        };
        for t in accepted {
            a.log.push(t, 1);
        }
        a
    }

    /// Starts from a window learned elsewhere (`n` in `w`: another mailbox of the same
    /// receiver, which limits every mailbox alike), refused at `now`: the window is taken
    /// as full now, so nothing goes before it has passed, and no search is needed.
    pub fn assume(&mut self, now: Timestamp, n: u32, w: Duration) {
        let held = self.log.count(now, w);
        if held < n {
            self.log.push(now, n - held);
        }
        self.windows = vec![Window {
            n,
            w,
            lo: w,
            raised_at: now,
            raising: None,
            found: w,
            smooth: false,
            uncounted: false,
        }];
        self.reacted_at = Some(now);
    }

    /// The shortest window learned and counted, as (`n`, `w`).
    pub fn learned(&self) -> Option<(u32, Duration)> {
        self.windows
            .iter()
            .find(|w| !w.uncounted)
            .map(|w| (w.n, w.w))
    }

    /// May a delivery start at `now`, with `busy` deliveries in flight?
    pub fn admit(&mut self, now: Timestamp, busy: usize) -> Verdict {
        if let Some(s) = self.search {
            if s.out.is_some() {
                return Verdict::AwaitReport;
            }
            let at = self.probe_at(&s);
            if now < at {
                return Verdict::Until(at);
            }
            self.search = Some(Search {
                out: Some(now),
                ..s
            });
            return Verdict::Probe;
        }
        if self.wary && busy > 0 {
            return Verdict::AwaitReport;
        }
        let busy = busy as u32;
        // A smoothing receiver: one start per `w / n`.
        let spaced = self
            .windows
            .iter()
            .filter(|w| w.smooth)
            .filter_map(|w| Some(self.last_start? + w.w / (w.n + u32::from(w.raising.is_some()))))
            .max()
            .filter(|&t| t > now);
        if let Some(t) = spaced {
            return Verdict::Until(t);
        }
        let mut until: Option<Timestamp> = None;
        let mut binding = 0;
        let mut trial: Option<(usize, Timestamp, Timestamp)> = None;
        for (i, win) in self.windows.iter().enumerate() {
            if win.uncounted {
                if busy > 0 {
                    return Verdict::AwaitReport;
                }
                continue;
            }
            let n = win.n + u32::from(win.raising.is_some());
            let held = self.log.count(now, win.w);
            if held + busy < n {
                continue;
            }
            let Some(free) = (busy < n)
                .then(|| self.log.frees(now, win.w, n - busy - 1))
                .flatten()
            else {
                return Verdict::AwaitReport;
            };
            binding += 1;
            until = Some(until.map_or(free, |u| u.max(free)));
            // A smoothing receiver's window is a rate, not a length to find.
            if !win.settled()
                && !win.smooth
                && self.trial.is_none()
                && let Some(from) = self.log.oldest(now, win.w)
            {
                // Just short of the window: accepted, the window shrinks a twentieth and
                // the next trial goes shorter again; refused, the length is known within
                // a twentieth. One refusal settles it, however long the descent. (Trials
                // halfway or a quarter of the way towards the bound known too short came
                // down faster from a window the probes found three times too long, but
                // cost refusals against buckets and fixed windows: docs/benchmarks.md.)
                let short = win.w.mul_f64(1.0 - SETTLED_SHARE).max(win.lo);
                trial = Some((i, from, from + short));
            }
        }
        let Some(until) = until else {
            self.last_start = Some(now);
            return Verdict::Go;
        };
        // Mail waits on a window: now and then its count is tried one higher.
        self.waiting(now);
        // A trial goes only when every other window would let it.
        if let Some((i, from, at)) = trial
            && at < until
            && binding == 1
        {
            if now < at {
                return Verdict::Until(at);
            }
            self.trial = Some(Trial {
                window: i,
                from,
                at: now,
            });
            self.last_start = Some(now);
            return Verdict::Probe;
        }
        Verdict::Until(until)
    }

    /// A delivery that started at `started` reported at `now`: `accepted` recipients taken,
    /// `over` when it was refused for rate (or answered so slowly that the receiver is
    /// holding back), `probe` when it was the start [`Verdict::Probe`] let out.
    pub fn report(
        &mut self,
        now: Timestamp,
        started: Timestamp,
        accepted: u32,
        over: bool,
        probe: bool,
    ) {
        if accepted > 0 {
            self.log.push(now, accepted);
        }
        if over {
            self.refused(now, started, probe);
        } else {
            self.clean(now, started, probe);
        }
    }

    fn clean(&mut self, now: Timestamp, started: Timestamp, probe: bool) {
        // Accepted, and started after the refusal (not merely in flight before it).
        if self.reacted_at.is_none_or(|t| started >= t) {
            self.wary = false;
        }
        if probe && let Some(s) = self.search.take_if(|s| s.out.is_some()) {
            self.found(s, started);
        } else if probe && let Some(t) = self.trial.take() {
            // Accepted this long after the window's oldest: the window is no longer.
            if let Some(win) = self.windows.get_mut(t.window) {
                win.w = t.at.since(t.from).max(win.lo).min(win.w);
            }
        }
        for win in &mut self.windows {
            if let Some(since) = win.raising
                && self.log.count(now, win.w) > win.n
                && self.log.oldest(now, win.w).is_some_and(|t| t >= since)
            {
                // One more than the count went through within one window.
                win.n += 1;
                win.raising = None;
                win.raised_at = now;
            }
        }
    }

    /// A probe's search found the window: the probe started at `at` was accepted.
    fn found(&mut self, s: Search, at: Timestamp) {
        let delay = at.since(s.refused_at);
        // The exhausted run: what was accepted within the probe's delay before the refusal
        // (the window cannot be much longer than that span).
        let span = Duration::from_secs(LADDER[s.step])
            .max(delay)
            .max(self.lookback);
        let start = self.log.oldest(s.refused_at, span);
        let run = start.map_or(Duration::ZERO, |t| s.refused_at.since(t));
        // Everything accepted from the run's start until the probe: deliveries in flight
        // at the refusal that were accepted after it belong to the exhausted window too.
        let before_probe = at.since(s.refused_at) + run;
        let n = self
            .log
            .count(at, before_probe + Duration::from_micros(1))
            .max(1);
        let w = (delay + run).max(s.above + MARGIN);
        let previous = match s.tried.is_zero() {
            true => Duration::ZERO,
            false => s.tried + run,
        };
        let win = Window {
            n,
            w,
            lo: previous.max(s.above).min(w),
            raised_at: at,
            raising: None,
            found: w,
            smooth: false,
            uncounted: start.is_none() && !self.lookback.is_zero(),
        };
        self.windows.retain(|x| x.w < win.w);
        self.windows.push(win);
        self.windows.sort_by_key(|x| x.w);
    }

    fn refused(&mut self, now: Timestamp, started: Timestamp, probe: bool) {
        if let Some(s) = &mut self.search {
            if probe && let Some(out) = s.out.take() {
                s.tried = out.since(s.refused_at);
                s.step = (s.step + 1).min(LADDER.len() - 1);
            }
            return;
        }
        if probe && let Some(t) = self.trial.take() {
            if let Some(win) = self.windows.get_mut(t.window) {
                win.lo = t.at.since(t.from).min(win.w);
            }
            self.reacted_at = Some(now);
            self.wary = true;
            return;
        }
        if self.reacted_at.is_some_and(|t| started < t) {
            // In flight when knock already reacted: the same event.
            return;
        }
        self.reacted_at = Some(now);
        self.wary = true;
        for win in &mut self.windows {
            if win.raising.take().is_some() {
                // One more was too many: the count stands, and is not tried again soon.
                win.raised_at = now;
                return;
            }
        }
        // Refused with the windows empty, but with mail taken within the length the probes
        // found: the trials shortened a window too far (a fixed window starts where the
        // receiver's count began, not where knock's ends), not a longer window full.
        let shortened = self.windows.iter().position(|win| {
            win.w < win.found
                && self.log.count(now, win.w) == 0
                && self.log.count(now, win.found) > 0
        });
        if let Some(i) = shortened {
            let win = &mut self.windows[i];
            win.w = win.w.mul_f64(1.1).min(win.found);
            win.lo = win.w;
            return;
        }
        let longest = self.windows.last().map(|w| w.w);
        match longest {
            Some(w) if self.log.count(now, w) > 0 => {
                // Refused with the windows not full: the shortest one holding anything
                // allows fewer than learned.
                if let Some(win) = self
                    .windows
                    .iter_mut()
                    .find(|win| self.log.count(now, win.w) > 0)
                {
                    if win.uncounted {
                        // The first count: what the window held when it refused.
                        win.n = self.log.count(now, win.w).max(1);
                        win.uncounted = false;
                        win.raised_at = now;
                        return;
                    }
                    if win.w < win.found {
                        // The trials shortened it too far: a tenth longer, and settled.
                        win.w = win.w.mul_f64(1.1).min(win.found);
                        win.lo = win.w;
                        return;
                    }
                    // The rate halves at most, and never below what the window held: a
                    // bucket or a smoothed rate is found in a few refusals, a window that
                    // was only a little off keeps most of its count. A small count is not
                    // cut further (one a window is too coarse to pace by): its window
                    // grows instead.
                    win.smooth = true;
                    let held = self.log.count(now, win.w);
                    let target = (win.n / 2).max(held).min(win.n.saturating_sub(1)).max(1);
                    if target >= MIN_COUNT || win.n <= target {
                        win.n = target;
                    } else {
                        let keep = win.n.min(MIN_COUNT);
                        win.w = win.w.mul_f64(keep as f64 / target as f64);
                        win.lo = win.w;
                        win.n = keep;
                    }
                    win.raised_at = now;
                }
            }
            _ => self.search(now, longest.unwrap_or_default()),
        }
    }

    fn search(&mut self, now: Timestamp, above: Duration) {
        let step = LADDER
            .iter()
            .position(|&s| Duration::from_secs(s) > above)
            .unwrap_or(LADDER.len() - 1);
        self.search = Some(Search {
            refused_at: now,
            step,
            out: None,
            above,
            tried: Duration::ZERO,
        });
    }

    /// When the search's next probe goes. At the step's delay after the refusal, the
    /// latest a window of the step's length can free up; but where the exhausted run began
    /// less than that length before the refusal (a burst after a quiet spell: the first
    /// contact, a campaign), a window of that length counted from the run's first
    /// acceptance (a fixed window opened by it, a sliding window) frees when that
    /// acceptance is the length old, and the probe goes then: the window is then found at
    /// its length, not the run's length too long, and mail waits no longer than it must.
    /// Never earlier than the previous step's delay, so a probe is never spent on a
    /// length already known too short. (A mailbox's trickle has no such runs.)
    fn probe_at(&self, s: &Search) -> Timestamp {
        let length = Duration::from_secs(LADDER[s.step]);
        let latest = s.refused_at + length;
        if s.step == 0 || !self.lookback.is_zero() {
            return latest;
        }
        let floor = s.refused_at + Duration::from_secs(LADDER[s.step - 1]).max(s.tried);
        match self.log.oldest(s.refused_at, length) {
            Some(first) if first + length + MARGIN > floor => (first + length + MARGIN).min(latest),
            _ => latest,
        }
    }

    /// The earliest a start could go, as the search and the windows tell now (no trial,
    /// no deliveries in flight counted).
    pub fn ready_at(&self, now: Timestamp) -> Timestamp {
        if let Some(s) = &self.search {
            return self.probe_at(s).max(now);
        }
        self.windows
            .iter()
            .filter(|win| !win.uncounted)
            .filter_map(|win| self.log.frees(now, win.w, win.n.saturating_sub(1)))
            .fold(now, Timestamp::max)
    }

    /// A probe or trial that will not report (its worker was lost): another may go.
    pub fn probe_lost(&mut self) {
        if let Some(s) = &mut self.search {
            s.out = None;
        }
        self.trial = None;
    }

    /// While mail waits on a window and nothing was refused for a while, the count is tried
    /// one higher.
    fn waiting(&mut self, now: Timestamp) {
        if self.search.is_some() {
            return;
        }
        for win in &mut self.windows {
            // A smoothing receiver forgives a step too far sooner than a window that must
            // pass: its count is tried higher more often.
            let every = match win.smooth {
                true => (win.w * RAISE_EVERY_SMOOTH).max(RAISE_MIN_SMOOTH),
                // A mailbox's rate is the receiver's fixed policy, not a reputation that
                // grows: once its window is settled, trying it higher costs a refusal and
                // seldom finds more.
                false if !self.lookback.is_zero() => (win.w * RAISE_EVERY_MAILBOX).max(RAISE_MIN),
                false => (win.w * RAISE_EVERY).max(RAISE_MIN),
            };
            if win.raising.is_none()
                && !win.uncounted
                && (win.settled() || win.smooth)
                && now.since(win.raised_at) >= every
            {
                win.raising = Some(now);
                win.raised_at = now;
                return;
            }
        }
    }

    /// Whether a search holds all mail back.
    pub fn searching(&self) -> bool {
        self.search.is_some()
    }

    /// Recipients per second the learned windows allow, if any were learned.
    pub fn rate(&self) -> Option<f64> {
        self.windows
            .iter()
            .filter(|w| !w.uncounted)
            .map(|w| w.n as f64 / w.w.as_secs_f64())
            .min_by(f64::total_cmp)
    }

    pub fn view(&self, now: Timestamp) -> AllowanceView {
        AllowanceView {
            windows: self
                .windows
                .iter()
                .map(|w| WindowView {
                    count: w.n,
                    seconds: (w.w.as_secs_f64() * 1000.0).round() / 1000.0,
                    settled: w.settled(),
                    used: self.log.count(now, w.w),
                })
                .collect(),
            probing_since: self.search.map(|s| s.refused_at),
            next_probe_in_seconds: self
                .search
                .filter(|s| s.out.is_none())
                .map(|s| self.probe_at(&s).since(now).as_secs_f64()),
        }
    }
}

/// The allowance as the API shows it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct AllowanceView {
    /// Learned windows, shortest first: at most `count` in any `seconds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowView>,
    /// Refused with no window to explain it: probing since then, one message at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probing_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_probe_in_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct WindowView {
    pub count: u32,
    pub seconds: f64,
    /// The length is known closely (bisection is over).
    pub settled: bool,
    /// Accepted within the window now.
    pub used: u32,
}

impl AllowanceView {
    /// In words, for the command line and `knock diagnose`: "at most 90 in any 10s (37
    /// used now)", "probing since …, next probe in 8s"; `None` when nothing was learned.
    pub fn describe(&self) -> Option<String> {
        if let Some(since) = self.probing_since {
            let next = match self.next_probe_in_seconds {
                Some(s) if s > 0.0 => format!(", next probe in {}", seconds(s)),
                _ => ", probe out".to_string(),
            };
            return Some(format!("refused; probing since {since}{next}"));
        }
        if self.windows.is_empty() {
            return None;
        }
        let windows: Vec<String> = self
            .windows
            .iter()
            .map(|w| {
                let about = if w.settled { "" } else { "about " };
                format!(
                    "at most {} in any {about}{} ({} used now)",
                    w.count,
                    seconds(w.seconds),
                    w.used
                )
            })
            .collect();
        Some(format!("learned: {}", windows.join(" and ")))
    }
}

/// A length of time for people, as the rest of knock writes one: "10s 20ms", "1h".
fn seconds(s: f64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis((s * 1000.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_past_a_window_the_trials_shortened_lengthens_it_instead_of_searching() {
        let t0 = Timestamp(1_000_000);
        let mut a = Allowance::new();
        a.windows.push(Window {
            n: 50,
            w: Duration::from_millis(945),
            lo: Duration::from_millis(898),
            raised_at: t0,
            raising: None,
            found: Duration::from_millis(1234),
            smooth: false,
            uncounted: false,
        });
        // 50 taken a second ago: outside the shortened window, inside what the probes
        // found. The receiver's window (a second) had not passed.
        a.log.push(t0, 50);
        let now = t0 + Duration::from_millis(1000);
        a.report(now, now, 0, true, false);
        assert!(!a.searching(), "no search for a longer window");
        assert_eq!(a.windows.len(), 1);
        assert!(
            a.windows[0].w > Duration::from_millis(1000),
            "{:?}",
            a.windows[0]
        );
    }

    #[test]
    fn the_allowance_in_words() {
        assert_eq!(AllowanceView::default().describe(), None);
        let v = AllowanceView {
            windows: vec![
                WindowView {
                    count: 90,
                    seconds: 10.02,
                    settled: true,
                    used: 37,
                },
                WindowView {
                    count: 500,
                    seconds: 3600.0,
                    settled: false,
                    used: 12,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            v.describe().unwrap(),
            "learned: at most 90 in any 10s 20ms (37 used now) and at most 500 in any about 1h (12 used now)"
        );
        let probing = AllowanceView {
            probing_since: Some(Timestamp(0)),
            next_probe_in_seconds: Some(8.0),
            ..Default::default()
        };
        assert!(probing.describe().unwrap().ends_with("next probe in 8s"));
    }
}
