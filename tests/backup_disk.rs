//! Backups of VMs with disks, through the `tandem` CLI as a user drives
//! it, with the `kvstore` app: each point restores to the memory and the
//! disk of its instant byte for byte (checked against a snapshot taken at
//! the same stop, whose disk copy and memory file are the live VM's at
//! that instant), a key written before a point is there after restoring it
//! and one written after is not, a damaged disk chunk is named by verify
//! while earlier points still restore, and SIGKILL during disk writes and
//! backup points never loses an earlier point.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem::backup::Chain;
use tandem::Snapshot;
use tandem_tests::{image_path, require_kvm, tandem, tandem_bin};

/// A scratch directory for this test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tandem-backup-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A sparse image of `len` bytes.
    fn image(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(len))
            .expect("disk image");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn disk_arg(path: &Path) -> String {
    format!("path={}", path.display())
}

/// A kvstore VM driven one command at a time.
struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(args: &[&str]) -> Self {
        require_kvm();
        let mut child = Command::new(tandem_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next answer (banners skipped).
    fn answer(&mut self) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with("kvstore:") => continue,
                Ok(l) => return l,
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    panic!("no answer from kvstore in 60 s; stderr: {err}");
                }
            }
        }
    }

    fn ask(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to kvstore");
        self.answer()
    }

    /// Ends the input and waits; returns the exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `tandem backup restore CHAIN --point N --out OUT`, which must succeed.
fn restore_point(chain: &Path, point: u64, out: &Path) {
    let r = tandem(&[
        "backup",
        "restore",
        s(chain),
        "--point",
        &point.to_string(),
        "--out",
        s(out),
    ]);
    assert_eq!(r.code, Some(0), "point {point}: {}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("--disk path=NEWFILE0"),
        "the restore says how to resume it with its disk: {}",
        r.stdout
    );
}

/// The disk file a snapshot directory holds (its only disk).
fn snapshot_disk(dir: &Path) -> PathBuf {
    let snap = Snapshot::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert_eq!(snap.state.disks.len(), 1, "{}", dir.display());
    dir.join(&snap.state.disks[0].file)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first byte where `a` and `b` differ, for a failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("lengths {} and {}", a.len(), b.len());
    }
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
    format!("first difference at byte {at} (block {})", at / 4096)
}

/// A disk of 32 MiB: kvstore's log grows from sector 0; the last 20 MiB
/// hold a pattern the guest never touches (the base must keep it), with a
/// hole between.
fn prefilled_disk(sc: &Scratch) -> PathBuf {
    let img = sc.image("kv.img", 32 << 20);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8 | 1).collect();
    for mib in 12..32u64 {
        f.write_all_at(&block, mib << 20).unwrap();
    }
    f.sync_all().unwrap();
    img
}

/// Runs kvstore on `img` with snapshots and a backup chain (points only at
/// the base and at each snapshot), putting `rounds` rounds of keys, a
/// snapshot after each; keeps a copy of the snapshot's disk and memory
/// files at each, the live VM's at that point. Returns the chain and, per
/// point, (disk copy, memory copy or none for the base, keys put so far).
fn chain_with_snapshots(
    sc: &Scratch,
    img: &Path,
    rounds: usize,
) -> (PathBuf, Vec<(PathBuf, Option<PathBuf>, usize)>) {
    let (snap, chain) = (sc.path("snap"), sc.path("chain"));
    let image = image_path("kvstore");
    let base_copy = sc.path("ref-0.img");
    std::fs::copy(img, &base_copy).unwrap();
    let mut refs = vec![(base_copy, None, 0)];
    let disk = disk_arg(img);
    let mut vm = Session::start(&[
        "run",
        "--timeout",
        "300s",
        "--disk",
        &disk,
        "--snapshot-dir",
        s(&snap),
        "--backup-dir",
        s(&chain),
        "--backup-every",
        "1h",
        "--json",
        s(&image),
    ]);
    let mut keys = 0;
    for round in 1..=rounds {
        // Each round writes a few records of a few KiB (several blocks).
        for _ in 0..3 * round {
            let value = format!("{keys}-{}", "v".repeat(1500 + 97 * keys));
            assert_eq!(vm.ask(&format!("put k{keys} {value}")), "ok");
            keys += 1;
        }
        assert_eq!(vm.ask("snapshot"), "snapshot taken");
        let (d, m) = (
            sc.path(&format!("ref-{round}.img")),
            sc.path(&format!("ref-{round}.mem")),
        );
        std::fs::copy(snapshot_disk(&snap), &d).unwrap();
        let snapshot = Snapshot::load(&snap).unwrap();
        std::fs::copy(snapshot.memory_path(), &m).unwrap();
        refs.push((d, Some(m), keys));
    }
    // Keys after the last point.
    assert_eq!(vm.ask("put late 1"), "ok");
    let (code, err) = vm.finish();
    assert_eq!(code, Some(0), "{err}");
    // Pre-copy (the default) covers a VM with a disk: every point after
    // the base was written while the guest ran on.
    let points = report_points(&err);
    assert_eq!(points.len(), rounds + 1, "points in the report: {err}");
    for p in points.iter().filter(|p| p["point"].as_u64() != Some(0)) {
        assert_eq!(
            p["live"], true,
            "a point of a disk VM stopped the guest: {p}"
        );
    }
    (chain, refs)
}

/// The per-point entries of the run report `--json` prints as the last
/// line of stderr.
fn report_points(stderr: &str) -> Vec<serde_json::Value> {
    let line = stderr.lines().last().unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON report ({e}): {line}"));
    report["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("no backups in the report: {line}"))
        .clone()
}

#[test]
fn timed_points_of_a_disk_vm_are_pre_copied_and_restore_the_keys_before_them() {
    let sc = Scratch::new("timed");
    let img = sc.image("kv.img", 8 << 20);
    let chain = sc.path("chain");
    let image = image_path("kvstore");
    let disk = disk_arg(&img);
    let mut vm = Session::start(&[
        "run",
        "--timeout",
        "300s",
        "--disk",
        &disk,
        "--backup-dir",
        s(&chain),
        "--backup-every",
        "200ms",
        "--json",
        s(&image),
    ]);
    assert_eq!(vm.ask("put first 1"), "ok");
    // Disk writes across several timed points.
    let start = std::time::Instant::now();
    let mut k = 0;
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(vm.ask(&format!("put k{k} {}", value(k % 40))), "ok");
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Points from here on may hold the end of the input.
    let closed = unix_nanos();
    let (code, err) = vm.finish();
    assert_eq!(code, Some(0), "{err}");
    let points = report_points(&err);
    let live: Vec<_> = points
        .iter()
        .filter(|p| p["live"] == true && p["rounds"].as_u64().unwrap_or(0) >= 1)
        .collect();
    assert!(
        !live.is_empty(),
        "no timed point of the disk VM was pre-copied (rounds >= 1, live): {points:?}"
    );
    assert!(
        points
            .iter()
            .any(|p| p["point"].as_u64() != Some(0) && p["blocks"].as_u64().unwrap_or(0) > 0),
        "no point after the base holds disk blocks: {points:?}"
    );
    let ok = tandem(&["backup", "verify", s(&chain)]);
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    // The last point before the input ended restores with its disk and
    // has the first key.
    let c = Chain::open(&chain).unwrap();
    let last = (c.points().iter())
        .filter(|(_, m)| m.as_ref().is_ok_and(|m| m.state.live.unix_nanos < closed))
        .map(|(&n, _)| n)
        .max()
        .unwrap();
    assert!(last > 0, "no point after the base before the input ended");
    let out = sc.path("last");
    restore_point(&chain, last, &out);
    let new = sc.path("restored.img");
    let mut vm = Session::start(&[
        "restore",
        "--timeout",
        "120s",
        s(&out),
        "--disk",
        &disk_arg(&new),
    ]);
    writeln!(vm.stdin.as_mut().unwrap(), "\nput probe 1\nget probe").unwrap();
    while vm.answer() != "1" {}
    assert_eq!(
        vm.ask("get first"),
        "1",
        "the key put before every timed point"
    );
    let (code, err) = vm.finish();
    assert_eq!(code, Some(0), "{err}");
}

fn value(k: usize) -> String {
    format!("{k}-{}", "v".repeat(1500 + 97 * k))
}

#[test]
fn backup_points_restore_memory_and_disk_of_their_instant_byte_for_byte() {
    let sc = Scratch::new("exact");
    let img = prefilled_disk(&sc);
    let (chain, refs) = chain_with_snapshots(&sc, &img, 4);
    let ok = tandem(&["backup", "verify", s(&chain)]);
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("5 points, chain intact"),
        "{}",
        ok.stdout
    );
    // The base holds the whole disk, sparse: the 20 MiB of pattern, not
    // the hole, and none of the zeros.
    let c = Chain::open(&chain).unwrap();
    let base = c.points()[&0].as_ref().unwrap();
    assert_eq!(base.disks.len(), 1);
    assert_eq!(base.disks[0].blocks.len(), 20 * 256, "base blocks");
    // A delta holds only the blocks written since its predecessor.
    let delta = c.points()[&1].as_ref().unwrap();
    let n = delta.disks[0].blocks.len();
    assert!((1..64).contains(&n), "point 1 holds {n} blocks");
    let listed = tandem(&["backup", "list", s(&chain)]);
    assert!(listed.stdout.contains("blocks"), "{}", listed.stdout);

    for (point, (disk_ref, mem_ref, _)) in refs.iter().enumerate() {
        let out = sc.path(&format!("p{point}"));
        restore_point(&chain, point as u64, &out);
        let (want, got) = (read(disk_ref), read(&snapshot_disk(&out)));
        assert!(
            want == got,
            "point {point}: the restored disk differs from the live disk at that point: {}",
            first_difference(&want, &got)
        );
        if let Some(mem_ref) = mem_ref {
            let rebuilt = Snapshot::load(&out).unwrap();
            let (want, got) = (read(mem_ref), read(&rebuilt.memory_path()));
            assert!(
                want == got,
                "point {point}: the restored memory differs from the snapshot of that instant: {}",
                first_difference(&want, &got)
            );
        }
    }
    // The tail the guest never touched is in every point's disk.
    let last = read(&snapshot_disk(&sc.path("p4")));
    assert_eq!(last[(12 << 20) + 1], 1 | 1, "the base's pattern survives");

    // Merged into one base, the last point keeps its disk, byte for byte.
    let merged = tandem(&["backup", "merge", s(&chain)]);
    assert_eq!(merged.code, Some(0), "{}{}", merged.stdout, merged.stderr);
    let ok = tandem(&["backup", "verify", s(&chain)]);
    assert!(
        ok.stdout.contains("1 points, chain intact"),
        "{}",
        ok.stdout
    );
    let out = sc.path("merged");
    restore_point(&chain, 4, &out);
    let (want, got) = (read(&refs[4].0), read(&snapshot_disk(&out)));
    assert!(
        want == got,
        "the merged point's disk differs: {}",
        first_difference(&want, &got)
    );
    let leftovers: Vec<String> = std::fs::read_dir(&chain)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".blocks"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "blocks files after the merge: {leftovers:?}"
    );
}

#[test]
fn kvstore_has_the_keys_written_before_a_point_and_not_those_after() {
    let sc = Scratch::new("keys");
    let img = sc.image("kv.img", 8 << 20);
    let (chain, refs) = chain_with_snapshots(&sc, &img, 3);
    for (point, (_, _, keys)) in refs.iter().enumerate().skip(1) {
        let out = sc.path(&format!("p{point}"));
        restore_point(&chain, point as u64, &out);
        let new = sc.path(&format!("restored-{point}.img"));
        let mut vm = Session::start(&[
            "restore",
            "--timeout",
            "120s",
            s(&out),
            "--disk",
            &disk_arg(&new),
        ]);
        assert_eq!(vm.answer(), "restored", "point {point}");
        assert_eq!(vm.ask("get k0"), value(0), "point {point}");
        let last = keys - 1;
        assert_eq!(
            vm.ask(&format!("get k{last}")),
            value(last),
            "point {point}"
        );
        assert_eq!(vm.ask(&format!("get k{keys}")), "missing", "point {point}");
        assert_eq!(vm.ask("get late"), "missing", "point {point}");
        assert_eq!(vm.ask("put mine 1"), "ok");
        let (code, err) = vm.finish();
        assert_eq!(code, Some(0), "point {point}: {err}");
        // The restored VM's disk is a file of its own, which kvstore
        // replays cold: the same keys, and the restored VM's own write.
        let mut cold = Session::start(&[
            "run",
            "--timeout",
            "120s",
            "--disk",
            &disk_arg(&new),
            s(&image_path("kvstore")),
        ]);
        assert_eq!(cold.ask(&format!("get k{last}")), value(last));
        assert_eq!(cold.ask(&format!("get k{keys}")), "missing");
        assert_eq!(cold.ask("get mine"), "1");
        let (code, err) = cold.finish();
        assert_eq!(code, Some(0), "{err}");
    }
    // The live disk went on past the last point.
    let mut live = Session::start(&[
        "run",
        "--timeout",
        "120s",
        "--disk",
        &disk_arg(&img),
        s(&image_path("kvstore")),
    ]);
    assert_eq!(live.ask("get late"), "1");
    let _ = live.finish();
}

/// Flips one byte of `file` at `at`.
fn flip(file: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_damaged_disk_chunk_is_named_and_earlier_points_still_restore() {
    let sc = Scratch::new("damage");
    let img = prefilled_disk(&sc);
    let (chain, _) = chain_with_snapshots(&sc, &img, 3);
    let c = Chain::open(&chain).unwrap();
    let blocks_file = |n: u64| {
        let m = c.points()[&n].as_ref().unwrap();
        m.disks[0].file.clone()
    };

    // A bit flipped in point 2's disk blocks.
    let flipped = sc.path("flipped");
    copy_dir(&chain, &flipped);
    flip(&flipped.join(blocks_file(2)), 5000);
    let bad = tandem(&["backup", "verify", s(&flipped)]);
    assert_eq!(bad.code, Some(125), "{}", bad.stdout);
    assert!(
        bad.stdout
            .contains("point 2: DAMAGED: disk 0, chunk 0: digest mismatch"),
        "{}",
        bad.stdout
    );
    assert!(bad.stdout.contains("point 1: ok"), "{}", bad.stdout);
    assert!(
        bad.stdout
            .contains("point 3: DAMAGED: it builds on point 2"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stderr.contains("points that still restore: 0, 1"),
        "{}",
        bad.stderr
    );
    // Point 1 restores and runs; point 3 is refused, naming point 2.
    restore_point(&flipped, 1, &sc.path("p1"));
    let mut vm = Session::start(&[
        "restore",
        "--timeout",
        "120s",
        s(&sc.path("p1")),
        "--disk",
        &disk_arg(&sc.path("p1.img")),
    ]);
    assert_eq!(vm.answer(), "restored");
    assert_eq!(vm.ask("get k0"), value(0));
    let (code, err) = vm.finish();
    assert_eq!(code, Some(0), "{err}");
    let r = tandem(&[
        "backup",
        "restore",
        s(&flipped),
        "--point",
        "3",
        "--out",
        s(&sc.path("p3")),
    ]);
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert!(
        r.stderr.contains("point 2 is damaged: disk 0, chunk 0"),
        "{}",
        r.stderr
    );

    // A bit flipped deep in the base's disk: its chunk is named.
    let base = sc.path("base-flipped");
    copy_dir(&chain, &base);
    flip(&base.join(blocks_file(0)), (17 << 20) + 123);
    let bad = tandem(&["backup", "verify", s(&base)]);
    assert!(
        bad.stdout
            .contains("point 0: DAMAGED: disk 0, chunk 17: digest mismatch"),
        "{}",
        bad.stdout
    );

    // A truncated blocks file: the chunk cut off is named.
    let cut = sc.path("truncated");
    copy_dir(&chain, &cut);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cut.join(blocks_file(0)))
        .unwrap();
    f.set_len((5 << 20) + 100).unwrap();
    let bad = tandem(&["backup", "verify", s(&cut)]);
    assert!(
        bad.stdout
            .contains("point 0: DAMAGED: disk 0, chunk 5: truncated"),
        "{}",
        bad.stdout
    );
    // A missing one too.
    std::fs::remove_file(cut.join(blocks_file(0))).unwrap();
    let bad = tandem(&["backup", "verify", s(&cut)]);
    assert!(
        bad.stdout
            .contains("point 0: DAMAGED: disk 0: its blocks file"),
        "{}",
        bad.stdout
    );
}

fn unix_nanos() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

#[test]
fn sigkill_during_disk_writes_and_backup_points_loses_no_earlier_point() {
    require_kvm();
    let sc = Scratch::new("kill");
    let image = image_path("kvstore");
    const KEYS: usize = 200_000;
    let input: String = (0..KEYS).map(|k| format!("put k{k} value-{k}\n")).collect();
    let mut restored_points = 0;
    for round in 0..20u64 {
        let img = sc.image(&format!("kv-{round}.img"), 16 << 20);
        let chain = sc.path(&format!("chain-{round}"));
        let mut child = Command::new(tandem_bin())
            .args(["run", "--timeout", "60s", "--disk", &disk_arg(&img)])
            .args(["--backup-dir", s(&chain), "--backup-every", "10ms"])
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start tandem");
        let mut stdin = child.stdin.take().unwrap();
        let data = input.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(data.as_bytes());
        });
        // When each acknowledgement arrived (the n-th "ok" is key n's).
        let stdout = child.stdout.take().unwrap();
        let acks = std::thread::spawn(move || {
            let mut at = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l == "ok" => at.push(unix_nanos()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            at
        });
        // From before the base point to deep into the writes and points.
        std::thread::sleep(Duration::from_millis(40 + (round * 37) % 400));
        let _ = child.kill();
        let _ = child.wait();
        let acks = acks.join().unwrap();
        let Ok(c) = Chain::open(&chain) else {
            // Killed before the base point was durable: nothing to lose.
            continue;
        };
        for r in c.verify() {
            assert!(
                r.problem.is_none(),
                "round {round}: point {}: {:?}",
                r.point,
                r.problem
            );
        }
        // Every point restores, with its disk.
        let mut last = None;
        for (&n, meta) in c.points() {
            let meta = meta.as_ref().unwrap();
            let out = sc.path(&format!("r{round}-p{n}"));
            c.restore(n, &out)
                .unwrap_or_else(|e| panic!("round {round}: point {n}: {e}"));
            let snap = Snapshot::load(&out).unwrap();
            assert_eq!(snap.state.disks.len(), 1);
            last = Some((n, out, meta.state.live.unix_nanos));
            restored_points += 1;
        }
        // The last point runs, with every key acknowledged before it.
        let (n, out, taken) = last.unwrap();
        let before = acks.iter().take_while(|&&t| t < taken).count();
        let mut vm = Session::start(&[
            "restore",
            "--timeout",
            "120s",
            s(&out),
            "--disk",
            &disk_arg(&sc.path(&format!("r{round}.img"))),
        ]);
        // The restored guest may be mid-line or mid-command: a newline ends
        // a partial line, and the answers to what it was doing come before
        // the probe's value (no other answer is "1").
        let probe = format!("probe-{round}");
        writeln!(vm.stdin.as_mut().unwrap(), "\nput {probe} 1\nget {probe}").unwrap();
        while vm.answer() != "1" {}
        if before > 0 {
            let k = before - 1;
            assert_eq!(
                vm.ask(&format!("get k{k}")),
                format!("value-{k}"),
                "round {round}: point {n}: key {k} was acknowledged before the point"
            );
        }
        assert_eq!(
            vm.ask(&format!("get k{}", KEYS - 1)),
            "missing",
            "round {round}"
        );
        let (code, err) = vm.finish();
        assert_eq!(code, Some(0), "round {round}: {err}");
        for p in c.points().keys() {
            let _ = std::fs::remove_dir_all(sc.path(&format!("r{round}-p{p}")));
        }
    }
    assert!(
        restored_points >= 20,
        "only {restored_points} points were taken over 20 rounds"
    );
}
