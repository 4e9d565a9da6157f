//! The few `userfaultfd(2)` calls lazy verification needs, on a safe type:
//! open, register a range for missing-page faults, read fault messages,
//! copy a page range in, wake waiters. Layouts and request numbers are
//! those of `<linux/userfaultfd.h>` (pinned by the size asserts and tests
//! below); libc does not carry them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The requests the handler thread makes after setup (its seccomp filter).
pub(crate) const HANDLER_IOCTLS: &[(&str, u64)] =
    &[("UFFDIO_COPY", UFFDIO_COPY), ("UFFDIO_WAKE", UFFDIO_WAKE)];

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_WAKE: u64 = 0x8010_AA02;
const UFFDIO_COPY: u64 = 0xC028_AA03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
/// `uffd_msg.event` of a page fault.
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg`: 8 bytes of header, a 24-byte union; for a page fault
/// the union starts with `flags` and `address`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    rest: u64,
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioRange>() == 16);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

/// Which system call failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct UffdError {
    /// The call.
    pub what: &'static str,
    /// The error.
    pub source: std::io::Error,
}

fn last(what: &'static str) -> UffdError {
    UffdError {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// An open userfaultfd.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

/// What copying a range in came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// The whole range.
    All,
    /// Part of it was already present (`EEXIST`): the rest was copied
    /// page by page.
    SomePresent,
}

impl Userfaultfd {
    /// Opens one, non-blocking, close-on-exec, for faults of any origin
    /// (KVM's accesses to guest memory are the kernel's, not user mode's).
    pub fn open() -> Result<Self, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: a system call with flag arguments only; it returns a new
        // descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if raw < 0 {
            return Err(last("userfaultfd"));
        }
        let raw = RawFd::try_from(raw).map_err(|_| UffdError {
            what: "userfaultfd",
            source: std::io::Error::other("descriptor out of range"),
        })?;
        // SAFETY: `raw` is a descriptor the call just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes exactly one `UffdioApi`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) } < 0 {
            return Err(last("UFFDIO_API"));
        }
        Ok(Self { fd })
    }

    /// Registers `start..start+len` (page-aligned, inside a private
    /// anonymous mapping of this process) for missing-page faults.
    pub fn register(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `UffdioRegister`; it
        // changes only how faults in the range are served.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) } < 0 {
            return Err(last("UFFDIO_REGISTER"));
        }
        Ok(())
    }

    /// Copies `src` to the registered, page-aligned `dst` (pages not yet
    /// present), without waking the faulting threads; pages already
    /// present are left as they are.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<Copied, UffdError> {
        let page = tandem_abi::layout::PAGE_SIZE;
        let len = src.len() as u64;
        let mut done = 0u64;
        let mut result = Copied::All;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: len - done,
                mode: UFFDIO_COPY_MODE_DONTWAKE,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len - done` bytes of `src`, a live
            // slice, and fills pages of the registered range at `dst`, which
            // the kernel checks is registered with this descriptor.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
            if r == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Partly copied, or stopped at a present page: go on after
                // what was done (skipping the present page).
                Some(libc::EEXIST) => {
                    result = Copied::SomePresent;
                    done += c.copy.max(0).unsigned_abs() + page;
                }
                Some(libc::EAGAIN) => done += c.copy.max(0).unsigned_abs(),
                _ => {
                    return Err(UffdError {
                        what: "UFFDIO_COPY",
                        source: err,
                    })
                }
            }
        }
        Ok(result)
    }

    /// Wakes the threads waiting on faults in `start..start+len`.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE reads one `UffdioRange`.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as _, &mut range) } < 0 {
            return Err(last("UFFDIO_WAKE"));
        }
        Ok(())
    }

    /// The addresses of the page faults waiting to be read (none if none is).
    pub fn faults(&self, out: &mut Vec<u64>) -> Result<(), UffdError> {
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            // SAFETY: reads at most the size of `msgs`, plain data, into it.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(()),
                    Some(libc::EINTR) => continue,
                    _ => Err(UffdError {
                        what: "read of the userfaultfd",
                        source: err,
                    }),
                };
            }
            let count = n.unsigned_abs() / std::mem::size_of::<UffdMsg>();
            out.extend(
                msgs.iter()
                    .take(count)
                    .filter(|m| m.event == UFFD_EVENT_PAGEFAULT)
                    .map(|m| m.address),
            );
            if count < msgs.len() {
                return Ok(());
            }
        }
    }

    /// The descriptor, to poll.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens, registers a fresh anonymous mapping and serves one fault
    /// from another thread: what the lazy verifier does, end to end.
    #[test]
    fn a_fault_in_a_registered_range_is_served_by_copy() {
        let uffd =
            Userfaultfd::open().expect("userfaultfd (root, or vm.unprivileged_userfaultfd=1)");
        let len = 2 * 4096usize;
        // SAFETY: a fresh anonymous mapping, unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        uffd.register(base as u64, len as u64).unwrap();
        let addr = base as u64 + 4096;
        let reader = std::thread::spawn(move || {
            // SAFETY: reads one byte of the mapping, which outlives the thread.
            unsafe { std::ptr::read_volatile((addr + 5) as *const u8) }
        });
        let mut faults = Vec::new();
        while faults.is_empty() {
            uffd.faults(&mut faults).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(faults[0] & !4095, addr);
        let mut page = vec![0u8; 4096];
        page[5] = 0x5A;
        assert_eq!(uffd.copy(addr, &page).unwrap(), Copied::All);
        // Copying again finds the page present.
        assert_eq!(uffd.copy(addr, &page).unwrap(), Copied::SomePresent);
        uffd.wake(addr, 4096).unwrap();
        assert_eq!(reader.join().unwrap(), 0x5A);
        // SAFETY: the mapping made above; nothing uses it any more.
        unsafe { libc::munmap(base, len) };
    }
}
