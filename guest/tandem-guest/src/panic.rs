//! Panics print their message and location and stop the VM with
//! [`EXIT_PANIC`](tandem_abi::hypercall::EXIT_PANIC).

use core::panic::PanicInfo;
use tandem_abi::hypercall::EXIT_PANIC;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    match info.location() {
        Some(loc) => crate::console::emergency(format_args!(
            "\npanicked at {}:{}:{}:\n{}\n",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        )),
        None => crate::console::emergency(format_args!("\npanicked: {}\n", info.message())),
    }
    crate::env::exit(EXIT_PANIC)
}
