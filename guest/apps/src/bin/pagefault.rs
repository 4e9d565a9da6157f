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
    // Each case faults in a function of its own, so a core file of the
    // crash (`tandem run --core`) names it.
    match case {
        "unmapped" => println!("read {}", read_unmapped()),
        "null" => println!("read {}", read_null()),
        "kernel-write" => write_kernel(),
        "ud" => invalid_opcode(),
        "forbidden-port" => forbidden_port(),
        other => {
            println!("unknown case {other}");
            return 2;
        }
    }
    println!("no fault?");
    1
}

// Each access below is meant to fault: the CPU stops it before it has any
// effect and the guest's exception path ends the VM.

#[inline(never)]
fn read_unmapped() -> u64 {
    // SAFETY: 0xDEAD_0000 lies past the guest memory this app is run with,
    // so the read faults before it returns; the exception path ends the VM.
    unsafe { core::ptr::read_volatile(0xDEAD_0000 as *const u64) }
}

#[inline(never)]
fn read_null() -> u64 {
    // SAFETY: page 0 is unmapped (null guard), so the read faults before it
    // returns; the exception path ends the VM.
    unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) }
}

#[inline(never)]
fn write_kernel() {
    // SAFETY: the GDT page is supervisor read-only, so this CPL3 write
    // faults before it changes anything; the exception path ends the VM.
    unsafe { core::ptr::write_volatile(GDT_ADDR as *mut u64, 0) }
}

#[inline(never)]
fn invalid_opcode() {
    // SAFETY: `ud2` raises #UD and touches no memory or registers; the
    // exception path ends the VM.
    unsafe { core::arch::asm!("ud2") }
}

#[inline(never)]
fn forbidden_port() {
    // SAFETY: the TSS I/O bitmap denies port 0x3F8 at CPL3, so the `out`
    // raises #GP before it reaches the port; the exception path ends the VM.
    unsafe { core::arch::asm!("out dx, al", in("dx") 0x3F8u16, in("al") b'x') }
}
