//! The default app: greets, shows its command line and how long it took to boot.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(env: &Env) -> u8 {
    println!("Hello from Tandem!");
    println!("command line: {:?}", env.cmdline());
    let boot = env.boot_time();
    let from = match env.boot_info().host.vmm_start {
        0 => "first instruction",
        _ => "VMM start",
    };
    println!("booted by: {}", env.loader());
    println!(
        "booted in {}.{:03} ms ({from} to main), guest init {} us",
        boot.as_millis(),
        boot.as_micros() % 1000,
        env.guest_init_time().as_micros()
    );
    0
}
