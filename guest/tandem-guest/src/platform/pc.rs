//! A plain PC underneath, as QEMU, another PVH VMM or GRUB on bare metal
//! leave it: a 16550 UART on COM1 for the console; for the exit, QEMU's
//! `isa-debug-exit` where it is present, else the i8042 reset, else ACPI
//! soft-off, else a halt at CPL0 ([`poweroff`](super::poweroff)).

use core::fmt::{self, Write};

use tandem_abi::platform::{COM1, DEBUG_EXIT_PORT};
use tandem_abi::trace::Phase;
use x86_64::instructions::port::Port;

use crate::{trace, tsc};

fn outb(port: u16, value: u8) {
    let mut p: Port<u8> = Port::new(port);
    // SAFETY: the UART ports are open to the guest on the paths that use
    // them (CPL0 during boot; CPL3 through the TSS bitmap); writing them only
    // drives the serial line.
    unsafe { p.write(value) };
}

fn inb(port: u16) -> u8 {
    let mut p: Port<u8> = Port::new(port);
    // SAFETY: as in `outb`; reading the UART's status has no side effect.
    unsafe { p.read() }
}

/// Sets COM1 to 115200 baud, 8N1, FIFOs on, no interrupts.
pub(crate) fn uart_init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xC7);
    outb(COM1 + 4, 0x03);
}

/// Bytes the 16550's transmit FIFO (enabled by [`uart_init`]) takes once
/// its "transmitter holding register empty" bit says it has drained.
const UART_FIFO: usize = 16;

/// Writes bytes to COM1, waiting for room in the transmitter. Every port
/// access is a VM exit under a hypervisor, so the status is read once per
/// FIFO's worth of bytes rather than once per byte.
pub(super) fn uart_write(bytes: &[u8]) {
    for chunk in bytes.chunks(UART_FIFO) {
        // Bounded wait: a missing UART must not hang the guest.
        let mut spins = 0u32;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        uart_write(s.as_bytes());
        Ok(())
    }
}

pub(crate) fn uart_print(args: fmt::Arguments) {
    let _ = Uart.write_fmt(args);
}

/// Writes `code` to QEMU's debug-exit device (no effect where there is none).
pub(crate) fn debug_exit(code: u8) {
    let mut p: Port<u32> = Port::new(DEBUG_EXIT_PORT);
    // SAFETY: the port is open to the guest on these paths; without the
    // device the write goes nowhere.
    unsafe { p.write(u32::from(code)) };
}

/// Stops the VM with `code`: the boot trace on the console, the
/// debug-exit device, and where that did not end the VM, the code on the
/// console and the power-off sequence.
pub(super) fn exit(code: u8) -> ! {
    trace::stamp(Phase::Exit);
    print_trace();
    debug_exit(code);
    uart_print(format_args!(
        "tandem: app exited with code {code}; powering off\n"
    ));
    super::poweroff::power_off()
}

/// The guest's boot stamps in a fixed, parseable line (one per boot), for
/// `cargo xtask bench boot-paths`: raw TSC values, 0 for phases not reached.
fn print_trace() {
    uart_print(format_args!("tandem-trace: v1 tsc_khz={}", tsc::khz()));
    for p in Phase::ALL
        .into_iter()
        .filter(|p| p.stamped_by_guest() || *p == Phase::Exit)
    {
        uart_print(format_args!(" {}={}", p.name(), trace::get(p)));
    }
    uart_print(format_args!("\n"));
}
