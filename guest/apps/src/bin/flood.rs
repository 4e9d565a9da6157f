//! Floods the console: prints lines as fast as it can, forever (for the
//! VMM's console limit and `--timeout`).
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(_env: &Env) -> u8 {
    let mut n: u64 = 0;
    loop {
        println!("flood line {n}: the quick brown fox jumps over the lazy dog");
        n += 1;
    }
}
