//! Against the machine's real cgroupfs (the tests run as root). Each test
//! makes its own top-level group, so tests running at once never share one.

use super::*;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Removes `inner` then `outer` even when an assertion fails.
struct Cleanup(Vec<Cgroup>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for g in &self.0 {
            let _ = g.remove();
        }
    }
}

fn groups(cgroups: &Cgroups, name: &str) -> (Cgroup, Cleanup) {
    let outer = format!("tandem-unit-{}-{name}", std::process::id());
    let inner = cgroups.create(&format!("{outer}/inner")).unwrap();
    let outer = cgroups.open(&outer).unwrap();
    (inner.clone(), Cleanup(vec![inner, outer]))
}

fn detect() -> Cgroups {
    Cgroups::detect().unwrap_or_else(|e| panic!("this host needs cgroups for these tests: {e}"))
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

#[test]
fn limits_land_in_the_groups_files() {
    let cgroups = detect();
    let (group, _cleanup) = groups(&cgroups, "limits");
    group
        .set_limits(&Limits {
            cpu_max: Some(CpuMax {
                quota_us: Some(50_000),
                period_us: 100_000,
            }),
            cpu_weight: Some(100),
            memory_max: Some(64 << 20),
            pids_max: Some(64),
            ..Limits::default()
        })
        .unwrap();
    match cgroups.version() {
        Version::V2 => {
            let dir = group.dir();
            assert_eq!(read(dir, "cpu.max"), "50000 100000");
            assert_eq!(read(dir, "cpu.weight"), "100");
            assert_eq!(read(dir, "memory.max"), (64u64 << 20).to_string());
            assert_eq!(read(dir, "pids.max"), "64");
        }
        Version::V1 => {
            let cpu = group.dir_for("cpu").unwrap();
            assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
            assert_eq!(read(cpu, "cpu.shares"), "1024");
            assert_eq!(
                read(group.dir(), "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
        }
    }
    assert_eq!(group.stats().unwrap().memory_max, Some(64 << 20));
    // No quota is `max` again.
    group
        .set_limits(&Limits {
            cpu_max: Some(CpuMax {
                quota_us: None,
                period_us: 100_000,
            }),
            ..Limits::default()
        })
        .unwrap();
    match cgroups.version() {
        Version::V2 => assert_eq!(read(group.dir(), "cpu.max"), "max 100000"),
        Version::V1 => assert_eq!(
            read(group.dir_for("cpu").unwrap(), "cpu.cfs_quota_us"),
            "-1"
        ),
    }
}

/// Memory and swap limits can be raised and lowered together (v1's memsw
/// must stay at or above the memory limit at every step).
#[test]
fn memory_and_swap_limits_move_both_ways() {
    let cgroups = detect();
    let (group, _cleanup) = groups(&cgroups, "swap");
    let both = |mem: u64| Limits {
        memory_max: Some(mem),
        swap_max: Some(0),
        ..Limits::default()
    };
    for mem in [64u64 << 20, 128 << 20, 32 << 20, 96 << 20] {
        match group.set_limits(&both(mem)) {
            Ok(()) => assert_eq!(group.stats().unwrap().memory_max, Some(mem)),
            // A host without swap accounting has no memsw (v1) or
            // memory.swap.max (v2) file: refused by name.
            Err(CgroupError::ControllerMissing { controller, .. }) => {
                assert_eq!(controller, "memory")
            }
            Err(e) => panic!("{} MiB: {e}", mem >> 20),
        }
    }
}

#[test]
fn a_process_in_the_group_is_counted_and_keeps_it_busy() {
    let cgroups = detect();
    let (group, _cleanup) = groups(&cgroups, "usage");
    let scratch = std::env::temp_dir().join(format!("tandem-cgroup-{}", std::process::id()));
    // Waits to be moved, then burns some CPU and dirties 8 MiB of page cache
    // (charged to the group it is in now).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read go; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
             head -c 8388608 /dev/zero > {0}; read done; rm -f {0}",
            scratch.display()
        ))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    group.add_pid(child.id()).unwrap();
    assert!(group.pids().unwrap().contains(&child.id()));
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    // A group with a process cannot go.
    assert!(matches!(group.remove(), Err(CgroupError::Busy(_))));
    // Wait until the file is written (the shell is still in the group).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::metadata(&scratch).map_or(true, |m| m.len() < 8 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never wrote its file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stats = group.stats().unwrap();
    writeln!(stdin, "done").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert!(
        stats.cpu_usage_usec.is_some_and(|u| u > 0),
        "no CPU time counted: {stats:?}"
    );
    assert!(
        stats.memory_peak.is_some_and(|p| p >= 1 << 20)
            || stats.memory_current.is_some_and(|c| c >= 1 << 20),
        "8 MiB of page cache not counted: {stats:?}"
    );
    if let Some(pids) = stats.pids_current {
        assert!(pids >= 1, "{stats:?}");
    }
    let _ = fs::remove_file(&scratch);
    group.remove().unwrap();
    assert!(!group.dir().exists());
}

/// The unified hierarchy's own mechanics, wherever this host mounts it:
/// nested groups, moving a process, CPU accounting (always on in v2), and a
/// memory limit, which is either written or refused by name when the memory
/// controller is bound to v1.
#[test]
fn the_unified_hierarchy_works_where_it_is_mounted() {
    let text = fs::read_to_string(MOUNTINFO).unwrap();
    let mounts = plan::parse_mountinfo(&text);
    let root = mounts
        .unified
        .first()
        .unwrap_or_else(|| panic!("no cgroup2 mount on this host: {:?}", mounts));
    let cgroups = Cgroups::unified_at(root).unwrap();
    assert_eq!(cgroups.version(), Version::V2);
    let (group, _cleanup) = groups(&cgroups, "unified");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("read go; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; read done")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    group.add_pid(child.id()).unwrap();
    assert_eq!(group.pids().unwrap(), [child.id()]);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stats = loop {
        let stats = group.stats().unwrap();
        if stats.cpu_usage_usec.is_some_and(|u| u > 1000) {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CPU time: {stats:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(stats.cpu_user_usec.is_some(), "{stats:?}");
    writeln!(stdin, "done").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let offered = read(root.as_ref(), "cgroup.controllers");
    let memory = Limits {
        memory_max: Some(32 << 20),
        ..Limits::default()
    };
    if offered.split_whitespace().any(|c| c == "memory") {
        group.set_limits(&memory).unwrap();
        assert_eq!(read(group.dir(), "memory.max"), (32u64 << 20).to_string());
    } else {
        let err = group.set_limits(&memory).unwrap_err();
        assert!(
            matches!(&err, CgroupError::ControllerMissing { controller, .. } if controller == "memory"),
            "{err}"
        );
    }
}

#[test]
fn bad_paths_and_non_cgroup_roots_are_refused() {
    let cgroups = detect();
    for bad in ["../escape", "/a/../../b", "", "a/cgroup.procs"] {
        assert!(
            matches!(cgroups.create(bad), Err(CgroupError::BadPath { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Cgroups::unified_at("/tmp"),
        Err(CgroupError::NotCgroup2(_))
    ));
    assert!(cgroups.open("tandem-unit-no-such-group").is_err());
}
