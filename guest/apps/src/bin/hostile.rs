//! Sends one malformed hypercall, chosen by the first argument; the host must
//! refuse it with a clear error and stop this VM only.
#![no_std]
#![no_main]

use tandem_guest::abi::hypercall::{GuestBuf, HypercallPort, Request};
use tandem_guest::abi::layout::{CONSOLE_ADDR, HYPERCALL_ADDR, PAGE_TABLES_ADDR};
use tandem_guest::hypercall;
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

/// Writes raw bytes into the hypercall buffer.
fn put(bytes: &[u8]) {
    // SAFETY: the hypercall buffer is user read-write and owned by the guest
    // library, which is not using it now; the writes stay inside it.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), HYPERCALL_ADDR as *mut u8, bytes.len())
    };
}

fn request(req: &Request) {
    let mut buf = [0u8; 64];
    if let Some(n) = req.encode_record(&mut buf) {
        put(&buf[..n]);
    }
}

const CASES: &[&str] = &[
    "unknown-port",
    "bad-width",
    "port-read",
    "outside-memory",
    "huge-length",
    "zero-length",
    "garbage",
    "trailing",
    "reply-kernel",
    "reply-outside",
    "reply-small",
    "console-level",
];

fn main(env: &Env) -> u8 {
    let Some(case) = env.args().next() else {
        println!("usage: hostile CASE, one of {CASES:?}");
        return 2;
    };
    println!("hostile: {case}");
    let at = HYPERCALL_ADDR as u32;
    match case {
        // 0xE02 is open in the I/O bitmap (it lies between two Tandem ports)
        // but is not a Tandem port.
        "unknown-port" => unsafe_out32(0xE02, at),
        "bad-width" => {
            // SAFETY: a 1-byte write to an open hypercall port; the host refuses it.
            unsafe {
                core::arch::asm!("out dx, al", in("dx") HypercallPort::Request as u16, in("al") 0u8)
            };
        }
        "port-read" => {
            let v: u32;
            // SAFETY: a read from an open hypercall port; the host refuses it.
            unsafe {
                core::arch::asm!("in eax, dx", in("dx") HypercallPort::Request as u16, out("eax") v)
            };
            println!("read {v}");
        }
        "outside-memory" => hypercall::send_raw(0xFFFF_FFF0),
        "huge-length" => {
            put(&u32::MAX.to_le_bytes());
            hypercall::send_raw(at);
        }
        "zero-length" => {
            put(&0u32.to_le_bytes());
            hypercall::send_raw(at);
        }
        "garbage" => {
            put(&[6, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
            hypercall::send_raw(at);
        }
        "trailing" => {
            put(&[3, 0, 0, 0, 0, 0xAA, 0xBB]); // Flush + two extra bytes
            hypercall::send_raw(at);
        }
        "reply-kernel" => {
            request(&Request::WallClock {
                reply: GuestBuf {
                    addr: PAGE_TABLES_ADDR,
                    len: 64,
                },
            });
            hypercall::send_raw(at);
        }
        "reply-outside" => {
            request(&Request::WallClock {
                reply: GuestBuf {
                    addr: 0xFFFF_0000,
                    len: 64,
                },
            });
            hypercall::send_raw(at);
        }
        "reply-small" => {
            request(&Request::WallClock {
                reply: GuestBuf {
                    addr: HYPERCALL_ADDR + 0x1000,
                    len: 3,
                },
            });
            hypercall::send_raw(at);
        }
        "console-level" => {
            // SAFETY: the console header is user read-write; a bogus level is
            // exactly what this case sends.
            unsafe { core::ptr::write_volatile(CONSOLE_ADDR as *mut u32, 0xFFFF_FFFF) };
            hypercall::call(&Request::Flush);
        }
        other => {
            println!("unknown case {other}; cases: {CASES:?}");
            return 2;
        }
    }
    println!("the host accepted a bad request");
    1
}

fn unsafe_out32(port: u16, value: u32) {
    // SAFETY: the port is open in the TSS I/O bitmap; the host decides what
    // the write means and refuses it.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value) };
}
