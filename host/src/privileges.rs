//! Giving up what the VMM no longer needs once a VM is set up: root (drop to
//! `--user`/`--group` after `/dev/kvm`, the image and the files are open),
//! and the right to open many files (`RLIMIT_NOFILE`). `no_new_privs` is set
//! by the seccomp filter that follows.

use std::ffi::CString;

/// Why privileges could not be dropped or limits applied.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("no user named {0:?}")]
    NoUser(String),
    /// No such group.
    #[error("no group named {0:?}")]
    NoGroup(String),
    /// A name with a NUL byte.
    #[error("{0:?} is not a valid user or group name")]
    BadName(String),
    /// The kernel refused.
    #[error("cannot {what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn os(what: &'static str) -> PrivilegeError {
    PrivilegeError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// A user's uid and primary gid, by name or number.
pub fn lookup_user(name: &str) -> Result<(u32, u32), PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::BadName(name.into()))?;
    let mut pwd: libc::passwd = zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call: `pwd` and `result` are
    // locals, `buf` is a live buffer of the length passed; getpwnam_r writes
    // only within them.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
    match name.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(PrivilegeError::NoUser(name.into())),
    }
}

/// A group's gid, by name or number.
pub fn lookup_group(name: &str) -> Result<u32, PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::BadName(name.into()))?;
    // SAFETY: an all-zero `group` is a valid value for getgrnam_r to fill.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `lookup_user`.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(grp.gr_gid);
    }
    name.parse::<u32>()
        .map_err(|_| PrivilegeError::NoGroup(name.into()))
}

fn zeroed_passwd() -> libc::passwd {
    // SAFETY: an all-zero `passwd` (null pointers, zero ids) is a valid
    // value for getpwnam_r to fill.
    unsafe { std::mem::zeroed() }
}

/// Drops to `user` (and `group`, else the user's primary group) for good:
/// supplementary groups cleared, then gid, then uid. Call it before any
/// thread is started: the C library applies the ids to every thread, but
/// only to those that exist.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<(), PrivilegeError> {
    let (uid, user_gid) = match user {
        Some(u) => {
            let (uid, gid) = lookup_user(u)?;
            (Some(uid), Some(gid))
        }
        None => (None, None),
    };
    let gid = match group {
        Some(g) => Some(lookup_group(g)?),
        None => user_gid,
    };
    if let Some(gid) = gid {
        // SAFETY: setgroups with a zero count reads no memory.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(os("clear supplementary groups"));
        }
        // SAFETY: plain id-changing calls.
        if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
            return Err(os("change group"));
        }
    }
    if let Some(uid) = uid {
        // SAFETY: a plain id-changing call.
        if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
            return Err(os("change user"));
        }
    }
    Ok(())
}

/// Caps the open files of the process at `max` (soft and hard limit).
pub fn limit_open_files(max: u64) -> Result<(), PrivilegeError> {
    let limit = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: `limit` is a valid rlimit for the call to read.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(os("limit open files"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_refuses_unknown_names() {
        assert_eq!(lookup_user("root").unwrap().0, 0);
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert_eq!(lookup_user("4242").unwrap(), (4242, 4242));
        assert!(matches!(
            lookup_user("no-such-user-tandem"),
            Err(PrivilegeError::NoUser(_))
        ));
        assert!(matches!(
            lookup_group("no-such-group-tandem"),
            Err(PrivilegeError::NoGroup(_))
        ));
        assert!(matches!(
            lookup_user("a\0b"),
            Err(PrivilegeError::BadName(_))
        ));
    }
}
