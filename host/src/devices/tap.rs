//! A tap device the operator made (`ip tuntap add NAME mode tap`),
//! attached with `TUNSETIFF`: Ethernet frames without a packet-information
//! prefix and without a virtio-net header (the device adds and strips
//! that itself). Non-blocking: a read with nothing queued says so.
//!
//! [`Tap::setup`] also makes a missing one when the process holds
//! `CAP_NET_ADMIN` ([`super::netif`]): not persistent, so the kernel
//! removes it when its descriptor closes (at exit, also after a crash),
//! brought up, with the host side's address or on a bridge. A tap the
//! operator made is attached and left as it is.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use super::netif::{self, NetifError, TapPlan};

/// Why a tap could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No network interface of that name, or one that is not a tap.
    #[error(
        "no tap device {0} (create it with `ip tuntap add {0} mode tap` and `ip link set {0} up`)"
    )]
    Missing(String),
    /// No tap of that name, and no right to make one.
    #[error("no tap device {name}, and tandem lacks CAP_NET_ADMIN to create it: create it with `ip tuntap add {name} mode tap user {user}` and `ip link set {name} up` (or run tandem as root)")]
    NoCapability {
        /// The tap.
        name: String,
        /// Who should own it (`$USER`).
        user: String,
    },
    /// An interface of that name that is not a tap.
    #[error("network interface {0} is not a tap device (choose another name for --net tap=)")]
    NotATap(String),
    /// A tap Tandem made could not be set up.
    #[error("cannot set up tap {name} made for the VM: {source}")]
    Setup {
        /// The tap.
        name: String,
        /// Why.
        #[source]
        source: NetifError,
    },
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

/// Taps held open for VMs to come ([`Tap::hold`]), by name.
static HELD: Mutex<BTreeMap<String, File>> = Mutex::new(BTreeMap::new());

/// Lets the held tap `name` go (a tap Tandem made is removed once no VM
/// holds a duplicate either).
pub fn release(name: &str) {
    if let Ok(mut held) = HELD.lock() {
        held.remove(name);
    }
}

/// What [`Tap::setup`] is to do for a VM's tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSetup {
    /// The tap's name.
    pub name: String,
    /// The host side's address on a tap Tandem makes (the guest's gateway).
    pub host_ipv4: Option<(Ipv4Addr, u8)>,
    /// The bridge a tap Tandem makes joins (instead of an address).
    pub bridge: Option<String>,
}

/// An attached tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    made: bool,
}

impl Tap {
    /// Attaches the existing tap `name` (refusing to create one: a
    /// `TUNSETIFF` of an unknown name would make a new interface).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || !netif::is_tap(name) {
            return Err(TapError::Missing(name.into()));
        }
        Self::tunsetiff(name, false)
    }

    /// Attaches the tap `setup` names if it exists (changing nothing about
    /// it); else makes it, if the process holds `CAP_NET_ADMIN`, brings it
    /// up and gives it the host's address or puts it on the bridge. Without
    /// the capability the error names the tap and the command to make it.
    pub fn setup(setup: &TapSetup) -> Result<Self, TapError> {
        let name = setup.name.as_str();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(TapError::Missing(name.into()));
        }
        if let Some(tap) = Self::held(name) {
            return tap;
        }
        let plan = netif::plan_tap(
            netif::exists(name),
            netif::is_tap(name),
            netif::has_net_admin(),
        );
        match plan {
            TapPlan::Attach => Self::tunsetiff(name, false),
            TapPlan::NotATap => Err(TapError::NotATap(name.into())),
            TapPlan::NoCapability => Err(TapError::NoCapability {
                name: name.into(),
                user: std::env::var("USER").unwrap_or_else(|_| "$USER".into()),
            }),
            TapPlan::Create => {
                let tap = Self::create(setup)?;
                log::info!("made tap {name} (removed when the VM ends)");
                Ok(tap)
            }
        }
    }

    /// Makes the tap `setup` names (not persistent: it goes with its last
    /// descriptor), brings it up, and gives it the host's address or puts
    /// it on the bridge. The caller has checked the capability.
    pub fn create(setup: &TapSetup) -> Result<Self, TapError> {
        let name = setup.name.as_str();
        let tap = Self::tunsetiff(name, true)?;
        let set_up = || -> Result<(), NetifError> {
            match (&setup.bridge, setup.host_ipv4) {
                (Some(bridge), _) => netif::add_to_bridge(bridge, name)?,
                (None, Some((addr, prefix))) => netif::set_ipv4(name, addr, prefix)?,
                (None, None) => {}
            }
            netif::set_up(name, true)
        };
        // On failure `tap` is dropped, which removes it again.
        set_up().map_err(|source| TapError::Setup {
            name: name.into(),
            source,
        })?;
        Ok(tap)
    }

    /// `TUNSETIFF` of `name` on a fresh `/dev/net/tun` descriptor: attaches
    /// an existing tap or (`made`) makes a new, not persistent one.
    fn tunsetiff(name: &str, made: bool) -> Result<Self, TapError> {
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
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as libc::Ioctl, &mut req) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            file,
            name: name.into(),
            made,
        })
    }

    /// A stand-in for a tap: one end of a datagram socket pair, which
    /// reads and writes one frame per call as a tap does, named `name`.
    /// Lets the device run where no tap can be made (its fuzz target and
    /// unit tests); the other end plays the host's side of the link.
    pub fn from_socket(socket: UnixDatagram, name: &str) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            file: File::from(OwnedFd::from(socket)),
            name: name.into(),
            made: false,
        })
    }

    /// Keeps this tap open for VMs to come: until [`release`] of its name,
    /// [`Tap::setup`] of that name attaches a duplicate of this descriptor
    /// instead of a fresh `TUNSETIFF` (which needs `/dev/net/tun` and, for
    /// a tap of another owner, CAP_NET_ADMIN: both may be gone once a fleet
    /// has dropped its privileges). A tap Tandem made goes with the last
    /// descriptor, so it lives exactly as long as the fleet holds it.
    pub fn hold(self) {
        if let Ok(mut held) = HELD.lock() {
            held.insert(self.name.clone(), self.file);
        }
    }

    /// A duplicate of the held tap `name`, if one is held.
    fn held(name: &str) -> Option<Result<Self, TapError>> {
        let held = HELD.lock().ok()?;
        let file = held.get(name)?;
        Some(
            file.try_clone()
                .map(|file| Self {
                    file,
                    name: name.into(),
                    made: false,
                })
                .map_err(|source| TapError::Attach {
                    name: name.into(),
                    source,
                }),
        )
    }

    /// Whether Tandem made it (it goes away with this value).
    pub fn made(&self) -> bool {
        self.made
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
        let lo = TapSetup {
            name: "lo".into(),
            host_ipv4: None,
            bridge: None,
        };
        assert!(matches!(Tap::setup(&lo), Err(TapError::NotATap(_))));
    }

    #[test]
    fn the_capability_refusal_names_the_command() {
        let e = TapError::NoCapability {
            name: "tdm7".into(),
            user: "alice".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("no tap device tdm7")
                && text.contains("`ip tuntap add tdm7 mode tap user alice`"),
            "{text}"
        );
    }
}
