//! A guest-side hypercall fuzzer: `hfuzz SEED COUNT` sends COUNT hypercalls
//! built from valid requests, mutated by a seeded generator (flipped bytes,
//! random lengths, random addresses and reply buffers, bogus console fill
//! levels, odd ports and widths). The host must answer each with service or
//! with a typed protocol error that ends this VM; it must never panic or
//! grow without bound. Exits 0 if every request was served.
#![no_std]
#![no_main]

use tandem_guest::abi::hypercall::{GuestBuf, Request};
use tandem_guest::abi::layout::{CONSOLE_ADDR, HEAP_ADDR, HYPERCALL_ADDR, HYPERCALL_SIZE};
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn put(at: u64, bytes: &[u8]) {
    // SAFETY: callers pass ranges inside the hypercall buffer, which is user
    // read-write and not otherwise in use while this app drives it.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
}

fn out(port: u16, width: u64, value: u32) {
    // SAFETY: ports 0xE00..0xE08 are open in the TSS I/O bitmap; the host
    // decides what each write means and refuses what it must.
    unsafe {
        match width {
            1 => core::arch::asm!("out dx, al", in("dx") port, in("al") value as u8),
            2 => core::arch::asm!("out dx, ax", in("dx") port, in("ax") value as u16),
            _ => core::arch::asm!("out dx, eax", in("dx") port, in("eax") value),
        }
    }
}

fn main(env: &Env) -> u8 {
    let mut args = env.args();
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let count: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let heap = env.boot_info().heap;
    for i in 0..count {
        // Mostly valid requests, so a run goes deep; one in 64 is broken.
        let broken = rng.below(64) == 0;
        let reply = match (broken, rng.below(3)) {
            (false, 0) => GuestBuf {
                addr: HYPERCALL_ADDR + HYPERCALL_SIZE / 2,
                len: 64,
            },
            (false, _) => GuestBuf {
                addr: HEAP_ADDR + rng.below(heap.len - 4096),
                len: 32 + rng.below(4000) as u32,
            },
            (true, 0) => GuestBuf {
                addr: rng.next(),
                len: rng.next() as u32,
            },
            (true, _) => GuestBuf {
                addr: rng.below(0x40_0000),
                len: rng.below(128) as u32,
            },
        };
        let req = match rng.below(3) {
            0 => Request::Flush,
            1 => Request::Ready,
            _ => Request::WallClock { reply },
        };
        let mut record = [0u8; 64];
        let mut n = req.encode_record(&mut record).unwrap_or(0);
        // Mutate most requests a little, some a lot.
        match if broken { 4 + rng.below(4) } else { 0 } {
            0..=3 => {}
            4 => {
                let at = rng.below(n as u64) as usize;
                record[at] ^= 1 << rng.below(8);
            }
            5 => n = rng.below(64) as usize,
            6 => {
                let len = rng.next() as u32;
                record[..4].copy_from_slice(&len.to_le_bytes());
            }
            _ => {
                for b in record.iter_mut().skip(4) {
                    *b = rng.next() as u8;
                }
            }
        }
        put(HYPERCALL_ADDR, &record[..n.min(record.len())]);
        if broken && rng.below(8) == 0 {
            // A bogus console fill level now and then.
            put(CONSOLE_ADDR, &(rng.next() as u32).to_le_bytes());
        }
        let (port, width, addr) = match if broken { rng.below(4) } else { 3 } {
            0 => {
                // Stay inside the ports the TSS opens (0xE00..0xE08): past
                // them the CPU refuses the access itself (#GP), before the host.
                let width = [1, 2, 4][rng.below(3) as usize];
                let port = 0xE00 + rng.below(9 - width) as u16;
                (port, width, HYPERCALL_ADDR as u32)
            }
            1 => (0xE00, 4, rng.next() as u32),
            _ => (0xE00, 4, HYPERCALL_ADDR as u32),
        };
        if port == 0xE04 {
            continue; // the exit port would end the run early on purpose
        }
        out(port, width, addr);
        if i % 500 == 499 {
            println!("hfuzz: {} requests served", i + 1);
        }
    }
    println!("\nhfuzz: {count} requests served (seed {seed})");
    0
}
