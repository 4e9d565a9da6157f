//! A uid of its own for each jailed VMM process, from a pool
//! (`--uid-pool 60000-60999`): the first uid of the range whose lock file
//! no live process holds. The lock is an `flock` on
//! `LOCK_DIR/uid-N.lock`, held as long as the process lives (the kernel
//! lets go of it when the process ends, however it ends), so two jails
//! never share a uid and a killed one gives its uid back at once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::JailError;

/// Where the pool's lock files live unless a [`UidPool`] says otherwise.
pub const DEFAULT_LOCK_DIR: &str = "/run/tandem/uid-pool";

/// A range of uids to take one from (each used as its own gid too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidPool {
    /// The first uid of the range.
    pub first: u32,
    /// The last uid of the range (included).
    pub last: u32,
    /// The directory of the lock files.
    pub lock_dir: PathBuf,
}

impl FromStr for UidPool {
    type Err = JailError;

    /// `FIRST-LAST` (both included), neither of them 0 (root).
    fn from_str(s: &str) -> Result<Self, JailError> {
        let bad = |why: &str| JailError::BadUidPool(format!("{s:?}: {why}"));
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| bad("expected FIRST-LAST, e.g. 60000-60999"))?;
        let parse = |v: &str| v.trim().parse::<u32>().map_err(|_| bad("not a uid"));
        let (first, last) = (parse(a)?, parse(b)?);
        if first == 0 {
            return Err(bad("a pool may not hold uid 0 (root)"));
        }
        if first > last {
            return Err(bad("the first uid is after the last"));
        }
        // (uid_t)-1 means "unchanged" to setresuid.
        if last == u32::MAX {
            return Err(bad("uid 4294967295 is not a uid"));
        }
        Ok(Self {
            first,
            last,
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
        })
    }
}

/// A uid taken from a pool: the lock is held until this is dropped.
#[derive(Debug)]
pub struct PoolUid {
    /// The uid (also the gid).
    pub uid: u32,
    /// The lock file, locked.
    _lock: File,
}

impl UidPool {
    /// Takes the first free uid of the pool (creating the lock directory,
    /// root's only, if it is missing).
    pub fn take(&self) -> Result<PoolUid, JailError> {
        let dir = &self.lock_dir;
        std::fs::create_dir_all(dir).map_err(|e| JailError::Io {
            what: "create the uid pool's lock directory",
            path: dir.clone(),
            source: e,
        })?;
        for uid in self.first..=self.last {
            if let Some(lock) = try_lock(&lock_path(dir, uid))? {
                log::debug!("uid {uid} taken from the pool {}-{}", self.first, self.last);
                return Ok(PoolUid { uid, _lock: lock });
            }
        }
        Err(JailError::PoolExhausted {
            first: self.first,
            last: self.last,
            lock_dir: dir.clone(),
        })
    }
}

fn lock_path(dir: &Path, uid: u32) -> PathBuf {
    dir.join(format!("uid-{uid}.lock"))
}

/// Locks `path` without waiting: `None` when another process holds it.
fn try_lock(path: &Path) -> Result<Option<File>, JailError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| JailError::Io {
            what: "open a uid lock file",
            path: path.to_path_buf(),
            source: e,
        })?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(JailError::Io {
        what: "lock a uid lock file",
        path: path.to_path_buf(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_bad_ones_are_refused_with_the_reason() {
        let p: UidPool = "60000-60999".parse().unwrap();
        assert_eq!((p.first, p.last), (60000, 60999));
        assert_eq!(p.lock_dir, Path::new(DEFAULT_LOCK_DIR));
        for (bad, why) in [
            ("60000", "expected FIRST-LAST"),
            ("0-10", "uid 0 (root)"),
            ("10-5", "after the last"),
            ("a-5", "not a uid"),
            ("1-4294967295", "is not a uid"),
        ] {
            let e = bad.parse::<UidPool>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn each_taker_gets_its_own_uid_and_a_dropped_one_comes_back() {
        let dir = std::env::temp_dir().join(format!("tandem-uid-pool-{}", std::process::id()));
        let pool = UidPool {
            first: 61000,
            last: 61001,
            lock_dir: dir.clone(),
        };
        // flock locks belong to the open file, so one process can test
        // what two would see.
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a.uid, b.uid), (61000, 61001));
        let e = pool.take().unwrap_err().to_string();
        assert!(e.contains("61000-61001") && e.contains("in use"), "{e}");
        drop(a);
        assert_eq!(pool.take().unwrap().uid, 61000);
        let _ = std::fs::remove_dir_all(dir);
    }
}
