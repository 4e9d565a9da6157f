//! The app's standard input, read from the VMM (`tandem run`'s own stdin;
//! under the containerd shim, the container's stdin).

/// Reads up to `buf.len()` bytes (at most
/// [`MAX_STDIN_READ`](tandem_abi::hypercall::MAX_STDIN_READ) per call) of
/// standard input into `buf`, blocking until some arrive; returns how many,
/// 0 at the end of the input. `buf` must be on the stack or the heap (the
/// VMM writes only memory the app may write). Without a Tandem VMM (PVH,
/// Multiboot2) there is no input: it returns 0.
pub fn read(buf: &mut [u8]) -> usize {
    crate::platform::read_stdin(buf)
}
