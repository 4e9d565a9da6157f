//! The cgroup decisions that touch no file system: which paths are
//! acceptable, where the hierarchies are mounted (from `mountinfo` text),
//! which files a set of [`Limits`] writes in each cgroup version, and how the
//! statistics files read. [`super`] does the writing.

use super::{CgroupError, CpuMax, Limits};

/// The controllers Tandem uses (v2 names). v1 splits `cpu` usage into
/// `cpuacct`.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Longest name of one path component (a directory name under cgroupfs).
const MAX_COMPONENT: usize = 255;
/// Most components of a nested path; cgroup.max.depth is unlimited by
/// default, this only bounds hostile input.
const MAX_DEPTH: usize = 32;

/// A cgroup path relative to a hierarchy's root, checked: no `..`, no `.`, no
/// empty component, no NUL, no component that could be a control file
/// (`cgroup.*` and `<controller>.*` names are the kernel's), not the root
/// itself. A leading `/` means "from the hierarchy's root", as runc reads
/// `linux.cgroupsPath`, so it never escapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath(Vec<String>);

impl CgroupPath {
    /// Checks `path` (see the type's documentation).
    pub fn parse(path: &str) -> Result<Self, CgroupError> {
        let bad = |why: &str| CgroupError::BadPath {
            path: path.to_string(),
            why: why.to_string(),
        };
        let rel = path.strip_prefix('/').unwrap_or(path);
        if rel.is_empty() {
            return Err(bad("it names the hierarchy's root"));
        }
        let mut parts = Vec::new();
        for part in rel.split('/') {
            match part {
                "" => return Err(bad("it has an empty component (`//` or a trailing `/`)")),
                "." | ".." => return Err(bad("`.` and `..` are not allowed")),
                _ => {}
            }
            if part.len() > MAX_COMPONENT {
                return Err(bad("a component is longer than 255 bytes"));
            }
            if part.contains('\0') {
                return Err(bad("it contains a NUL byte"));
            }
            if part.starts_with("cgroup.")
                || CONTROLLERS
                    .iter()
                    .chain(["cpuacct", "cpuset", "io", "hugetlb", "rdma", "misc"].iter())
                    .any(|c| part.starts_with(&format!("{c}.")))
            {
                return Err(bad("a component looks like a cgroup control file"));
            }
            parts.push(part.to_string());
        }
        if parts.len() > MAX_DEPTH {
            return Err(bad("it nests deeper than 32 levels"));
        }
        Ok(Self(parts))
    }

    /// The components, outermost first.
    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// The path as `a/b/c` (no leading `/`).
    pub fn as_relative(&self) -> String {
        self.0.join("/")
    }
}

/// The cgroup mounts found in `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// Mount points of `cgroup2` file systems, in mount order.
    pub unified: Vec<String>,
    /// `cgroup` (v1) mount points with the controllers each carries.
    pub legacy: Vec<(String, Vec<String>)>,
}

/// Reads mountinfo text (`man 5 proc`): field 5 is the mount point, and after
/// the ` - ` separator come the file system type, the source and the super
/// options (for v1, the controller names among them).
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let point = unescape_mountinfo(point);
        let mut right = right.split(' ');
        let (Some(fstype), Some(_source), Some(opts)) = (right.next(), right.next(), right.next())
        else {
            continue;
        };
        match fstype {
            "cgroup2" => mounts.unified.push(point),
            "cgroup" => {
                let controllers = opts
                    .split(',')
                    .filter(|o| {
                        CONTROLLERS.contains(o)
                            || *o == "cpuacct"
                            || *o == "cpuset"
                            || *o == "blkio"
                    })
                    .map(str::to_string)
                    .collect();
                mounts.legacy.push((point, controllers));
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One write into a control file: (controller whose hierarchy holds it in
/// v1, or `""` in v2; file name; value).
pub type Write = (&'static str, &'static str, String);

/// The files [`Limits`] writes under cgroup v2, in order.
pub fn v2_writes(limits: &Limits) -> Vec<Write> {
    let mut w = Vec::new();
    if let Some(CpuMax {
        quota_us,
        period_us,
    }) = limits.cpu_max
    {
        let quota = quota_us.map_or_else(|| "max".to_string(), |q| q.to_string());
        w.push(("cpu", "cpu.max", format!("{quota} {period_us}")));
    }
    if let Some(weight) = limits.cpu_weight {
        w.push(("cpu", "cpu.weight", weight.to_string()));
    }
    if let Some(max) = limits.memory_max {
        w.push(("memory", "memory.max", max.to_string()));
    }
    if let Some(swap) = limits.swap_max {
        w.push(("memory", "memory.swap.max", swap.to_string()));
    }
    if let Some(pids) = limits.pids_max {
        w.push(("pids", "pids.max", pids.to_string()));
    }
    w
}

/// The files [`Limits`] writes under cgroup v1, in order: the memory limit
/// before memory+swap (the kernel refuses memsw below the memory limit), the
/// period before the quota. v1 has no swap-only limit: `swap_max` becomes
/// `memory.memsw.limit_in_bytes = memory_max + swap_max` and needs a memory
/// limit. The weight becomes shares with systemd's mapping (100 ↔ 1024).
pub fn v1_writes(limits: &Limits) -> Result<Vec<Write>, CgroupError> {
    let mut w = Vec::new();
    if let Some(CpuMax {
        quota_us,
        period_us,
    }) = limits.cpu_max
    {
        w.push(("cpu", "cpu.cfs_period_us", period_us.to_string()));
        let quota = quota_us.map_or_else(|| "-1".to_string(), |q| q.to_string());
        w.push(("cpu", "cpu.cfs_quota_us", quota));
    }
    if let Some(weight) = limits.cpu_weight {
        w.push(("cpu", "cpu.shares", weight_to_shares(weight).to_string()));
    }
    if let Some(max) = limits.memory_max {
        w.push(("memory", "memory.limit_in_bytes", max.to_string()));
    }
    if let Some(swap) = limits.swap_max {
        let Some(max) = limits.memory_max else {
            return Err(CgroupError::Unsupported(
                "a swap limit without a memory limit under cgroup v1 (memsw counts both)".into(),
            ));
        };
        let memsw = max
            .checked_add(swap)
            .ok_or_else(|| CgroupError::Unsupported("memory + swap limit overflows".into()))?;
        w.push(("memory", "memory.memsw.limit_in_bytes", memsw.to_string()));
    }
    if let Some(pids) = limits.pids_max {
        w.push(("pids", "pids.max", pids.to_string()));
    }
    Ok(w)
}

/// OCI `cpu.shares` (v1, 2..=262144) to v2 `cpu.weight` (1..=10000), as
/// runc converts it: `1 + (shares - 2) * 9999 / 262142`.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9999 / 262_142
}

/// v2 weight to v1 shares, systemd's mapping (weight 100 = 1024 shares).
pub fn weight_to_shares(weight: u64) -> u64 {
    (weight.clamp(1, 10_000) * 1024 / 100).clamp(2, 262_144)
}

/// Reads a `key value` file such as cpu.stat or memory.stat.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Reads a file holding one number (or `max`, read as `None`).
pub fn single_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(
            CgroupPath::parse("/default/abc").unwrap().as_relative(),
            "default/abc"
        );
        assert_eq!(CgroupPath::parse("a").unwrap().components(), ["a"]);
        for bad in [
            "",
            "/",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "cgroup.procs",
            "a/memory.max",
            "a/cpu.max",
        ] {
            assert!(
                matches!(CgroupPath::parse(bad), Err(CgroupError::BadPath { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(CgroupPath::parse("x/".repeat(40).trim_end_matches('/')).is_err());
        assert!(CgroupPath::parse(&"y".repeat(256)).is_err());
        // A name merely containing a dot is fine (pods, slices).
        assert!(CgroupPath::parse("kubepods.slice/cri-containerd-1.scope").is_ok());
    }

    #[test]
    fn mountinfo_finds_both_versions() {
        let text = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
30 25 0:27 / /mnt/with\\040space rw - cgroup2 none rw,nsdelegate
";
        let m = parse_mountinfo(text);
        assert_eq!(m.unified, ["/sys/fs/cgroup/unified", "/mnt/with space"]);
        assert_eq!(
            m.legacy,
            [
                ("/sys/fs/cgroup/cpu".to_string(), vec!["cpu".to_string()]),
                (
                    "/sys/fs/cgroup/memory".to_string(),
                    vec!["memory".to_string()]
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct".to_string(),
                    vec!["cpu".to_string(), "cpuacct".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn limits_become_the_right_files() {
        let limits = Limits {
            cpu_max: Some(CpuMax {
                quota_us: Some(50_000),
                period_us: 100_000,
            }),
            cpu_weight: Some(100),
            memory_max: Some(64 << 20),
            swap_max: Some(0),
            pids_max: Some(16),
        };
        let v2: Vec<_> = v2_writes(&limits)
            .into_iter()
            .map(|(_, f, v)| format!("{f}={v}"))
            .collect();
        assert_eq!(
            v2,
            [
                "cpu.max=50000 100000",
                "cpu.weight=100",
                "memory.max=67108864",
                "memory.swap.max=0",
                "pids.max=16"
            ]
        );
        let v1: Vec<_> = v1_writes(&limits)
            .unwrap()
            .into_iter()
            .map(|(c, f, v)| format!("{c}:{f}={v}"))
            .collect();
        assert_eq!(
            v1,
            [
                "cpu:cpu.cfs_period_us=100000",
                "cpu:cpu.cfs_quota_us=50000",
                "cpu:cpu.shares=1024",
                "memory:memory.limit_in_bytes=67108864",
                "memory:memory.memsw.limit_in_bytes=67108864",
                "pids:pids.max=16"
            ]
        );
        let unlimited = Limits {
            cpu_max: Some(CpuMax {
                quota_us: None,
                period_us: 100_000,
            }),
            ..Limits::default()
        };
        assert_eq!(v2_writes(&unlimited)[0].2, "max 100000");
        assert_eq!(v1_writes(&unlimited).unwrap()[1].2, "-1");
        let swap_only = Limits {
            swap_max: Some(1),
            ..Limits::default()
        };
        assert!(matches!(
            v1_writes(&swap_only),
            Err(CgroupError::Unsupported(_))
        ));
    }

    #[test]
    fn shares_and_weights_convert_as_runc_and_systemd_do() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(10_000), 102_400);
    }

    #[test]
    fn stat_files_parse() {
        let cpu = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 0\n";
        assert_eq!(flat_keyed(cpu, "usage_usec"), Some(1234));
        assert_eq!(flat_keyed(cpu, "system_usec"), Some(234));
        assert_eq!(flat_keyed(cpu, "missing"), None);
        assert_eq!(single_value("4096\n"), Some(4096));
        assert_eq!(single_value("max\n"), None);
    }
}
