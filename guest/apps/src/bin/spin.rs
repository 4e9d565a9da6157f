//! Never exits: for testing `--timeout`.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(_env: &Env) -> u8 {
    println!("spinning forever");
    tandem_guest::console::flush();
    loop {
        core::hint::spin_loop();
    }
}
