//! Boot phases, stamped by the host and the guest on one clock (the TSC).
//!
//! The guest writes its stamps into guest memory at [`TRACE_ADDR`](crate::layout::TRACE_ADDR)
//! (one little-endian `u64` per phase, indexed by the phase number, 0 = not
//! reached) instead of sending them one by one: the host collects them when
//! the VM stops, so tracing costs no VM exit.

/// A boot phase. Numbers are part of the ABI and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// The VMM started (process or builder start).
    VmmStart = 0,
    /// `/dev/kvm` is open and its capabilities known.
    KvmReady = 1,
    /// The VM exists.
    VmCreated = 2,
    /// Guest memory is allocated and registered with KVM.
    MemoryMapped = 3,
    /// The image is loaded and the CPU structures and boot-info block written.
    ImageLoaded = 4,
    /// The vCPU is created and its registers are set.
    VcpuReady = 5,
    /// The guest's first instruction ran (stamped by the guest).
    FirstInstruction = 6,
    /// The guest checked its boot-info block (stamped by the guest).
    EarlyInit = 7,
    /// The heap is ready (stamped by the guest).
    HeapReady = 8,
    /// The app's `main` was entered (stamped by the guest).
    AppMain = 9,
    /// The app called `ready()` (stamped by the guest).
    AppReady = 10,
    /// The VM stopped (stamped by the host).
    Exit = 11,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Phase; 12] = [
        Phase::VmmStart,
        Phase::KvmReady,
        Phase::VmCreated,
        Phase::MemoryMapped,
        Phase::ImageLoaded,
        Phase::VcpuReady,
        Phase::FirstInstruction,
        Phase::EarlyInit,
        Phase::HeapReady,
        Phase::AppMain,
        Phase::AppReady,
        Phase::Exit,
    ];
    /// Number of phase slots in the trace area.
    pub const COUNT: usize = 12;

    /// Stable machine-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::VmmStart => "vmm_start",
            Phase::KvmReady => "kvm_ready",
            Phase::VmCreated => "vm_created",
            Phase::MemoryMapped => "memory_mapped",
            Phase::ImageLoaded => "image_loaded",
            Phase::VcpuReady => "vcpu_ready",
            Phase::FirstInstruction => "first_instruction",
            Phase::EarlyInit => "early_init",
            Phase::HeapReady => "heap_ready",
            Phase::AppMain => "app_main",
            Phase::AppReady => "app_ready",
            Phase::Exit => "exit",
        }
    }

    /// Whether the guest (rather than the host) stamps this phase.
    pub const fn stamped_by_guest(self) -> bool {
        matches!(
            self,
            Phase::FirstInstruction
                | Phase::EarlyInit
                | Phase::HeapReady
                | Phase::AppMain
                | Phase::AppReady
        )
    }

    /// Byte offset of this phase's stamp inside the trace area.
    pub const fn offset(self) -> u64 {
        self as u64 * 8
    }
}

impl TryFrom<u8> for Phase {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Phase::ALL.get(usize::from(v)).copied().ok_or(v)
    }
}

/// Counters the guest's CPL0 code keeps at [`KSTATS_ADDR`](crate::layout::KSTATS_ADDR),
/// as little-endian `u64`s at these offsets.
pub struct KernelStats;

impl KernelStats {
    /// Offset of the number of CPL0 entries (exceptions taken).
    pub const CPL0_ENTRIES: u64 = 0;
    /// Offset of the "already reporting a fault" flag (nested faults exit at once).
    pub const IN_FAULT: u64 = 8;
    /// Offset of the number of CPL0 entries before the app's `main` was stamped.
    pub const CPL0_BEFORE_MAIN: u64 = 16;
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn numbers_are_dense_and_round_trip() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert_eq!(Phase::try_from(u8::try_from(i).unwrap()), Ok(*p));
        }
        assert_eq!(Phase::ALL.len(), Phase::COUNT);
        assert_eq!(Phase::try_from(12), Err(12));
        assert_eq!(Phase::try_from(255), Err(255));
    }
}
