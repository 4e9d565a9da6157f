//! A jail for a VMM process: what `tandem run --jail` (and `restore`)
//! gives up once its VMs are set up, and what the daemon's workers call
//! ([`Jail::apply`]) before they serve their VMs.
//!
//! In order, on the thread that will run the VMs:
//! 1. the uid it becomes is picked (`--user`, or a free one of a
//!    `--uid-pool`, locked for the life of the process: [`uid_pool`]),
//!    while `/etc/passwd` and the lock directory are still reachable;
//! 2. its writable directories are made and given to that uid;
//! 3. its control group (`--cgroup NAME,cpu=50%,memory=128M`: [`limits`],
//!    carried out with [`crate::cgroup`]) is made, limited, and the whole
//!    process moved in, while the cgroup files are still reachable;
//! 4. Landlock ([`landlock`]): only the paths of the [`JailSpec`] and the
//!    system paths KVM and taps need stay reachable;
//! 5. the uid and gid change, supplementary groups dropped
//!    ([`crate::privileges::become_ids`]).
//!
//! The seccomp filter of the thread comes after (`tandem::seccomp`), as
//! without a jail. Landlock binds the calling thread and the threads it
//! starts afterwards, not those already running: apply the jail before
//! starting any thread that touches files.

pub mod landlock;
pub mod limits;
pub mod uid_pool;

use std::path::PathBuf;

pub use self::landlock::{Enforcement, PathAccess, PathRule};
pub use self::limits::CgroupSpec;
pub use self::uid_pool::{PoolUid, UidPool};
use crate::cgroup::{Cgroup, CgroupError, Cgroups};
use crate::privileges::PrivilegeError;

/// Why a jail could not be set up. The process must not go on unjailed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The kernel has no Landlock and best effort was not asked.
    #[error(
        "the kernel has no Landlock (landlock_create_ruleset answered {kernel_abi}), so the jail \
         cannot restrict paths; enable it (lsm=landlock) or pass --jail-best-effort to run \
         without that wall"
    )]
    NoLandlock {
        /// The kernel's answer (negative: an errno).
        kernel_abi: i64,
    },
    /// Landlock refused the ruleset.
    #[error("Landlock: {0}")]
    Landlock(String),
    /// A path of the jail could not be made a rule.
    #[error("jail path {path}: {reason}")]
    Rule {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A `--uid-pool` that is not a range of uids.
    #[error("bad --uid-pool {0}")]
    BadUidPool(String),
    /// Every uid of the pool is in use.
    #[error("every uid of the pool {first}-{last} is in use (lock files in {lock_dir})")]
    PoolExhausted {
        /// The first uid.
        first: u32,
        /// The last uid.
        last: u32,
        /// Where the locks are.
        lock_dir: PathBuf,
    },
    /// A file operation of the jail's setup failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `--cgroup` that is not a group and limits.
    #[error("bad --cgroup {0}")]
    BadCgroup(String),
    /// The control group could not be made, limited or joined.
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    /// Looking up or changing ids failed.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
}

/// Whose ids the jailed process takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JailIds {
    /// Keep the current ones.
    #[default]
    Keep,
    /// A named user (and group, else the user's own), as `--user`.
    User {
        /// User name or uid.
        user: String,
        /// Group name or gid.
        group: Option<String>,
    },
    /// A free uid of a pool (its gid the same number).
    Pool(UidPool),
}

/// What a jail leaves its process.
#[derive(Debug, Clone, Default)]
pub struct JailSpec {
    /// The paths it may reach besides the system ones
    /// ([`landlock::system_rules`]). Writable directories that do not
    /// exist yet are made.
    pub paths: Vec<PathRule>,
    /// The ids it runs as.
    pub ids: JailIds,
    /// The control group it runs in, with its limits.
    pub cgroup: Option<CgroupSpec>,
    /// Go on without Landlock when the kernel has none (warned), instead
    /// of failing.
    pub best_effort: bool,
}

impl JailSpec {
    /// Adds a path rule.
    pub fn allow(&mut self, path: impl Into<PathBuf>, access: PathAccess) -> &mut Self {
        self.paths.push(PathRule::new(path, access));
        self
    }

    /// The writable directories of the spec (made, and given to the jail's uid).
    fn writable_dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.paths
            .iter()
            .filter(|r| r.access == PathAccess::ReadWrite)
            .map(|r| &r.path)
            .filter(|p| p.is_dir() || !p.exists())
    }
}

/// Refuses a writable directory the new uid cannot write (a parent that
/// lets only root through), now rather than at the first snapshot.
fn check_reachable(dir: &std::path::Path) -> Result<(), JailError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| JailError::Rule {
        path: dir.to_path_buf(),
        reason: "a NUL byte in the path".into(),
    })?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which
    // only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(JailError::Io {
            what: "let the jail's uid write (a parent directory may refuse it)",
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A process in its jail. Keep it for the life of the process: it holds
/// the pool uid's lock.
#[derive(Debug)]
pub struct Jail {
    /// The uid the process runs as now (`None`: unchanged).
    pub uid: Option<u32>,
    /// The gid the process runs as now (`None`: unchanged).
    pub gid: Option<u32>,
    /// The Landlock ABI enforced.
    pub landlock: Enforcement,
    /// The control group the process is in (it stays when the process
    /// ends: whoever made the jail removes it).
    pub cgroup: Option<Cgroup>,
    _pool_uid: Option<PoolUid>,
}

impl Jail {
    /// Puts the calling process in the jail `spec` describes (see the
    /// module's text for the order). Call it once the VM's files, `/dev/kvm`
    /// and taps are open, before the seccomp filter and before starting
    /// threads.
    pub fn apply(spec: &JailSpec) -> Result<Self, JailError> {
        let (pool_uid, uid, gid) = match &spec.ids {
            JailIds::Keep => (None, None, None),
            JailIds::User { user, group } => {
                let (uid, gid) = crate::privileges::resolve_ids(Some(user), group.as_deref())?;
                (None, uid, gid)
            }
            JailIds::Pool(pool) => {
                let taken = pool.take()?;
                let id = taken.uid;
                (Some(taken), Some(id), Some(id))
            }
        };
        for dir in spec.writable_dirs() {
            std::fs::create_dir_all(dir).map_err(|e| JailError::Io {
                what: "create the jail's writable directory",
                path: dir.clone(),
                source: e,
            })?;
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(dir, uid, gid).map_err(|e| JailError::Io {
                    what: "give the jail's uid its directory",
                    path: dir.clone(),
                    source: e,
                })?;
            }
        }
        let cgroup = match &spec.cgroup {
            Some(c) => {
                let group = Cgroups::detect()?.create(&c.path)?;
                group.set_limits(&c.limits)?;
                group.add_pid(std::process::id())?;
                Some(group)
            }
            None => None,
        };
        let mut rules = landlock::system_rules();
        rules.extend(spec.paths.iter().cloned());
        let landlock = landlock::restrict(&rules, spec.best_effort)?;
        crate::privileges::become_ids(uid, gid)?;
        if uid.is_some() {
            for dir in spec.writable_dirs() {
                check_reachable(dir)?;
            }
        }
        log::info!(
            "jailed: uid {}, gid {}, Landlock {}, {} paths{}",
            uid.map_or("unchanged".into(), |u| u.to_string()),
            gid.map_or("unchanged".into(), |g| g.to_string()),
            match landlock {
                Enforcement::At(abi) => format!("ABI {abi}"),
                Enforcement::None => "off (best effort)".into(),
            },
            spec.paths.len(),
            cgroup
                .as_ref()
                .map_or(String::new(), |g| format!(", cgroup {}", g.path()))
        );
        Ok(Self {
            uid,
            gid,
            landlock,
            cgroup,
            _pool_uid: pool_uid,
        })
    }
}
