//! Running a program inside a network namespace: `setns(2)` in the forked
//! child before exec, and for the VMM a private mount namespace with that
//! network namespace's `/sys` (sysfs shows the interfaces of the namespace
//! it was mounted in, and the VMM looks its tap up there), as `ip netns
//! exec` does.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// The shim's own network namespace.
const OWN_NETNS: &str = "/proc/self/ns/net";
/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, linux/nsfs.h): the kind of namespace
/// a descriptor refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace.
#[derive(Debug, Clone)]
pub struct Netns {
    path: PathBuf,
    /// Close-on-exec, so no program run in it inherits it.
    file: Arc<File>,
}

impl Netns {
    /// Opens the namespace at `path` (a `/proc/PID/ns/net` or a bind mount
    /// of one, as `/var/run/netns/NAME`); `None` if it is no network
    /// namespace.
    pub fn open(path: &Path) -> io::Result<Option<Self>> {
        // std opens with O_CLOEXEC.
        let file = File::open(path)?;
        // SAFETY: an ioctl without argument on a descriptor we own.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Ok(None);
        }
        Ok(Some(Netns {
            path: path.to_path_buf(),
            file: Arc::new(file),
        }))
    }

    /// Where it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` names the shim's own network namespace.
    pub fn is_own(path: &Path) -> io::Result<bool> {
        let (theirs, ours) = (std::fs::metadata(path)?, std::fs::metadata(OWN_NETNS)?);
        Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
    }

    /// Makes `cmd` run inside this namespace.
    pub fn enter(&self, cmd: &mut Command) {
        let file = self.file.clone();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the setns system call on a descriptor the closure owns,
        // allocating nothing.
        unsafe {
            cmd.pre_exec(move || setns(&file));
        }
    }

    /// Makes `cmd` run inside this namespace with a private mount namespace
    /// whose `/sys` is a sysfs of this network namespace (mounts below `/`
    /// still arrive from the node's; none leave).
    pub fn enter_with_sysfs(&self, cmd: &mut Command) {
        let file = self.file.clone();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes system calls (setns, unshare, mount) with the descriptor it
        // owns and static NUL-terminated strings, allocating nothing. The
        // forked child has one thread and its own fs_struct, as unshare
        // (CLONE_NEWNS) requires.
        unsafe {
            cmd.pre_exec(move || {
                setns(&file)?;
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let none = std::ptr::null();
                let slave = libc::MS_REC | libc::MS_SLAVE;
                if libc::mount(none, c"/".as_ptr(), none, slave, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let sysfs = c"sysfs".as_ptr();
                if libc::mount(sysfs, c"/sys".as_ptr(), sysfs, flags, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we own and a flag; no memory.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
