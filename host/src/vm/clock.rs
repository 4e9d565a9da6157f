//! The guest's clock: the host TSC plus the VM's offset, plus the live
//! area's adjustment, which carries a restored guest's time on from its
//! snapshot's moment.

use tandem_abi::layout;
use vm_memory::{Bytes, GuestAddress};

use super::{Vm, VmError};
use crate::trace::rdtsc;

/// Nanoseconds since the Unix epoch (0 before it, saturated past 2554).
pub(super) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The wall clock and the guest TSC read together, for `Request::WallClock`.
pub(super) fn wall_clock(tsc_offset: i64) -> (u64, u64) {
    (unix_nanos(), rdtsc().wrapping_add_signed(tsc_offset))
}

impl Vm {
    fn write_live(&self) -> Result<(), VmError> {
        self.ram
            .mem
            .write_slice(&self.live.to_bytes(), GuestAddress(layout::LIVE_ADDR))?;
        Ok(())
    }

    /// Sets the live area's clock adjustment so the guest clock reads
    /// `guest_clock` now, and writes the live area.
    pub(super) fn set_guest_clock(&mut self, guest_clock: u64) -> Result<(), VmError> {
        let guest_tsc = rdtsc().wrapping_add_signed(self.tsc_offset);
        // Two's-complement difference: the adjustment may be of either sign.
        self.live.tsc_adjust = guest_clock.wrapping_sub(guest_tsc) as i64;
        self.write_live()
    }

    /// For a restored VM, just before its first run: the guest clock
    /// resumes from the snapshot's moment.
    pub(super) fn resume_clock_now(&mut self) -> Result<(), VmError> {
        if let Some(clock) = self.resume_clock.take() {
            self.set_guest_clock(clock)?;
        }
        Ok(())
    }

    /// The guest's clock now (TSC plus the live adjustment).
    pub(super) fn guest_clock(&self) -> u64 {
        rdtsc()
            .wrapping_add_signed(self.tsc_offset)
            .wrapping_add_signed(self.live.tsc_adjust)
    }
}
