//! The time-stamp counter, read in one place.
//!
//! The VMM stamps its boot phases with it, the guest its own and its clock,
//! and xtask's boot-path benchmark the spawn and end of a whole process: all
//! on one clock, the host TSC (KVM gives the guest the host's, plus an
//! offset the host knows). Reading it takes `unsafe`, which `tandem-abi`
//! forbids, so it lives in this crate of its own, no_std for the guest and
//! without dependencies for xtask.
#![no_std]

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads the counter and nothing else, no memory. Every
    // x86_64 CPU has it. It faults only at CPL > 0 with CR4.TSD set, which
    // neither Linux sets for a process that did not ask (`PR_SET_TSC`) nor
    // the Tandem guest's CPU state.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_up() {
        let (a, b) = (super::rdtsc(), super::rdtsc());
        assert!(b >= a, "{a} then {b}");
    }
}
