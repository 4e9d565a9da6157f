//! The app's standard input, read from the VMM (`tandem run`'s own stdin;
//! under the containerd shim, the container's stdin).

use tandem_abi::hypercall::{GuestBuf, Reply, Request, MAX_STDIN_READ};

use crate::hypercall;

/// Reads up to `buf.len()` bytes (at most
/// [`MAX_STDIN_READ`](tandem_abi::hypercall::MAX_STDIN_READ) per call) of
/// standard input into `buf`, blocking until some arrive; returns how many,
/// 0 at the end of the input. `buf` must be on the stack or the heap (the
/// VMM writes only memory the app may write). Without a Tandem VMM (PVH,
/// Multiboot2) there is no input: it returns 0.
pub fn read(buf: &mut [u8]) -> usize {
    if !crate::platform::is_tandem() || buf.is_empty() {
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
