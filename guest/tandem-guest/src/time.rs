//! Time from the TSC, at the frequency the boot-info block gives (the guest
//! never calibrates on the Tandem path).

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn init(tsc_khz: u64) {
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects; CR4.TSD is clear, so it is allowed at CPL3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC frequency in kHz (0 before boot-info was read).
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Converts a number of TSC ticks to a duration.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    let khz = tsc_khz();
    if khz == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(ticks) * 1_000_000 / u128::from(khz);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A moment on the monotonic TSC clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    pub fn now() -> Self {
        Self(rdtsc())
    }
    /// Time since `self`.
    pub fn elapsed(&self) -> Duration {
        Self::now().duration_since(*self)
    }
    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        ticks_to_duration(self.0.saturating_sub(earlier.0))
    }
    /// The raw TSC value.
    pub fn tsc(&self) -> u64 {
        self.0
    }
}
