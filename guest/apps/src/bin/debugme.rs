//! A small app to debug (`cargo xtask gdb debugme`, and the gdb tests):
//! adds up the squares of 1..=N (N the first argument, default 5) through
//! `debugme_square`, keeping the running total in `DEBUGME_TOTAL`, prints
//! it and exits with it (mod 256: 55 for the default).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

/// The running total (a debugger reads it: `p (unsigned long) DEBUGME_TOTAL`).
#[unsafe(no_mangle)]
static DEBUGME_TOTAL: AtomicU64 = AtomicU64::new(0);

/// A function to break at (`break debugme_square`).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn debugme_square(n: u64) -> u64 {
    n * n
}

fn main(env: &Env) -> u8 {
    let rounds: u64 = env.args().next().and_then(|a| a.parse().ok()).unwrap_or(5);
    for i in 1..=rounds {
        let sq = debugme_square(core::hint::black_box(i));
        DEBUGME_TOTAL.fetch_add(sq, Ordering::Relaxed);
    }
    let total = DEBUGME_TOTAL.load(Ordering::Relaxed);
    println!("total {total}");
    (total % 256) as u8
}
