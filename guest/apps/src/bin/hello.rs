//! The default app: greets, shows its command line and how long it took to boot.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(env: &Env) -> u8 {
    println!("Hello from Tandem!");
    println!("command line: {:?}", env.cmdline());
    let boot = env.boot_time();
    println!(
        "booted in {}.{:03} ms (VMM start to main), guest init {} us",
        boot.as_millis(),
        boot.as_micros() % 1000,
        env.guest_init_time().as_micros()
    );
    0
}
