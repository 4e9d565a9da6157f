//! Guest-physical memory layout, defined once for the VMM and the guest.
//!
//! Guest memory is identity-mapped (virtual = physical). The low 4 MiB are
//! mapped with 4 KiB pages so that each structure gets its own permissions;
//! everything above uses 2 MiB pages.
//!
//! ```text
//! 0x0000_0000  null guard (unmapped)
//! 0x0000_1000  GDT                        supervisor, read-only
//! 0x0000_2000  TSS + I/O permission bitmap supervisor, read-only
//! 0x0000_5000  IDT                        supervisor, read-only
//! 0x0000_6000  page tables                supervisor, read-only
//! 0x0000_F000  kernel statistics          supervisor, read-write
//! 0x0001_0000  boot-info block            user, read-only
//! 0x0001_2000  boot trace stamps          user, read-write
//! 0x0001_3000  hypercall request buffer   user, read-write
//! 0x0001_5000  console buffer             user, read-write
//! 0x0001_D000  live area (generation...)  user, read-only
//! 0x0002_0000  kernel stacks (RSP0, IST)  supervisor, read-write
//! 0x0003_0000  fault-report stack         user, read-write
//! 0x000F_F000  stack guard (unmapped)
//! 0x0010_0000  app stack (grows down)     user, read-write
//! 0x0020_0000  image (ELF segments)       user, per-segment permissions
//! 0x0040_0000  heap, to the end of memory user, read-write
//! ```

use crate::le;

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large page.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// Global descriptor table (one page).
pub const GDT_ADDR: u64 = 0x1000;
/// Task-state segment, followed by its I/O permission bitmap.
pub const TSS_ADDR: u64 = 0x2000;
/// Bytes reserved for the TSS and its I/O bitmap (3 pages).
pub const TSS_AREA_SIZE: u64 = 0x3000;
/// Interrupt descriptor table (one page: 256 gates of 16 bytes).
pub const IDT_ADDR: u64 = 0x5000;
/// Start of the page-table area: PML4, PDPT, page directories, page tables.
pub const PAGE_TABLES_ADDR: u64 = 0x6000;
/// Bytes reserved for page tables.
pub const PAGE_TABLES_SIZE: u64 = 0x9000;
/// Kernel statistics written by the guest's CPL0 code (see [`KernelStats`](crate::trace::KernelStats)).
pub const KSTATS_ADDR: u64 = 0xF000;

/// Boot-info block: header and postcard body.
pub const BOOT_INFO_ADDR: u64 = 0x1_0000;
/// Maximum size of the boot-info block (header included).
pub const BOOT_INFO_MAX: u64 = 0x2000;
/// Boot trace: one little-endian `u64` TSC stamp per [`Phase`](crate::trace::Phase).
pub const TRACE_ADDR: u64 = 0x1_2000;
/// Hypercall request/reply buffer used by the guest library.
pub const HYPERCALL_ADDR: u64 = 0x1_3000;
/// Size of the hypercall buffer.
pub const HYPERCALL_SIZE: u64 = 0x2000;
/// Console buffer: a little-endian `u32` fill level, then the bytes.
pub const CONSOLE_ADDR: u64 = 0x1_5000;
/// Size of the console buffer, header included.
pub const CONSOLE_SIZE: u64 = 0x8000;
/// Offset of the console bytes inside the console buffer.
pub const CONSOLE_DATA_OFFSET: u64 = 8;
/// Bytes of console text the buffer can hold.
pub const CONSOLE_CAPACITY: u64 = CONSOLE_SIZE - CONSOLE_DATA_OFFSET;

/// The live area: a small [`LiveArea`] record the host rewrites while the
/// vCPU is stopped (on every restore or clone). The boot-info block is
/// rewritten then too (ABI version 6), to describe the restored VM; the
/// live area's generation is what tells the guest to read it again. One
/// page, user read-only.
pub const LIVE_ADDR: u64 = 0x1_D000;
/// Size of the live area.
pub const LIVE_SIZE: u64 = PAGE_SIZE;

/// The record at [`LIVE_ADDR`]: what changes when a VM is restored or
/// cloned. All fields little-endian. A freshly booted guest finds it all
/// zero (generation 0, no clock adjustment). The host writes it only while
/// the vCPU is stopped, so the guest needs no lock to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct LiveArea {
    /// The VM's generation: 0 at boot, a new value on every restore or clone.
    pub generation: u64,
    /// TSC ticks to add to `rdtsc` to get the guest's monotonic clock: the
    /// negated time the VM spent frozen in snapshots, so the clock neither
    /// jumps nor runs backwards across a restore (the TSC cannot be set).
    pub tsc_adjust: i64,
    /// How many times this VM's lineage has been restored.
    pub restores: u64,
    /// Reserved, zero.
    pub reserved: u64,
    /// Fresh random bytes written on every restore or clone (reseed from them).
    pub entropy: [u8; 32],
}

impl LiveArea {
    /// Offset of [`LiveArea::generation`].
    pub const GENERATION: u64 = 0;
    /// Offset of [`LiveArea::tsc_adjust`].
    pub const TSC_ADJUST: u64 = 8;
    /// Offset of [`LiveArea::restores`].
    pub const RESTORES: u64 = 16;
    /// Offset of [`LiveArea::entropy`].
    pub const ENTROPY: u64 = 32;
    /// Size of the record.
    pub const SIZE: u64 = 64;

    /// The record's bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..16].copy_from_slice(&self.tsc_adjust.to_le_bytes());
        b[16..24].copy_from_slice(&self.restores.to_le_bytes());
        b[24..32].copy_from_slice(&self.reserved.to_le_bytes());
        b[32..64].copy_from_slice(&self.entropy);
        b
    }

    /// Parses the record's bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        // Offsets inside the 64-byte record: every read succeeds.
        Self {
            generation: le::u64_at(b, 0).unwrap_or(0),
            tsc_adjust: le::i64_at(b, 8).unwrap_or(0),
            restores: le::u64_at(b, 16).unwrap_or(0),
            reserved: le::u64_at(b, 24).unwrap_or(0),
            entropy: le::array_at(b, 32).unwrap_or([0; 32]),
        }
    }
}

/// Kernel stacks: RSP0 (exceptions from CPL3), IST1 (double fault), IST2 (NMI, machine check).
pub const KERNEL_STACKS_ADDR: u64 = 0x2_0000;
/// Size of one kernel stack.
pub const KERNEL_STACK_SIZE: u64 = 0x4000;
/// Top of the RSP0 stack.
pub const RSP0_TOP: u64 = KERNEL_STACKS_ADDR + KERNEL_STACK_SIZE;
/// Top of the IST1 stack (double fault).
pub const IST1_TOP: u64 = KERNEL_STACKS_ADDR + 2 * KERNEL_STACK_SIZE;
/// Top of the IST2 stack (NMI, machine check).
pub const IST2_TOP: u64 = KERNEL_STACKS_ADDR + 3 * KERNEL_STACK_SIZE;
/// User stack on which the guest reports a CPU exception at CPL3.
pub const FAULT_STACK_ADDR: u64 = 0x3_0000;
/// Size of the fault-report stack.
pub const FAULT_STACK_SIZE: u64 = 0x1_0000;
/// Top of the fault-report stack.
pub const FAULT_STACK_TOP: u64 = FAULT_STACK_ADDR + FAULT_STACK_SIZE;

/// Lowest address of the app stack.
pub const STACK_ADDR: u64 = 0x10_0000;
/// Size of the app stack.
pub const STACK_SIZE: u64 = 0x10_0000;
/// Initial stack pointer of the app.
pub const STACK_TOP: u64 = STACK_ADDR + STACK_SIZE;

/// Where the image's loadable segments must lie: `[IMAGE_ADDR, IMAGE_END)`.
pub const IMAGE_ADDR: u64 = 0x20_0000;
/// End of the image region.
pub const IMAGE_END: u64 = 0x40_0000;
/// Start of the heap; the heap runs to the end of guest memory.
pub const HEAP_ADDR: u64 = IMAGE_END;

/// Smallest guest memory Tandem boots: the fixed layout plus a 2 MiB heap.
pub const MIN_MEM_SIZE: u64 = HEAP_ADDR + LARGE_PAGE_SIZE;
/// Largest guest memory: what the page-table area can map (4 GiB), which
/// also keeps every guest address a 32-bit hypercall argument.
pub const MAX_MEM_SIZE: u64 = 4 << 30;
/// Guest memory when none is asked for.
pub const DEFAULT_MEM_SIZE: u64 = 64 << 20;

/// Guest-physical address of the Tandem VMM's first virtio-mmio register
/// window (where QEMU microvm puts its own, below the 4 GiB line). Guest
/// memory must end below it for a VM that has a device.
pub const VIRTIO_MMIO_BASE: u64 = 0xFEB0_0000;
/// Bytes of each virtio-mmio register window (registers and the device's
/// configuration space).
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// Register windows the Tandem VMM may place, one after the other from
/// [`VIRTIO_MMIO_BASE`]: the network device in the first, disks after it.
pub const VIRTIO_MMIO_SLOTS: u64 = 8;

/// Guest-physical address of register window `slot` (below
/// [`VIRTIO_MMIO_SLOTS`]).
pub const fn virtio_mmio_window(slot: u64) -> u64 {
    VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SIZE
}

/// Selectors of the GDT built by [`cpu::gdt`](crate::cpu::gdt).
pub mod selector {
    /// 64-bit kernel code.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Kernel data.
    pub const KERNEL_DATA: u16 = 0x10;
    /// User data, RPL 3 (ordered for `sysret`).
    pub const USER_DATA: u16 = 0x18 | 3;
    /// 64-bit user code, RPL 3.
    pub const USER_CODE: u16 = 0x20 | 3;
    /// Task-state segment (16-byte descriptor).
    pub const TSS: u16 = 0x28;
}

/// Access a region grants to the guest, used to build page tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Not mapped at all (guard pages).
    None,
    /// Supervisor read-only.
    KernelRead,
    /// Supervisor read-write.
    KernelReadWrite,
    /// User read-only.
    UserRead,
    /// User read-write.
    UserReadWrite,
    /// User read and execute.
    UserReadExecute,
    /// Supervisor read and execute (the guest's CPL0 exception entry code).
    KernelReadExecute,
}

/// One region of the fixed low layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the guest may do there.
    pub access: Access,
}

/// The fixed regions below [`IMAGE_ADDR`], in address order, with what the
/// page tables grant. Anything not listed is unmapped.
pub const LOW_REGIONS: &[Region] = &[
    Region {
        start: GDT_ADDR,
        end: KSTATS_ADDR,
        access: Access::KernelRead,
    },
    Region {
        start: KSTATS_ADDR,
        end: BOOT_INFO_ADDR,
        access: Access::KernelReadWrite,
    },
    Region {
        start: BOOT_INFO_ADDR,
        end: TRACE_ADDR,
        access: Access::UserRead,
    },
    Region {
        start: TRACE_ADDR,
        end: CONSOLE_ADDR + CONSOLE_SIZE,
        access: Access::UserReadWrite,
    },
    Region {
        start: LIVE_ADDR,
        end: LIVE_ADDR + LIVE_SIZE,
        access: Access::UserRead,
    },
    Region {
        start: KERNEL_STACKS_ADDR,
        end: IST2_TOP,
        access: Access::KernelReadWrite,
    },
    Region {
        start: FAULT_STACK_ADDR,
        end: FAULT_STACK_TOP,
        access: Access::UserReadWrite,
    },
    Region {
        start: STACK_ADDR,
        end: STACK_TOP,
        access: Access::UserReadWrite,
    },
];

const _: () = {
    assert!(TSS_ADDR + TSS_AREA_SIZE == IDT_ADDR);
    assert!(IDT_ADDR + PAGE_SIZE == PAGE_TABLES_ADDR);
    assert!(PAGE_TABLES_ADDR + PAGE_TABLES_SIZE == KSTATS_ADDR);
    assert!(BOOT_INFO_ADDR + BOOT_INFO_MAX == TRACE_ADDR);
    assert!(HYPERCALL_ADDR + HYPERCALL_SIZE == CONSOLE_ADDR);
    assert!(CONSOLE_ADDR + CONSOLE_SIZE <= KERNEL_STACKS_ADDR);
    assert!(CONSOLE_ADDR + CONSOLE_SIZE <= LIVE_ADDR);
    assert!(LIVE_ADDR + LIVE_SIZE <= KERNEL_STACKS_ADDR);
    assert!(LIVE_ADDR.is_multiple_of(PAGE_SIZE));
    assert!(core::mem::size_of::<LiveArea>() as u64 == LiveArea::SIZE);
    assert!(LiveArea::SIZE <= LIVE_SIZE);
    assert!(core::mem::offset_of!(LiveArea, generation) as u64 == LiveArea::GENERATION);
    assert!(core::mem::offset_of!(LiveArea, tsc_adjust) as u64 == LiveArea::TSC_ADJUST);
    assert!(core::mem::offset_of!(LiveArea, restores) as u64 == LiveArea::RESTORES);
    assert!(core::mem::offset_of!(LiveArea, entropy) as u64 == LiveArea::ENTROPY);
    assert!(IST2_TOP <= FAULT_STACK_ADDR);
    assert!(FAULT_STACK_TOP < STACK_ADDR - PAGE_SIZE);
    assert!(STACK_TOP == IMAGE_ADDR);
    assert!(IMAGE_END.is_multiple_of(LARGE_PAGE_SIZE));
    // Every address handed to the guest fits the 32-bit hypercall argument.
    assert!(MAX_MEM_SIZE <= 1 << 32);
    assert!(virtio_mmio_window(VIRTIO_MMIO_SLOTS) <= MAX_MEM_SIZE);
};

/// Bytes of heap in a guest of `mem_size` bytes (0 when too small).
pub const fn heap_size(mem_size: u64) -> u64 {
    mem_size.saturating_sub(HEAP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_regions_are_ordered_and_disjoint() {
        for w in LOW_REGIONS.windows(2) {
            assert!(w[0].end <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
        }
        let live = LOW_REGIONS.iter().find(|r| r.start == LIVE_ADDR).unwrap();
        assert_eq!(live.access, Access::UserRead);
    }

    #[test]
    fn live_area_bytes_round_trip() {
        let live = LiveArea {
            generation: 0x0102_0304_0506_0708,
            tsc_adjust: -5,
            restores: 3,
            reserved: 0,
            entropy: [7; 32],
        };
        let b = live.to_bytes();
        assert_eq!(&b[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..16], &(-5i64).to_le_bytes());
        assert_eq!(LiveArea::from_bytes(&b), live);
    }
}
