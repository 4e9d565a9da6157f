//! Panics on purpose: the message and location reach the console and the
//! VM exits with code 101.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(env: &Env) -> u8 {
    println!("about to panic");
    let answer = env.args().count() + 42;
    panic!("deliberate panic: the answer is {answer}");
}
