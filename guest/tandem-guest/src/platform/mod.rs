//! The machine underneath, chosen once at boot from the boot-info block's
//! boot path, behind one set of operations: the Tandem VMM (hypercalls,
//! the console ring, the live area) or a plain PC as QEMU, another PVH VMM
//! or GRUB on bare metal leave it (a UART, QEMU's debug-exit device, the
//! i8042 reset, ACPI). No other module asks which one it is; apps never see
//! the difference, except that a PC has no host to ask for input, the wall
//! clock, snapshots or waits.

mod pc;
pub(crate) mod poweroff;
mod tandem;

use core::sync::atomic::{AtomicBool, Ordering};

use tandem_abi::bootinfo::BootPath;

pub(crate) use pc::{debug_exit, uart_init, uart_print};
pub(crate) use tandem::FLUSH_INTERVAL_US;

static PLAIN_PC: AtomicBool = AtomicBool::new(false);

/// Records how the guest was booted (once, before anything else runs).
pub(crate) fn select(path: BootPath) {
    PLAIN_PC.store(path != BootPath::TandemPv, Ordering::Relaxed);
}

fn on_tandem() -> bool {
    !PLAIN_PC.load(Ordering::Relaxed)
}

/// Whether the Tandem VMM is underneath (for apps that want to say so; the
/// library's own code goes through the operations below).
pub fn is_tandem() -> bool {
    on_tandem()
}

/// Writes console bytes: into the ring the host drains, or to the UART.
pub(crate) fn console_write(bytes: &[u8]) {
    if on_tandem() {
        tandem::console_write(bytes)
    } else {
        pc::uart_write(bytes)
    }
}

/// Forces buffered console text out (one VM exit on Tandem; the UART has
/// no buffer of ours).
pub(crate) fn console_flush() {
    if on_tandem() {
        tandem::console_flush()
    }
}

/// Starts the console's flush clock at boot.
pub(crate) fn console_start(now_tsc: u64) {
    if on_tandem() {
        tandem::console_start(now_tsc)
    }
}

/// Stops the VM with `code`.
pub(crate) fn exit(code: u8) -> ! {
    if on_tandem() {
        tandem::exit(code)
    } else {
        pc::exit(code)
    }
}

/// Tells the host the app is ready (nobody to tell on a PC).
pub(crate) fn ready() {
    if on_tandem() {
        tandem::ready()
    }
}

/// Waits up to `nanos` in the host: `Some(true)` when the VMM asks the app
/// to stop, `Some(false)` when the time is up; `None` at once on a PC,
/// which has no host to wait in.
pub(crate) fn idle(nanos: u64) -> Option<bool> {
    on_tandem().then(|| tandem::idle(nanos))
}

/// Reads standard input into `buf`; 0 at its end (a PC has none).
pub(crate) fn read_stdin(buf: &mut [u8]) -> usize {
    if on_tandem() {
        tandem::read_stdin(buf)
    } else {
        0
    }
}

/// The host's wall clock, in nanoseconds since the Unix epoch.
pub(crate) fn wall_clock_nanos() -> Option<u64> {
    if on_tandem() {
        tandem::wall_clock_nanos()
    } else {
        None
    }
}

/// Asks the host for a snapshot: `Some(taken)` from the host, `None` on a PC.
pub(crate) fn snapshot() -> Option<bool> {
    if on_tandem() {
        tandem::snapshot()
    } else {
        None
    }
}

/// One word of the live area (a [`LiveArea`](tandem_abi::layout::LiveArea)
/// offset); 0 on a PC, where nobody writes it.
pub(crate) fn live_word(offset: u64) -> u64 {
    if on_tandem() {
        crate::pages::live_word(offset)
    } else {
        0
    }
}
