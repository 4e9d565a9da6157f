//! What the guest recorded about itself in memory: boot-phase stamps (in
//! guest TSC ticks) and its kernel's counts, read back into host terms.

use tandem_abi::layout;
use tandem_abi::trace::{KernelStats, Phase};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{RunStats, Vm};
use crate::trace::BootTrace;

/// The guest's stamp of `phase` (0: not reached), in guest TSC ticks.
pub(super) fn guest_stamp(mem: &GuestMemoryMmap, phase: Phase) -> u64 {
    mem.read_obj(GuestAddress(layout::TRACE_ADDR + phase.offset()))
        .unwrap_or(0)
}

impl Vm {
    /// The host's trace with every stamp the guest made, for a snapshot.
    pub(super) fn trace_with_guest_stamps(&self) -> BootTrace {
        let mut trace = self.trace.clone();
        for phase in Phase::ALL {
            if phase.stamped_by_guest() {
                let g = guest_stamp(&self.ram.mem, phase);
                if g != 0 {
                    trace.set(phase, g.wrapping_add_signed(-self.tsc_offset));
                }
            }
        }
        trace
    }

    /// At the end of a run: takes the guest's stamps into the trace and its
    /// CPL0 entry counts into `stats`.
    pub(super) fn collect_guest_trace(&mut self, stats: &mut RunStats) {
        let lo = self.trace.get(Phase::VmmStart).unwrap_or(0);
        let hi = self.trace.get(Phase::Exit).unwrap_or(u64::MAX);
        for phase in Phase::ALL.into_iter().filter(|p| p.stamped_by_guest()) {
            let guest = guest_stamp(&self.ram.mem, phase);
            let host = guest.wrapping_add_signed(-self.tsc_offset);
            // Stamps are the guest's word: keep only those that fall inside the run.
            if guest != 0 && host >= lo && host <= hi {
                self.trace.set(phase, host);
            }
        }
        let kstat = |off: u64| -> u64 {
            self.ram
                .mem
                .read_obj(GuestAddress(layout::KSTATS_ADDR + off))
                .unwrap_or(0)
        };
        stats.cpl0_entries = kstat(KernelStats::CPL0_ENTRIES);
        stats.cpl0_entries_before_main = kstat(KernelStats::CPL0_BEFORE_MAIN);
    }
}
