//! Waiting without burning a host core: [`idle`] blocks the vCPU in the
//! host (one VM exit) until the time is up or the VMM asks the app to stop.

use core::time::Duration;

use crate::platform;

/// Why [`idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The time asked for has passed (or the host capped the wait).
    Elapsed,
    /// The VMM asks the app to stop: finish up and exit.
    Stop,
}

/// Waits up to `duration` in the host, or until the VMM asks the app to
/// stop. Without a Tandem VMM (PVH, Multiboot2) it returns `Elapsed` at once.
pub fn idle(duration: Duration) -> Wake {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    match platform::idle(nanos) {
        Some(true) => Wake::Stop,
        Some(false) | None => Wake::Elapsed,
    }
}

/// Waits until the VMM asks the app to stop (for services that only
/// answer to their VMM). Without a Tandem VMM it returns at once.
pub fn until_stopped() {
    const HOUR: u64 = 3600 * 1_000_000_000;
    while platform::idle(HOUR) == Some(false) {}
}
