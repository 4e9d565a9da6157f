//! Waiting without burning a host core: [`idle`] blocks the vCPU in the
//! host (one VM exit) until the time is up or the VMM asks the app to stop.

use core::time::Duration;

use tandem_abi::hypercall::{Reply, Request};

use crate::hypercall;

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
    if !crate::platform::is_tandem() {
        return Wake::Elapsed;
    }
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    match hypercall::call_with_reply(&Request::Idle {
        nanos,
        reply: hypercall::reply_buf(),
    }) {
        Some(Reply::Idle { stop: true }) => Wake::Stop,
        _ => Wake::Elapsed,
    }
}

/// Waits until the VMM asks the app to stop (for services that only
/// answer to their VMM). Without a Tandem VMM it returns at once.
pub fn until_stopped() {
    if !crate::platform::is_tandem() {
        return;
    }
    while idle(Duration::from_secs(3600)) != Wake::Stop {}
}
