//! The time-stamp counter and its frequency: the clock every other part of
//! the guest counts in (a leaf module: it imports nothing of the crate; the instruction itself
//! is `tandem-tsc`'s, shared with the host).

use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter (CR4.TSD is clear, so CPL3 may).
pub use tandem_tsc::rdtsc;

/// Records the TSC frequency the boot-info block gives (once, at boot).
pub(crate) fn set_khz(khz: u64) {
    TSC_KHZ.store(khz, Ordering::Relaxed);
}

/// TSC frequency in kHz (0 before boot info was read).
pub fn khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// TSC ticks in `micros` microseconds (0 before the frequency is known).
pub fn ticks_in_micros(micros: u64) -> u64 {
    micros.saturating_mul(khz()) / 1000
}
