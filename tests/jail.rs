//! `tandem run --jail` and `tandem restore --jail`, seen from outside:
//! Landlock refuses what the jail does not name (a snapshot into a
//! directory outside it fails cleanly, one inside works and restores), the
//! VMM runs as a uid of its pool with no supplementary groups, two jailed
//! VMMs never share a uid, and a jail that cannot be set up stops the run
//! before the guest starts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tandem_tests::{image_path, require_kvm, tandem, tandem_bin};

/// A fresh directory that the pool's uids can pass through (the jailed
/// VMM is no longer root: a 0700 parent would stop it).
fn scratch(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tandem-jail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn assert_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(
        status.contains("Uid:\t0\t"),
        "these tests need root (the jail changes uid and chowns its directories)"
    );
}

fn run_counter(extra: &[&str]) -> tandem_tests::CliRun {
    let image = image_path("counter");
    let mut args = vec![
        "run",
        image.to_str().expect("utf-8"),
        "--cmdline",
        "snapshot-at=2 exit-at=3",
        "--timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    tandem(&args)
}

#[test]
fn a_snapshot_outside_the_jail_is_refused_cleanly_and_one_inside_works() {
    assert_root();
    let t = scratch("paths");
    let allowed = t.join("allowed");
    let forbidden = t.join("forbidden");
    std::fs::create_dir_all(&forbidden).expect("mkdir");
    let (a, f) = (allowed.to_str().unwrap(), forbidden.to_str().unwrap());

    // The guest asks for a snapshot into a directory the jail leaves out.
    let run = run_counter(&[
        "--jail",
        "--jail-dir",
        a,
        "--snapshot-dir",
        f,
        "--uid-pool",
        "60100-60199",
    ]);
    assert_eq!(run.code, Some(0), "the VM carries on: {}", run.stderr);
    assert!(
        run.stdout.contains("snapshot at 2: not taken"),
        "the guest hears it was not taken: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("final count 3"),
        "the guest ran to its end: {}",
        run.stdout
    );
    assert!(
        run.stderr.lines().any(
            |l| l.contains(&format!("snapshot (Guest) to {f} failed: {f}"))
                && l.ends_with("Permission denied (os error 13)")
        ),
        "the VMM names the refused path: {}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("is outside the jail's --jail-dir directories"),
        "warned up front: {}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(&forbidden).expect("ls").count(),
        0,
        "nothing was written outside the jail"
    );

    // The same run snapshotting into the jail's directory.
    let run = run_counter(&[
        "--jail",
        "--jail-dir",
        a,
        "--snapshot-dir",
        a,
        "--uid-pool",
        "60100-60199",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("snapshot at 2: taken"),
        "{}",
        run.stdout
    );
    assert!(allowed.join("state").is_file(), "{}", run.stderr);

    // And restored, jailed too (the snapshot readable, nothing writable).
    let run = tandem(&[
        "restore",
        a,
        "--jail",
        "--uid-pool",
        "60100-60199",
        "--timeout",
        "60s",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("snapshot at 2: restored") && run.stdout.contains("final count 3"),
        "{}",
        run.stdout
    );
    // Clones from a warm pool, whose refill thread starts inside the jail
    // (with its /dev/kvm handle opened before the uid changes).
    let run = tandem(&[
        "restore",
        a,
        "--jail",
        "--uid-pool",
        "60100-60199",
        "--pool",
        "2",
        "--clones",
        "2",
        "--timeout",
        "60s",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for i in 0..2 {
        assert!(
            run.stdout.contains(&format!("[clone {i}] final count 3")),
            "{}",
            run.stdout
        );
    }
    let _ = std::fs::remove_dir_all(t);
}

#[test]
fn by_default_the_jail_lets_the_vmm_write_only_where_its_options_say() {
    assert_root();
    let t = scratch("derived");
    let snaps = t.join("snaps");
    let s = snaps.to_str().unwrap();
    // No --jail-dir: the snapshot directory named is the jail's (made for
    // it and given to its uid).
    let run = run_counter(&["--jail", "--snapshot-dir", s, "--uid-pool", "60100-60199"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("snapshot at 2: taken"),
        "{}",
        run.stdout
    );
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&snaps).expect("snapshot dir").uid();
    assert!((60100..=60199).contains(&uid), "owned by {uid}");
    assert_eq!(
        std::fs::metadata(snaps.join("state")).expect("state").uid(),
        uid,
        "written by the jail's uid"
    );
    let _ = std::fs::remove_dir_all(t);
}

/// Starts a jailed `spin` (it prints a line, then spins) and returns it
/// once its guest runs.
fn start_jailed_spin(extra: &[&str]) -> Child {
    require_kvm();
    let image = image_path("spin");
    let mut child = Command::new(tandem_bin())
        .args(["run", image.to_str().expect("utf-8"), "--timeout", "60s"])
        .args(["-q", "--jail"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    if !line.contains("spinning forever") {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!(
            "the jailed guest did not start: {line:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// A field of `/proc/PID/status`, whitespace-separated values.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn jailed_vmms_run_as_their_own_pool_uids_without_supplementary_groups() {
    assert_root();
    let pool = ["--uid-pool", "60200-60209"];
    let mut a = start_jailed_spin(&pool);
    let mut b = start_jailed_spin(&pool);
    let ua = status_field(a.id(), "Uid:");
    let ub = status_field(b.id(), "Uid:");
    let ga = status_field(a.id(), "Gid:");
    let groups = status_field(a.id(), "Groups:");
    let nnp = status_field(a.id(), "NoNewPrivs:");
    let seccomp = status_field(a.id(), "Seccomp:");
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Real, effective, saved and file-system uid: all the pool's.
    assert_eq!(ua.len(), 4, "{ua:?}");
    assert!(ua.iter().all(|u| u == &ua[0]), "{ua:?}");
    let uid: u32 = ua[0].parse().expect("uid");
    assert!((60200..=60209).contains(&uid), "uid {uid}");
    assert!(ga.iter().all(|g| g == &ua[0]), "gid is the uid: {ga:?}");
    assert!(
        groups.is_empty(),
        "supplementary groups dropped: {groups:?}"
    );
    assert_eq!(nnp, ["1"]);
    assert_eq!(seccomp, ["2"], "and the seccomp filter is on");
    assert_ne!(ua[0], ub[0], "two jails never share a uid");
    assert!(ub.iter().all(|u| u == &ub[0]), "{ub:?}");
}

#[test]
fn a_full_pool_or_a_bad_one_stops_the_run_before_the_guest_starts() {
    assert_root();
    // One uid in the pool, held by a running jail: the next is refused.
    let pool = ["--uid-pool", "60300-60300"];
    let mut held = start_jailed_spin(&pool);
    let image = image_path("hello");
    let img = image.to_str().expect("utf-8");
    let run = tandem(&["run", img, "--jail", "--uid-pool", "60300-60300"]);
    let _ = held.kill();
    let _ = held.wait();
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("every uid of the pool 60300-60300 is in use"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "the guest never ran: {}", run.stdout);
    // Once it is gone, its uid is free again.
    let run = tandem(&["run", img, "--jail", "--uid-pool", "60300-60300"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let run = tandem(&["run", img, "--jail", "--uid-pool", "0-10"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("uid 0 (root)"), "{}", run.stderr);
    // The jail's options need --jail.
    let run = tandem(&["run", img, "--uid-pool", "60300-60300"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("--jail"), "{}", run.stderr);
}

#[test]
fn a_jail_uid_that_cannot_reach_its_directory_is_refused_up_front() {
    assert_root();
    use std::os::unix::fs::PermissionsExt;
    let t = scratch("reach");
    // The parent lets only root through.
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let snaps = t.join("snaps");
    let run = run_counter(&[
        "--jail",
        "--snapshot-dir",
        snaps.to_str().unwrap(),
        "--uid-pool",
        "60100-60199",
    ]);
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot jail the VMM")
            && run
                .stderr
                .contains(&format!("{}: Permission denied", snaps.display())),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let _ = std::fs::remove_dir_all(Path::new(&t));
}

/// The first line of a cgroup control file.
fn read_control(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

#[test]
fn the_jails_cgroup_limits_are_in_the_cgroup_files_and_the_vmm_is_in_it() {
    use tandem::cgroup::{Cgroups, Version};
    assert_root();
    let name = format!("tandem-test/jail-{}", std::process::id());
    let spec = format!("{name},cpu=50%,memory=128M,pids=64");
    let mut vmm = start_jailed_spin(&["--uid-pool", "60400-60409", "--cgroup", &spec]);
    let pid = vmm.id();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let cgroups = Cgroups::detect().expect("a cgroup hierarchy");
    let group = cgroups.open(&name).expect("the jail's group exists");
    let procs = group.pids().expect("cgroup.procs");
    let files = match cgroups.version() {
        Version::V2 => {
            let d = group.controller_dir("cpu").expect("v2 dir");
            vec![
                (read_control(d, "cpu.max"), "50000 100000"),
                (read_control(d, "memory.max"), "134217728"),
                (read_control(d, "pids.max"), "64"),
            ]
        }
        Version::V1 => {
            let cpu = group.controller_dir("cpu").expect("v1 cpu");
            let mem = group.controller_dir("memory").expect("v1 memory");
            let pids = group.controller_dir("pids").expect("v1 pids");
            vec![
                (read_control(cpu, "cpu.cfs_quota_us"), "50000"),
                (read_control(cpu, "cpu.cfs_period_us"), "100000"),
                (read_control(mem, "memory.limit_in_bytes"), "134217728"),
                (read_control(pids, "pids.max"), "64"),
            ]
        }
    };
    let _ = vmm.kill();
    let _ = vmm.wait();
    // Emptied once the VMM has gone; then it can be removed.
    let removed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        group.remove().is_ok()
    });
    for (found, wanted) in files {
        assert_eq!(found, wanted, "{membership}");
    }
    assert!(procs.contains(&pid), "{pid} not in {procs:?}");
    assert!(
        membership.contains(&format!("/{name}")),
        "the VMM is in its group: {membership}"
    );
    assert!(removed, "the group {name} could not be removed");
}
