//! When a live backup point stops copying and stops the guest: a pure
//! decision (no KVM, no threads, no clock), fed each pre-copy round's
//! outcome, as `fleet/scheduler.rs` is fed events.
//!
//! A round harvests the dirty log and copies the pages it names while the
//! guest runs; the pages dirtied meanwhile are the next round's. The guest
//! is stopped for the last set, so the planner stops once that set is
//! cheap to copy (it fits [`Policy::copy_budget`] at the copy rate the rounds
//! showed), or when more rounds would not help: the set stopped shrinking
//! for three rounds in a row (the guest dirties as fast as the rounds copy,
//! so the last set is its working set whatever is done), or the rounds or
//! their time ran out.

use std::time::Duration;

/// What bounds the rounds of one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Longest copy of the last set the guest waits for.
    pub copy_budget: Duration,
    /// Most rounds per point.
    pub max_rounds: u32,
    /// Most time spent in rounds per point.
    pub max_time: Duration,
}

/// The policy of `tandem run --backup-mode precopy`.
/// Rounds shrink the set geometrically while copying outruns the guest's
/// dirtying (each first write after a harvest costs the guest a fault, so
/// it cannot dirty fast), however slowly a loaded host copies: the limits
/// are generous so a slow round is followed by a smaller one, not by a
/// stop with a large set.
pub const POLICY: Policy = Policy {
    copy_budget: Duration::from_micros(200),
    max_rounds: 16,
    max_time: Duration::from_secs(2),
};

/// A round's set counts as shrinking while it is below this share of the
/// smallest set so far (in percent).
const SHRINK_PERCENT: u64 = 90;
/// Rounds in a row that may fail to shrink the set before the rounds stop
/// (one or two may be rounds the host was slow in, or a burst).
const STALLS: u32 = 3;
/// Copy cost per page assumed before any round has measured one.
const ASSUMED_NANOS_PER_PAGE: u64 = 1_000;

/// One finished round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Pages its dirty log named (and it copied).
    pub pages: u64,
    /// How long it took, harvest and copies.
    pub took: Duration,
}

/// Why the rounds stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The last set is cheap enough to copy with the guest stopped.
    Converged,
    /// The set stopped shrinking.
    NotShrinking,
    /// [`Policy::max_rounds`] reached.
    RoundLimit,
    /// [`Policy::max_time`] reached.
    TimeLimit,
}

/// What to do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Copy again while the guest runs.
    AnotherRound,
    /// Stop the guest for the last set.
    StopNow(StopReason),
}

/// The rounds of one point so far.
#[derive(Debug, Clone)]
pub struct Planner {
    policy: Policy,
    rounds: u32,
    elapsed: Duration,
    copied_pages: u64,
    copy_time: Duration,
    smallest: Option<u64>,
    stalls: u32,
}

impl Planner {
    /// A point's planner, before its first round.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            rounds: 0,
            elapsed: Duration::ZERO,
            copied_pages: 0,
            copy_time: Duration::ZERO,
            smallest: None,
            stalls: 0,
        }
    }

    /// Rounds decided on so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Copy time of `pages` at the rate the rounds showed.
    fn copy_estimate(&self, pages: u64) -> Duration {
        let per_page = if self.copied_pages == 0 {
            ASSUMED_NANOS_PER_PAGE
        } else {
            u64::try_from(self.copy_time.as_nanos() / u128::from(self.copied_pages))
                .unwrap_or(u64::MAX)
        };
        Duration::from_nanos(per_page.saturating_mul(pages))
    }

    /// Takes `round`'s outcome and says what comes next.
    pub fn decide(&mut self, round: Round) -> Decision {
        self.rounds += 1;
        self.elapsed += round.took;
        if round.pages > 0 {
            self.copied_pages += round.pages;
            self.copy_time += round.took;
        }
        if self.copy_estimate(round.pages) <= self.policy.copy_budget {
            return Decision::StopNow(StopReason::Converged);
        }
        match self.smallest {
            Some(min) if round.pages.saturating_mul(100) >= min.saturating_mul(SHRINK_PERCENT) => {
                self.stalls += 1;
                if self.stalls >= STALLS {
                    return Decision::StopNow(StopReason::NotShrinking);
                }
            }
            _ => {
                self.stalls = 0;
                self.smallest = Some(round.pages);
            }
        }
        if self.rounds >= self.policy.max_rounds {
            return Decision::StopNow(StopReason::RoundLimit);
        }
        if self.elapsed >= self.policy.max_time {
            return Decision::StopNow(StopReason::TimeLimit);
        }
        Decision::AnotherRound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn round(pages: u64, micros: u64) -> Round {
        Round {
            pages,
            took: Duration::from_micros(micros),
        }
    }

    #[test]
    fn a_quiet_guest_is_stopped_after_one_round() {
        let mut p = Planner::new(POLICY);
        assert_eq!(
            p.decide(round(0, 30)),
            Decision::StopNow(StopReason::Converged)
        );
        assert_eq!(p.rounds(), 1);
    }

    #[test]
    fn a_burst_is_copied_live_and_the_rest_with_the_guest_stopped() {
        let mut p = Planner::new(POLICY);
        // 16,384 pages at 1 µs a page: far past the budget.
        assert_eq!(p.decide(round(16_384, 16_384)), Decision::AnotherRound);
        // The guest dirtied 50 more meanwhile: 50 µs at that rate.
        assert_eq!(
            p.decide(round(50, 60)),
            Decision::StopNow(StopReason::Converged)
        );
    }

    #[test]
    fn the_measured_rate_decides_what_fits() {
        let slow = Policy {
            copy_budget: Duration::from_micros(100),
            ..POLICY
        };
        let mut p = Planner::new(slow);
        // 10 µs a page measured: 20 pages are 200 µs, over the budget.
        assert_eq!(p.decide(round(1000, 10_000)), Decision::AnotherRound);
        assert_eq!(p.decide(round(20, 200)), Decision::AnotherRound);
        assert_eq!(
            p.decide(round(5, 50)),
            Decision::StopNow(StopReason::Converged)
        );
    }

    #[test]
    fn a_set_that_stops_shrinking_stops_the_rounds() {
        let mut p = Planner::new(POLICY);
        assert_eq!(p.decide(round(4000, 4000)), Decision::AnotherRound);
        assert_eq!(p.decide(round(2000, 2000)), Decision::AnotherRound);
        // A round that does not shrink may be a slow one: another try.
        assert_eq!(p.decide(round(1900, 1900)), Decision::AnotherRound);
        assert_eq!(p.decide(round(2100, 2100)), Decision::AnotherRound);
        assert_eq!(
            p.decide(round(2500, 2500)),
            Decision::StopNow(StopReason::NotShrinking)
        );
    }

    #[test]
    fn a_set_that_shrinks_again_after_a_stall_goes_on() {
        let mut p = Planner::new(POLICY);
        assert_eq!(p.decide(round(4000, 4000)), Decision::AnotherRound);
        assert_eq!(p.decide(round(4000, 4000)), Decision::AnotherRound);
        assert_eq!(p.decide(round(1000, 1000)), Decision::AnotherRound);
        assert_eq!(p.decide(round(1000, 1000)), Decision::AnotherRound);
        assert_eq!(
            p.decide(round(100, 100)),
            Decision::StopNow(StopReason::Converged)
        );
    }

    #[test]
    fn rounds_and_time_are_bounded() {
        let mut p = Planner::new(Policy {
            max_rounds: 3,
            ..POLICY
        });
        assert_eq!(p.decide(round(8000, 8000)), Decision::AnotherRound);
        assert_eq!(p.decide(round(4000, 4000)), Decision::AnotherRound);
        assert_eq!(
            p.decide(round(2000, 2000)),
            Decision::StopNow(StopReason::RoundLimit)
        );
        assert_eq!(p.rounds(), 3);

        let mut p = Planner::new(Policy {
            max_time: 10 * MS,
            ..POLICY
        });
        assert!(POLICY.max_time > 100 * MS);
        assert_eq!(p.decide(round(8000, 8000)), Decision::AnotherRound);
        assert_eq!(
            p.decide(round(4000, 4000)),
            Decision::StopNow(StopReason::TimeLimit)
        );
    }

    #[test]
    fn an_empty_round_does_not_spoil_the_rate() {
        let mut p = Planner::new(POLICY);
        assert_eq!(p.decide(round(1000, 1000)), Decision::AnotherRound);
        // A slow empty round (the harvest alone) leaves the per-page rate
        // as measured, and an empty set always fits.
        assert_eq!(
            p.decide(round(0, 5000)),
            Decision::StopNow(StopReason::Converged)
        );
    }
}
