//! A small app to debug (`cargo xtask gdb debugme`, and the gdb tests):
//! adds up the squares of 1..=N (N the first number on the command line,
//! default 5) through `debugme_square`, keeping the running total in
//! `DEBUGME_TOTAL`, prints it and exits with it (mod 256: 55 for the
//! default).
//!
//! Other words of the command line, done in this order before the sum:
//! - `ready`: call `ready()` (for `--snapshot-at-ready`, then `tandem
//!   restore DIR --gdb`);
//! - `sse`: put a known value in `xmm0` and `xmm1`, stop in
//!   `debugme_sse_loaded` with them there, and print `xmm1` afterwards (a
//!   debugger reads `$xmm0` and may change `$xmm1`);
//! - `idle-ms=N`: wait N ms in the host (`idle`), then print how long the
//!   wait took (a debugger's Ctrl-C during the wait must not shorten it).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

/// The running total (a debugger reads it: `p (unsigned long) DEBUGME_TOTAL`).
#[unsafe(no_mangle)]
static DEBUGME_TOTAL: AtomicU64 = AtomicU64::new(0);

/// What `sse` puts in `xmm0` (low quadword; the high one is its complement).
const XMM0_LOW: u64 = 0x0123_4567_89ab_cdef;
/// What `sse` puts in `xmm1` (low quadword).
const XMM1_LOW: u64 = 0x1111_2222_3333_4444;

/// A function to break at (`break debugme_square`).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn debugme_square(n: u64) -> u64 {
    n * n
}

/// Where `sse` stops with its values in `xmm0` and `xmm1`
/// (`break debugme_sse_loaded`). Touches no SSE register.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn debugme_sse_loaded() {
    core::hint::black_box(());
}

/// Loads `xmm0` and `xmm1`, calls [`debugme_sse_loaded`], and returns the
/// low quadword `xmm1` holds after it.
fn sse_round_trip() -> u64 {
    let out: u64;
    // SAFETY: the kernel enables SSE for the app (CR4.OSFXSR). The target
    // is soft-float: no code of the app or its kernel uses an SSE register,
    // so xmm0-xmm2 (which asm! cannot name as operands here) keep what is
    // put in them across the call, unless a debugger changes them.
    unsafe {
        core::arch::asm!(
            "movq xmm0, {a}",
            "movq xmm2, {b}",
            "punpcklqdq xmm0, xmm2",
            "movq xmm1, {c}",
            a = in(reg) XMM0_LOW,
            b = in(reg) !XMM0_LOW,
            c = in(reg) XMM1_LOW,
        );
        debugme_sse_loaded();
        core::arch::asm!("movq {out}, xmm1", out = out(reg) out);
    }
    out
}

fn main(env: &Env) -> u8 {
    let mut rounds: u64 = 5;
    for word in env.args() {
        if let Ok(n) = word.parse() {
            rounds = n;
        } else if word == "ready" {
            ready();
        } else if word == "sse" {
            println!("xmm1 {:#x}", sse_round_trip());
        } else if let Some(ms) = word.strip_prefix("idle-ms=").and_then(|v| v.parse().ok()) {
            let start = Instant::now();
            tandem_guest::idle(Duration::from_millis(ms));
            println!("idled {} ms", start.elapsed().as_millis());
        } else {
            println!("debugme: unknown word `{word}`");
            return 2;
        }
    }
    for i in 1..=rounds {
        let sq = debugme_square(core::hint::black_box(i));
        DEBUGME_TOTAL.fetch_add(sq, Ordering::Relaxed);
    }
    let total = DEBUGME_TOTAL.load(Ordering::Relaxed);
    println!("total {total}");
    (total % 256) as u8
}
