//! Faults on purpose, as chosen by the first argument:
//! `unmapped` (default) reads an address past guest memory, `null` reads
//! address 0, `kernel-write` writes the supervisor-only GDT, `ud` executes
//! an invalid opcode, `forbidden-port` writes a port the TSS bitmap denies.
#![no_std]
#![no_main]

use tandem_guest::abi::layout::GDT_ADDR;
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

fn main(env: &Env) -> u8 {
    let case = env.args().next().unwrap_or("unmapped");
    println!("faulting on purpose: {case}");
    // SAFETY (all cases): each access is meant to fault; the CPU stops it
    // before it has any effect and the guest's exception path ends the VM.
    match case {
        "unmapped" => {
            let v = unsafe { core::ptr::read_volatile(0xDEAD_0000 as *const u64) };
            println!("read {v}");
        }
        "null" => {
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            println!("read {v}");
        }
        "kernel-write" => unsafe { core::ptr::write_volatile(GDT_ADDR as *mut u64, 0) },
        "ud" => unsafe { core::arch::asm!("ud2") },
        "forbidden-port" => unsafe {
            core::arch::asm!("out dx, al", in("dx") 0x3F8u16, in("al") b'x');
        },
        other => {
            println!("unknown case {other}");
            return 2;
        }
    }
    println!("no fault?");
    1
}
