//! The jail of each worker: what the daemon's options ask for
//! (`--allow-path`, `--uid-pool`, `--cgroup-parent`, `--worker-cpu`,
//! `--worker-memory-overhead`), the decisions made from them (is a path
//! inside the allowed roots, what `memory.max` a worker gets), and the
//! doing: the worker's own side ([`apply_in_worker`]: Landlock, then the
//! pool uid) and the daemon's side (the worker's cgroup, the group
//! permissions a pool uid needs).
//!
//! Workers of one daemon take different uids of the pool but share one
//! gid, the pool's first number: the allowed directories and the state
//! directory's VM directories are given to that group (`g+rwxs`), so a VM
//! restarted in another worker still reaches its console and snapshots.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tandem::api::VmSpec;
use tandem::cgroup::{Cgroup, Cgroups, CpuMax, Limits};
use tandem::devices::DiskSpec;
use tandem::jail::{CgroupSpec, Jail, JailIds, JailSpec, PathAccess, UidPool};

/// What a worker may use beyond its VMs' memory by default: its own
/// heap, threads' stacks, page tables and device buffers.
pub const DEFAULT_WORKER_OVERHEAD: u64 = 64 << 20;

/// Why a jail option or a jail step failed.
#[derive(Debug, thiserror::Error)]
pub enum JailOptError {
    /// An allowed path that is not a directory that exists.
    #[error("--allow-path {path}: {reason}")]
    AllowPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A `--worker-cpu` that is not a share.
    #[error("--worker-cpu {0}")]
    WorkerCpu(String),
    /// A `--cgroup-parent` that is not a group path.
    #[error("--cgroup-parent {0}")]
    CgroupParent(String),
    /// Giving a directory to the workers' group failed.
    #[error("cannot give {path} to the workers' group {gid}: {source}")]
    Share {
        /// The directory.
        path: PathBuf,
        /// The group.
        gid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The jail's library call failed.
    #[error(transparent)]
    Jail(#[from] tandem::jail::JailError),
    /// The worker's cgroup could not be made, limited or joined.
    #[error("worker cgroup: {0}")]
    Cgroup(#[from] tandem::cgroup::CgroupError),
}

/// The jail options of the daemon.
#[derive(Debug, Clone, Default)]
pub struct JailOptions {
    /// Landlock on: the roots a worker may reach (canonical; the state
    /// directory among them). Empty: no Landlock.
    pub allowed: Vec<PathBuf>,
    /// The uid pool workers take their uid from.
    pub uid_pool: Option<UidPool>,
    /// The cgroup workers are made under (`tandem/workers`).
    pub cgroup_parent: Option<String>,
    /// Each worker's `cpu.max`.
    pub worker_cpu: Option<CpuMax>,
    /// Added to the sum of a worker's VMs' memory for its `memory.max`.
    pub overhead: u64,
}

/// `--worker-cpu 150%`: a share of one CPU, as the CLI's `--cgroup cpu=`.
pub fn parse_worker_cpu(s: &str) -> Result<CpuMax, JailOptError> {
    let spec: CgroupSpec = format!("w,cpu={s}")
        .parse()
        .map_err(|e: tandem::jail::JailError| JailOptError::WorkerCpu(e.to_string()))?;
    spec.limits
        .cpu_max
        .ok_or_else(|| JailOptError::WorkerCpu(s.to_string()))
}

impl JailOptions {
    /// The options from the command line: the allowed roots made canonical
    /// (the state directory added when any is given or a pool is).
    pub fn new(
        state_dir: &Path,
        allow: &[PathBuf],
        uid_pool: Option<UidPool>,
        cgroup_parent: Option<String>,
        worker_cpu: Option<CpuMax>,
        overhead: u64,
    ) -> Result<Self, JailOptError> {
        let mut allowed = Vec::new();
        if !allow.is_empty() || uid_pool.is_some() {
            for p in std::iter::once(state_dir).chain(allow.iter().map(PathBuf::as_path)) {
                let c = p.canonicalize().map_err(|e| JailOptError::AllowPath {
                    path: p.to_path_buf(),
                    reason: e.to_string(),
                })?;
                if !c.is_dir() {
                    return Err(JailOptError::AllowPath {
                        path: p.to_path_buf(),
                        reason: "not a directory".into(),
                    });
                }
                allowed.push(c);
            }
        }
        if let Some(parent) = &cgroup_parent {
            tandem::cgroup::CgroupPath::parse(parent)
                .map_err(|e| JailOptError::CgroupParent(e.to_string()))?;
        }
        Ok(Self {
            allowed,
            uid_pool,
            cgroup_parent,
            worker_cpu,
            overhead,
        })
    }

    /// Whether workers are restricted to the allowed paths.
    pub fn landlock(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// The gid the workers share (with a pool).
    pub fn worker_gid(&self) -> Option<u32> {
        self.uid_pool.as_ref().map(|p| p.first)
    }

    /// The arguments of `tandemd worker` that carry its jail.
    pub fn worker_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for p in &self.allowed {
            args.push("--allow-path".into());
            args.push(p.clone().into_os_string());
        }
        if let Some(pool) = &self.uid_pool {
            args.push("--uid-pool".into());
            args.push(format!("{}-{}", pool.first, pool.last).into());
        }
        args
    }

    /// Refuses a VM whose image, snapshot, disks or checkpoint are
    /// outside the allowed roots (the worker could not open them).
    pub fn check_spec(&self, spec: &VmSpec) -> Result<(), String> {
        if !self.landlock() {
            return Ok(());
        }
        let mut paths: Vec<(&str, PathBuf)> = Vec::new();
        if let Some(i) = &spec.image {
            paths.push(("image", i.into()));
        }
        if let Some(s) = &spec.snapshot {
            paths.push(("snapshot", s.into()));
        }
        if let Some(c) = &spec.checkpoint {
            paths.push(("checkpoint", c.into()));
        }
        for d in &spec.disks {
            let disk = d
                .parse::<DiskSpec>()
                .map_err(|e| format!("disk '{d}': {e}"))?;
            paths.push(("disk", disk.path));
        }
        for (what, p) in paths {
            self.check_path(what, &p)?;
        }
        Ok(())
    }

    /// Refuses `path` when it is outside the allowed roots.
    pub fn check_path(&self, what: &str, path: &Path) -> Result<(), String> {
        if !self.landlock() || inside(&self.allowed, &resolve(path)) {
            return Ok(());
        }
        Err(format!(
            "{what} {}: outside the paths the workers' jail allows ({})",
            path.display(),
            self.allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Gives `dir` to the workers' group (`g+rwx`, set-gid so what is made
    /// in it stays the group's; `g+x` only when not `writable`). Nothing
    /// without a pool.
    pub fn share_dir(&self, dir: &Path, writable: bool) -> Result<(), JailOptError> {
        let Some(gid) = self.worker_gid() else {
            return Ok(());
        };
        let err = |source| JailOptError::Share {
            path: dir.to_path_buf(),
            gid,
            source,
        };
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(err)?;
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
        let add = if writable { 0o2070 } else { 0o010 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | add)).map_err(err)?;
        Ok(())
    }

    /// The daemon's setup for pool uids: the state directory (traversed)
    /// and the allowed roots (written) given to the workers' group.
    pub fn prepare_dirs(&self, state_dir: &Path) -> Result<(), JailOptError> {
        if self.uid_pool.is_none() {
            return Ok(());
        }
        self.share_dir(state_dir, false)?;
        self.share_dir(&state_dir.join("vms"), false)?;
        self.share_dir(&state_dir.join("workers"), false)?;
        // The state directory (the database's) is never made writable.
        let state = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.to_path_buf());
        for p in &self.allowed {
            if !p.starts_with(&state) {
                self.share_dir(p, true)?;
            }
        }
        Ok(())
    }

    /// The cgroup path of worker `id`.
    pub fn cgroup_of(&self, id: u32) -> Option<String> {
        self.cgroup_parent
            .as_ref()
            .map(|p| format!("{}/worker-{id}", p.trim_end_matches('/')))
    }

    /// Makes worker `id`'s cgroup (its cpu.max, memory.max of the
    /// overhead alone) and moves `pid` into it.
    pub fn enter_cgroup(&self, id: u32, pid: u32) -> Result<Option<Cgroup>, JailOptError> {
        let Some(path) = self.cgroup_of(id) else {
            return Ok(None);
        };
        let group = Cgroups::detect()?.create(&path)?;
        group.set_limits(&Limits {
            cpu_max: self.worker_cpu,
            memory_max: Some(self.overhead),
            ..Limits::default()
        })?;
        group.add_pid(pid)?;
        Ok(Some(group))
    }

    /// An earlier daemon's worker `id`'s cgroup.
    pub fn open_cgroup(&self, id: u32) -> Option<Cgroup> {
        let path = self.cgroup_of(id)?;
        Cgroups::detect().ok()?.open(&path).ok()
    }
}

/// `memory.max` of a worker running VMs of these sizes.
pub fn memory_max(vm_memory: impl IntoIterator<Item = u64>, overhead: u64) -> u64 {
    vm_memory
        .into_iter()
        .fold(overhead, |sum, m| sum.saturating_add(m))
}

/// Whether canonical `path` is one of `roots` or under one.
pub fn inside(roots: &[PathBuf], path: &Path) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

/// `path` made canonical as far as it exists (a file to be made: its
/// directory's canonical path joined with the rest), so `..` and symbolic
/// links cannot lead outside a root.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(c) = path.canonicalize() {
        return c;
    }
    let mut rest = Vec::new();
    let mut cur = path;
    while let Some(parent) = cur.parent() {
        if let Some(name) = cur.file_name() {
            rest.push(name.to_os_string());
        } else {
            // `..` or `.` in a part that does not exist: no honest answer.
            return PathBuf::from("/nonexistent/..");
        }
        if let Ok(c) = parent.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        cur = parent;
    }
    PathBuf::from("/nonexistent/..")
}

/// The worker's side, before it starts any thread: Landlock to the allowed
/// roots (read-write) and the system paths, then a uid of the pool with
/// the workers' gid. The returned values hold the pool uid's lock: keep
/// them for the life of the worker.
pub fn apply_in_worker(
    allowed: &[PathBuf],
    uid_pool: Option<&UidPool>,
) -> Result<Option<(Jail, Option<tandem::jail::PoolUid>)>, JailOptError> {
    if allowed.is_empty() && uid_pool.is_none() {
        return Ok(None);
    }
    let taken = uid_pool.map(UidPool::take).transpose()?;
    let mut spec = JailSpec::default();
    for p in allowed {
        spec.allow(p, PathAccess::ReadWrite);
    }
    // The pool's uid is taken here, not by the library (which would give
    // each worker its own gid and hand it the shared directories): the
    // directories were given to the workers' group by the daemon.
    spec.ids = JailIds::Keep;
    // Landlock's writable directories exist already: keep their owners.
    let jail = Jail::apply(&spec)?;
    if let (Some(t), Some(pool)) = (&taken, uid_pool) {
        // SAFETY: umask only sets the process's file mode mask.
        unsafe { libc::umask(0o002) };
        tandem::privileges::become_ids(Some(t.uid), Some(pool.first))
            .map_err(tandem::jail::JailError::from)?;
        log::info!("worker runs as uid {}, gid {}", t.uid, pool.first);
    }
    Ok(Some((jail, taken)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_is_the_vms_plus_the_overhead() {
        assert_eq!(memory_max([], 64), 64);
        assert_eq!(memory_max([8 << 20, 16 << 20], 1 << 20), 25 << 20);
        assert_eq!(memory_max([u64::MAX], 1), u64::MAX);
    }

    #[test]
    fn inside_needs_a_whole_component() {
        let roots = [PathBuf::from("/srv/images")];
        assert!(inside(&roots, Path::new("/srv/images")));
        assert!(inside(&roots, Path::new("/srv/images/a.elf")));
        assert!(!inside(&roots, Path::new("/srv/images2/a.elf")));
        assert!(!inside(&roots, Path::new("/srv")));
    }

    #[test]
    fn a_missing_path_resolves_through_its_existing_parent() {
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let p = tmp.join("tandemd-no-such-dir-x/y");
        assert_eq!(resolve(&p), p);
        // `..` in the part that does not exist is never inside.
        let sneaky = tmp.join("no-such-dir-x/../../etc");
        assert!(!inside(std::slice::from_ref(&tmp), &resolve(&sneaky)));
    }

    #[test]
    fn worker_cpu_is_a_share_of_one_cpu() {
        let c = parse_worker_cpu("50%").unwrap();
        assert_eq!((c.quota_us, c.period_us), (Some(50_000), 100_000));
        assert!(parse_worker_cpu("fast").is_err());
    }
}
