//! The fleet's I/O budget (`[fleet] io_budget = { rate = "200M", iops =
//! 20000 }`), shared among the VMs' disks by I/O class: a pure decision
//! module, as [`Scheduler`](super::Scheduler) is. No clock, no threads:
//! each disk request is offered with the time (`admit(vm, bytes, now)`),
//! and the answer is that it passed or the instant to ask again.
//!
//! Time is cut into epochs of [`EPOCH`]. At the start of each, the epoch's
//! budget (bytes and operations) is granted to the VMs that used the disk
//! lately, in this order:
//! 1. **critical** VMs first, strictly: they get all they want (a VM that
//!    was held back last epoch wants everything);
//! 2. **standard** and **batch** VMs share what is left, weighted
//!    [`STANDARD_WEIGHT`] to [`BATCH_WEIGHT`] (weighted max-min fairness:
//!    a VM that wants less than its share leaves the rest to the others);
//! 3. what nobody was granted is the epoch's *pool*, open to every VM.
//!
//! A request that its VM's grant cannot pay for takes from the pool; a
//! critical VM's also from what the other VMs were granted and have not
//! spent: a critical VM that starts booting in the middle of an epoch is
//! served at once if anything is left, and otherwise waits at most until
//! the next epoch, where it comes first. Unspent grants lapse at the end
//! of an epoch (a budget per second is not saved up), except that a VM
//! held back keeps what was too little for its request (so that small
//! shares add up to a large request). Over any window of `t` the fleet
//! therefore moves at most `budget * t` plus one epoch's budget, plus per
//! VM less than one request kept, plus once per VM the excess of a request
//! larger than [`EPOCH`]'s budget divided by [`DEBT_DIVISOR`] (such a
//! request passes when its VM holds that much, and leaves the VM in debt
//! until its later grants pay it back).
//!
//! ```
//! use std::time::Instant;
//! use tandem::devices::rate_limiter::Admit;
//! use tandem::fleet::io::{IoBudget, IoClass, IoScheduler, EPOCH};
//!
//! let t0 = Instant::now();
//! let budget = IoBudget { bytes: Some(10 << 20), ops: None };
//! // VM 0 is critical, VM 1 batch; both write 4 KiB requests flat out.
//! let mut s = IoScheduler::new(budget, &[IoClass::Critical, IoClass::Batch], t0);
//! let mut now = t0;
//! for _ in 0..500 {
//!     for vm in [0, 1] {
//!         while s.admit(vm, 4096, now) == Admit::Now {}
//!     }
//!     now += EPOCH;
//! }
//! // One second: the critical VM had nearly all of the 10 MiB.
//! assert!(s.usage(0).bytes > 9 << 20);
//! assert!(s.usage(0).bytes + s.usage(1).bytes <= (10 << 20) + (10 << 20) / 500 + 8192);
//! ```

use std::time::{Duration, Instant};

use crate::devices::rate_limiter::Admit;

/// How often the budget is shared out again: short enough that a critical
/// VM waits little, long enough that a thousand VMs are not re-sorted at
/// every request.
pub const EPOCH: Duration = Duration::from_millis(2);
/// A VM counts as a disk user for this many epochs after its last request.
pub const ACTIVE_EPOCHS: u64 = 8;
/// A VM that was not held back is granted this many times what it used.
pub const GROWTH: u128 = 2;
/// A request larger than an epoch's budget divided by this passes once its
/// VM holds that much, leaving the VM in debt.
pub const DEBT_DIVISOR: u128 = 4;
/// Weight of a standard VM in the share after the critical ones.
pub const STANDARD_WEIGHT: u128 = 4;
/// Weight of a batch VM.
pub const BATCH_WEIGHT: u128 = 1;

const NANOS: u128 = 1_000_000_000;
/// Bytes, then operations.
const DIMS: usize = 2;

/// A VM's I/O class (`io_class` in a fleet file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoClass {
    /// Takes what is left.
    Batch,
    /// Shares with the other standard and batch VMs, by weight.
    #[default]
    Standard,
    /// Served before anyone else.
    Critical,
}

impl IoClass {
    /// Every class, with the name the fleet file uses.
    pub const ALL: [(&'static str, IoClass); 3] = [
        ("critical", IoClass::Critical),
        ("standard", IoClass::Standard),
        ("batch", IoClass::Batch),
    ];

    /// Its name in a fleet file.
    pub fn name(self) -> &'static str {
        match self {
            IoClass::Critical => "critical",
            IoClass::Standard => "standard",
            IoClass::Batch => "batch",
        }
    }

    /// The class named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }

    fn weight(self) -> u128 {
        match self {
            IoClass::Batch => BATCH_WEIGHT,
            // Critical VMs are served strictly first; among themselves equally.
            IoClass::Standard | IoClass::Critical => STANDARD_WEIGHT,
        }
    }
}

/// The fleet-wide budget: bytes and operations a second (either may be
/// absent: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoBudget {
    /// Bytes a second read and written by all the fleet's disks.
    pub bytes: Option<u64>,
    /// Disk requests a second.
    pub ops: Option<u64>,
}

impl IoBudget {
    fn rates(&self) -> [Option<u64>; DIMS] {
        [self.bytes, self.ops]
    }
}

/// What one VM moved under the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoUse {
    /// Bytes passed.
    pub bytes: u64,
    /// Requests passed.
    pub ops: u64,
    /// Times a request was held back.
    pub held: u64,
}

#[derive(Debug, Clone)]
struct Member {
    class: IoClass,
    /// What it may still move this epoch (below zero: its debt).
    credit: [i128; DIMS],
    /// What it moved this epoch.
    used: [u128; DIMS],
    /// Held back this epoch: it wants more than it got.
    hungry: bool,
    /// The epoch of its last request, if any.
    last_seen: Option<u64>,
    total: IoUse,
}

/// The decisions: grants per epoch, and each request's answer.
#[derive(Debug, Clone)]
pub struct IoScheduler {
    rates: [Option<u64>; DIMS],
    /// The current epoch: its number and start.
    number: u64,
    start: Instant,
    members: Vec<Member>,
    /// What nobody was granted this epoch.
    pool: [i128; DIMS],
    /// Billionths of a unit the epochs so far were owed beyond whole units.
    carry: [u128; DIMS],
    /// This epoch's whole budget.
    epoch_total: [u128; DIMS],
    /// Whether this epoch's unspent grants were reclaimed at its middle.
    reclaimed: bool,
}

impl IoScheduler {
    /// A scheduler for VMs of `classes` (VM `i` has `classes[i]`) sharing
    /// `budget`, its first epoch starting at `now` with the whole epoch's
    /// budget in the pool.
    pub fn new(budget: IoBudget, classes: &[IoClass], now: Instant) -> Self {
        let members = classes
            .iter()
            .map(|&class| Member {
                class,
                credit: [0; DIMS],
                used: [0; DIMS],
                hungry: false,
                last_seen: None,
                total: IoUse::default(),
            })
            .collect();
        let mut s = Self {
            rates: budget.rates(),
            number: 0,
            start: now,
            members,
            pool: [0; DIMS],
            carry: [0; DIMS],
            epoch_total: [0; DIMS],
            reclaimed: false,
        };
        s.fill_epoch();
        for d in 0..DIMS {
            s.pool[d] = to_i128(s.epoch_total[d]);
        }
        s
    }

    /// What VM `vm` has moved and been held.
    pub fn usage(&self, vm: usize) -> IoUse {
        self.members.get(vm).map(|m| m.total).unwrap_or_default()
    }

    /// Lets a request of VM `vm` moving `bytes` pass now (its cost taken),
    /// or says when to ask again (nothing taken). A VM the scheduler does
    /// not know is not limited.
    pub fn admit(&mut self, vm: usize, bytes: u64, now: Instant) -> Admit {
        self.advance(now);
        if !self.reclaimed && now >= self.middle() {
            self.reclaim();
        }
        let (number, limited, totals) = (self.number, self.limited(), self.epoch_total);
        let Some(m) = self.members.get_mut(vm) else {
            return Admit::Now;
        };
        m.last_seen = Some(number);
        let cost = [u128::from(bytes), 1];
        let class = m.class;
        let mut short = [0u128; DIMS];
        for d in (0..DIMS).filter(|&d| limited[d]) {
            let cap = (totals[d] / DEBT_DIVISOR).max(1);
            let need = to_i128(cost[d].min(cap));
            short[d] = u128::try_from(need - m.credit[d]).unwrap_or(0);
        }
        if short.iter().any(|&s| s > 0) {
            if !self.can_top_up(class, &short) {
                // What the pool holds is free: it goes towards the request
                // (a VM held back keeps it), so no budget is left unused
                // for want of a request it covers whole.
                for (d, &sh) in short.iter().enumerate() {
                    let take = to_i128(sh).min(self.pool[d].max(0));
                    self.pool[d] -= take;
                    self.members[vm].credit[d] += take;
                }
                let m = &mut self.members[vm];
                m.hungry = true;
                m.total.held += 1;
                // The middle of the epoch may free some budget; else the next.
                let at = if self.reclaimed {
                    self.start + EPOCH
                } else {
                    self.middle()
                };
                return Admit::At(at);
            }
            self.top_up(vm, class, &short);
        }
        let m = &mut self.members[vm];
        for d in (0..DIMS).filter(|&d| limited[d]) {
            m.credit[d] -= to_i128(cost[d]);
            m.used[d] += cost[d];
        }
        m.total.bytes += bytes;
        m.total.ops += 1;
        Admit::Now
    }

    fn middle(&self) -> Instant {
        self.start + EPOCH / 2
    }

    /// At the middle of an epoch, what a VM that was not held back has
    /// left beyond what it used so far goes to the pool: it is likely to
    /// need no more than that in the second half, and the budget it was
    /// granted for growth flows to the others.
    fn reclaim(&mut self) {
        self.reclaimed = true;
        for d in (0..DIMS).filter(|&d| self.rates[d].is_some()) {
            for m in self.members.iter_mut().filter(|m| !m.hungry) {
                let keep = to_i128(m.used[d]);
                let spare = m.credit[d] - keep;
                if spare > 0 {
                    m.credit[d] -= spare;
                    self.pool[d] += spare;
                }
            }
        }
    }

    /// Which dimensions have a budget.
    fn limited(&self) -> [bool; DIMS] {
        self.rates.map(|r| r.is_some())
    }

    /// Whether the pool (and, for a critical VM, the unspent grants of the
    /// other classes) hold `short`.
    fn can_top_up(&self, class: IoClass, short: &[u128; DIMS]) -> bool {
        (0..DIMS).all(|d| {
            if short[d] == 0 {
                return true;
            }
            let others: i128 = if class == IoClass::Critical {
                self.members
                    .iter()
                    .filter(|o| o.class != IoClass::Critical)
                    .map(|o| o.credit[d].max(0))
                    .sum()
            } else {
                0
            };
            self.pool[d].max(0) + others >= to_i128(short[d])
        })
    }

    /// Moves `short` to VM `vm`: from the pool first, then (for a critical
    /// VM) from batch grants, then standard ones (the caller checked
    /// [`can_top_up`](Self::can_top_up)).
    fn top_up(&mut self, vm: usize, class: IoClass, short: &[u128; DIMS]) {
        for (d, &s) in short.iter().enumerate() {
            let mut left = to_i128(s);
            let from_pool = left.min(self.pool[d].max(0));
            self.pool[d] -= from_pool;
            left -= from_pool;
            if class == IoClass::Critical {
                for lower in [IoClass::Batch, IoClass::Standard] {
                    for o in self.members.iter_mut().filter(|o| o.class == lower) {
                        if left == 0 {
                            break;
                        }
                        let take = left.min(o.credit[d].max(0));
                        o.credit[d] -= take;
                        left -= take;
                    }
                }
            }
            self.members[vm].credit[d] += to_i128(s) - left;
        }
    }

    /// Starts the epoch `now` falls in, if it is a later one (epochs in
    /// which nobody asked anything are skipped: a budget is not saved up).
    fn advance(&mut self, now: Instant) {
        let Some(past) = now.checked_duration_since(self.start) else {
            return;
        };
        let epochs = past.as_nanos() / EPOCH.as_nanos();
        if epochs == 0 {
            return;
        }
        let epochs_u32 = u32::try_from(epochs).unwrap_or(u32::MAX);
        self.number += u64::from(epochs_u32);
        self.start += EPOCH * epochs_u32;
        self.reclaimed = false;
        self.fill_epoch();
        self.share();
    }

    /// This epoch's budget, with the fractions carried over.
    fn fill_epoch(&mut self) {
        for d in 0..DIMS {
            self.epoch_total[d] = match self.rates[d] {
                Some(rate) => {
                    let owed = u128::from(rate) * EPOCH.as_nanos() + self.carry[d];
                    self.carry[d] = owed % NANOS;
                    owed / NANOS
                }
                None => 0,
            };
        }
    }

    /// Grants the epoch's budget: critical first, then standard and batch
    /// by weight, the rest to the pool. Unspent grants lapse; debts stay.
    fn share(&mut self) {
        let number = self.number;
        let active: Vec<usize> = (0..self.members.len())
            .filter(|&i| {
                self.members[i]
                    .last_seen
                    .is_some_and(|s| s + ACTIVE_EPOCHS >= number)
            })
            .collect();
        for d in 0..DIMS {
            let total = self.epoch_total[d];
            let mut left = total;
            // A VM held back keeps what it could not spend (less than one
            // request): small shares still add up to a large request.
            for m in self.members.iter_mut().filter(|m| !m.hungry) {
                m.credit[d] = m.credit[d].min(0);
            }
            if self.rates[d].is_some() {
                let want = |m: &Member| {
                    let debt = u128::try_from(-m.credit[d]).unwrap_or(0);
                    let w = if m.hungry {
                        total
                    } else {
                        m.used[d] * GROWTH + debt
                    };
                    w.min(total)
                };
                let critical: Vec<(usize, u128, u128)> = active
                    .iter()
                    .map(|&i| &self.members[i])
                    .zip(&active)
                    .filter(|(m, _)| m.class == IoClass::Critical)
                    .map(|(m, &i)| (i, want(m), 1))
                    .collect();
                let rest: Vec<(usize, u128, u128)> = active
                    .iter()
                    .map(|&i| &self.members[i])
                    .zip(&active)
                    .filter(|(m, _)| m.class != IoClass::Critical)
                    .map(|(m, &i)| (i, want(m), m.class.weight()))
                    .collect();
                for group in [critical, rest] {
                    for (i, g) in water_fill(&group, &mut left) {
                        self.members[i].credit[d] += to_i128(g);
                    }
                }
            }
            self.pool[d] = to_i128(left);
        }
        for m in &mut self.members {
            m.used = [0; DIMS];
            m.hungry = false;
        }
    }
}

/// Weighted max-min fair shares of `left` among `(id, want, weight)`:
/// those wanting less than their weighted share get what they want, the
/// others share the rest by weight. Takes what it grants from `left`.
fn water_fill(group: &[(usize, u128, u128)], left: &mut u128) -> Vec<(usize, u128)> {
    let mut order: Vec<&(usize, u128, u128)> = group.iter().filter(|g| g.2 > 0).collect();
    // Ascending want per unit of weight: a/wa < b/wb as a*wb < b*wa.
    order.sort_by(|a, b| (a.1 * b.2).cmp(&(b.1 * a.2)));
    let mut weights: u128 = order.iter().map(|g| g.2).sum();
    let mut out = Vec::with_capacity(order.len());
    for &&(id, want, weight) in &order {
        let fair = *left * weight / weights.max(1);
        let give = want.min(fair);
        *left -= give;
        weights -= weight;
        if give > 0 {
            out.push((id, give));
        }
    }
    out
}

fn to_i128(n: u128) -> i128 {
    i128::try_from(n).unwrap_or(i128::MAX)
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
