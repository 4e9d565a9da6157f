//! Time from the TSC, at the frequency the boot-info block gives (the guest
//! never calibrates on the Tandem path).
//!
//! The guest's monotonic clock is the TSC plus the adjustment the host keeps
//! in the live area ([`LiveArea::tsc_adjust`]): the TSC cannot be set on
//! every host, so after a restore the host writes there minus the ticks the
//! VM spent frozen, and [`Instant`] carries on from the snapshot's moment
//! instead of jumping by the time the snapshot sat on disk (or running
//! backwards on a host whose TSC is behind).

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use tandem_abi::layout::{LiveArea, LIVE_ADDR};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn init(tsc_khz: u64) {
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
}

/// Reads the time-stamp counter (CR4.TSD is clear, so CPL3 may).
pub use tandem_tsc::rdtsc;

/// Reads one little-endian `u64` of the live area (0 without a Tandem VMM:
/// under PVH or Multiboot2 nobody writes it, and a boot loader may have left
/// anything in that low page).
pub(crate) fn live_word(offset: u64) -> u64 {
    debug_assert!(offset + 8 <= LiveArea::SIZE && offset.is_multiple_of(8));
    if !crate::platform::is_tandem() {
        return 0;
    }
    let at = (LIVE_ADDR + offset) as *const u64;
    // SAFETY: the layout maps the live area user read-only for the whole run;
    // `offset` is one of LiveArea's 8-aligned field offsets inside the record;
    // the host writes it only while the vCPU is stopped.
    unsafe { at.read_volatile() }
}

/// TSC ticks the host asks the clock to add (minus the time spent frozen).
pub fn tsc_adjust() -> i64 {
    live_word(LiveArea::TSC_ADJUST) as i64
}

/// The guest's monotonic clock in TSC ticks: the TSC less the time the VM
/// spent frozen in snapshots.
pub fn now_ticks() -> u64 {
    rdtsc().wrapping_add_signed(tsc_adjust())
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
        Self(now_ticks())
    }
    /// Time since `self`.
    pub fn elapsed(&self) -> Duration {
        Self::now().duration_since(*self)
    }
    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        ticks_to_duration(self.0.saturating_sub(earlier.0))
    }
    /// The clock's value in TSC ticks (the TSC less the time spent frozen).
    pub fn tsc(&self) -> u64 {
        self.0
    }
}
