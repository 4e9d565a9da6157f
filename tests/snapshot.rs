//! Snapshots, restores, clones and backups of the `counter` app, through the
//! `tandem` CLI as a user drives it: state carries on exactly, clones are
//! distinct, a backup point equals a full snapshot of the same moment,
//! damage is refused by name, and SIGKILL never breaks an earlier point.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem::backup::Chain;
use tandem::Snapshot;
use tandem_tests::{image_path, require_kvm, run_app, tandem, tandem_bin, CliRun};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn restore(dir: &Path, extra: &[&str]) -> CliRun {
    let mut args = vec!["restore", s(dir), "--timeout", "30s"];
    args.extend_from_slice(extra);
    tandem(&args)
}

/// The `count N hash H` lines, in order.
fn counts(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("count ")).collect()
}

/// The `final count ... table T` part of the final line (without the generation).
fn final_state(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with("final count"))
        .unwrap_or_else(|| panic!("no final line in {out}"));
    line.split(" generation").next().unwrap_or("").to_string()
}

fn generation(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("final count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation in {out}"))
}

#[test]
fn restore_carries_on_with_identical_state() {
    let dir = scratch("resume");
    let snap = dir.join("snap");
    let whole = run_app("counter", &["--cmdline", "exit-at=12"]);
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);

    let first = run_app(
        "counter",
        &[
            "--cmdline",
            "snapshot-at=5 exit-at=12",
            "--snapshot-dir",
            s(&snap),
        ],
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(
        first.stdout.contains("snapshot at 5: taken"),
        "{}",
        first.stdout
    );
    assert_eq!(counts(&first.stdout), counts(&whole.stdout));

    let again = restore(&snap, &[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again
            .stdout
            .starts_with("snapshot at 5: restored, generation "),
        "output must continue from the snapshot point: {}",
        again.stdout
    );
    // Exactly the steps after the snapshot, with the same hashes.
    assert_eq!(counts(&again.stdout), counts(&whole.stdout)[5..].to_vec());
    assert_eq!(final_state(&again.stdout), final_state(&whole.stdout));
    assert!(!again.stdout.contains("BACKWARDS"), "{}", again.stdout);
    assert_ne!(generation(&again.stdout), 0);
    assert!(again.stdout.contains("restores 1"), "{}", again.stdout);
    // The snapshot is untouched by the restore and restores again identically.
    let twice = restore(&snap, &[]);
    assert_eq!(final_state(&twice.stdout), final_state(&whole.stdout));
    assert_ne!(generation(&twice.stdout), generation(&again.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snapshot_at_ready_then_exit() {
    let dir = scratch("ready");
    let snap = dir.join("snap");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "ready exit-at=4",
            "--snapshot-at-ready",
            s(&snap),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        !run.stdout.contains("count 1"),
        "stopped at ready: {}",
        run.stdout
    );
    let again = restore(&snap, &[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stdout.starts_with("count 1 "), "{}", again.stdout);
    assert!(again.stdout.contains("final count 4"), "{}", again.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clones_run_independently_with_distinct_generations() {
    let dir = scratch("clones");
    let snap = dir.join("snap");
    let first = run_app(
        "counter",
        &[
            "--cmdline",
            "snapshot-at=3 exit-at=8",
            "--snapshot-dir",
            s(&snap),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let clones = restore(&snap, &["--clones", "4"]);
    assert_eq!(clones.code, Some(0), "{}", clones.stderr);
    let mut gens = Vec::new();
    let mut finals = Vec::new();
    for i in 0..4 {
        let prefix = format!("[clone {i}] ");
        let own: String = clones
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(own.contains("snapshot at 3: restored"), "clone {i}: {own}");
        gens.push(generation(&own));
        finals.push(final_state(&own));
    }
    gens.sort_unstable();
    gens.dedup();
    assert_eq!(gens.len(), 4, "generations must differ: {gens:?}");
    assert!(!gens.contains(&0));
    assert!(finals.windows(2).all(|w| w[0] == w[1]), "{finals:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn three_snapshot_restore_cycles_keep_state() {
    let dir = scratch("cycles");
    let cmdline = "snapshot-at=3 snapshot-at=6 snapshot-at=9 exit-at=12";
    let whole = run_app("counter", &["--cmdline", "exit-at=12"]);
    let a = dir.join("a");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            cmdline,
            "--snapshot-dir",
            s(&a),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut from = a;
    for (n, next) in ["b", "c", "d"].iter().enumerate() {
        let to = dir.join(next);
        let r = restore(&from, &["--snapshot-dir", s(&to), "--exit-after-snapshot"]);
        assert_eq!(r.code, Some(0), "cycle {n}: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("restores {}", n + 1)),
            "{}",
            r.stdout
        );
        from = to;
    }
    // a: at 3; b: 3 -> 6; c: 6 -> 9; d: 9 -> the end (no snapshot left to take).
    let last = restore(&dir.join("c"), &[]);
    assert_eq!(last.code, Some(0), "{}", last.stderr);
    assert_eq!(final_state(&last.stdout), final_state(&whole.stdout));
    assert_eq!(counts(&last.stdout), counts(&whole.stdout)[9..].to_vec());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn backup_point_equals_a_full_snapshot_of_the_same_moment() {
    let dir = scratch("backup-eq");
    let (snap, chain, out) = (dir.join("snap"), dir.join("chain"), dir.join("out"));
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "pages=64 snapshot-at=40 exit-at=60",
            "--snapshot-dir",
            s(&snap),
            "--backup-dir",
            s(&chain),
            "--backup-every",
            "1h",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Point 0 is the base at boot, point 1 the snapshot's moment.
    let listed = tandem(&["backup", "list", s(&chain)]);
    assert!(listed.stdout.contains("base"), "{}", listed.stdout);
    let r = tandem(&[
        "backup",
        "restore",
        s(&chain),
        "--point",
        "1",
        "--out",
        s(&out),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let full = Snapshot::load(&snap).unwrap();
    let rebuilt = Snapshot::load(&out).unwrap();
    let a = std::fs::read(full.memory_path()).unwrap();
    let b = std::fs::read(rebuilt.memory_path()).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(
        a == b,
        "memory of backup point 1 differs from the full snapshot"
    );
    assert_eq!(full.state.vcpu, rebuilt.state.vcpu);
    assert_eq!(full.state.memory.digest, rebuilt.state.memory.digest);
    // And it runs on from there.
    let again = restore(&out, &[]);
    assert_eq!(final_state(&again.stdout), final_state(&run.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `tandem restore` on a damaged snapshot and checks it is refused with
/// the VMM's error code and a message containing `says`.
fn refused(dir: &Path, extra: &[&str], says: &str) {
    let r = restore(dir, extra);
    assert_eq!(
        r.code,
        Some(i32::from(tandem::exit_code::VMM_ERROR)),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(says),
        "expected `{says}` in: {}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "nothing may run: {}", r.stdout);
}

#[test]
fn damaged_snapshots_are_refused_by_name() {
    let dir = scratch("damage");
    let good = dir.join("good");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "snapshot-at=2 exit-at=3",
            "--snapshot-dir",
            s(&good),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let state = std::fs::read(good.join("state")).unwrap();
    let copy = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        let mut bytes = state.clone();
        edit(&mut bytes);
        std::fs::write(d.join("state"), bytes).unwrap();
        d
    };
    refused(
        &copy("truncated", &|b| b.truncate(b.len() / 2)),
        &[],
        "truncated",
    );
    refused(&copy("header", &|b| b.truncate(20)), &[], "truncated");
    refused(
        &copy("flipped", &|b| {
            let n = b.len() - 40;
            b[n] ^= 0x08;
        }),
        &[],
        "does not match its digest",
    );
    refused(&copy("magic", &|b| b[0] = b'X'), &[], "bad magic");
    refused(&copy("version", &|b| b[8] = 9), &[], "format version 9");
    refused(&copy("arch", &|b| b[12] = 183), &[], "architecture 183");
    // Hand-edited: the memory size changed and the digest recomputed.
    let edited = copy("edited", &|b| {
        let mut st = tandem::snapshot::SnapshotState::decode(b).unwrap();
        st.machine.mem_size = 3 << 20;
        *b = st.encode().unwrap();
    });
    refused(&edited, &[], "invalid snapshot");
    let edited = copy("edited-memsize", &|b| {
        let mut st = tandem::snapshot::SnapshotState::decode(b).unwrap();
        st.machine.mem_size = 128 << 20;
        st.memory.size = 128 << 20;
        *b = st.encode().unwrap();
    });
    refused(&edited, &[], "memory file");
    // Memory file truncated, missing, or bit-flipped (found by --verify).
    let snap = Snapshot::load(&good).unwrap();
    let mem_name = snap.state.memory.file.clone();
    let d = copy("mem-truncated", &|_| {});
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join(&mem_name))
        .unwrap()
        .set_len(4096)
        .unwrap();
    refused(&d, &[], "memory file");
    let d = copy("mem-missing", &|_| {});
    std::fs::remove_file(d.join(&mem_name)).unwrap();
    refused(&d, &[], "is missing");
    let d = copy("mem-flipped", &|_| {});
    let path = d.join(&mem_name);
    let mut mem = std::fs::read(&path).unwrap();
    let at = mem.iter().rposition(|&b| b != 0).unwrap();
    mem[at] ^= 0x01;
    std::fs::write(&path, &mem).unwrap();
    refused(&d, &["--verify"], "memory file does not match its digest");
    let v = tandem(&["snapshot", "verify", s(&d)]);
    assert_eq!(v.code, Some(125), "{}", v.stderr);
    // The original still restores.
    assert_eq!(restore(&good, &["--verify"]).code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn backup_verify_names_damage_and_earlier_points_still_restore() {
    let dir = scratch("backup-damage");
    let chain = dir.join("chain");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "pages=8 snapshot-at=10 snapshot-at=20 snapshot-at=30 exit-at=35",
            "--snapshot-dir",
            s(&dir.join("snap")),
            "--backup-dir",
            s(&chain),
            "--backup-every",
            "1h",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let ok = tandem(&["backup", "verify", s(&chain)]);
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("4 points, chain intact"),
        "{}",
        ok.stdout
    );
    // Damage a byte of point 2's pages.
    let c = Chain::open(&chain).unwrap();
    let pages = c.points()[&2].as_ref().unwrap().pages_file.clone();
    let path = chain.join(&pages);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let bad = tandem(&["backup", "verify", s(&chain)]);
    assert_eq!(bad.code, Some(125));
    assert!(
        bad.stdout.contains("point 2: DAMAGED: chunk 0 of"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout
            .contains("point 3: DAMAGED: it builds on point 2"),
        "{}",
        bad.stdout
    );
    assert!(bad.stdout.contains("point 1: ok"), "{}", bad.stdout);
    // Point 1 still restores; point 3 is refused naming point 2.
    let out1 = dir.join("p1");
    let r = tandem(&[
        "backup",
        "restore",
        s(&chain),
        "--point",
        "1",
        "--out",
        s(&out1),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let again = restore(&out1, &[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again.stdout.starts_with("snapshot at 10: restored"),
        "{}",
        again.stdout
    );
    let r = tandem(&[
        "backup",
        "restore",
        s(&chain),
        "--point",
        "3",
        "--out",
        s(&dir.join("p3")),
    ]);
    assert_eq!(r.code, Some(125));
    assert!(r.stderr.contains("point 2 is damaged"), "{}", r.stderr);
    // A missing metadata file is named too.
    std::fs::remove_file(chain.join("point-000001.meta")).unwrap();
    let bad = tandem(&["backup", "verify", s(&chain)]);
    assert!(
        bad.stdout
            .contains("point 1: DAMAGED: its metadata file is missing"),
        "{}",
        bad.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn merge_folds_the_chain_into_one_base() {
    let dir = scratch("merge");
    let chain = dir.join("chain");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "pages=8 snapshot-at=10 snapshot-at=20 exit-at=25",
            "--snapshot-dir",
            s(&dir.join("snap")),
            "--backup-dir",
            s(&chain),
            "--backup-every",
            "1h",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let before = dir.join("before");
    tandem(&[
        "backup",
        "restore",
        s(&chain),
        "--point",
        "2",
        "--out",
        s(&before),
    ]);
    let m = tandem(&["backup", "merge", s(&chain)]);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let c = Chain::open(&chain).unwrap();
    assert_eq!(c.points().len(), 1);
    assert!(c.points()[&2].as_ref().unwrap().base);
    let after = dir.join("after");
    let r = tandem(&[
        "backup",
        "restore",
        s(&chain),
        "--point",
        "2",
        "--out",
        s(&after),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let (a, b) = (
        Snapshot::load(&before).unwrap(),
        Snapshot::load(&after).unwrap(),
    );
    assert_eq!(a.state.memory.digest, b.state.memory.digest);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

#[test]
fn sigkill_during_writes_never_breaks_an_earlier_point() {
    require_kvm();
    let dir = scratch("kill");
    let (snap, chain) = (dir.join("snap"), dir.join("chain"));
    let image = image_path("counter");
    // A good snapshot to start from.
    let first = run_app(
        "counter",
        &[
            "--mem",
            "128M",
            "--cmdline",
            "pages=8192 every=100000000 snapshot-at=1000",
            "--snapshot-dir",
            s(&snap),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    // Vary the moment of the kill from before the first write to deep into them.
    for round in 0..12u64 {
        let chain = chain.join(format!("round-{round}"));
        let mut child = Command::new(tandem_bin())
            .args([
                "run",
                s(&image),
                "--mem",
                "128M",
                "--cmdline",
                "pages=8192 every=100000000",
                "--snapshot-dir",
                s(&snap),
                "--backup-dir",
                s(&chain),
                "--backup-every",
                "15ms",
                "--timeout",
                "30s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(30 + round * 7));
        signal(pid, "USR1");
        std::thread::sleep(Duration::from_millis(round * 3 % 17));
        signal(pid, "KILL");
        let _ = child.wait();
        // The snapshot directory always holds one whole snapshot.
        let s = Snapshot::load(&snap).unwrap_or_else(|e| panic!("round {round}: {e}"));
        s.verify_memory()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // Every point the chain holds verifies.
        if let Ok(c) = Chain::open(&chain) {
            for r in c.verify() {
                assert!(
                    r.problem.is_none(),
                    "round {round}: point {}: {:?}",
                    r.point,
                    r.problem
                );
            }
        }
    }
    // And the snapshot still runs.
    let again = tandem(&["restore", s(&snap), "--timeout", "2s"]);
    assert_eq!(again.code, Some(124), "{}", again.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
