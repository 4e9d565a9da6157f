//! The PVH and Multiboot2 entry paths: what a normal loader (QEMU `-kernel`,
//! another PVH VMM, GRUB) needs to boot a Tandem image, ending exactly where
//! the Tandem VMM's own path begins.
//!
//! 1. A 32-bit entry (`tandem_pvh_entry`, named by the Xen PHYS32 ELF note;
//!    `tandem_mb2_entry`, named by the Multiboot2 header) stamps the TSC,
//!    identity-maps the first 4 GiB with 2 MiB pages in a scratch segment the
//!    Tandem VMM never loads, and enters long mode at CPL0.
//! 2. [`tandem_boot_main`] (64-bit, CPL0) copies what the loader handed over
//!    (start info or Multiboot2 information) into a [`BootInfo`], finds the
//!    TSC frequency, and writes the same page tables, GDT, TSS, IDT and
//!    boot-info block the VMM would write, with the same `tandem_abi::cpu`
//!    builders. The only difference: the TSS also opens the UART and
//!    debug-exit ports, since there is no Tandem hypercall port to talk to.
//! 3. `tandem_enter_user` (in the supervisor-only kernel segment) switches to
//!    the final page tables and `iretq`s to `_start` at CPL3 with the
//!    boot-info address in `rdi`, as the VMM does.
//!
//! This code runs at CPL0 and is not on the fast path: under PVM each of its
//! instructions is emulated. It runs once per boot, only on these paths.

mod firmware;
mod machine;
mod tsc;

use tandem_abi::hypercall::EXIT_BAD_BOOT_INFO;

use crate::platform;

/// Value of `edi` handed to [`tandem_boot_main`] by each 32-bit entry.
const PATH_PVH: u64 = 1;
const PATH_MULTIBOOT2: u64 = 2;

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
    // ---- Scratch: boot page tables and stack. Not in the file; the Tandem
    // VMM neither loads nor maps this segment.
    ".pushsection .tandem.boot, \"aw\", @nobits",
    ".balign 4096",
    "tandem_boot_pml4: .skip 4096",
    "tandem_boot_pdpt: .skip 4096",
    "tandem_boot_pd: .skip 4 * 4096",
    "tandem_boot_stack: .skip 32768",
    "tandem_boot_stack_top:",
    "tandem_boot_tsc: .skip 8",
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
    "    xor edx, edx",
    "    jmp tandem_boot32",
    "tandem_mb2_entry:",
    "    mov ecx, eax",
    "    rdtsc",
    "    mov [tandem_boot_tsc], eax",
    "    mov [tandem_boot_tsc + 4], edx",
    "    mov esi, ebx",
    "    mov edi, {mb2}",
    "    mov edx, ecx",
    "    jmp tandem_boot32",
    "tandem_boot32:",
    "    cli",
    "    cld",
    "    mov esp, offset tandem_boot_stack_top",
    "    push edx",
    "    push esi",
    "    push edi",
    // Clear the six table pages (loaders zero the segment; bare metal may not).
    "    mov edi, offset tandem_boot_pml4",
    "    xor eax, eax",
    "    mov ecx, 6 * 1024",
    "    rep stosd",
    "    mov eax, offset tandem_boot_pdpt",
    "    or eax, 3",
    "    mov [tandem_boot_pml4], eax",
    "    mov eax, offset tandem_boot_pd",
    "    or eax, 3",
    "    mov [tandem_boot_pdpt], eax",
    "    add eax, 4096",
    "    mov [tandem_boot_pdpt + 8], eax",
    "    add eax, 4096",
    "    mov [tandem_boot_pdpt + 16], eax",
    "    add eax, 4096",
    "    mov [tandem_boot_pdpt + 24], eax",
    // 2048 entries of 2 MiB: present, writable, large; supervisor only.
    "    mov edi, offset tandem_boot_pd",
    "    mov eax, 0x83",
    "    mov ecx, 2048",
    "2:",
    "    mov [edi], eax",
    "    add eax, 0x200000",
    "    add edi, 8",
    "    loop 2b",
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
    "    pop edi",
    "    pop esi",
    "    pop edx",
    // Far return into the 64-bit code segment (push imm32 spelt out so
    // the assembler cannot pick a 16-bit form).
    "    .byte 0x6A, 0x08",
    "    .byte 0x68",
    "    .long tandem_boot64",
    "    retf",
    ".code64",
    "tandem_boot64:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    lea rsp, [rip + tandem_boot_stack_top]",
    "    mov edi, edi",
    "    mov esi, esi",
    "    mov edx, edx",
    "    mov rcx, [rip + tandem_boot_tsc]",
    "    call {main}",
    "    ud2",
    ".balign 8",
    "tandem_boot_gdt:",
    ".quad 0",
    ".quad 0x00AF9A000000FFFF", // 64-bit code
    ".quad 0x00CF92000000FFFF", // data
    "tandem_boot_gdt_ptr:",
    ".word 23",
    ".long tandem_boot_gdt",
    ".popsection",
    pvh = const PATH_PVH,
    mb2 = const PATH_MULTIBOOT2,
    main = sym tandem_boot_main,
);

/// The 64-bit CPL0 part of the PVH and Multiboot2 paths.
extern "C" fn tandem_boot_main(path: u64, info_addr: u64, magic: u64, entry_tsc: u64) -> ! {
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
    let tsc_khz = tsc::frequency_khz();
    match machine::prepare(&fw, tsc_khz, entry_tsc) {
        Ok(()) => machine::enter_app(),
        Err(e) => fail(format_args!("tandem: cannot boot: {e}\n")),
    }
}

/// Reports a boot failure on the UART and stops with [`EXIT_BAD_BOOT_INFO`].
fn fail(args: core::fmt::Arguments) -> ! {
    platform::uart_print(args);
    platform::debug_exit(EXIT_BAD_BOOT_INFO);
    platform::halt_cpl0()
}
