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
    /// A group was asked for without a user: the VMM would stay root.
    #[error("--group {0:?} needs --user: without a user to become, the VMM would stay root")]
    GroupWithoutUser(String),
    /// The user or group database entry does not fit [`MAX_ENTRY_BUFFER`].
    #[error("the user or group entry {name:?} is larger than {MAX_ENTRY_BUFFER} bytes")]
    EntryTooLarge {
        /// The name looked up.
        name: String,
    },
    /// The user or group database could not be read.
    #[error("cannot look up {name:?}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The error `getpwnam_r`/`getgrnam_r` returned.
        source: std::io::Error,
    },
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

/// The buffer a user or group lookup starts with: enough for any ordinary
/// entry. A group with many members needs more, so it doubles on `ERANGE`.
const FIRST_ENTRY_BUFFER: usize = 16 * 1024;
/// The largest buffer a lookup grows to before it gives up.
pub const MAX_ENTRY_BUFFER: usize = 1 << 20;

/// Runs a `get*nam_r` call with a buffer that starts at `first` bytes and
/// doubles while the entry does not fit (`ERANGE`), up to
/// [`MAX_ENTRY_BUFFER`]. `call` gets the buffer and returns the call's
/// result code and whether an entry was found; the answer is whether one
/// was found.
fn with_entry_buffer(
    name: &str,
    first: usize,
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, bool),
) -> Result<bool, PrivilegeError> {
    let mut size = first.clamp(1, MAX_ENTRY_BUFFER);
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if size < MAX_ENTRY_BUFFER => {
                size = (size * 2).min(MAX_ENTRY_BUFFER);
            }
            (libc::ERANGE, _) => return Err(PrivilegeError::EntryTooLarge { name: name.into() }),
            (libc::EINTR, _) => {}
            // What getpwnam(3) lists for "not found" besides 0.
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(false),
            (rc, _) => {
                return Err(PrivilegeError::Lookup {
                    name: name.into(),
                    source: std::io::Error::from_raw_os_error(rc),
                })
            }
        }
    }
}

/// A user's uid and primary gid, by name or number.
pub(crate) fn lookup_user(name: &str) -> Result<(u32, u32), PrivilegeError> {
    lookup_user_from(name, FIRST_ENTRY_BUFFER)
}

fn lookup_user_from(name: &str, first: usize) -> Result<(u32, u32), PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::BadName(name.into()))?;
    // SAFETY: an all-zero `passwd` (null pointers, zero ids) is a valid
    // value for getpwnam_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let found = with_entry_buffer(name, first, |buf| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call: `pwd` and `result`
        // are live locals, `buf` is a live buffer of the length passed;
        // getpwnam_r writes only within them.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (rc, !result.is_null())
    })?;
    // Only the ids are read, so `pwd`'s pointers into the dropped buffer
    // are never followed.
    if found {
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
    match name.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(PrivilegeError::NoUser(name.into())),
    }
}

/// A group's gid, by name or number.
pub(crate) fn lookup_group(name: &str) -> Result<u32, PrivilegeError> {
    lookup_group_from(name, FIRST_ENTRY_BUFFER)
}

fn lookup_group_from(name: &str, first: usize) -> Result<u32, PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::BadName(name.into()))?;
    // SAFETY: an all-zero `group` is a valid value for getgrnam_r to fill.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let found = with_entry_buffer(name, first, |buf| {
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `lookup_user_from`.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (rc, !result.is_null())
    })?;
    // As for users: only the id is read.
    if found {
        return Ok(grp.gr_gid);
    }
    name.parse::<u32>()
        .map_err(|_| PrivilegeError::NoGroup(name.into()))
}

/// Checks a `--user`/`--group` pair before anything is set up: a group
/// alone is refused, since dropping to it would leave the VMM root.
pub fn check_ids(user: Option<&str>, group: Option<&str>) -> Result<(), PrivilegeError> {
    match (user, group) {
        (None, Some(g)) => Err(PrivilegeError::GroupWithoutUser(g.into())),
        _ => Ok(()),
    }
}

/// Drops to `user` (and `group`, else the user's primary group) for good:
/// supplementary groups cleared, then gid, then uid. A `group` without a
/// `user` is refused ([`check_ids`]). Call it before any
/// thread is started: the C library applies the ids to every thread, but
/// only to those that exist.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<(), PrivilegeError> {
    let (uid, gid) = resolve_ids(user, group)?;
    become_ids(uid, gid)
}

/// The uid and gid `--user`/`--group` name (the user's primary group when
/// no group is given), looked up without changing anything; a group
/// without a user is refused ([`check_ids`]).
pub fn resolve_ids(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), PrivilegeError> {
    check_ids(user, group)?;
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
    Ok((uid, gid))
}

/// Becomes `uid` and `gid` for good (each left as it is when `None`):
/// supplementary groups cleared and the gid set first, then the uid, so
/// nothing of root is kept. Shared by [`drop_to`] and the jail
/// (`tandem::jail`), which picks its uid from a pool. Call it before any
/// thread is started: the C library applies the ids to every thread, but
/// only to those that exist.
pub fn become_ids(uid: Option<u32>, gid: Option<u32>) -> Result<(), PrivilegeError> {
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
    if uid.is_some() || gid.is_some() {
        log::debug!("now running as uid {uid:?}, gid {gid:?}, no supplementary groups");
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
    log::debug!("open files limited to {max}");
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

    #[test]
    fn lookups_grow_their_buffer_for_large_entries() {
        // A 1-byte buffer fits no entry: the C library answers ERANGE until
        // the buffer has grown enough, as it does for a group with many
        // members at the normal first size.
        assert_eq!(lookup_user_from("root", 1).unwrap().0, 0);
        assert_eq!(lookup_group_from("root", 1).unwrap(), 0);
        assert!(matches!(
            lookup_group_from("no-such-group-tandem", 1),
            Err(PrivilegeError::NoGroup(_))
        ));
        // It doubles up to the cap, then says the entry is too large.
        let mut sizes = Vec::new();
        let err = with_entry_buffer("huge", 1, |buf| {
            sizes.push(buf.len());
            (libc::ERANGE, false)
        })
        .unwrap_err();
        assert_eq!(sizes.first(), Some(&1));
        assert_eq!(sizes.last(), Some(&MAX_ENTRY_BUFFER));
        assert!(sizes.windows(2).all(|w| w[1] == w[0] * 2));
        assert!(
            err.to_string()
                .contains("entry \"huge\" is larger than 1048576 bytes"),
            "{err}"
        );
        // Other failures of the database are not "no such name".
        let err = with_entry_buffer("x", 16, |_| (libc::EIO, false)).unwrap_err();
        assert!(matches!(err, PrivilegeError::Lookup { .. }), "{err}");
    }

    #[test]
    fn a_group_without_a_user_is_refused() {
        assert!(check_ids(None, None).is_ok());
        assert!(check_ids(Some("nobody"), None).is_ok());
        assert!(check_ids(Some("nobody"), Some("nogroup")).is_ok());
        let err = check_ids(None, Some("nogroup")).unwrap_err().to_string();
        assert!(err.contains("--group \"nogroup\" needs --user"), "{err}");
        // drop_to refuses it before changing anything.
        assert!(matches!(
            drop_to(None, Some("nogroup")),
            Err(PrivilegeError::GroupWithoutUser(_))
        ));
    }
}
