//! Control groups for VMM processes: find the hierarchy, create a group,
//! give it CPU and memory limits, put a process in it, read what it used,
//! remove it.
//!
//! cgroup v2 (the unified hierarchy) is the model: limits are expressed in
//! its terms ([`Limits`]: `cpu.max`, `cpu.weight`, `memory.max`,
//! `memory.swap.max`, `pids.max`). Hosts that still bind the controllers to
//! v1 hierarchies (the "hybrid" layout: a `cgroup2` mount at
//! `/sys/fs/cgroup/unified` with no controllers, and one `cgroup` mount per
//! controller) get the same limits written into the v1 files, as runc does;
//! [`Cgroups::version`] says which one a host has. The decisions (paths,
//! mounts, which file gets which value) are in [`plan`], unit-tested without
//! a file system.
//!
//! ```no_run
//! use tandem::cgroup::{Cgroups, CpuMax, Limits};
//! let cgroups = Cgroups::detect()?;
//! let group = cgroups.create("tandem/vm-1")?;
//! group.set_limits(&Limits {
//!     cpu_max: Some(CpuMax { quota_us: Some(50_000), period_us: 100_000 }),
//!     memory_max: Some(256 << 20),
//!     ..Limits::default()
//! })?;
//! group.add_pid(std::process::id())?;
//! println!("{:?}", group.stats()?);
//! # Ok::<(), tandem::cgroup::CgroupError>(())
//! ```

pub mod plan;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use plan::{shares_to_weight, CgroupPath};

/// Where the kernel's mount table is read.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where a pure cgroup v2 host mounts the unified hierarchy.
pub const UNIFIED_ROOT: &str = "/sys/fs/cgroup";
/// v1 reports "no limit" as a huge page-aligned number; anything at or above
/// this is read as unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup path that could leave its hierarchy or name a control file.
    #[error("cgroup path {path:?} refused: {why}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// No usable hierarchy on this host.
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    /// A directory given as a unified hierarchy is not a `cgroup2` mount.
    #[error("{0} is not a cgroup2 mount point (see /proc/self/mountinfo)")]
    NotCgroup2(PathBuf),
    /// A limit or statistic needs a controller the group does not have.
    #[error("the {controller} controller is not available for {path} (not in the parent's cgroup.subtree_control, or bound to another hierarchy)")]
    ControllerMissing {
        /// The controller (v2 name).
        controller: String,
        /// The group's directory.
        path: PathBuf,
    },
    /// A limit this cgroup version cannot express.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The group still has processes (or child groups) and cannot be removed.
    #[error("cgroup {0} is busy: it still has processes or child groups")]
    Busy(PathBuf),
    /// A cgroupfs operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// This module's result.
pub type Result<T> = std::result::Result<T, CgroupError>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup version carries the controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy hierarchies, one per controller (or co-mounted).
    V1,
    /// The unified hierarchy.
    V2,
}

/// Limits in cgroup v2 terms; `None` leaves a file as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `cpu.max`.
    pub cpu_max: Option<CpuMax>,
    /// `cpu.weight`, 1 to 10000 (100 is the default share).
    pub cpu_weight: Option<u64>,
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `memory.swap.max` in bytes (v1: added to the memory limit for memsw).
    pub swap_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

/// `cpu.max`: `quota_us` of CPU time per `period_us` (`None` = no quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Microseconds per period; `None` is `max`.
    pub quota_us: Option<u64>,
    /// The period in microseconds.
    pub period_us: u64,
}

/// What a group used. A field is `None` when its controller or file is not
/// there (for example `memory.peak` before Linux 5.19).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// `memory.current` (v1 `memory.usage_in_bytes`).
    pub memory_current: Option<u64>,
    /// `memory.peak` (v1 `memory.max_usage_in_bytes`).
    pub memory_peak: Option<u64>,
    /// `memory.max`, `None` when unlimited.
    pub memory_max: Option<u64>,
    /// `cpu.stat` `usage_usec` (v1 `cpuacct.usage` / 1000).
    pub cpu_usage_usec: Option<u64>,
    /// `cpu.stat` `user_usec`.
    pub cpu_user_usec: Option<u64>,
    /// `cpu.stat` `system_usec`.
    pub cpu_system_usec: Option<u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
}

/// The host's cgroup hierarchies.
#[derive(Debug, Clone)]
pub struct Cgroups {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Unified(PathBuf),
    /// v1 controller name → its hierarchy's mount point.
    Legacy(BTreeMap<&'static str, PathBuf>),
}

/// The v1 controllers read or written, `cpuacct` for CPU usage.
const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

impl Cgroups {
    /// Finds the hierarchy that carries the `memory` and `cpu` controllers:
    /// `/sys/fs/cgroup` when it is `cgroup2`, else any `cgroup2` mount whose
    /// `cgroup.controllers` offers them, else the v1 mounts.
    pub fn detect() -> Result<Self> {
        let text =
            fs::read_to_string(MOUNTINFO).map_err(io_err("reading", Path::new(MOUNTINFO)))?;
        let mounts = plan::parse_mountinfo(&text);
        if mounts.unified.iter().any(|m| m == UNIFIED_ROOT) {
            return Ok(Self::unified(UNIFIED_ROOT));
        }
        for m in &mounts.unified {
            let offered =
                fs::read_to_string(Path::new(m).join("cgroup.controllers")).unwrap_or_default();
            let offered: Vec<&str> = offered.split_whitespace().collect();
            if offered.contains(&"memory") && offered.contains(&"cpu") {
                return Ok(Self::unified(m));
            }
        }
        let mut legacy = BTreeMap::new();
        for (point, controllers) in &mounts.legacy {
            for c in V1_CONTROLLERS {
                if controllers.iter().any(|x| x == c) {
                    legacy.entry(c).or_insert_with(|| PathBuf::from(point));
                }
            }
        }
        if !legacy.contains_key("memory") || !legacy.contains_key("cpu") {
            return Err(CgroupError::NoHierarchy(format!(
                "no cgroup2 mount offers memory and cpu, and no cgroup v1 mounts of both were found in {MOUNTINFO}"
            )));
        }
        Ok(Self {
            kind: Kind::Legacy(legacy),
        })
    }

    /// The unified hierarchy mounted at `root`, checked to be a `cgroup2`
    /// mount point.
    pub fn unified_at(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let text =
            fs::read_to_string(MOUNTINFO).map_err(io_err("reading", Path::new(MOUNTINFO)))?;
        let mounts = plan::parse_mountinfo(&text);
        if !mounts.unified.iter().any(|m| Path::new(m) == root) {
            return Err(CgroupError::NotCgroup2(root.to_path_buf()));
        }
        Ok(Self::unified(root))
    }

    fn unified(root: impl AsRef<Path>) -> Self {
        Self {
            kind: Kind::Unified(root.as_ref().to_path_buf()),
        }
    }

    /// Which version carries the controllers.
    pub fn version(&self) -> Version {
        match self.kind {
            Kind::Unified(_) => Version::V2,
            Kind::Legacy(_) => Version::V1,
        }
    }

    /// Creates the group at `path` (and the groups above it), or opens it if
    /// it exists. Under v2 the controllers Tandem uses are enabled in every
    /// ancestor's `cgroup.subtree_control` where the ancestor offers them.
    pub fn create(&self, path: &str) -> Result<Cgroup> {
        let path = CgroupPath::parse(path)?;
        match &self.kind {
            Kind::Unified(root) => {
                let mut dir = root.clone();
                for part in path.components() {
                    enable_controllers(&dir)?;
                    dir.push(part);
                    mkdir(&dir)?;
                }
            }
            Kind::Legacy(mounts) => {
                for mount in mounts.values() {
                    let mut dir = mount.clone();
                    for part in path.components() {
                        dir.push(part);
                        mkdir(&dir)?;
                    }
                }
            }
        }
        Ok(self.group(path))
    }

    /// The existing group at `path`.
    pub fn open(&self, path: &str) -> Result<Cgroup> {
        let path = CgroupPath::parse(path)?;
        let group = self.group(path);
        for dir in group.dirs() {
            if !dir.is_dir() {
                return Err(CgroupError::Io {
                    what: "opening",
                    path: dir.clone(),
                    source: io::ErrorKind::NotFound.into(),
                });
            }
        }
        Ok(group)
    }

    fn group(&self, path: CgroupPath) -> Cgroup {
        let rel = path.as_relative();
        let dirs = match &self.kind {
            Kind::Unified(root) => vec![("", root.join(&rel))],
            Kind::Legacy(mounts) => mounts.iter().map(|(c, m)| (*c, m.join(&rel))).collect(),
        };
        Cgroup {
            path,
            version: self.version(),
            dirs,
        }
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", dir)(e)),
    }
}

/// Turns on, in `dir`'s `cgroup.subtree_control`, each of Tandem's
/// controllers that `dir` offers and has not enabled yet.
fn enable_controllers(dir: &Path) -> Result<()> {
    let offered_file = dir.join("cgroup.controllers");
    let offered = fs::read_to_string(&offered_file).map_err(io_err("reading", &offered_file))?;
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).map_err(io_err("reading", &control))?;
    let missing: Vec<String> = plan::CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&control, missing.join(" ")).map_err(io_err(
        "enabling controllers (a group with processes cannot delegate them) in",
        &control,
    ))
}

/// One control group (under v1, the same path in each controller's
/// hierarchy).
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: CgroupPath,
    version: Version,
    /// (v1 controller or `""` for v2, directory).
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Cgroup {
    /// The path relative to the hierarchy root, `a/b`.
    pub fn path(&self) -> String {
        self.path.as_relative()
    }

    /// The version this group lives in.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The group's directory: the only one under v2; under v1 the `memory`
    /// hierarchy's.
    pub fn dir(&self) -> &Path {
        self.dir_for("memory").unwrap_or(&self.dirs[0].1)
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        let mut seen: Vec<&PathBuf> = Vec::new();
        self.dirs.iter().filter_map(move |(_, d)| {
            if seen.contains(&d) {
                None
            } else {
                seen.push(d);
                Some(d)
            }
        })
    }

    /// The directory holding `controller`'s files (v2: the group's only
    /// one; v1: the group in that controller's hierarchy, if mounted).
    pub fn controller_dir(&self, controller: &str) -> Option<&Path> {
        self.dir_for(controller).map(PathBuf::as_path)
    }

    fn dir_for(&self, controller: &str) -> Option<&PathBuf> {
        match self.version {
            Version::V2 => self.dirs.first().map(|(_, d)| d),
            Version::V1 => self
                .dirs
                .iter()
                .find(|(c, _)| *c == controller)
                .map(|(_, d)| d),
        }
    }

    fn missing(&self, controller: &str) -> CgroupError {
        CgroupError::ControllerMissing {
            controller: controller.to_string(),
            path: self.dir().to_path_buf(),
        }
    }

    /// Writes `limits` (only the fields that are `Some`).
    pub fn set_limits(&self, limits: &Limits) -> Result<()> {
        let mut writes = match self.version {
            Version::V2 => plan::v2_writes(limits),
            Version::V1 => plan::v1_writes(limits)?,
        };
        // v1 keeps memory <= memory+swap at every step: raising both
        // needs memsw first, lowering both the memory limit first (the
        // plan's order). Which one it is shows as EINVAL on the first.
        if let Some(i) = writes
            .iter()
            .position(|w| w.1 == "memory.limit_in_bytes")
            .filter(|&i| {
                writes
                    .get(i + 1)
                    .is_some_and(|w| w.1 == "memory.memsw.limit_in_bytes")
            })
        {
            let (_, file, value) = &writes[i];
            match self.write("memory", file, value) {
                Err(CgroupError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) =>
                {
                    writes.swap(i, i + 1);
                }
                other => other?,
            }
        }
        for (controller, file, value) in writes {
            self.write(controller, file, &value)?;
        }
        Ok(())
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<()> {
        let dir = self
            .dir_for(controller)
            .ok_or_else(|| self.missing(controller))?;
        let path = dir.join(file);
        // cgroupfs refuses to create a file (EACCES): a control file that
        // is not there means the controller is not enabled here.
        if !path.exists() {
            return Err(self.missing(controller));
        }
        fs::write(&path, value).map_err(io_err("writing", &path))
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        for dir in self.dirs() {
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(io_err("adding a process to", &procs))?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files to write a pid into (one under v2, one per
    /// hierarchy under v1), for a child that joins the group itself before
    /// it execs (writing `0` moves the writer).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in the group (under v1, in its memory hierarchy).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let procs = self.dir().join("cgroup.procs");
        let text = fs::read_to_string(&procs).map_err(io_err("reading", &procs))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Reads one control file of `controller`, `None` if it is not there.
    fn read(&self, controller: &str, file: &str) -> Result<Option<String>> {
        let Some(dir) = self.dir_for(controller) else {
            return Ok(None);
        };
        let path = dir.join(file);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn read_value(&self, controller: &str, file: &str) -> Result<Option<u64>> {
        Ok(self
            .read(controller, file)?
            .as_deref()
            .and_then(plan::single_value))
    }

    /// What the group used so far.
    pub fn stats(&self) -> Result<CgroupStats> {
        match self.version {
            Version::V2 => {
                let cpu = self.read("cpu", "cpu.stat")?.unwrap_or_default();
                Ok(CgroupStats {
                    memory_current: self.read_value("memory", "memory.current")?,
                    memory_peak: self.read_value("memory", "memory.peak")?,
                    memory_max: self.read_value("memory", "memory.max")?,
                    cpu_usage_usec: plan::flat_keyed(&cpu, "usage_usec"),
                    cpu_user_usec: plan::flat_keyed(&cpu, "user_usec"),
                    cpu_system_usec: plan::flat_keyed(&cpu, "system_usec"),
                    pids_current: self.read_value("pids", "pids.current")?,
                })
            }
            Version::V1 => {
                let usec = |ns: Option<u64>| ns.map(|n| n / 1000);
                Ok(CgroupStats {
                    memory_current: self.read_value("memory", "memory.usage_in_bytes")?,
                    memory_peak: self.read_value("memory", "memory.max_usage_in_bytes")?,
                    memory_max: self
                        .read_value("memory", "memory.limit_in_bytes")?
                        .filter(|&m| m < V1_UNLIMITED),
                    cpu_usage_usec: usec(self.read_value("cpuacct", "cpuacct.usage")?),
                    cpu_user_usec: usec(self.read_value("cpuacct", "cpuacct.usage_user")?),
                    cpu_system_usec: usec(self.read_value("cpuacct", "cpuacct.usage_sys")?),
                    pids_current: self.read_value("pids", "pids.current")?,
                })
            }
        }
    }

    /// Removes the group (not the groups above it). It must have no
    /// processes left: [`CgroupError::Busy`] otherwise.
    pub fn remove(&self) -> Result<()> {
        for dir in self.dirs() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(CgroupError::Busy(dir.clone()));
                }
                Err(e) => return Err(io_err("removing", dir)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
