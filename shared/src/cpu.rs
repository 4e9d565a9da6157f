//! Builders for the x86_64 CPU structures of the Tandem layout: page tables,
//! GDT, TSS with its I/O permission bitmap, and IDT gates.
//!
//! They write into plain byte buffers (no `unsafe`, no pointers), so the VMM
//! writes their output into guest memory and the guest's PVH and Multiboot2
//! trampolines build exactly the same machine state.

use crate::hypercall::HypercallPort;
use crate::layout::{self, Access, LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::note::{EXCEPTION_STUB_STRIDE, EXCEPTION_VECTORS};

/// Why a structure could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The output buffer is smaller than the structure.
    BufferTooSmall,
    /// Memory size is below the minimum, above the maximum, or not a multiple of 2 MiB.
    BadMemorySize(u64),
    /// An image segment lies outside `[IMAGE_ADDR, IMAGE_END)`.
    SegmentOutsideImage {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
    },
    /// A device window overlaps guest memory, runs past 4 GiB, or does not
    /// share the 2 MiB region of the other windows (one page table maps them).
    BadMmioWindow {
        /// Window start.
        start: u64,
        /// Window length.
        len: u64,
    },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BufferTooSmall => write!(f, "output buffer too small"),
            Self::BadMemorySize(n) => write!(
                f,
                "memory size {n:#x} must be a multiple of 2 MiB between {:#x} and {:#x}",
                layout::MIN_MEM_SIZE,
                layout::MAX_MEM_SIZE
            ),
            Self::SegmentOutsideImage { start, end } => write!(
                f,
                "segment {start:#x}..{end:#x} lies outside the image region {:#x}..{:#x}",
                layout::IMAGE_ADDR,
                layout::IMAGE_END
            ),
            Self::BadMmioWindow { start, len } => write!(
                f,
                "device window {start:#x}+{len:#x} overlaps memory, runs past 4 GiB or \
                 lies in another 2 MiB region than the other device windows"
            ),
        }
    }
}

fn put_u64(out: &mut [u8], offset: usize, v: u64) -> Result<(), BuildError> {
    out.get_mut(offset..offset + 8)
        .ok_or(BuildError::BufferTooSmall)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

// ---------------------------------------------------------------- paging

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const WRITABLE: u64 = 1 << 1;
    /// Accessible from CPL3.
    pub const USER: u64 = 1 << 2;
    /// Accessed (pre-set so the CPU never writes it).
    pub const ACCESSED: u64 = 1 << 5;
    /// Write-through caching (with [`CACHE_DISABLE`]: uncached, for device registers).
    pub const WRITE_THROUGH: u64 = 1 << 3;
    /// Caching disabled.
    pub const CACHE_DISABLE: u64 = 1 << 4;
    /// Dirty (pre-set so the CPU never writes it).
    pub const DIRTY: u64 = 1 << 6;
    /// Large page (2 MiB, in a page directory).
    pub const HUGE: u64 = 1 << 7;
    /// Not executable (needs `EFER.NXE`).
    pub const NO_EXECUTE: u64 = 1 << 63;
}

/// Leaf flags for an [`Access`]; 0 for unmapped.
pub const fn leaf_flags(access: Access) -> u64 {
    use pte::*;
    let base = PRESENT | ACCESSED | DIRTY;
    match access {
        Access::None => 0,
        Access::KernelRead => base | NO_EXECUTE,
        Access::KernelReadWrite => base | WRITABLE | NO_EXECUTE,
        Access::UserRead => base | USER | NO_EXECUTE,
        Access::UserReadWrite => base | USER | WRITABLE | NO_EXECUTE,
        Access::UserReadExecute => base | USER,
        Access::KernelReadExecute => base,
    }
}

/// Offsets of each table inside the page-table area.
pub mod pt_area {
    /// PML4.
    pub const PML4: usize = 0x0000;
    /// PDPT.
    pub const PDPT: usize = 0x1000;
    /// First of four page directories (1 GiB each).
    pub const PD: usize = 0x2000;
    /// Page table for 0..2 MiB (fixed layout).
    pub const PT_LOW: usize = 0x6000;
    /// Page table for 2..4 MiB (the image).
    pub const PT_IMAGE: usize = 0x7000;
    /// Page table for the 2 MiB region holding the device windows.
    pub const PT_MMIO: usize = 0x8000;
    /// Bytes used.
    pub const SIZE: usize = 0x9000;
}

const _: () = assert!(pt_area::SIZE as u64 <= layout::PAGE_TABLES_SIZE);

/// A loadable image segment and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMap {
    /// First guest address.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Accessible from CPL3 (false for the kernel segment).
    pub user: bool,
}

/// A device's register window (virtio-mmio, say), mapped for CPL3 drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    /// First guest-physical address.
    pub start: u64,
    /// Bytes.
    pub len: u64,
}

/// Leaf flags of a device window: user read-write, never executable, and
/// uncached (PCD and PWT), since register reads have side effects.
pub const MMIO_FLAGS: u64 =
    leaf_flags(Access::UserReadWrite) | pte::CACHE_DISABLE | pte::WRITE_THROUGH;

/// The 2 MiB region index all `windows` lie in, each checked: non-empty,
/// above guest memory, below 4 GiB. `None` when there are none.
fn mmio_region(mem_size: u64, windows: &[MmioWindow]) -> Result<Option<u64>, BuildError> {
    let mut region = None;
    for w in windows {
        let bad = BuildError::BadMmioWindow {
            start: w.start,
            len: w.len,
        };
        let end = w.start.checked_add(w.len).ok_or(bad)?;
        if w.len == 0 || w.start < mem_size || end > layout::MAX_MEM_SIZE {
            return Err(bad);
        }
        let (first, last) = (w.start / LARGE_PAGE_SIZE, (end - 1) / LARGE_PAGE_SIZE);
        if first != last || region.is_some_and(|r| r != first) {
            return Err(bad);
        }
        region = Some(first);
    }
    Ok(region)
}

/// Builds the identity-mapped page tables of a guest with `mem_size` bytes of
/// memory into `out`, which becomes guest memory at
/// [`PAGE_TABLES_ADDR`](layout::PAGE_TABLES_ADDR). The fixed low layout gets
/// the access of [`LOW_REGIONS`](layout::LOW_REGIONS), the image region the
/// union of the permissions of the segments on each page, and the heap
/// user read-write 2 MiB pages. Accessed and dirty bits are pre-set, so the
/// CPU never writes page tables (and they stay out of dirty logs).
///
/// Each of `mmio` (device register windows) is mapped with [`MMIO_FLAGS`]
/// on the 4 KiB pages it touches; they must lie above guest memory, below
/// 4 GiB, and in one 2 MiB region, which one page table
/// ([`pt_area::PT_MMIO`]) maps. With no windows that table stays zero.
pub fn build_page_tables(
    out: &mut [u8],
    mem_size: u64,
    segments: &[SegmentMap],
    mmio: &[MmioWindow],
) -> Result<(), BuildError> {
    use pte::*;
    if !(layout::MIN_MEM_SIZE..=layout::MAX_MEM_SIZE).contains(&mem_size)
        || !mem_size.is_multiple_of(LARGE_PAGE_SIZE)
    {
        return Err(BuildError::BadMemorySize(mem_size));
    }
    let out = out
        .get_mut(..pt_area::SIZE)
        .ok_or(BuildError::BufferTooSmall)?;
    out.fill(0);
    let base = layout::PAGE_TABLES_ADDR;
    let table = |off: usize| (base + off as u64) | PRESENT | WRITABLE | USER | ACCESSED;

    put_u64(out, pt_area::PML4, table(pt_area::PDPT))?;
    let gib = 1u64 << 30;
    let pds =
        usize::try_from(mem_size.div_ceil(gib)).map_err(|_| BuildError::BadMemorySize(mem_size))?;
    for i in 0..pds {
        put_u64(out, pt_area::PDPT + i * 8, table(pt_area::PD + i * 0x1000))?;
    }
    // 0..2 MiB and 2..4 MiB through page tables; the rest 2 MiB pages.
    put_u64(out, pt_area::PD, table(pt_area::PT_LOW))?;
    put_u64(out, pt_area::PD + 8, table(pt_area::PT_IMAGE))?;
    let heap = leaf_flags(Access::UserReadWrite) | HUGE;
    let mut addr = layout::HEAP_ADDR;
    while addr < mem_size {
        let index = (addr / LARGE_PAGE_SIZE) as usize;
        put_u64(out, pt_area::PD + index * 8, addr | heap)?;
        addr += LARGE_PAGE_SIZE;
    }

    for region in layout::LOW_REGIONS {
        let flags = leaf_flags(region.access);
        let mut page = region.start;
        while page < region.end {
            put_u64(
                out,
                pt_area::PT_LOW + (page / PAGE_SIZE) as usize * 8,
                page | flags,
            )?;
            page += PAGE_SIZE;
        }
    }

    for seg in segments {
        if seg.start < layout::IMAGE_ADDR || seg.end > layout::IMAGE_END || seg.start > seg.end {
            return Err(BuildError::SegmentOutsideImage {
                start: seg.start,
                end: seg.end,
            });
        }
        let mut page = seg.start & !(PAGE_SIZE - 1);
        while page < seg.end {
            let slot = pt_area::PT_IMAGE + ((page - layout::IMAGE_ADDR) / PAGE_SIZE) as usize * 8;
            let old = u64::from_le_bytes(out[slot..slot + 8].try_into().unwrap_or([0; 8]));
            let mut flags = PRESENT | ACCESSED | DIRTY;
            if seg.user || old & USER != 0 {
                flags |= USER;
            }
            // A page shared by two segments gets the union of their rights.
            let was_exec = old & PRESENT != 0 && old & NO_EXECUTE == 0;
            if seg.write || old & WRITABLE != 0 {
                flags |= WRITABLE;
            }
            if !(seg.exec || was_exec) {
                flags |= NO_EXECUTE;
            }
            put_u64(out, slot, page | flags)?;
            page += PAGE_SIZE;
        }
    }

    if let Some(region) = mmio_region(mem_size, mmio)? {
        // The region lies below 4 GiB (checked), so its index is below 2048.
        let (pd, slot) = ((region / 512) as usize, (region % 512) as usize);
        put_u64(
            out,
            pt_area::PDPT + pd * 8,
            table(pt_area::PD + pd * 0x1000),
        )?;
        put_u64(
            out,
            pt_area::PD + pd * 0x1000 + slot * 8,
            table(pt_area::PT_MMIO),
        )?;
        let region_base = region * LARGE_PAGE_SIZE;
        for w in mmio {
            let mut page = w.start & !(PAGE_SIZE - 1);
            while page < w.start + w.len {
                let index = ((page - region_base) / PAGE_SIZE) as usize;
                put_u64(out, pt_area::PT_MMIO + index * 8, page | MMIO_FLAGS)?;
                page += PAGE_SIZE;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- GDT

/// Number of 8-byte GDT slots (the TSS descriptor takes two).
pub const GDT_ENTRIES: usize = 7;

/// The GDT: null, kernel code and data, user data and code (in `sysret`
/// order), and a 64-bit TSS descriptor for a TSS at `tss_base` of `tss_limit`.
pub fn gdt(tss_base: u64, tss_limit: u32) -> [u64; GDT_ENTRIES] {
    // Long-mode code: present, DPL, S, executable+readable, L. Every
    // descriptor has its accessed bit set, so loading a selector never makes
    // the CPU write the GDT, which the page tables map read-only.
    const KERNEL_CODE: u64 = 0x00AF_9B00_0000_FFFF;
    const KERNEL_DATA: u64 = 0x00CF_9300_0000_FFFF;
    const USER_DATA: u64 = 0x00CF_F300_0000_FFFF;
    const USER_CODE: u64 = 0x00AF_FB00_0000_FFFF;
    let limit = u64::from(tss_limit);
    let low = (limit & 0xFFFF)
        | ((tss_base & 0xFF_FFFF) << 16)
        | (0x89 << 40) // present, available 64-bit TSS
        | (((limit >> 16) & 0xF) << 48)
        | (((tss_base >> 24) & 0xFF) << 56);
    let high = tss_base >> 32;
    [0, KERNEL_CODE, KERNEL_DATA, USER_DATA, USER_CODE, low, high]
}

/// Bytes of the GDT.
pub fn gdt_bytes(tss_base: u64, tss_limit: u32) -> [u8; GDT_ENTRIES * 8] {
    let mut out = [0u8; GDT_ENTRIES * 8];
    for (i, e) in gdt(tss_base, tss_limit).iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------- TSS

/// Size of the 64-bit TSS proper.
pub const TSS_SIZE: usize = 104;
/// Size of the I/O permission bitmap: one bit per port up to the last
/// hypercall port, plus the required all-ones terminating byte. Ports past
/// the TSS limit are denied by the CPU, so the bitmap stops there (one page
/// instead of three for the host to write and the guest to map).
pub const IO_BITMAP_SIZE: usize =
    (HypercallPort::FIRST as usize + HypercallPort::SPAN as usize).div_ceil(8) + 1;
/// Bytes of TSS and bitmap together.
pub const TSS_TOTAL: usize = TSS_SIZE + IO_BITMAP_SIZE;
/// The TSS limit for its descriptor.
// TSS_TOTAL is at most TSS_AREA_SIZE (0x3000, asserted below), so it fits a u32.
#[allow(clippy::cast_possible_truncation)]
pub const TSS_LIMIT: u32 = TSS_TOTAL as u32 - 1;

const _: () = assert!(TSS_TOTAL as u64 <= layout::TSS_AREA_SIZE);

/// Builds the TSS of the layout into `out`: RSP0 and IST stacks, and an I/O
/// permission bitmap that denies every port but the hypercall ports, so CPL3
/// code can make hypercalls (IOPL is not honoured at CPL3 under some
/// hypervisors; the bitmap is). Every byte an access may touch is opened:
/// a 4-byte `out` to port `p` checks bits `p..p+4`.
pub fn build_tss(out: &mut [u8]) -> Result<(), BuildError> {
    build_tss_with_ports(out, &[])
}

/// Builds the TSS like [`build_tss`], also opening `extra` port ranges
/// (first port, count) to CPL3. Ranges past the bitmap stay closed.
pub fn build_tss_with_ports(out: &mut [u8], extra: &[(u16, u16)]) -> Result<(), BuildError> {
    let out = out.get_mut(..TSS_TOTAL).ok_or(BuildError::BufferTooSmall)?;
    out.fill(0);
    put_u64(out, 4, layout::RSP0_TOP)?;
    put_u64(out, 36, layout::IST1_TOP)?;
    put_u64(out, 44, layout::IST2_TOP)?;
    // I/O map base: the bitmap starts right after the TSS (104 fits the 16-bit field).
    out[102..104].copy_from_slice(&TSS_SIZE.to_le_bytes()[..2]);
    let bitmap = &mut out[TSS_SIZE..];
    bitmap.fill(0xFF);
    let ranges =
        core::iter::once((HypercallPort::FIRST, HypercallPort::SPAN)).chain(extra.iter().copied());
    for (first, count) in ranges {
        for port in first..first.saturating_add(count) {
            // The last byte is the terminator and stays all ones.
            if let Some(byte) = bitmap
                .get_mut(usize::from(port / 8))
                .filter(|_| usize::from(port / 8) < IO_BITMAP_SIZE - 1)
            {
                *byte &= !(1 << (port % 8));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- IDT

/// Size of the IDT in bytes (256 gates).
pub const IDT_SIZE: usize = 256 * 16;

/// A 64-bit interrupt gate to `handler` in the kernel code segment.
pub fn idt_gate(handler: u64, ist: u8, dpl: u8) -> [u8; 16] {
    let h = handler.to_le_bytes();
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&h[0..2]); // offset bits 0..16
    g[2..4].copy_from_slice(&layout::selector::KERNEL_CODE.to_le_bytes());
    g[4] = ist & 0x7;
    g[5] = 0x80 | ((dpl & 3) << 5) | 0xE; // present, DPL, interrupt gate
    g[6..8].copy_from_slice(&h[2..4]); // offset bits 16..32
    g[8..12].copy_from_slice(&h[4..8]); // offset bits 32..64
    g
}

/// IST index used for a vector: double fault on IST1, NMI and machine check
/// on IST2; everything else on RSP0 (all exceptions come from CPL3).
pub const fn ist_for_vector(vector: u64) -> u8 {
    match vector {
        8 => 1,
        2 | 18 => 2,
        _ => 0,
    }
}

/// Builds the IDT: gates for the 32 architectural exceptions pointing at the
/// guest's stubs (`stubs + v * EXCEPTION_STUB_STRIDE`), all other gates
/// absent (none is open to CPL3).
pub fn build_idt(out: &mut [u8], stubs: u64) -> Result<(), BuildError> {
    let out = out.get_mut(..IDT_SIZE).ok_or(BuildError::BufferTooSmall)?;
    out.fill(0);
    for (v, slot) in (0..EXCEPTION_VECTORS).zip(out.chunks_exact_mut(16)) {
        slot.copy_from_slice(&idt_gate(
            stubs + v * EXCEPTION_STUB_STRIDE,
            ist_for_vector(v),
            0,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;

    fn entry(buf: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(buf[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn page_tables_map_layout() {
        let mut buf = [0u8; pt_area::SIZE];
        let segs = [
            SegmentMap {
                start: IMAGE_ADDR,
                end: IMAGE_ADDR + 0x1800,
                write: false,
                exec: true,
                user: true,
            },
            SegmentMap {
                start: IMAGE_ADDR + 0x2000,
                end: IMAGE_ADDR + 0x3000,
                write: true,
                exec: false,
                user: true,
            },
        ];
        build_page_tables(&mut buf, 64 << 20, &segs, &[]).unwrap();
        assert_eq!(
            entry(&buf, 0) & !0xFFF,
            PAGE_TABLES_ADDR + pt_area::PDPT as u64
        );
        // Null page unmapped, GDT kernel read-only, boot info user read-only.
        assert_eq!(entry(&buf, pt_area::PT_LOW), 0);
        let gdt = entry(&buf, pt_area::PT_LOW + 8);
        assert_eq!(
            gdt & (pte::USER | pte::WRITABLE | pte::PRESENT),
            pte::PRESENT
        );
        let bi = entry(
            &buf,
            pt_area::PT_LOW + (BOOT_INFO_ADDR / PAGE_SIZE) as usize * 8,
        );
        assert_eq!(bi & (pte::USER | pte::WRITABLE), pte::USER);
        // Stack guard unmapped.
        assert_eq!(
            entry(
                &buf,
                pt_area::PT_LOW + ((STACK_ADDR - PAGE_SIZE) / PAGE_SIZE) as usize * 8
            ),
            0
        );
        // Image: two code pages executable, gap unmapped, data writable NX.
        let code = entry(&buf, pt_area::PT_IMAGE + 8);
        assert_eq!(
            code & (pte::NO_EXECUTE | pte::WRITABLE | pte::USER),
            pte::USER
        );
        assert_eq!(
            entry(&buf, pt_area::PT_IMAGE + 16),
            (IMAGE_ADDR + 0x2000) | leaf_flags(Access::UserReadWrite)
        );
        assert_eq!(entry(&buf, pt_area::PT_IMAGE + 24), 0);
        // Heap: 2 MiB pages to the end of memory and no further.
        assert_eq!(
            entry(&buf, pt_area::PD + 16),
            HEAP_ADDR | leaf_flags(Access::UserReadWrite) | pte::HUGE
        );
        assert_ne!(entry(&buf, pt_area::PD + 31 * 8), 0);
        assert_eq!(entry(&buf, pt_area::PD + 32 * 8), 0);
    }

    #[test]
    fn page_tables_refuse_bad_input() {
        let mut buf = [0u8; pt_area::SIZE];
        assert_eq!(
            build_page_tables(&mut buf, MIN_MEM_SIZE - LARGE_PAGE_SIZE, &[], &[]),
            Err(BuildError::BadMemorySize(MIN_MEM_SIZE - LARGE_PAGE_SIZE))
        );
        assert!(build_page_tables(&mut buf, (64 << 20) + 4096, &[], &[]).is_err());
        assert!(build_page_tables(&mut buf, MAX_MEM_SIZE + LARGE_PAGE_SIZE, &[], &[]).is_err());
        let seg = SegmentMap {
            start: IMAGE_END - 0x1000,
            end: IMAGE_END + 1,
            write: false,
            exec: false,
            user: true,
        };
        assert!(matches!(
            build_page_tables(&mut buf, 64 << 20, &[seg], &[]),
            Err(BuildError::SegmentOutsideImage { .. })
        ));
        assert_eq!(
            build_page_tables(&mut buf[..100], 64 << 20, &[], &[]),
            Err(BuildError::BufferTooSmall)
        );
        // The largest memory maps all four page directories.
        build_page_tables(&mut buf, MAX_MEM_SIZE, &[], &[]).unwrap();
        assert_ne!(entry(&buf, pt_area::PD + 4 * 0x1000 - 8), 0);
    }

    #[test]
    fn page_tables_map_device_windows_uncached_for_cpl3() {
        let mem = 128 << 20;
        let mut plain = [0u8; pt_area::SIZE];
        build_page_tables(&mut plain, mem, &[], &[]).unwrap();
        // No windows: the device table stays empty, nothing else changes.
        assert!(plain[pt_area::PT_MMIO..].iter().all(|&b| b == 0));

        // QEMU microvm's first two virtio-mmio transports share a page.
        let windows = [
            MmioWindow {
                start: 0xfeb0_0e00,
                len: 0x200,
            },
            MmioWindow {
                start: 0xfeb0_0c00,
                len: 0x200,
            },
            MmioWindow {
                start: 0xfeb0_1f00,
                len: 0x200,
            },
        ];
        let mut buf = [0u8; pt_area::SIZE];
        build_page_tables(&mut buf, mem, &[], &windows).unwrap();
        assert_eq!(buf[..pt_area::PDPT + 24], plain[..pt_area::PDPT + 24]);
        assert_eq!(
            entry(&buf, pt_area::PDPT + 3 * 8) & !0xFFF,
            PAGE_TABLES_ADDR + pt_area::PD as u64 + 0x3000
        );
        let pde = entry(&buf, pt_area::PD + 0x3000 + 501 * 8);
        assert_eq!(pde & pte::HUGE, 0);
        assert_eq!(pde & !0xFFF, PAGE_TABLES_ADDR + pt_area::PT_MMIO as u64);
        let leaf = |page: u64| {
            entry(
                &buf,
                pt_area::PT_MMIO + ((page - 0xfea0_0000) >> 12) as usize * 8,
            )
        };
        for page in [0xfeb0_0000, 0xfeb0_1000, 0xfeb0_2000] {
            assert_eq!(leaf(page), page | MMIO_FLAGS, "{page:#x}");
        }
        let flags = leaf(0xfeb0_0000);
        for bit in [
            pte::PRESENT,
            pte::USER,
            pte::WRITABLE,
            pte::NO_EXECUTE,
            pte::CACHE_DISABLE,
            pte::WRITE_THROUGH,
        ] {
            assert_ne!(flags & bit, 0);
        }
        assert_eq!(leaf(0xfeb0_3000), 0);
        assert_eq!(leaf(0xfeaf_f000), 0);
        // Nothing else of the tables changed.
        assert_eq!(
            buf[pt_area::PD..pt_area::PD + 0x3000],
            plain[pt_area::PD..pt_area::PD + 0x3000]
        );
        assert_eq!(
            buf[pt_area::PT_LOW..pt_area::PT_MMIO],
            plain[pt_area::PT_LOW..pt_area::PT_MMIO]
        );
    }

    #[test]
    fn page_tables_refuse_bad_device_windows() {
        let mut buf = [0u8; pt_area::SIZE];
        let mem = 128 << 20;
        let w = |start, len| MmioWindow { start, len };
        for bad in [
            [w(0xfeb0_0000, 0)],
            [w(0x100_0000, 0x200)],      // inside guest memory
            [w(mem - 0x100, 0x200)],     // straddles its end
            [w(0xffff_ff00, 0x200)],     // past 4 GiB
            [w(u64::MAX - 0x10, 0x200)], // overflows
            [w(0xfebf_ff00, 0x200)],     // straddles two 2 MiB regions
        ] {
            assert_eq!(
                build_page_tables(&mut buf, mem, &[], &bad),
                Err(BuildError::BadMmioWindow {
                    start: bad[0].start,
                    len: bad[0].len
                })
            );
        }
        let two_regions = [w(0xfeb0_0000, 0x200), w(0xd000_0000, 0x200)];
        assert!(matches!(
            build_page_tables(&mut buf, mem, &[], &two_regions),
            Err(BuildError::BadMmioWindow {
                start: 0xd000_0000,
                ..
            })
        ));
        // Firecracker's MMIO gap at 3 GiB works too.
        build_page_tables(&mut buf, mem, &[], &[w(0xd000_0000, 0x1000)]).unwrap();
        assert_eq!(entry(&buf, pt_area::PT_MMIO), 0xd000_0000 | MMIO_FLAGS);
    }

    #[test]
    fn gdt_golden() {
        let g = gdt(0x2000, TSS_LIMIT);
        assert_eq!(g[1], 0x00AF_9B00_0000_FFFF);
        assert_eq!(g[3], 0x00CF_F300_0000_FFFF);
        // TSS descriptor: limit 0x229 (104 + 449 bitmap bytes + terminator - 1), base 0x2000, type 0x89.
        assert_eq!(TSS_LIMIT, 0x229);
        assert_eq!(g[5], 0x0000_8900_2000_0229);
        assert_eq!(g[6], 0);
    }

    #[test]
    fn tss_opens_only_hypercall_ports() {
        let mut buf = [0u8; TSS_TOTAL];
        build_tss(&mut buf).unwrap();
        assert_eq!(entry(&buf, 4), RSP0_TOP);
        assert_eq!(entry(&buf, 36), IST1_TOP);
        let bitmap = &buf[TSS_SIZE..];
        let open = |p: u16| bitmap[usize::from(p / 8)] & (1 << (p % 8)) == 0;
        let covered = u16::try_from((IO_BITMAP_SIZE - 1) * 8).unwrap();
        for p in 0..covered {
            let expected =
                (HypercallPort::FIRST..HypercallPort::FIRST + HypercallPort::SPAN).contains(&p);
            assert_eq!(open(p), expected, "port {p:#x}");
        }
        // Every port past the bitmap is past the TSS limit, hence denied.
        assert_eq!(TSS_SIZE + (covered as usize) / 8, TSS_LIMIT as usize);
        assert_eq!(*bitmap.last().unwrap(), 0xFF);
    }

    #[test]
    fn idt_gate_golden() {
        let g = idt_gate(0x1234_5678_9ABC_DEF0, 1, 0);
        assert_eq!(
            g,
            [0xF0, 0xDE, 0x08, 0x00, 0x01, 0x8E, 0xBC, 0x9A, 0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]
        );
        let mut idt = [0u8; IDT_SIZE];
        build_idt(&mut idt, 0x20_0000).unwrap();
        assert_eq!(
            &idt[14 * 16..14 * 16 + 2],
            &(0x20_0000u64 + 14 * 16).to_le_bytes()[..2]
        );
        assert_eq!(idt[8 * 16 + 4], 1);
        // Every exception gate is DPL 0; no gate past them, none open to CPL3.
        assert!((0..32).all(|v| idt[v * 16 + 5] == 0x8E));
        assert!((32..256).all(|v| idt[v * 16 + 5] == 0));
    }
}
