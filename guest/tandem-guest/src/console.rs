//! The console: `print!` and `println!`. On the Tandem VMM text goes into
//! a ring in guest memory that the host drains on every VM exit (the
//! platform layer decides when to force one); on a PC it goes to the UART.

use core::fmt::{self, Write};

use crate::platform;

/// A newline forces a flush on the Tandem VMM when the last one is older
/// than this.
pub const FLUSH_INTERVAL_US: u64 = crate::platform::FLUSH_INTERVAL_US;

/// Forces the buffered text out (one VM exit on the Tandem VMM).
pub fn flush() {
    platform::console_flush();
}

/// Appends bytes to the console.
pub fn write_bytes(bytes: &[u8]) {
    platform::console_write(bytes);
}

/// The console as a `fmt::Write` sink.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = Console.write_fmt(args);
}

/// Prints and flushes at once, for failure paths.
pub fn emergency(args: fmt::Arguments) {
    _print(args);
    flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
