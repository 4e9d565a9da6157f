//! Reads its standard input to the end and echoes it line by line
//! (`> LINE`), then says how much it read; exits 0.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(_env: &Env) -> u8 {
    let mut buf = [0u8; 512];
    let (mut total, mut lines) = (0usize, 0usize);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = tandem_guest::stdin::read(&mut buf);
        if n == 0 {
            break;
        }
        total += n;
        for &b in &buf[..n] {
            if b == b'\n' {
                println!("> {}", String::from_utf8_lossy(&line));
                lines += 1;
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        println!("> {}", String::from_utf8_lossy(&line));
        lines += 1;
    }
    println!("stdin: {total} bytes, {lines} lines");
    0
}
