//! The host's own network interfaces, as far as Tandem sets them up: bring
//! one up or down, give it an IPv4 address, make and remove a bridge, put
//! an interface on a bridge, and ask whether the process may do any of it
//! (`CAP_NET_ADMIN`). All through the classic `SIOC*` ioctls on a datagram
//! socket (the same calls `ip` and `brctl` make), so no netlink library and
//! no external command.
//!
//! What to do is decided in [`plan_tap`] (pure, tested here); this module
//! and [`super::tap`] do it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `CAP_NET_ADMIN`'s bit in the capability sets.
pub const CAP_NET_ADMIN: u32 = 12;

/// `IFF_UP` as the `c_short` flags field holds it (it is bit 0).
const IFF_UP: libc::c_short = 0x1;
/// `AF_INET` as `sockaddr_in`'s 16-bit family field holds it.
const AF_INET: u16 = 2;

const _: () =
    assert!(IFF_UP as libc::c_int == libc::IFF_UP && AF_INET as libc::c_int == libc::AF_INET);

const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Why an interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    /// No control socket.
    #[error("cannot open a socket to configure network interfaces: {0}")]
    Socket(#[source] io::Error),
    /// A name that is no interface name.
    #[error("{0:?} is not an interface name (1 to 15 bytes)")]
    Name(String),
    /// The kernel refused a step.
    #[error("cannot {what} {name}: {source}")]
    Ioctl {
        /// What was asked (`bring up`, `set the address of`, ...).
        what: &'static str,
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq`: a name and a 24-byte union (an address, flags or an
/// index), 40 bytes in all.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: &str) -> Result<Self, NetifError> {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(NetifError::Name(name.into()));
        }
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }

    /// A `sockaddr_in` of `addr` in the union (family, port 0, address).
    fn with_ipv4(mut self, addr: Ipv4Addr) -> Self {
        self.data = [0; 24];
        let family = AF_INET.to_ne_bytes();
        self.data[..2].copy_from_slice(&family);
        self.data[4..8].copy_from_slice(&addr.octets());
        self
    }

    fn flags(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn with_flags(mut self, flags: libc::c_short) -> Self {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
        self
    }

    fn index(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn with_index(mut self, index: libc::c_int) -> Self {
        self.data[..4].copy_from_slice(&index.to_ne_bytes());
        self
    }
}

/// A datagram socket to send interface ioctls on.
struct Control(OwnedFd);

impl Control {
    fn open() -> Result<Self, NetifError> {
        // SAFETY: socket has no memory preconditions; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetifError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket and is owned by no one else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// One ioctl with an ifreq (read and written back by the kernel).
    fn ifreq(
        &self,
        request: libc::c_ulong,
        req: &mut IfReq,
        what: &'static str,
        name: &str,
    ) -> Result<(), NetifError> {
        // SAFETY: `req` is a valid, initialised 40-byte ifreq that outlives
        // the call; every request used here reads and writes at most that.
        let rc = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                request as libc::Ioctl,
                req as *mut IfReq,
            )
        };
        if rc < 0 {
            return Err(NetifError::Ioctl {
                what,
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// One bridge ioctl that takes the bridge's name as a C string.
    fn named(
        &self,
        request: libc::c_ulong,
        what: &'static str,
        name: &str,
    ) -> Result<(), NetifError> {
        let req = IfReq::new(name)?;
        // SAFETY: `req.name` is a NUL-terminated name (IfReq::new keeps a
        // zero byte at the end) that outlives the call; the kernel reads at
        // most IFNAMSIZ bytes of it.
        let rc = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                request as libc::Ioctl,
                req.name.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(NetifError::Ioctl {
                what,
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// The index of interface `name` in this process's network namespace (by
/// ioctl on a socket, so it is right under a plain `nsenter --net` too,
/// where `/sys` still shows the namespace it was mounted in); 0 if none.
fn index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which
    // only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// A file of interface `name` in `/sys/class/net`, when that sysfs shows
/// this network namespace (the interface's index there is the one the
/// kernel gives this process); `None` when it may show another one.
fn sysfs(name: &str, file: &str) -> Option<bool> {
    let dir = Path::new("/sys/class/net").join(name);
    let shown: u32 = std::fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (shown == index(name)).then(|| dir.join(file).exists())
}

/// Whether an interface `name` exists.
pub fn exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && index(name) != 0
}

/// Whether the interface `name` is a tap (or tun) device. Where sysfs
/// shows another namespace it is taken to be one: attaching it then fails
/// with the kernel's own error if it is not.
pub fn is_tap(name: &str) -> bool {
    exists(name) && sysfs(name, "tun_flags").unwrap_or(true)
}

/// Whether the interface `name` is a bridge.
pub fn is_bridge(name: &str) -> bool {
    exists(name) && sysfs(name, "bridge").unwrap_or(false)
}

/// Brings `name` up (or down).
pub fn set_up(name: &str, up: bool) -> Result<(), NetifError> {
    let control = Control::open()?;
    let mut req = IfReq::new(name)?;
    control.ifreq(libc::SIOCGIFFLAGS, &mut req, "read the flags of", name)?;
    let flags = if up {
        req.flags() | IFF_UP
    } else {
        req.flags() & !IFF_UP
    };
    let mut req = req.with_flags(flags);
    let what = if up { "bring up" } else { "bring down" };
    control.ifreq(libc::SIOCSIFFLAGS, &mut req, what, name)
}

/// Gives `name` the address `addr/prefix_len` (its netmask too).
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<(), NetifError> {
    let control = Control::open()?;
    let mut req = IfReq::new(name)?.with_ipv4(addr);
    control.ifreq(libc::SIOCSIFADDR, &mut req, "set the address of", name)?;
    let mut req = IfReq::new(name)?.with_ipv4(netmask(prefix_len));
    control.ifreq(libc::SIOCSIFNETMASK, &mut req, "set the netmask of", name)
}

/// Makes the bridge `name` (down, no address).
pub fn add_bridge(name: &str) -> Result<(), NetifError> {
    Control::open()?.named(SIOCBRADDBR, "make the bridge", name)
}

/// Removes the bridge `name` (brought down first, as the kernel requires).
pub fn remove_bridge(name: &str) -> Result<(), NetifError> {
    set_up(name, false)?;
    Control::open()?.named(SIOCBRDELBR, "remove the bridge", name)
}

/// A child process that removes a bridge when this process lets go of it:
/// when the reaper is dropped, or when this process ends in any way (also
/// killed), since the child waits for the end of a pipe only this process
/// writes. It keeps the capability to remove the bridge after this
/// process has dropped its privileges (a fleet run with `--user`).
#[derive(Debug)]
pub struct BridgeReaper {
    pid: libc::pid_t,
    pipe: Option<OwnedFd>,
    bridge: String,
}

impl BridgeReaper {
    /// Starts the child for `bridge`. Call it before threads that matter
    /// exist: the child only makes system calls (no allocation, no lock).
    pub fn spawn(bridge: &str) -> Result<Self, NetifError> {
        let req = IfReq::new(bridge)?;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a two-int array pipe2 fills.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(NetifError::Socket(io::Error::last_os_error()));
        }
        let [read_end, write_end] = fds;
        // SAFETY: both descriptors were just made by pipe2 and are owned here.
        let (read_end, write_end) = unsafe {
            (
                OwnedFd::from_raw_fd(read_end),
                OwnedFd::from_raw_fd(write_end),
            )
        };
        // SAFETY: fork has no memory preconditions. The child below only
        // makes async-signal-safe system calls on memory prepared before
        // the fork (`req`), and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(NetifError::Socket(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: in the child; see `reap`.
            unsafe { reap(read_end.as_raw_fd(), write_end.as_raw_fd(), req) }
        }
        drop(read_end);
        Ok(Self {
            pid,
            pipe: Some(write_end),
            bridge: bridge.into(),
        })
    }
}

/// The reaper child: waits until the pipe's write end is closed everywhere
/// but here, then brings `req`'s bridge down, removes it and exits.
///
/// # Safety
/// Only to be called in a freshly forked child, which it never returns from.
unsafe fn reap(read_end: libc::c_int, write_end: libc::c_int, mut req: IfReq) -> ! {
    // SAFETY: plain system calls on descriptors and stack memory of this
    // process; none allocates or takes a lock, as a forked child of a
    // threaded process requires.
    unsafe {
        libc::close(write_end);
        // Ctrl-C reaches the whole process group: the child outlives it.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let mut byte = 0u8;
        loop {
            let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if sock >= 0 {
            let name = req.name;
            if libc::ioctl(
                sock,
                libc::SIOCGIFFLAGS as libc::Ioctl,
                &mut req as *mut IfReq,
            ) == 0
            {
                let flags = req.flags() & !IFF_UP;
                req.data[..2].copy_from_slice(&flags.to_ne_bytes());
                libc::ioctl(
                    sock,
                    libc::SIOCSIFFLAGS as libc::Ioctl,
                    &mut req as *mut IfReq,
                );
            }
            libc::ioctl(sock, SIOCBRDELBR as libc::Ioctl, name.as_ptr());
        }
        libc::_exit(0)
    }
}

impl Drop for BridgeReaper {
    fn drop(&mut self) {
        // The end of the pipe: the child removes the bridge and exits.
        drop(self.pipe.take());
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is an int waitpid writes.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        if exists(&self.bridge) {
            log::warn!("the fleet's bridge {} could not be removed", self.bridge);
        }
    }
}

/// Puts the interface `port` on the bridge `bridge`.
pub fn add_to_bridge(bridge: &str, port: &str) -> Result<(), NetifError> {
    let control = Control::open()?;
    let mut req = IfReq::new(port)?;
    control.ifreq(libc::SIOCGIFINDEX, &mut req, "find the index of", port)?;
    let index = req.index();
    let mut req = IfReq::new(bridge)?.with_index(index);
    control.ifreq(SIOCBRADDIF, &mut req, "add a port to the bridge", bridge)
}

/// The netmask of a prefix length (0 to 32).
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// Whether this process holds `CAP_NET_ADMIN` in its effective set (what
/// making a tap or bridge needs; root without it, as under `setpriv`, does
/// not). Read from `/proc/self/status`; unreadable counts as no.
pub fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_has(&s, CAP_NET_ADMIN))
        .unwrap_or(false)
}

/// Whether the `CapEff:` line of a `/proc/PID/status` text has bit `cap`.
fn effective_has(status: &str, cap: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let set = u64::from_str_radix(hex, 16).ok()?;
    Some(cap < 64 && set & (1 << cap) != 0)
}

/// What to do for a tap of a name, given what is there and what the
/// process may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapPlan {
    /// A tap of that name exists (the operator's): attach it, change nothing.
    Attach,
    /// None exists and the process may make one: make it (and remove it
    /// when done).
    Create,
    /// An interface of that name exists but is no tap.
    NotATap,
    /// None exists and the process may not make one.
    NoCapability,
}

/// Decides what [`TapPlan`] applies.
pub fn plan_tap(exists: bool, is_tap: bool, may_create: bool) -> TapPlan {
    match (exists, is_tap, may_create) {
        (true, true, _) => TapPlan::Attach,
        (true, false, _) => TapPlan::NotATap,
        (false, _, true) => TapPlan::Create,
        (false, _, false) => TapPlan::NoCapability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_capability_set() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_has(root, CAP_NET_ADMIN), Some(true));
        // setpriv --bounding-set -net_admin: bit 12 cleared.
        let without = "CapEff:\t000001ffffffefff\n";
        assert_eq!(effective_has(without, CAP_NET_ADMIN), Some(false));
        assert_eq!(effective_has("CapEff:\tzz\n", CAP_NET_ADMIN), None);
        assert_eq!(effective_has("Name:\tx\n", CAP_NET_ADMIN), None);
        assert_eq!(effective_has(root, 64), Some(false));
    }

    #[test]
    fn plans_attach_create_or_refuse() {
        assert_eq!(plan_tap(true, true, false), TapPlan::Attach);
        assert_eq!(plan_tap(true, true, true), TapPlan::Attach);
        assert_eq!(plan_tap(true, false, true), TapPlan::NotATap);
        assert_eq!(plan_tap(false, false, true), TapPlan::Create);
        assert_eq!(plan_tap(false, false, false), TapPlan::NoCapability);
    }

    #[test]
    fn netmasks_and_names() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(17), Ipv4Addr::new(255, 255, 128, 0));
        assert!(matches!(IfReq::new(""), Err(NetifError::Name(_))));
        assert!(matches!(
            IfReq::new("0123456789abcdef"),
            Err(NetifError::Name(_))
        ));
        assert!(IfReq::new("0123456789abcde").is_ok());
        let r = IfReq::new("x").unwrap().with_index(7);
        assert_eq!(r.index(), 7);
        let r = r.with_flags(0x41);
        assert_eq!(r.flags(), 0x41);
        let r = r.with_ipv4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(&r.data[4..8], &[10, 0, 0, 1]);
    }
}
