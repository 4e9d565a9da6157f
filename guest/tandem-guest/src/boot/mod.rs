//! The PVH and Multiboot2 entry paths: what a normal loader (QEMU `-kernel`,
//! another PVH VMM, GRUB) needs to boot a Tandem image, ending exactly where
//! the Tandem VMM's own path begins.
//!
//! CPL0 code is emulated an instruction at a time under software KVM (about
//! 1 µs each), so the trampoline runs at CPL0 only what must run there, and
//! has nothing to compute: its page tables, GDT and TSS are data in the image.
//!
//! 1. A 32-bit entry (`tandem_pvh_entry`, named by the Xen PHYS32 ELF note;
//!    `tandem_mb2_entry`, named by the Multiboot2 header) stamps the TSC,
//!    loads the prebuilt boot GDT and page tables (the first 4 GiB identity
//!    mapped with 2 MiB pages, user-accessible) and enters long mode.
//! 2. [`boot_cpl0`] (64-bit, CPL0, a few dozen instructions) loads the boot
//!    TSS (its I/O bitmap opens the UART and PIT ports) and a one-gate IDT,
//!    reads the CPUID leaves the boot needs (CPUID at CPL3 may answer for
//!    another hypervisor), and turns kvmclock on where KVM offers it, so the
//!    TSC frequency needs no calibration. Then `iretq` to CPL3.
//! 3. [`boot_user`] (CPL3, native speed) copies what the loader handed over
//!    (start info or Multiboot2 information) into a [`BootInfo`], finds the
//!    TSC frequency and how to power off, and writes the same page tables,
//!    GDT, TSS, IDT and boot-info block the VMM would write, with the same
//!    `tandem_abi::cpu` builders. The only difference: the TSS also opens the
//!    UART and debug-exit ports, since there is no Tandem hypercall port.
//! 4. A `ud2` at `tandem_boot_trap` brings it back to CPL0 through the boot
//!    IDT's #UD gate; [`boot_finish`] loads the final tables and
//!    `tandem_enter_user` `iretq`s to `_start` at CPL3 with the boot-info
//!    address in `rdi`, as the VMM does.
//!
//! [`BootInfo`]: tandem_abi::bootinfo::BootInfo

mod firmware;
mod frequency;
mod machine;

use core::sync::atomic::{AtomicU32, Ordering};

use tandem_abi::hypercall::EXIT_BAD_BOOT_INFO;
use tandem_abi::layout::selector;
use x86_64::registers::model_specific::Msr;

use crate::platform;

/// Value of `edi` handed to [`boot_cpl0`] and [`boot_user`] by each 32-bit entry.
const PATH_PVH: u64 = 1;
const PATH_MULTIBOOT2: u64 = 2;

/// The boot IDT holds gates 0..=6; only #UD (6) is present.
const BOOT_IDT_GATES: usize = 7;
const UD_VECTOR: usize = 6;

/// Boot GDT slot of the TSS descriptor (selector 0x28, two slots).
const BOOT_GDT_TSS_SLOT: usize = 5;

/// kvmclock MSRs (KVM's paravirtual clock): the "new" one when CPUID
/// 0x40000001 EAX bit 3 says so, else the original one (bit 0).
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;

core::arch::global_asm!(
    // ---- Multiboot2 header: first in the text segment, inside the first
    // 32 KiB of the file. The entry-address tag names the 32-bit entry
    // (the ELF entry point is the Tandem PV entry, in 64-bit mode).
    ".pushsection .tandem.mb2header, \"a\"",
    ".balign 8",
    "tandem_mb2_header:",
    ".long 0xE85250D6",
    ".long 0",
    ".long tandem_mb2_header_end - tandem_mb2_header",
    ".long -(0xE85250D6 + (tandem_mb2_header_end - tandem_mb2_header))",
    ".balign 8",
    ".short 3", // entry address tag
    ".short 0",
    ".long 12",
    ".long tandem_mb2_entry",
    ".balign 8",
    ".short 0", // end tag
    ".short 0",
    ".long 8",
    "tandem_mb2_header_end:",
    ".popsection",
    // ---- PVH: XEN_ELFNOTE_PHYS32_ENTRY names the 32-bit entry.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long tandem_pvh_entry",
    ".popsection",
    // ---- Boot data, in the file so that no CPL0 loop writes it. The Tandem
    // VMM neither loads nor maps this segment.
    ".pushsection .tandem.bootdata, \"aw\", @progbits",
    ".balign 4096",
    ".global tandem_boot_pml4",
    "tandem_boot_pml4:",
    ".quad tandem_boot_pdpt + 0x67", // present, writable, user, accessed, dirty
    ".fill 511, 8, 0",
    "tandem_boot_pdpt:",
    ".quad tandem_boot_pd + 0x67",
    ".quad tandem_boot_pd + 0x1067",
    ".quad tandem_boot_pd + 0x2067",
    ".quad tandem_boot_pd + 0x3067",
    ".fill 508, 8, 0",
    // 2048 entries of 2 MiB: present, writable, user, accessed, dirty, large.
    "tandem_boot_pd:",
    ".set tandem_boot_page, 0xE7",
    ".rept 2048",
    ".quad tandem_boot_page",
    ".set tandem_boot_page, tandem_boot_page + 0x200000",
    ".endr",
    // The boot GDT: the layout's selectors (kernel code 0x08, kernel data
    // 0x10, user data 0x1b, user code 0x23, TSS 0x28), descriptors
    // pre-accessed; the TSS descriptor is written by boot_cpl0.
    ".balign 16",
    ".global tandem_boot_gdt",
    "tandem_boot_gdt:",
    ".quad 0",
    ".quad 0x00AF9B000000FFFF",
    ".quad 0x00CF93000000FFFF",
    ".quad 0x00CFF3000000FFFF",
    ".quad 0x00AFFB000000FFFF",
    ".quad 0, 0",
    "tandem_boot_gdt_ptr:",
    ".short 7 * 8 - 1",
    ".long tandem_boot_gdt",
    // The boot TSS: RSP0 for the #UD trap, and an I/O bitmap for ports
    // 0..0x400 that opens PIT channel 0 and its command port (0x40, 0x43),
    // the debug-exit device (0xf4..0xf8) and COM1 (0x3f8..0x400) to CPL3.
    ".balign 16",
    ".global tandem_boot_tss",
    "tandem_boot_tss:",
    ".long 0",
    ".quad tandem_boot_kstack_top",
    ".fill 90, 1, 0",
    ".short 104",
    ".fill 8, 1, 0xFF",
    ".byte 0xF6",
    ".fill 21, 1, 0xFF",
    ".byte 0x0F",
    ".fill 96, 1, 0xFF",
    ".byte 0x00",
    ".byte 0xFF",
    "tandem_boot_tss_end:",
    ".popsection",
    // ---- Scratch: stacks, the entry stamp, the kvmclock record, the IDT.
    ".pushsection .tandem.boot, \"aw\", @nobits",
    ".balign 4096",
    ".global tandem_boot_idt",
    "tandem_boot_idt: .skip 16 * {idt_gates}",
    ".balign 64",
    ".global tandem_boot_pvclock",
    "tandem_boot_pvclock: .skip 32",
    "tandem_boot_tsc: .skip 8",
    ".balign 16",
    "tandem_boot_kstack: .skip 8192",
    "tandem_boot_kstack_top:",
    "tandem_boot_stack: .skip 32768",
    "tandem_boot_stack_top:",
    ".popsection",
    // ---- 32-bit entries and the switch to long mode.
    ".pushsection .text.tandem_boot32, \"ax\"",
    ".code32",
    "tandem_pvh_entry:",
    "    rdtsc",
    "    mov [tandem_boot_tsc], eax",
    "    mov [tandem_boot_tsc + 4], edx",
    "    mov esi, ebx",
    "    mov edi, {pvh}",
    "    xor ebp, ebp",
    "    jmp tandem_boot32",
    "tandem_mb2_entry:",
    "    mov ebp, eax",
    "    rdtsc",
    "    mov [tandem_boot_tsc], eax",
    "    mov [tandem_boot_tsc + 4], edx",
    "    mov esi, ebx",
    "    mov edi, {mb2}",
    "tandem_boot32:",
    "    cli",
    "    cld",
    "    lgdt [tandem_boot_gdt_ptr]",
    "    mov eax, cr4",
    "    or eax, 0x20", // PAE
    "    mov cr4, eax",
    "    mov eax, offset tandem_boot_pml4",
    "    mov cr3, eax",
    "    mov ecx, 0xC0000080", // EFER
    "    rdmsr",
    "    or eax, 0x100", // LME
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000001", // PG, PE
    "    mov cr0, eax",
    // Far return into the 64-bit code segment (push imm32 spelt out so
    // the assembler cannot pick a 16-bit form). No stack yet: use the
    // kernel stack's top.
    "    mov esp, offset tandem_boot_kstack_top",
    "    .byte 0x6A, 0x08",
    "    .byte 0x68",
    "    .long tandem_boot64",
    "    retf",
    ".code64",
    "tandem_boot64:",
    "    mov eax, 0x10",
    "    mov ds, eax",
    "    mov es, eax",
    "    mov ss, eax",
    "    lea rsp, [rip + tandem_boot_kstack_top]",
    "    mov edi, edi", // path (zero-extended)
    "    mov esi, esi", // loader information
    "    mov edx, ebp", // Multiboot2 magic
    "    push rdi",
    "    push rsi",
    "    push rdx",
    "    sub rsp, 8",
    "    call {cpl0}",
    "    add rsp, 8",
    "    pop rdx",
    "    pop rsi",
    "    pop rdi",
    "    mov rcx, [rip + tandem_boot_tsc]",
    // iretq to boot_user at CPL3 on the boot stack (as if called).
    "    mov eax, {user_ss}",
    "    mov ds, eax",
    "    mov es, eax",
    "    push {user_ss}",
    "    lea rax, [rip + tandem_boot_stack_top - 8]",
    "    push rax",
    "    push 0x2",
    "    push {user_cs}",
    "    lea rax, [rip + {user}]",
    "    push rax",
    "    iretq",
    // The boot IDT's #UD gate. The ud2 at tandem_boot_trap means the CPL3
    // part is done; any other #UD during boot stops the machine.
    "tandem_boot_ud:",
    "    lea rax, [rip + tandem_boot_trap]",
    "    cmp [rsp], rax",
    "    jne tandem_poweroff",
    "    lea rsp, [rip + tandem_boot_kstack_top]",
    "    call {finish}",
    "    ud2",
    ".popsection",
    ".pushsection .text.tandem_boot_trap, \"ax\"",
    ".global tandem_boot_trap",
    "tandem_boot_trap:",
    "    ud2",
    ".popsection",
    pvh = const PATH_PVH,
    mb2 = const PATH_MULTIBOOT2,
    idt_gates = const BOOT_IDT_GATES,
    cpl0 = sym boot_cpl0,
    user = sym boot_user,
    finish = sym boot_finish,
    user_ss = const selector::USER_DATA,
    user_cs = const selector::USER_CODE,
);

unsafe extern "C" {
    static mut tandem_boot_gdt: [u64; 7];
    static mut tandem_boot_idt: [u8; 16 * BOOT_IDT_GATES];
    static tandem_boot_tss: u8;
    static tandem_boot_tss_end: u8;
    static tandem_boot_pvclock: [u32; 8];
    fn tandem_boot_ud();
    fn tandem_boot_trap() -> !;
}

/// What CPUID says at CPL0, read once by [`boot_cpl0`] for the CPL3 part.
pub(crate) struct CpuFacts {
    pub max_leaf: AtomicU32,
    pub leaf1_ecx: AtomicU32,
    pub leaf1_edx: AtomicU32,
    pub leaf7_ebx: AtomicU32,
    /// Leaf 0x15: denominator, numerator, crystal Hz.
    pub leaf15: [AtomicU32; 3],
    /// Leaf 0x40000010 EAX (TSC kHz), where the hypervisor offers it.
    pub hv_tsc_khz: AtomicU32,
    /// The kvmclock MSR turned on, 0 if none.
    pub kvmclock_msr: AtomicU32,
}

pub(crate) static FACTS: CpuFacts = CpuFacts {
    max_leaf: AtomicU32::new(0),
    leaf1_ecx: AtomicU32::new(0),
    leaf1_edx: AtomicU32::new(0),
    leaf7_ebx: AtomicU32::new(0),
    leaf15: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
    hv_tsc_khz: AtomicU32::new(0),
    kvmclock_msr: AtomicU32::new(0),
};

fn load(a: &AtomicU32) -> u32 {
    a.load(Ordering::Relaxed)
}

fn store(a: &AtomicU32, v: u32) {
    a.store(v, Ordering::Relaxed)
}

/// Step 2, at CPL0: TSS, IDT, CPUID, kvmclock. Straight-line code: every
/// instruction here is emulated.
extern "C" fn boot_cpl0() {
    use core::arch::x86_64::__cpuid;
    use x86_64::instructions::tables::{lidt, load_tss};
    use x86_64::structures::gdt::SegmentSelector;
    use x86_64::structures::DescriptorTablePointer;
    use x86_64::VirtAddr;

    let (tss, tss_end, pvclock) = (
        &raw const tandem_boot_tss as u64,
        &raw const tandem_boot_tss_end as u64,
        &raw const tandem_boot_pvclock as u64,
    );
    let limit = u32::try_from(tss_end - tss - 1).unwrap_or(0);
    let descriptor = tandem_abi::cpu::gdt(tss, limit);
    let gate = tandem_abi::cpu::idt_gate(tandem_boot_ud as *const () as u64, 0, 0);
    // SAFETY: the boot GDT and IDT are this image's own writable boot data,
    // used by nothing else while the boot code runs (one CPU, interrupts
    // off); the TSS descriptor now describes the complete boot TSS, the #UD
    // gate points at tandem_boot_ud in the kernel code segment, and `ltr`
    // may set the descriptor's busy bit because the GDT is writable.
    unsafe {
        let gdt = &raw mut tandem_boot_gdt;
        (*gdt)[BOOT_GDT_TSS_SLOT] = descriptor[BOOT_GDT_TSS_SLOT];
        (*gdt)[BOOT_GDT_TSS_SLOT + 1] = descriptor[BOOT_GDT_TSS_SLOT + 1];
        let idt = &raw mut tandem_boot_idt;
        (&mut *idt)[UD_VECTOR * 16..UD_VECTOR * 16 + 16].copy_from_slice(&gate);
        load_tss(SegmentSelector(selector::TSS));
        lidt(&DescriptorTablePointer {
            limit: (16 * BOOT_IDT_GATES - 1) as u16,
            base: VirtAddr::new(idt as u64),
        });
    }

    let max = __cpuid(0).eax;
    store(&FACTS.max_leaf, max);
    let leaf1 = __cpuid(1);
    store(&FACTS.leaf1_ecx, leaf1.ecx);
    store(&FACTS.leaf1_edx, leaf1.edx);
    if max >= 7 {
        store(&FACTS.leaf7_ebx, __cpuid(7).ebx);
    }
    if max >= 0x15 {
        let l = __cpuid(0x15);
        for (slot, v) in FACTS.leaf15.iter().zip([l.eax, l.ebx, l.ecx]) {
            store(slot, v);
        }
    }
    let hv = __cpuid(0x4000_0000);
    if (0x4000_0010..0x5000_0000).contains(&hv.eax) {
        store(&FACTS.hv_tsc_khz, __cpuid(0x4000_0010).eax);
    }
    // "KVMKVMKVM\0\0\0": KVM's paravirtual leaves.
    let kvm = (hv.ebx, hv.ecx, hv.edx) == (0x4B4D_564B, 0x564B_4D56, 0x0000_004D);
    if kvm && hv.eax >= 0x4000_0001 {
        let features = __cpuid(0x4000_0001).eax;
        let msr = if features & (1 << 3) != 0 {
            MSR_KVM_SYSTEM_TIME_NEW
        } else if features & 1 != 0 {
            MSR_KVM_SYSTEM_TIME
        } else {
            0
        };
        if msr != 0 {
            // SAFETY: KVM advertises this MSR; it makes KVM write a 32-byte
            // pvclock record at `pvclock` (bit 0: enable), boot scratch
            // memory that nothing else uses, until boot_finish turns it off.
            unsafe { Msr::new(msr).write(pvclock | 1) };
            store(&FACTS.kvmclock_msr, msr);
        }
    }
}

/// The kvmclock record KVM wrote, as (tsc_to_system_mul, tsc_shift), once
/// its version is even (not mid-update) and non-zero.
pub(crate) fn kvmclock() -> Option<(u32, i8)> {
    if load(&FACTS.kvmclock_msr) == 0 {
        return None;
    }
    let rec = &raw const tandem_boot_pvclock as *const u32;
    for _ in 0..1000 {
        // SAFETY: the record is 32 bytes of boot scratch memory, mapped by
        // the boot page tables; KVM writes it between guest instructions,
        // so each word is read volatile and the version checked around.
        let (v1, mul, shift_word, v2) = unsafe {
            let v1 = rec.read_volatile();
            let mul = rec.add(6).read_volatile();
            let shift_word = rec.add(7).read_volatile();
            let v2 = rec.read_volatile();
            (v1, mul, shift_word, v2)
        };
        if v1 == v2 && v1 != 0 && v1 & 1 == 0 {
            return (mul != 0).then_some((mul, shift_word.to_le_bytes()[0] as i8));
        }
        core::hint::spin_loop();
    }
    None
}

/// Step 3, at CPL3: everything that can run natively.
extern "C" fn boot_user(path: u64, info_addr: u64, magic: u64, entry_tsc: u64) -> ! {
    platform::uart_init();
    let parsed = match path {
        PATH_PVH => firmware::from_pvh(info_addr),
        PATH_MULTIBOOT2 => firmware::from_multiboot2(info_addr, magic),
        _ => Err(firmware::FirmwareError::UnknownPath),
    };
    let fw = match parsed {
        Ok(fw) => fw,
        Err(e) => fail(format_args!("tandem: cannot boot: {e}\n")),
    };
    platform::poweroff::discover(&firmware::BootMemory, fw.rsdp);
    let tsc_khz = frequency::tsc_khz();
    match machine::prepare(&fw, tsc_khz, entry_tsc) {
        // SAFETY: the final tables are written; the trap's #UD gate leads
        // to boot_finish, which never returns here.
        Ok(()) => unsafe { tandem_boot_trap() },
        Err(e) => fail(format_args!("tandem: cannot boot: {e}\n")),
    }
}

/// Step 4, at CPL0 again: kvmclock off, the final tables in, into the app.
extern "C" fn boot_finish() -> ! {
    let msr = load(&FACTS.kvmclock_msr);
    if msr != 0 {
        // SAFETY: turning kvmclock off stops KVM's writes to the record.
        unsafe { Msr::new(msr).write(0) };
    }
    machine::enter_app()
}

/// Reports a boot failure on the UART and stops with [`EXIT_BAD_BOOT_INFO`].
fn fail(args: core::fmt::Arguments) -> ! {
    platform::uart_print(args);
    platform::debug_exit(EXIT_BAD_BOOT_INFO);
    platform::poweroff::power_off()
}
