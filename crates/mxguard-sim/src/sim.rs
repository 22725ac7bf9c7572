//! The simulation: one message, one sender, one outage.
//!
//! Time runs in whole seconds from the moment the sender first tries the
//! message (its arrival in the sender's queue). The outage began `start`
//! seconds before that and ends at `recovery`; an attempt at or after
//! `recovery` succeeds, every earlier one fails.

use crate::profile::{Bounce, LifetimeFrom, Profile, Retry, RetryRule, WarnAt};

/// At most this many attempts in one message's life: a profile that would
/// make more is refused as implausible (and would swamp the output).
pub const MAX_ATTEMPTS: usize = 10_000;

/// An outage, and when in it the message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// How long the destination refuses mail.
    pub outage: u64,
    /// How far into the outage the message is sent (0: as it begins).
    pub start: u64,
}

impl Scenario {
    /// A scenario whose message is sent `start` seconds into an outage of
    /// `outage` seconds; the message must be sent before the outage ends.
    pub fn new(outage: u64, start: u64) -> Result<Scenario, String> {
        if outage == 0 {
            return Err("the outage must last more than 0 seconds".into());
        }
        if start >= outage {
            return Err(format!(
                "the message is sent {} into an outage of {}: it would find the destination up; the start must be within the outage",
                crate::format_secs(start),
                crate::format_secs(outage)
            ));
        }
        Ok(Scenario { outage, start })
    }

    /// When the destination is back, from the message's first attempt.
    pub fn recovery(&self) -> u64 {
        self.outage - self.start
    }
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Run {
    /// The attempts that failed, in order.
    pub attempts: Vec<u64>,
    /// When delay warnings went to the sender.
    pub warnings: Vec<u64>,
    /// When the sender gave up and returned the message.
    pub bounced_at: Option<u64>,
    /// When the attempt that delivered it was made.
    pub delivered_at: Option<u64>,
}

impl Run {
    /// When the message's fate was settled, delivered or bounced.
    pub fn end(&self) -> Option<u64> {
        self.delivered_at.or(self.bounced_at)
    }
}

/// What a sender does next with a message it could not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Try at `at`; with `last`, a failure then returns the message.
    Try { at: u64, last: bool },
    /// Return the message at `at` without trying again.
    GiveUp { at: u64 },
}

fn try_at(at: u64) -> Step {
    Step::Try { at, last: false }
}

/// The next attempt after each failure.
trait Schedule {
    /// When the message is first tried.
    fn first(&mut self) -> Step {
        try_at(0)
    }
    /// The attempt at `t` failed: what next?
    fn next(&mut self, t: u64) -> Step;
}

struct Intervals<'a> {
    gaps: &'a [crate::Secs],
    n: usize,
}

impl Schedule for Intervals<'_> {
    fn next(&mut self, t: u64) -> Step {
        let gap = self.gaps[self.n.min(self.gaps.len() - 1)].0;
        self.n += 1;
        try_at(t + gap)
    }
}

/// The first multiple of `period` (counted from `origin`) at or after `t`.
fn align(t: i64, origin: i64, period: u64) -> i64 {
    if period == 0 {
        return t;
    }
    let p = period as i64;
    let since = t - origin;
    origin + since.div_euclid(p) * p + if since.rem_euclid(p) == 0 { 0 } else { p }
}

struct Backoff {
    min: u64,
    max: u64,
    scan: u64,
}

impl Backoff {
    /// Postfix's qmgr: a message deferred at age `t` gets its queue file's
    /// time set to `t + clamp(t, min, max)`, and a scan takes a file whose
    /// time is at most a second ahead of its clock (whole seconds), so the
    /// attempt comes at the first scan at or after one second before that.
    /// At the default 300 s scan the second disappears in the alignment;
    /// scaled down to seconds it is what real Postfix does.
    fn next_after(&self, t: u64) -> u64 {
        let due = t + t.clamp(self.min, self.max);
        let take = due.saturating_sub(1).max(t + 1);
        align(take as i64, 0, self.scan) as u64
    }
}

impl Schedule for Backoff {
    fn next(&mut self, t: u64) -> Step {
        try_at(self.next_after(t))
    }
}

impl crate::profile::Retry {
    /// For a schedule that depends only on the message's age (Postfix's
    /// backoff, Sendmail's queue runs, OpenSMTPD's quadratic backoff): the
    /// next attempt after one that failed at age `t`. `None` for the
    /// schedules that also depend on the attempts before (interval lists,
    /// Exim's retry rules).
    pub fn next_after(&self, t: u64) -> Option<u64> {
        match self {
            crate::profile::Retry::Backoff {
                min,
                max,
                queue_run,
            } => Some(
                Backoff {
                    min: min.0,
                    max: max.0,
                    scan: queue_run.0,
                }
                .next_after(t),
            ),
            crate::profile::Retry::QueueRun { interval } => Some(
                QueueRuns {
                    interval: interval.0,
                }
                .next_after(t),
            ),
            crate::profile::Retry::Quadratic { base } => {
                Some(Quadratic { base: base.0, n: 0 }.next_after(t))
            }
            crate::profile::Retry::Intervals { .. } | crate::profile::Retry::Rules { .. } => None,
        }
    }
}

struct Quadratic {
    base: u64,
    n: u64,
}

impl Quadratic {
    fn next_after(&mut self, t: u64) -> u64 {
        loop {
            self.n += 1;
            let at = self.base * self.n * self.n;
            if at > t {
                return at;
            }
        }
    }
}

impl Schedule for Quadratic {
    fn next(&mut self, t: u64) -> Step {
        try_at(self.next_after(t))
    }
}

struct QueueRuns {
    interval: u64,
}

impl QueueRuns {
    fn next_after(&self, t: u64) -> u64 {
        align(t as i64 + 1, 0, self.interval) as u64
    }
}

impl Schedule for QueueRuns {
    fn next(&mut self, t: u64) -> Step {
        try_at(self.next_after(t))
    }
}

/// Exim's retry data for one destination: the rules are counted from its
/// first failure, which may predate the message; a rule applies while the
/// destination has been failing for no longer than its cut-off; each gap
/// of a G rule is the previous gap (the shorter of the one planned and the
/// one that actually passed) times the factor, and never less than the
/// rule's interval. Attempts happen on queue runs.
///
/// Past the last cut-off Exim gives up. A failure after the destination
/// has been failing for longer than the cut-off marks its retry data
/// expired and returns the message tried. A message older than the
/// cut-off is tried at the next queue run whether or not the retry time
/// has come. While the data is expired and the retry time not reached, a
/// message is returned untried (`delay_after_cutoff`).
///
/// A message sent into an outage under way (`--start`) meets retry data
/// other mail made: a sender that mails the domain often, whose oldest
/// queued message dates from the outage's start (for a quiet sender use
/// `--start 0`). That older mail is tried at every queue run once it is
/// older than the cut-off, and its failure expires the data for ours.
struct Exim<'a> {
    rules: &'a [RetryRule],
    queue_run: u64,
    /// The last rule's cut-off.
    cutoff: i64,
    /// Times relative to the message's arrival: the destination may have
    /// been failing before it.
    first_failed: i64,
    last_try: i64,
    next_try: i64,
    /// Whether the destination has failed yet (retry data exists).
    failing: bool,
    /// Its retry data is past the cut-off.
    expired: bool,
    /// Older mail for the destination is queued (sent since the outage
    /// began).
    older_mail: bool,
}

impl<'a> Exim<'a> {
    fn new(rules: &'a [RetryRule], queue_run: u64, start: u64) -> Exim<'a> {
        let mut e = Exim {
            rules,
            queue_run,
            cutoff: rules.last().map_or(0, |r| r.cutoff as i64),
            first_failed: 0,
            last_try: 0,
            next_try: 0,
            failing: false,
            expired: false,
            older_mail: start > 0,
        };
        if start > 0 {
            // Replay the destination's attempts before our message arrives.
            let mut at = -(start as i64);
            while at < 0 {
                e.fail(at);
                let retry = e.run_at_or_after(e.next_try);
                at = retry.min(e.older_mail_run(at));
            }
        }
        e
    }

    fn run_at_or_after(&self, t: i64) -> i64 {
        align(t, self.first_failed, self.queue_run)
    }

    /// The first queue run after `after` at which the older mail, older
    /// than the cut-off by then, tries the destination.
    fn older_mail_run(&self, after: i64) -> i64 {
        if self.older_mail && self.failing {
            self.run_at_or_after((after + 1).max(self.first_failed + self.cutoff + 1))
        } else {
            i64::MAX
        }
    }

    fn past_cutoff(&self, t: i64) -> bool {
        self.failing && t - self.first_failed > self.cutoff
    }

    /// Updates the retry data after a failure at `now`.
    fn fail(&mut self, now: i64) {
        let first = !self.failing;
        if first {
            self.first_failed = now;
            self.failing = true;
        }
        if self.past_cutoff(now) {
            self.expired = true;
        }
        let failing = (now - self.first_failed) as u64;
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| failing <= r.cutoff)
            .or(self.rules.last())
            .copied()
        else {
            return;
        };
        let gap = if rule.geometric && !first {
            let planned = self.next_try - self.last_try;
            let actual = now - self.last_try;
            let last = planned.min(actual).max(0);
            if last < rule.interval as i64 {
                rule.interval as i64
            } else {
                (last as f64 * rule.factor) as i64
            }
        } else {
            rule.interval as i64
        };
        self.last_try = now;
        self.next_try = now + gap;
    }

    /// Our message's next step after `now`, given its own next attempt at
    /// `ours`: older mail may get there first and expire the data.
    fn step(&self, now: i64, ours: i64) -> Step {
        let older = self.older_mail_run(now);
        if older < ours && self.past_cutoff(older) {
            // The older mail fails there; ours is returned untried.
            return Step::GiveUp { at: older as u64 };
        }
        Step::Try {
            at: ours as u64,
            last: self.past_cutoff(ours),
        }
    }
}

impl Schedule for Exim<'_> {
    fn first(&mut self) -> Step {
        if !self.failing || self.next_try <= 0 {
            // No retry data, or its retry time has come: tried at once.
            return Step::Try {
                at: 0,
                last: self.past_cutoff(0),
            };
        }
        if self.expired {
            // delay_after_cutoff: returned at once, untried.
            return Step::GiveUp { at: 0 };
        }
        // Not tried until the destination's retry time has come.
        self.step(0, self.run_at_or_after(self.next_try))
    }

    fn next(&mut self, t: u64) -> Step {
        let now = t as i64;
        self.fail(now);
        let mut at = self.run_at_or_after(self.next_try);
        // A message older than the cut-off is tried at the next queue run
        // even before the retry time, and returned if that fails.
        let too_old = self.run_at_or_after((now + 1).max(self.cutoff + 1));
        if too_old < at {
            at = too_old;
        }
        self.step(now, at)
    }
}

/// The message's life with this sender in this outage; `recovery = None`
/// is an outage that never ends.
pub fn simulate(profile: &Profile, start: u64, recovery: Option<u64>) -> Run {
    let mut schedule: Box<dyn Schedule + '_> = match &profile.retry {
        Retry::Intervals { intervals } => Box::new(Intervals {
            gaps: intervals,
            n: 0,
        }),
        Retry::Backoff {
            min,
            max,
            queue_run,
        } => Box::new(Backoff {
            min: min.0,
            max: max.0,
            scan: queue_run.0,
        }),
        Retry::Rules { rules, queue_run } => Box::new(Exim::new(rules, queue_run.0, start)),
        Retry::Quadratic { base } => Box::new(Quadratic { base: base.0, n: 0 }),
        Retry::QueueRun { interval } => Box::new(QueueRuns {
            interval: interval.0,
        }),
    };
    // The give-up time, from the message's arrival; Exim's schedule
    // decides its own.
    let counted_from = match profile.lifetime_from {
        LifetimeFrom::Message => 0,
        LifetimeFrom::Destination => start,
    };
    let deadline = match profile.retry {
        Retry::Rules { .. } => u64::MAX,
        _ => profile.lifetime.0.saturating_sub(counted_from),
    };
    let max_attempts = profile
        .max_attempts
        .map_or(MAX_ATTEMPTS, |m| (m as usize).min(MAX_ATTEMPTS));

    let mut run = Run::default();
    let mut step = schedule.first();
    loop {
        let (t, last) = match step {
            Step::GiveUp { at } => {
                // The sender looks at the destination then: if it is back
                // (other mail got through), ours goes too.
                if recovery.is_some_and(|r| at >= r) {
                    run.delivered_at = Some(at);
                } else {
                    run.bounced_at = Some(at);
                }
                break;
            }
            Step::Try { at, last } => (at, last),
        };
        match profile.bounce {
            Bounce::AtLifetime if t >= deadline => {
                run.bounced_at = Some(deadline);
                break;
            }
            Bounce::NextSlot if t >= deadline => {
                run.bounced_at = Some(t);
                break;
            }
            _ => {}
        }
        if recovery.is_some_and(|r| t >= r) {
            run.delivered_at = Some(t);
            break;
        }
        run.attempts.push(t);
        if last
            || (profile.bounce == Bounce::NextAttempt && t >= deadline)
            || run.attempts.len() >= max_attempts
        {
            run.bounced_at = Some(t);
            break;
        }
        step = schedule.next(t);
    }
    run.warnings = warning_times(profile, &run);
    run
}

/// The delay warnings a sender sends before the message's fate is
/// settled.
fn warning_times(profile: &Profile, run: &Run) -> Vec<u64> {
    let end = run.end().unwrap_or(u64::MAX);
    // The ages the warnings are set for.
    let mut ages: Vec<u64> = profile.warn.iter().map(|w| w.0).collect();
    if let (Some(repeat), Some(last)) = (profile.warn_repeat, profile.warn.last()) {
        let mut w = last.0 + repeat.0;
        while w < end && ages.len() < MAX_ATTEMPTS {
            ages.push(w);
            w += repeat.0;
        }
    }
    let mut out: Vec<u64> = Vec::new();
    for age in ages {
        let at = match profile.warn_at {
            WarnAt::Age => Some(age).filter(|&a| a < end),
            WarnAt::NextAttempt => run.attempts.iter().copied().find(|&a| a >= age),
            WarnAt::PreviousAttempt => {
                // The failed attempt after which the next one (or the
                // delivery) is due at or after `age`.
                let next_of = |i: usize| run.attempts.get(i + 1).copied().or(run.delivered_at);
                (0..run.attempts.len())
                    .find(|&i| run.attempts[i] < age && next_of(i).is_some_and(|n| n >= age))
                    .map(|i| run.attempts[i])
            }
        };
        // Before the message is delivered or returned; at most one
        // warning per attempt.
        if let Some(at) = at.filter(|&a| a < end)
            && out.last() != Some(&at)
        {
            out.push(at);
        }
    }
    out
}

/// The longest outage (beginning when the message is sent) after which
/// this sender still delivers: the time of its last attempt before it
/// gives up.
pub fn covered(profile: &Profile) -> u64 {
    let run = simulate(profile, 0, None);
    run.attempts.last().copied().unwrap_or(0)
}
