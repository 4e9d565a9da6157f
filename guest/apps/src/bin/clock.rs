//! Announces readiness, asks the host for the wall clock, checks SSE, and
//! exits 0: exercises `ready()`, a hypercall with a reply, and the FPU state.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;

tandem_guest::entry!(main);

/// Adds two vectors of four `f32` with SSE, at CPL3.
fn sse_add() -> [f32; 4] {
    let a = [1.5f32, 2.0, 3.25, -4.0];
    let b = [0.5f32, 0.25, 0.75, 8.0];
    let mut out = [0f32; 4];
    // SAFETY: the pointers are to local arrays of 16 bytes each; `movups`
    // and `addps` need CR4.OSFXSR, which the VMM sets.
    unsafe {
        core::arch::asm!(
            "movups xmm0, [{a}]",
            "movups xmm1, [{b}]",
            "addps xmm0, xmm1",
            "movups [{out}], xmm0",
            a = in(reg) a.as_ptr(),
            b = in(reg) b.as_ptr(),
            out = in(reg) out.as_mut_ptr(),
            out("xmm0") _,
            out("xmm1") _,
        );
    }
    out
}

fn main(env: &Env) -> u8 {
    ready();
    let sum = sse_add();
    let bits: Vec<u32> = sum.iter().map(|f| f.to_bits()).collect();
    // 2.0, 2.25, 4.0, 4.0
    let ok = bits == [0x4000_0000, 0x4010_0000, 0x4080_0000, 0x4080_0000];
    println!("sse: {}", if ok { "ok" } else { "WRONG" });
    match env.wall_clock_nanos() {
        Some(ns) => println!("wall clock: {} s since the epoch", ns / 1_000_000_000),
        None => println!("wall clock: no reply"),
    }
    println!(
        "generation {} vm id {}",
        env.generation(),
        env.boot_info().vm_id
    );
    if ok {
        0
    } else {
        1
    }
}
