//! The hypercall client: encode a request into the hypercall buffer, one
//! `out` of its address to the request port, one VM exit. Only meaningful
//! on the Tandem VMM; the platform layer decides when to call it.

use core::sync::atomic::{AtomicU64, Ordering};

use tandem_abi::hypercall::{GuestBuf, HypercallPort, Reply, Request};
use tandem_abi::layout::HYPERCALL_ADDR;

use crate::pages::{self, hypercall::REPLY_ADDR, hypercall::REPLY_SIZE};
use crate::tsc;

/// TSC at the end of the last exit: the host drains the console on every
/// exit, so the console's newline rule counts from here.
static LAST_EXIT_TSC: AtomicU64 = AtomicU64::new(0);

fn exit_to_host(port: HypercallPort, value: u32, memory: *mut u8) {
    pages::exit_to_host(port, value, memory);
    LAST_EXIT_TSC.store(tsc::rdtsc(), Ordering::Relaxed);
}

/// TSC at the end of the last VM exit (or when the clock was started).
pub(crate) fn last_exit_tsc() -> u64 {
    LAST_EXIT_TSC.load(Ordering::Relaxed)
}

/// Starts the exit clock at boot, so the first lines batch like the rest.
pub(crate) fn start_clock(now_tsc: u64) {
    LAST_EXIT_TSC.store(now_tsc, Ordering::Relaxed);
}

/// Writes `value` to a Tandem port (the exit code, for [`HypercallPort::Exit`]).
pub fn out(port: HypercallPort, value: u32) {
    exit_to_host(port, value, core::ptr::null_mut());
}

/// Sends a raw request record already written at `addr` (used by the hostile test app).
pub fn send_raw(addr: u32) {
    exit_to_host(HypercallPort::Request, addr, addr as usize as *mut u8);
}

/// Sends `req`. Returns once the host has served it.
pub fn call(req: &Request) {
    if pages::hypercall::with_request(|record| req.encode_record(record).is_some()) {
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
    pages::hypercall::with_reply(|reply| reply[..4].fill(0));
    call(req);
    pages::hypercall::with_reply(|reply| Reply::decode_record(reply).ok())
}
