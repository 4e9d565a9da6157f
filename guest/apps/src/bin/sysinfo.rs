//! Prints what the guest was told about its machine: boot path and loader,
//! command line, memory map, heap and TSC frequency. The same on every path.
#![no_std]
#![no_main]

use tandem_guest::abi::bootinfo::MemKind;
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(env: &Env) -> u8 {
    let info = env.boot_info();
    println!("boot path: {:?}", info.boot_path);
    println!("loader: {}", env.loader());
    println!("command line: {:?}", env.cmdline());
    let mut usable = 0u64;
    let mut top = 0u64;
    for r in &info.memory {
        let kind = match r.kind {
            MemKind::Usable => "usable",
            MemKind::Reserved => "reserved",
            MemKind::Acpi => "acpi",
        };
        println!(
            "memory: {:#012x}..{:#012x} {kind}",
            r.start,
            r.start + r.len
        );
        if r.kind == MemKind::Usable {
            usable += r.len;
            top = top.max(r.start + r.len);
        }
    }
    println!("usable memory: {usable} bytes, highest usable address {top:#x}");
    println!(
        "heap: {:#x}..{:#x}",
        info.heap.start,
        info.heap.start + info.heap.len
    );
    println!("tsc: {} kHz", info.cpu.tsc_khz);
    0
}
