//! The app's standard input: polled in slices, so that a stop request or
//! the run's deadline is seen while the app waits for input.

use std::time::Instant;

use crate::control::VmHandle;

/// Serves `Request::ReadStdin`: waits for this process's standard input
/// (in slices, so a stop request or the run's deadline is seen), then reads
/// what is there. Returns the byte count (0: end of input, no stdin, or a
/// stop was asked), or `None` when the deadline passed.
pub(super) fn read_stdin(
    enabled: bool,
    buf: &mut [u8],
    handle: Option<&VmHandle>,
    deadline: Option<Instant>,
) -> Option<usize> {
    if !enabled || buf.is_empty() {
        return Some(0);
    }
    loop {
        if handle.is_some_and(|h| h.stop_asked() || h.killed()) {
            return Some(0);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fds` is one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut fds, 1, 50) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Some(0);
        }
        if ready == 0 {
            continue;
        }
        if fds.revents & libc::POLLNVAL != 0 {
            return Some(0);
        }
        // SAFETY: reads at most `buf.len()` bytes into `buf`, which we own.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) => return Some(n.min(buf.len())),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Some(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // None of these reach the poll: the test process's stdin is left alone.

    #[test]
    fn without_stdin_the_app_reads_end_of_input() {
        assert_eq!(read_stdin(false, &mut [0; 4], None, None), Some(0));
        assert_eq!(read_stdin(true, &mut [], None, None), Some(0));
    }

    #[test]
    fn a_stop_request_ends_the_input() {
        let h = VmHandle::new();
        h.request_stop();
        assert_eq!(read_stdin(true, &mut [0; 4], Some(&h), None), Some(0));
    }

    #[test]
    fn a_passed_deadline_is_a_timeout() {
        assert_eq!(
            read_stdin(true, &mut [0; 4], None, Some(Instant::now())),
            None
        );
    }
}
