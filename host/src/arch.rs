//! x86_64 machine state for the Tandem PV entry: the CPU structures written
//! into guest memory (built by `tandem_abi::cpu`, the same builders the guest's
//! own trampolines use) and the vCPU registers that enter the app at CPL3.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use tandem_abi::cpu::{self, BuildError, SegmentMap};
use tandem_abi::layout::{self, selector};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

/// Why the machine state could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// A builder refused its input.
    #[error("cannot build CPU structures: {0}")]
    Build(BuildError),
    /// Guest memory refused a write.
    #[error("cannot write CPU structures into guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_SMEP: u64 = 1 << 20;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Writes page tables, GDT, TSS (with the I/O bitmap) and IDT.
pub fn write_structures(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    segments: &[SegmentMap],
    mmio: &[cpu::MmioWindow],
    exception_stubs: u64,
) -> Result<(), ArchError> {
    let mut pt = [0u8; cpu::pt_area::SIZE];
    cpu::build_page_tables(&mut pt, mem_size, segments, mmio).map_err(ArchError::Build)?;
    // Guest memory is fresh and zero: write only the tables in use, so the
    // host faults in no page it does not need.
    // PAGE_SIZE is 4 KiB, which fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    let page_size = layout::PAGE_SIZE as usize;
    for (i, table) in pt.chunks(page_size).enumerate() {
        if table.iter().any(|&b| b != 0) {
            let at = layout::PAGE_TABLES_ADDR + i as u64 * layout::PAGE_SIZE;
            mem.write_slice(table, GuestAddress(at))?;
        }
    }

    mem.write_slice(
        &cpu::gdt_bytes(layout::TSS_ADDR, cpu::TSS_LIMIT),
        GuestAddress(layout::GDT_ADDR),
    )?;

    let mut tss = [0u8; cpu::TSS_TOTAL];
    cpu::build_tss(&mut tss).map_err(ArchError::Build)?;
    mem.write_slice(&tss, GuestAddress(layout::TSS_ADDR))?;

    let mut idt = [0u8; cpu::IDT_SIZE];
    cpu::build_idt(&mut idt, exception_stubs).map_err(ArchError::Build)?;
    mem.write_slice(&idt, GuestAddress(layout::IDT_ADDR))?;
    Ok(())
}

// GDTR and IDTR hold 16-bit limits. Both tables are at most 64 KiB (asserted
// here), so the casts below cannot truncate.
const _: () = assert!(cpu::GDT_ENTRIES * 8 <= 1 << 16 && cpu::IDT_SIZE <= 1 << 16);
#[allow(clippy::cast_possible_truncation)]
const GDT_LIMIT: u16 = (cpu::GDT_ENTRIES * 8 - 1) as u16;
#[allow(clippy::cast_possible_truncation)]
const IDT_LIMIT: u16 = (cpu::IDT_SIZE - 1) as u16;

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 0xB } else { 0x3 },
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for 64-bit user mode on the layout's structures.
/// `base` is what KVM reported (keeps fields Tandem does not set, such as APIC base).
pub fn user_mode_sregs(mut sregs: kvm_sregs, smep: bool) -> kvm_sregs {
    sregs.cs = segment(selector::USER_CODE, true);
    let data = segment(selector::USER_DATA, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: layout::TSS_ADDR,
        limit: cpu::TSS_LIMIT,
        selector: selector::TSS,
        type_: 0xB, // busy 64-bit TSS
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = IDT_LIMIT;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = layout::PAGE_TABLES_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | if smep { CR4_SMEP } else { 0 };
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    sregs
}

/// General registers entering `entry` with the boot-info address in `rdi`.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: layout::STACK_TOP,
        rdi: layout::BOOT_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    }
}
