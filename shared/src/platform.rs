//! The machine a Tandem image meets when no Tandem VMM is underneath (QEMU,
//! other PVH VMMs, GRUB on bare metal): a 16550 UART for the console and
//! QEMU's `isa-debug-exit` device for the exit code.
//!
//! Guest memory layout and CPU state are the same on every path; only these
//! ports differ, and the guest's TSS opens them for CPL3 on those paths only.

/// COM1, the 16550 UART the console uses.
pub const COM1: u16 = 0x3F8;
/// Ports of the UART (data, interrupt enable, FIFO, line control, modem
/// control, line status, modem status, scratch).
pub const COM1_SPAN: u16 = 8;
/// I/O base of QEMU's `isa-debug-exit` device as Tandem configures it
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`). Writing `v` makes QEMU
/// exit with status `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Ports of the debug-exit device.
pub const DEBUG_EXIT_SPAN: u16 = 4;

/// The ports the TSS opens to CPL3 on the PVH and Multiboot2 paths.
pub const PLATFORM_PORTS: &[(u16, u16)] = &[(COM1, COM1_SPAN), (DEBUG_EXIT_PORT, DEBUG_EXIT_SPAN)];

/// QEMU arguments without any exit device: serial console on stdio, no
/// other devices, no graphics, no reboot (so the i8042 reset and a triple
/// fault end QEMU). The image then stops the machine through the i8042
/// reset or ACPI soft-off, as it would on a VMM without `isa-debug-exit`.
pub const QEMU_BASE_ARGS: &[&str] = &[
    "-nographic",
    "-no-reboot",
    "-nodefaults",
    "-serial",
    "stdio",
];

/// QEMU arguments for a machine as these paths expect it: serial console on
/// stdio, the debug-exit device at [`DEBUG_EXIT_PORT`], no other devices,
/// no graphics, no reboot (a triple fault ends QEMU).
pub const QEMU_ARGS: &[&str] = &[
    "-nographic",
    "-no-reboot",
    "-nodefaults",
    "-serial",
    "stdio",
    "-device",
    "isa-debug-exit,iobase=0xf4,iosize=0x04",
];

/// The QEMU machine for networked runs: microvm without ACPI, because only
/// then does QEMU (7.2) append a `virtio_mmio.device=SIZE@BASE:IRQ`
/// parameter per virtio-mmio device to the command line (with ACPI it
/// describes them in the DSDT instead), and the guest finds its devices on
/// the command line ([`virtio_mmio`](crate::virtio_mmio)).
pub const QEMU_NET_MACHINE: &str = "microvm,acpi=off";
/// The id of the user-network backend the device is wired to.
pub const QEMU_NETDEV_ID: &str = "n0";
/// The virtio-net device on the virtio-mmio transport, on [`QEMU_NETDEV_ID`].
pub const QEMU_NET_DEVICE: &str = "virtio-net-device,netdev=n0";
/// The address QEMU's user network (slirp) gives the guest by DHCP, which
/// host port forwards reach.
pub const QEMU_GUEST_ADDR: &str = "10.0.2.15";

/// QEMU's process exit status for a guest exit code written to the debug-exit port.
pub const fn qemu_status(code: u8) -> i32 {
    ((code as i32) << 1) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_args_name_the_debug_exit_port() {
        let device = QEMU_ARGS
            .iter()
            .find(|a| a.starts_with("isa-debug-exit"))
            .unwrap();
        let want = [("iobase=", DEBUG_EXIT_PORT), ("iosize=", DEBUG_EXIT_SPAN)];
        for (key, value) in want {
            let found = device
                .split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap();
            assert_eq!(
                u16::from_str_radix(found.trim_start_matches("0x"), 16),
                Ok(value)
            );
        }
        assert_eq!(qemu_status(101), 203);
        assert_eq!(&QEMU_ARGS[..QEMU_BASE_ARGS.len()], QEMU_BASE_ARGS);
        assert!(QEMU_NET_DEVICE
            .strip_suffix(QEMU_NETDEV_ID)
            .is_some_and(|s| s.ends_with("netdev=")));
    }
}
