//! A tap device the operator made (`ip tuntap add NAME mode tap`),
//! attached with `TUNSETIFF`: Ethernet frames without a packet-information
//! prefix and without a virtio-net header (the device adds and strips
//! that itself). Non-blocking: a read with nothing queued says so.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a tap could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No network interface of that name, or one that is not a tap.
    #[error(
        "no tap device {0} (create it with `ip tuntap add {0} mode tap` and `ip link set {0} up`)"
    )]
    Missing(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    /// The kernel refused to attach it.
    #[error("cannot attach tap {name}: {source}")]
    Attach {
        /// The tap.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as `TUNSETIFF` reads it: the name and the flags, padded
/// to the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// An attached tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches the existing tap `name` (refusing to create one: a
    /// `TUNSETIFF` of an unknown name would make a new interface).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let sys = Path::new("/sys/class/net").join(name);
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.contains('/')
            || !sys.join("tun_flags").exists()
        {
            return Err(TapError::Missing(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `file` is an open tun descriptor and `req` a valid,
        // initialised ifreq-sized buffer that outlives the call; TUNSETIFF
        // reads the name and flags and writes back the name.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            file,
            name: name.into(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buf`; `None` when none is queued.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one frame (dropped by the kernel if the interface is down).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write(frame).map(|_| ())
    }

    /// Waits up to `timeout_ms` for a frame; says whether one is queued.
    pub fn wait_readable(&self, timeout_ms: i32) -> bool {
        let mut fds = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fds` is one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut fds, 1, timeout_ms) };
        ready > 0 && fds.revents & libc::POLLIN != 0
    }

    /// The descriptor (for tests and diagnostics).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tap_is_named_with_the_fix() {
        let e = Tap::open("tdm-no-such0").unwrap_err();
        assert!(matches!(e, TapError::Missing(_)));
        assert!(
            e.to_string()
                .contains("ip tuntap add tdm-no-such0 mode tap"),
            "{e}"
        );
        assert!(matches!(Tap::open(""), Err(TapError::Missing(_))));
        assert!(matches!(Tap::open("../lo"), Err(TapError::Missing(_))));
        // `lo` exists but is no tap.
        assert!(matches!(Tap::open("lo"), Err(TapError::Missing(_))));
    }
}
