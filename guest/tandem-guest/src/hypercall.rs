//! The hypercall client: encode a request into the hypercall buffer, one
//! `out` of its address to the request port, one VM exit.

use tandem_abi::hypercall::{GuestBuf, HypercallPort, Reply, Request};
use tandem_abi::layout::{HYPERCALL_ADDR, HYPERCALL_SIZE};
use x86_64::instructions::port::Port;

/// The request record lives in the first half of the hypercall buffer, the
/// reply in the second.
const REQUEST_SIZE: u64 = HYPERCALL_SIZE / 2;
const REPLY_ADDR: u64 = HYPERCALL_ADDR + REQUEST_SIZE;
const REPLY_SIZE: u64 = HYPERCALL_SIZE - REQUEST_SIZE;

/// Writes `value` to a Tandem port.
pub fn out(port: HypercallPort, value: u32) {
    let mut p: Port<u32> = Port::new(port as u16);
    // SAFETY: the TSS I/O bitmap opens exactly the hypercall ports; the access
    // is a VM exit the host serves, with no effect on guest memory beyond what
    // the protocol defines (console drain, reply buffers).
    unsafe { p.write(value) };
    crate::console::drained();
}

/// Sends a raw request record already written at `addr` (used by the hostile test app).
pub fn send_raw(addr: u32) {
    out(HypercallPort::Request, addr);
}

/// The hypercall buffer, as a byte slice the guest owns.
fn buffer(addr: u64, len: u64) -> &'static mut [u8] {
    // SAFETY: the layout maps the hypercall buffer user read-write for the
    // whole run; one vCPU, no interrupts, and every caller finishes with the
    // slice before the next call, so no two live slices alias.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

/// Sends `req`. Returns once the host has served it.
pub fn call(req: &Request) {
    let record = buffer(HYPERCALL_ADDR, REQUEST_SIZE);
    if req.encode_record(record).is_some() {
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
    let reply = buffer(REPLY_ADDR, REPLY_SIZE);
    reply[..4].fill(0);
    call(req);
    Reply::decode_record(buffer(REPLY_ADDR, REPLY_SIZE)).ok()
}
