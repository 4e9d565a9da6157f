//! The hypercall client: encode a request into the hypercall buffer, one
//! `out` of its address to the request port, one VM exit.

use tandem_abi::hypercall::{GuestBuf, HypercallPort, Reply, Request};
use tandem_abi::layout::{HYPERCALL_ADDR, HYPERCALL_SIZE};

/// The request record lives in the first half of the hypercall buffer, the
/// reply in the second.
const REQUEST_SIZE: u64 = HYPERCALL_SIZE / 2;
const REPLY_ADDR: u64 = HYPERCALL_ADDR + REQUEST_SIZE;
const REPLY_SIZE: u64 = HYPERCALL_SIZE - REQUEST_SIZE;

/// The one instruction that leaves the guest for the host: `out` of `value`
/// to a Tandem port.
///
/// The asm block deliberately has no `nomem`: the exit is how guest and
/// host share memory. The host reads the request (and the console buffer)
/// the guest has just stored and writes replies and input the guest then
/// loads, so the compiler must keep every store before the exit and reload
/// after it. `memory` names the buffer the call is about, so it is
/// explicitly an operand the asm may read and write (the console buffer and
/// the buffers named inside requests are reached through addresses that
/// have escaped into guest memory, which an asm block without `nomem` may
/// also touch).
fn exit_to_host(port: HypercallPort, value: u32, memory: *mut u8) {
    // SAFETY: the TSS I/O bitmap opens exactly the hypercall ports; the
    // access is a VM exit the host serves, touching guest memory only as the
    // protocol defines (console drain, reply and input buffers that the app
    // may write), which the missing `nomem` tells the compiler.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") port as u16,
            in("eax") value,
            in("rsi") memory,
            options(nostack, preserves_flags),
        )
    };
    crate::console::drained();
}

/// Writes `value` to a Tandem port (the exit code, for [`HypercallPort::Exit`]).
pub fn out(port: HypercallPort, value: u32) {
    exit_to_host(port, value, core::ptr::null_mut());
}

/// Sends a raw request record already written at `addr` (used by the hostile test app).
pub fn send_raw(addr: u32) {
    exit_to_host(HypercallPort::Request, addr, addr as usize as *mut u8);
}

/// Runs `f` on the hypercall buffer's bytes at `addr..addr + len`.
fn with_buffer<R>(addr: u64, len: u64, f: impl FnOnce(&mut [u8]) -> R) -> R {
    // SAFETY: the layout maps the hypercall buffer user read-write for the
    // whole run; one vCPU and no interrupts, and the slice lives only for
    // this call (never across an exit), so no other reference aliases it.
    let bytes = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
    f(bytes)
}

/// Sends `req`. Returns once the host has served it.
pub fn call(req: &Request) {
    let encoded = with_buffer(HYPERCALL_ADDR, REQUEST_SIZE, |record| {
        req.encode_record(record).is_some()
    });
    if encoded {
        send_raw(HYPERCALL_ADDR as u32);
    }
}

/// Where a request should ask for its reply.
pub fn reply_buf() -> GuestBuf {
    GuestBuf {
        addr: REPLY_ADDR,
        len: REPLY_SIZE as u32,
    }
}

/// Sends `req` (which names [`reply_buf`]) and decodes the host's reply.
pub fn call_with_reply(req: &Request) -> Option<Reply> {
    // No reply (an old host, a refused request) must not read as the last one.
    with_buffer(REPLY_ADDR, REPLY_SIZE, |reply| reply[..4].fill(0));
    call(req);
    with_buffer(REPLY_ADDR, REPLY_SIZE, |reply| {
        Reply::decode_record(reply).ok()
    })
}
