//! The console: text is appended to the console buffer in guest memory and
//! the host drains it on every VM exit. The guest forces an exit only when
//! the buffer is full, at `ready()` and exit, and at a newline when the last
//! flush is older than [`FLUSH_INTERVAL_US`]: a short-lived app prints with
//! no exit of its own, a long-running one still shows each line promptly.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use tandem_abi::hypercall::Request;
use tandem_abi::layout::{CONSOLE_ADDR, CONSOLE_CAPACITY, CONSOLE_DATA_OFFSET};

use crate::{hypercall, time};

/// A newline flushes when the previous flush is older than this.
pub const FLUSH_INTERVAL_US: u64 = 1000;

static LAST_FLUSH_TSC: AtomicU64 = AtomicU64::new(0);

fn fill_level() -> *mut u32 {
    CONSOLE_ADDR as *mut u32
}

fn read_level() -> u64 {
    // SAFETY: the layout maps the console header user read-write for the whole
    // run; the host only changes it while the vCPU is stopped in an exit.
    let level = u64::from(unsafe { fill_level().read_volatile() });
    // A level past the capacity can only come from a stray app write: start over.
    if level > CONSOLE_CAPACITY {
        0
    } else {
        level
    }
}

/// Starts the flush clock at boot, so the first lines batch like the rest.
pub(crate) fn init(now_tsc: u64) {
    LAST_FLUSH_TSC.store(now_tsc, Ordering::Relaxed);
}

/// Forces the buffered text out (one VM exit).
pub fn flush() {
    if !crate::platform::is_tandem() {
        return; // the UART has no buffer of ours
    }
    hypercall::call(&Request::Flush);
}

/// Every VM exit drains the console: the hypercall client calls this after
/// each one, so the newline rule counts from the last exit of any kind.
pub(crate) fn drained() {
    LAST_FLUSH_TSC.store(time::rdtsc(), Ordering::Relaxed);
}

/// Appends bytes to the console.
pub fn write_bytes(mut bytes: &[u8]) {
    if !crate::platform::is_tandem() {
        crate::platform::uart_write(bytes);
        return;
    }
    let mut newline = false;
    while !bytes.is_empty() {
        let mut level = read_level();
        if level == CONSOLE_CAPACITY {
            flush();
            level = read_level();
        }
        let n = bytes.len().min((CONSOLE_CAPACITY - level) as usize);
        let (now, rest) = bytes.split_at(n);
        let dst = (CONSOLE_ADDR + CONSOLE_DATA_OFFSET + level) as *mut u8;
        // SAFETY: `dst..dst + n` lies inside the console buffer (level + n <=
        // CONSOLE_CAPACITY), which the layout maps user read-write and which no
        // Rust reference points into.
        unsafe {
            core::ptr::copy_nonoverlapping(now.as_ptr(), dst, n);
            fill_level().write_volatile((level + n as u64) as u32);
        }
        newline |= now.contains(&b'\n');
        bytes = rest;
    }
    if newline {
        let khz = time::tsc_khz();
        let since = time::rdtsc().wrapping_sub(LAST_FLUSH_TSC.load(Ordering::Relaxed));
        if khz != 0 && since > FLUSH_INTERVAL_US * khz / 1000 {
            flush();
        }
    }
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
