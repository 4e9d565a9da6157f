//! Stopping the machine for good where no Tandem VMM is underneath, after
//! the debug-exit device (if any) did not end it: the i8042 reset (what
//! Firecracker, and QEMU with `-no-reboot`, take as the end of the VM), then
//! ACPI soft-off (S5) as the firmware's tables describe it, then a halt with
//! interrupts off.
//!
//! The app runs at CPL3, which cannot halt or reach those registers, and a
//! CPL3 `int` through a DPL3 gate takes #UD on some hosts (AMD under KVM).
//! So the way down is a `ud2` at a known address, `tandem_poweroff_trap`:
//! the #UD handler recognises it and jumps to `tandem_poweroff` at CPL0
//! instead of reporting an exception.

use core::sync::atomic::{AtomicU64, Ordering};

use tandem_abi::acpi::{self, AddressSpace, PhysRead, PortWrite, PowerOff};

/// No ACPI way off was found.
const KIND_NONE: u64 = 0;
/// A 16-bit write of `value` to PM1a_CNT (and of `value_b` to PM1b_CNT when its port is not 0).
const KIND_PM1: u64 = 1;
/// An 8-bit write of `value` to the sleep control register in I/O space.
const KIND_SLEEP_IO: u64 = 2;
/// An 8-bit write of `value` to the sleep control register in memory.
const KIND_SLEEP_MMIO: u64 = 3;

/// How `tandem_poweroff` enters S5: kind, port or address, value, PM1b
/// port, PM1b value. Written once at boot (CPL3), read at CPL0.
#[unsafe(no_mangle)]
static TANDEM_POWEROFF: [AtomicU64; 5] = [
    AtomicU64::new(KIND_NONE),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Reads the ACPI tables in `mem` (at CPL3, during boot) and records how
/// to power off.
pub(crate) fn discover(mem: &impl PhysRead, rsdp: Option<u64>) {
    let record = match acpi::find_poweroff(mem, rsdp) {
        Ok(PowerOff::Pm1Control { a, b }) => {
            let b = b.unwrap_or(PortWrite { port: 0, value: 0 });
            [
                KIND_PM1,
                u64::from(a.port),
                u64::from(a.value),
                u64::from(b.port),
                u64::from(b.value),
            ]
        }
        Ok(PowerOff::SleepControl { space, addr, value }) => {
            let kind = match space {
                AddressSpace::Io => KIND_SLEEP_IO,
                AddressSpace::Memory => KIND_SLEEP_MMIO,
            };
            [kind, addr, u64::from(value), 0, 0]
        }
        // Without ACPI the halt is the last resort.
        Err(_) => return,
    };
    for (slot, v) in TANDEM_POWEROFF.iter().zip(record) {
        slot.store(v, Ordering::Relaxed);
    }
}

unsafe extern "C" {
    /// A `ud2` that the #UD handlers take as "power off" (never returns).
    fn tandem_poweroff_trap() -> !;
}

/// Stops the machine from CPL3 (PVH and Multiboot2 paths only).
pub(crate) fn power_off() -> ! {
    // SAFETY: the IDT in force (the boot IDT or the final one) sends this
    // #UD to tandem_poweroff, which does not return.
    unsafe { tandem_poweroff_trap() }
}

core::arch::global_asm!(
    ".pushsection .text.tandem_poweroff_trap, \"ax\"",
    ".global tandem_poweroff_trap",
    "tandem_poweroff_trap:",
    "    ud2",
    ".popsection",
    // At CPL0, from a #UD handler; interrupts are off. The boot page tables
    // (which map the first 4 GiB, MMIO included, as user pages: SMEP off)
    // replace the final ones, which map RAM only.
    ".pushsection .tandem.ktext, \"ax\"",
    ".global tandem_poweroff",
    "tandem_poweroff:",
    "    cli",
    "    mov rax, cr4",
    "    and rax, ~0x100000",
    "    mov cr4, rax",
    "    lea rax, [rip + tandem_boot_pml4]",
    "    mov cr3, rax",
    "    mov al, 0xFE", // i8042: pulse the reset line
    "    out 0x64, al",
    "    mov rax, [rip + {rec}]",
    "    mov rdx, [rip + {rec} + 8]",
    "    mov rcx, [rip + {rec} + 16]",
    "    cmp rax, {pm1}",
    "    jne 1f",
    "    mov eax, ecx",
    "    out dx, ax",
    "    mov rdx, [rip + {rec} + 24]",
    "    test rdx, rdx",
    "    jz 9f",
    "    mov rax, [rip + {rec} + 32]",
    "    out dx, ax",
    "    jmp 9f",
    "1:",
    "    cmp rax, {io}",
    "    jne 2f",
    "    mov eax, ecx",
    "    out dx, al",
    "    jmp 9f",
    "2:",
    "    cmp rax, {mmio}",
    "    jne 9f",
    "    mov [rdx], cl",
    "9:",
    "    hlt",
    "    jmp 9b",
    ".popsection",
    rec = sym TANDEM_POWEROFF,
    pm1 = const KIND_PM1,
    io = const KIND_SLEEP_IO,
    mmio = const KIND_SLEEP_MMIO,
);
