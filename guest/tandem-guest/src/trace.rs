//! Boot-phase stamps: written into guest memory, collected by the host when
//! the VM stops, so tracing costs no VM exit.

use tandem_abi::trace::Phase;

use crate::{pages, tsc};

/// Records that `phase` happened now.
pub fn stamp(phase: Phase) {
    stamp_at(phase, tsc::rdtsc());
}

/// Records that `phase` happened at TSC value `tsc`.
pub fn stamp_at(phase: Phase, tsc: u64) {
    pages::set_trace_stamp(phase, tsc);
}

/// The stamp of `phase` (0 if not reached).
pub fn get(phase: Phase) -> u64 {
    pages::trace_stamp(phase)
}
