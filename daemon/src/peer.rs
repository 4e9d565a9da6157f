//! Who is on the other end of an API connection (SO_PEERCRED, and the
//! peer's supplementary groups from `/proc/PID/status`) and whether it may
//! talk to the daemon: a pure decision ([`allowed`]) beside the doing.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// A peer's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its process.
    pub pid: u32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
    /// Its supplementary groups (empty when they cannot be read).
    pub groups: Vec<u32>,
}

/// Who may use the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The daemon's own uid.
    pub own_uid: u32,
    /// Members of this group (by gid) may, too.
    pub group: Option<u32>,
}

/// Whether `peer` may use the API: root, the daemon's uid, or a member of
/// the allowed group (primary or supplementary).
pub fn allowed(peer: &Peer, access: Access) -> bool {
    peer.uid == 0
        || peer.uid == access.own_uid
        || access
            .group
            .is_some_and(|g| peer.gid == g || peer.groups.contains(&g))
}

/// The credentials of the process at the other end of `conn`.
pub fn peer_of(conn: &UnixStream) -> std::io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(|_| std::io::Error::other("ucred size"))?;
    // SAFETY: `cred` and `len` are valid for writes and `len` is the size
    // of `cred`; the descriptor is `conn`'s, open while it lives.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let pid = u32::try_from(cred.pid).unwrap_or(0);
    Ok(Peer {
        pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: supplementary_groups(pid),
    })
}

/// The `Groups:` line of `/proc/PID/status`.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The gid of the group called `name`.
pub fn group_id(name: &str) -> Result<u32, String> {
    let cname = CString::new(name).map_err(|_| format!("group '{name}': contains NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: an all-zero `group` is a valid value to be overwritten.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is a C string,
    // `grp` and `found` are written, `buf` is `buf.len()` bytes long.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &raw mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 {
        return Err(format!(
            "group '{name}': {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if found.is_null() {
        return Err(format!("no group named '{name}'"));
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_talk() {
        let access = Access {
            own_uid: 1000,
            group: Some(50),
        };
        let p = |uid, gid, groups: &[u32]| Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert!(allowed(&p(0, 0, &[]), access));
        assert!(allowed(&p(1000, 1000, &[]), access));
        assert!(allowed(&p(1001, 50, &[]), access));
        assert!(allowed(&p(1001, 1001, &[7, 50]), access));
        assert!(!allowed(&p(1001, 1001, &[7]), access));
        assert!(!allowed(
            &p(65534, 65534, &[]),
            Access {
                own_uid: 0,
                group: None
            }
        ));
    }

    #[test]
    fn groups_are_found() {
        assert_eq!(group_id("root"), Ok(0));
        assert!(group_id("no-such-group-here").is_err());
        let (a, b) = UnixStream::pair().unwrap();
        let me = peer_of(&a).unwrap();
        drop(b);
        assert_eq!(me.pid, std::process::id());
    }
}
