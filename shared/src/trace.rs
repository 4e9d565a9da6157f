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
    /// Offset of the "a debugger is attached" flag, which only the host
    /// writes: while it is 1, every exception (a trap-flag step's #DB, an
    /// `int3` breakpoint, a fault) saves the [`FaultRecord`] and stops in
    /// the VMM (an `out` to [`HypercallPort::DebugTrap`](crate::hypercall::HypercallPort::DebugTrap))
    /// before anything else, without touching `IN_FAULT`.
    pub const DEBUGGER: u64 = 24;
    /// Offset of what the exception entry does after a debugger stop, also
    /// written by the host: [`KernelStats::RESUME`] or [`KernelStats::DELIVER`].
    pub const DEBUG_ACTION: u64 = 32;
    /// [`KernelStats::DEBUG_ACTION`]: return to the code that trapped, with
    /// the registers and `rip`, `rflags`, `rsp` of the fault record (which
    /// the debugger may have changed).
    pub const RESUME: u64 = 0;
    /// [`KernelStats::DEBUG_ACTION`]: go on as without a debugger (a fault
    /// is reported and ends the VM).
    pub const DELIVER: u64 = 1;
    /// `#GP` error code of an `int3` at CPL3 (the breakpoint gate is DPL0):
    /// IDT vector 3, IDT bit set. The exception entry takes it as a
    /// breakpoint while a debugger is attached.
    pub const INT3_GP_ERROR: u64 = (3 << 3) | 2;
    /// Offset of the [`FaultRecord`]: the registers at the first fault, which
    /// the guest writes before `IN_FAULT` is set (so `IN_FAULT` = 1 says
    /// the record is whole).
    pub const FAULT_RECORD: u64 = 0x100;
}

/// What the guest's CPL0 exception entry saves at the first fault (at
/// [`KSTATS_ADDR`](crate::layout::KSTATS_ADDR) +
/// [`KernelStats::FAULT_RECORD`]): the general registers as they were when
/// the CPU took the exception, and the exception frame the CPU pushed. The
/// stub then reuses both for reporting at CPL3, so this record is where a
/// debugger (a core file of the crashed VM) finds the faulting frame.
/// Little-endian `u64`s at the offsets below; fields are only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultRecord {
    /// `rax`, `rbx`, `rcx`, `rdx`, `rsi`, `rdi`, `rbp`, `r8` to `r15`, at
    /// the fault (indices: [`FaultRecord::RAX`]...).
    pub gprs: [u64; 15],
    /// The exception vector.
    pub vector: u64,
    /// The error code (0 for vectors without one).
    pub error: u64,
    /// `rip` of the faulting instruction (the CPU's frame).
    pub rip: u64,
    /// `cs` at the fault (its low two bits are the ring).
    pub cs: u64,
    /// `rflags` at the fault.
    pub rflags: u64,
    /// `rsp` at the fault.
    pub rsp: u64,
    /// `ss` at the fault.
    pub ss: u64,
    /// `cr2` (the faulting address of a page fault).
    pub cr2: u64,
}

impl FaultRecord {
    /// Index in [`FaultRecord::gprs`] (and offset / 8) of `rax`.
    pub const RAX: usize = 0;
    /// Index of `rbx`.
    pub const RBX: usize = 1;
    /// Index of `rcx`.
    pub const RCX: usize = 2;
    /// Index of `rdx`.
    pub const RDX: usize = 3;
    /// Index of `rsi`.
    pub const RSI: usize = 4;
    /// Index of `rdi`.
    pub const RDI: usize = 5;
    /// Index of `rbp`.
    pub const RBP: usize = 6;
    /// Index of `r8`; `r9` to `r15` follow.
    pub const R8: usize = 7;
    /// Byte offset of the general register at index `i`.
    pub const fn gpr(i: usize) -> u64 {
        i as u64 * 8
    }
    /// Offset of [`FaultRecord::vector`].
    pub const VECTOR: u64 = 15 * 8;
    /// Offset of [`FaultRecord::error`].
    pub const ERROR: u64 = 16 * 8;
    /// Offset of [`FaultRecord::rip`].
    pub const RIP: u64 = 17 * 8;
    /// Offset of [`FaultRecord::cs`].
    pub const CS: u64 = 18 * 8;
    /// Offset of [`FaultRecord::rflags`].
    pub const RFLAGS: u64 = 19 * 8;
    /// Offset of [`FaultRecord::rsp`].
    pub const RSP: u64 = 20 * 8;
    /// Offset of [`FaultRecord::ss`].
    pub const SS: u64 = 21 * 8;
    /// Offset of [`FaultRecord::cr2`].
    pub const CR2: u64 = 22 * 8;
    /// Size of the record.
    pub const SIZE: usize = 23 * 8;

    /// Parses the record's bytes (`None` if there are fewer than [`FaultRecord::SIZE`]).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        let word = |at: u64| {
            usize::try_from(at)
                .ok()
                .and_then(|at| crate::le::u64_at(b, at))
        };
        let mut gprs = [0u64; 15];
        for (i, g) in gprs.iter_mut().enumerate() {
            *g = word(Self::gpr(i))?;
        }
        Some(Self {
            gprs,
            vector: word(Self::VECTOR)?,
            error: word(Self::ERROR)?,
            rip: word(Self::RIP)?,
            cs: word(Self::CS)?,
            rflags: word(Self::RFLAGS)?,
            rsp: word(Self::RSP)?,
            ss: word(Self::SS)?,
            cr2: word(Self::CR2)?,
        })
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        let frame = [
            self.vector,
            self.error,
            self.rip,
            self.cs,
            self.rflags,
            self.rsp,
            self.ss,
            self.cr2,
        ];
        let words = self.gprs.iter().chain(&frame);
        for (chunk, w) in b.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

const _: () = {
    // The record lies in the kernel-statistics page, after the counters.
    assert!(KernelStats::FAULT_RECORD >= KernelStats::DEBUG_ACTION + 8);
    assert!(KernelStats::FAULT_RECORD + FaultRecord::SIZE as u64 <= crate::layout::PAGE_SIZE);
    assert!(FaultRecord::CR2 + 8 == FaultRecord::SIZE as u64);
};

#[cfg(test)]
mod tests {
    use super::{FaultRecord, KernelStats, Phase};

    #[test]
    fn fault_record_layout_is_pinned() {
        // The guest's CPL0 stub writes these offsets and the host's core
        // files read them: changing one needs an ABI_VERSION bump.
        assert_eq!(KernelStats::FAULT_RECORD, 0x100);
        assert_eq!(
            [
                KernelStats::DEBUGGER,
                KernelStats::DEBUG_ACTION,
                KernelStats::INT3_GP_ERROR
            ],
            [24, 32, 0x1a]
        );
        assert_eq!(
            [
                FaultRecord::gpr(FaultRecord::RAX),
                FaultRecord::gpr(FaultRecord::RBP),
                FaultRecord::gpr(FaultRecord::R8 + 7),
                FaultRecord::VECTOR,
                FaultRecord::RIP,
                FaultRecord::RSP,
                FaultRecord::CR2,
            ],
            [0, 48, 112, 120, 136, 160, 176]
        );
        let mut rec = FaultRecord {
            vector: 14,
            error: 4,
            rip: 0x20_1234,
            cs: 0x23,
            rflags: 0x10202,
            rsp: 0xF_FF00,
            ss: 0x1b,
            cr2: 0xDEAD_0000,
            ..FaultRecord::default()
        };
        for (i, g) in rec.gprs.iter_mut().enumerate() {
            *g = 0x1000 + i as u64;
        }
        let b = rec.to_bytes();
        assert_eq!(&b[48..56], &0x1006u64.to_le_bytes()); // rbp
        assert_eq!(&b[136..144], &0x20_1234u64.to_le_bytes()); // rip
        assert_eq!(FaultRecord::from_bytes(&b), Some(rec));
        assert_eq!(FaultRecord::from_bytes(&b[..FaultRecord::SIZE - 1]), None);
    }

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
