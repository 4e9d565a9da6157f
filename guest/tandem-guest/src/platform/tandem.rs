//! The Tandem VMM underneath: the console ring, hypercalls, the live area.

use tandem_abi::hypercall::{GuestBuf, HypercallPort, Reply, Request, MAX_STDIN_READ};

use crate::{hypercall, pages, tsc};

/// A newline flushes when the previous flush is older than this.
pub(crate) const FLUSH_INTERVAL_US: u64 = 1000;

/// Appends to the console ring, flushing when it is full; a newline forces
/// a flush only when the last exit is more than [`FLUSH_INTERVAL_US`] old,
/// so a short-lived app prints with no exit of its own and a long-running
/// one still shows each line promptly.
pub(super) fn console_write(mut bytes: &[u8]) {
    let newline = bytes.contains(&b'\n');
    while !bytes.is_empty() {
        if pages::console::is_full() {
            console_flush();
        }
        let n = pages::console::append(bytes);
        bytes = &bytes[n..];
    }
    let interval = tsc::ticks_in_micros(FLUSH_INTERVAL_US);
    if newline && interval != 0 && tsc::rdtsc().wrapping_sub(hypercall::last_exit_tsc()) > interval
    {
        console_flush();
    }
}

pub(super) fn console_flush() {
    hypercall::call(&Request::Flush);
}

pub(super) fn console_start(now_tsc: u64) {
    hypercall::start_clock(now_tsc);
}

pub(super) fn exit(code: u8) -> ! {
    hypercall::out(HypercallPort::Exit, u32::from(code));
    // The host never resumes a guest after its exit call.
    loop {
        core::hint::spin_loop();
    }
}

pub(super) fn ready() {
    hypercall::call(&Request::Ready);
}

pub(super) fn idle(nanos: u64) -> bool {
    matches!(
        hypercall::call_with_reply(&Request::Idle {
            nanos,
            reply: hypercall::reply_buf(),
        }),
        Some(Reply::Idle { stop: true })
    )
}

pub(super) fn read_stdin(buf: &mut [u8]) -> usize {
    if buf.is_empty() {
        return 0;
    }
    let len = u32::try_from(buf.len())
        .unwrap_or(u32::MAX)
        .min(MAX_STDIN_READ);
    let req = Request::ReadStdin {
        // Guest memory is identity-mapped: the address is the physical one.
        buf: GuestBuf {
            addr: buf.as_mut_ptr() as u64,
            len,
        },
        reply: hypercall::reply_buf(),
    };
    match hypercall::call_with_reply(&req) {
        Some(Reply::ReadStdin { len: n }) => (n as usize).min(buf.len()),
        _ => 0,
    }
}

pub(super) fn wall_clock_nanos() -> Option<u64> {
    match hypercall::call_with_reply(&Request::WallClock {
        reply: hypercall::reply_buf(),
    })? {
        Reply::WallClock { unix_nanos, .. } => Some(unix_nanos),
        _ => None,
    }
}

pub(super) fn snapshot() -> Option<bool> {
    let reply = hypercall::call_with_reply(&Request::Snapshot {
        reply: hypercall::reply_buf(),
    });
    Some(matches!(reply, Some(Reply::Snapshot { taken: true })))
}
