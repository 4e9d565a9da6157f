//! Boot-phase stamps: written into guest memory, collected by the host when
//! the VM stops, so tracing costs no VM exit.

use tandem_abi::layout::TRACE_ADDR;
use tandem_abi::trace::Phase;

/// Records that `phase` happened now.
pub fn stamp(phase: Phase) {
    stamp_at(phase, crate::time::rdtsc());
}

/// Records that `phase` happened at TSC value `tsc`.
pub fn stamp_at(phase: Phase, tsc: u64) {
    let slot = (TRACE_ADDR + phase.offset()) as *mut u64;
    // SAFETY: the layout maps the trace page user read-write for the whole run;
    // `phase.offset()` is below Phase::COUNT * 8, inside the page; the guest
    // runs one vCPU with no interrupts, so nothing else writes it concurrently.
    unsafe { slot.write_volatile(tsc) };
}

/// The stamp of `phase` (0 if not reached).
pub fn get(phase: Phase) -> u64 {
    let slot = (TRACE_ADDR + phase.offset()) as *const u64;
    // SAFETY: as in `stamp_at`.
    unsafe { slot.read_volatile() }
}
