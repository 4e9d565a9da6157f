//! Working-set prefetch: `tandem restore --prefetch auto|data|record|lazy`
//! on a `counter` whose 16 MiB heap table is filled with a pattern before
//! `ready()`. Every mode must give back exactly the guest that was frozen
//! (the same output as a cold run, every table byte intact, guest memory
//! equal to the memory file page for page); `record` writes a working set
//! that later restores use; a damaged, hostile or stale working set is
//! ignored with a warning naming what is wrong (it only speeds restores
//! up: the memory file, which is checked, is what the guest gets).

use std::path::{Path, PathBuf};

use tandem::snapshot::WORKING_SET_FILE;
use tandem::{ConsoleSink, Prefetch, Snapshot, Vm, VmConfig};
use tandem_tests::{hypervisor, run_app, tandem, CliRun};
use vm_memory::{Bytes, GuestAddress};

/// 4096 pages of 4 KiB: 16 MiB of heap, eight dense 2 MiB regions.
const APP: &str = "ready exit-at=3 pages=4096 fill";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Boots the app to `ready()` and snapshots it there into `dir`.
fn snapshot_at_ready(dir: &Path) {
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            APP,
            "--snapshot-at-ready",
            s(dir),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

fn restore(dir: &Path, mode: &str) -> CliRun {
    let run = tandem(&[
        "restore",
        s(dir),
        "--timeout",
        "60s",
        "--prefetch",
        mode,
        "-v",
    ]);
    assert_eq!(run.code, Some(0), "--prefetch {mode}: {}", run.stderr);
    run
}

/// The final line without its generation.
fn final_state(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with("final count"))
        .unwrap_or_else(|| panic!("no final line in {out}"));
    line.split(" generation").next().unwrap_or("").to_string()
}

fn assert_same_guest(run: &CliRun, cold: &str, mode: &str) {
    assert!(
        run.stdout.contains("fill check: 4096 pages intact"),
        "--prefetch {mode}: {}",
        run.stdout
    );
    assert_eq!(final_state(&run.stdout), cold, "--prefetch {mode}");
}

/// How many pages the restore copied into huge pages, from its debug line.
fn copied_pages(run: &CliRun) -> u64 {
    run.stderr
        .lines()
        .filter(|l| l.contains("pages copied into huge pages"))
        .find_map(|l| l.split("restore: ").last())
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restore plan line in {}", run.stderr))
}

#[test]
fn every_prefetch_mode_gives_back_the_exact_guest() {
    let dir = scratch("prefetch-modes");
    let snap = dir.join("snap");
    let cold = run_app("counter", &["--cmdline", APP]);
    assert_eq!(cold.code, Some(0), "{}", cold.stderr);
    let cold = final_state(&cold.stdout);
    snapshot_at_ready(&snap);

    for mode in ["lazy", "data"] {
        assert_same_guest(&restore(&snap, mode), &cold, mode);
    }
    assert!(!snap.join(WORKING_SET_FILE).exists());
    // `data` copies the dense table regions; lazy copies nothing.
    assert!(copied_pages(&restore(&snap, "data")) >= 4096);
    assert_eq!(copied_pages(&restore(&snap, "lazy")), 0);

    let rec = restore(&snap, "record");
    assert_same_guest(&rec, &cold, "record");
    assert!(rec.stderr.contains("working set of"), "{}", rec.stderr);
    let loaded = Snapshot::load(&snap).unwrap();
    let ws = loaded
        .working_set()
        .expect("a valid working set")
        .expect("a working set");
    // The guest read every page of its table at exit.
    assert!(ws.pages.len() > 4096, "{} pages", ws.pages.len());

    let auto = restore(&snap, "auto");
    assert_same_guest(&auto, &cold, "auto");
    assert!(!auto.stderr.contains("WARNING"), "{}", auto.stderr);
    assert!(copied_pages(&auto) >= 4096, "{}", auto.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_memory_equals_the_memory_file_in_every_mode() {
    let dir = scratch("prefetch-memory");
    let snap = dir.join("snap");
    snapshot_at_ready(&snap);
    restore(&snap, "record");
    let snapshot = Snapshot::load(&snap).unwrap();
    assert!(snapshot.working_set().unwrap().is_some());
    let file = std::fs::read(snapshot.memory_path()).unwrap();
    let hv = hypervisor();
    for prefetch in [
        Prefetch::Lazy,
        Prefetch::Data,
        Prefetch::Auto,
        Prefetch::Record,
    ] {
        let config = VmConfig {
            prefetch,
            console: ConsoleSink::Discard,
            ..VmConfig::default()
        };
        let vm = Vm::restore(&hv, &snapshot, config).unwrap();
        let mut page = vec![0u8; 4096];
        // A restore rewrites the boot-info block for the new VM (its
        // generation and devices); every other page is the snapshot's.
        let boot_info = tandem_abi::layout::BOOT_INFO_ADDR / 4096
            ..(tandem_abi::layout::BOOT_INFO_ADDR + tandem_abi::layout::BOOT_INFO_MAX) / 4096;
        for (i, want) in file.chunks(4096).enumerate() {
            if boot_info.contains(&(i as u64)) {
                continue;
            }
            vm.memory()
                .read_slice(&mut page, GuestAddress(i as u64 * 4096))
                .unwrap();
            assert!(
                page == want,
                "{prefetch:?}: guest page {i} differs from the memory file"
            );
        }
        // Record mode must not write a working set for a VM that never ran.
        drop(vm);
    }
    let after = Snapshot::load(&snap).unwrap();
    assert!(after.working_set().unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Damages the working set with `damage`, restores with `auto`, and
/// checks the guest is exact and the warning names `says`.
fn damaged(snap: &Path, cold: &str, good: &[u8], damage: impl Fn(&mut Vec<u8>), says: &str) {
    let mut bytes = good.to_vec();
    damage(&mut bytes);
    std::fs::write(snap.join(WORKING_SET_FILE), &bytes).unwrap();
    let run = restore(snap, "auto");
    assert_same_guest(&run, cold, "auto");
    assert!(
        run.stderr.contains("WARNING: ignoring the working set") && run.stderr.contains(says),
        "expected a warning naming {says:?}: {}",
        run.stderr
    );
}

#[test]
fn a_damaged_or_hostile_working_set_is_ignored_with_a_warning() {
    let dir = scratch("prefetch-damaged");
    let snap = dir.join("snap");
    let cold = run_app("counter", &["--cmdline", APP]);
    let cold = final_state(&cold.stdout);
    snapshot_at_ready(&snap);
    restore(&snap, "record");
    let good = std::fs::read(snap.join(WORKING_SET_FILE)).unwrap();

    damaged(&snap, &cold, &good, |b| b[70] ^= 1, "checksum");
    damaged(&snap, &cold, &good, |b| b.truncate(40), "truncated");
    damaged(&snap, &cold, &good, |b| b[0] = b'X', "bad magic");
    damaged(
        &snap,
        &cold,
        &good,
        |b| b[12..16].copy_from_slice(&u32::MAX.to_le_bytes()),
        "more than the 262144 allowed",
    );
    damaged(
        &snap,
        &cold,
        &good,
        |b| b.resize(16 << 20, 0),
        "more than any working set",
    );
    // A list recorded for another snapshot (a valid file, checksum and
    // all, bound to another memory file) is stale.
    let other = dir.join("other");
    snapshot_at_ready(&other);
    restore(&other, "record");
    let stale = std::fs::read(other.join(WORKING_SET_FILE)).unwrap();
    damaged(&snap, &cold, &stale, |_| {}, "stale");
    // Pages outside memory and duplicates, correctly sealed.
    let snapshot = Snapshot::load(&snap).unwrap();
    let m = &snapshot.state.memory;
    let outside = tandem::snapshot::WorkingSet::encode(&[1, u32::MAX], m.size, &m.digest);
    damaged(&snap, &cold, &outside, |_| {}, "outside the 16384 pages");
    let twice = tandem::snapshot::WorkingSet::encode(&[7, 8, 7], m.size, &m.digest);
    damaged(&snap, &cold, &twice, |_| {}, "listed twice");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_snapshot_drops_the_old_working_set() {
    let dir = scratch("prefetch-new");
    let snap = dir.join("snap");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "ready snapshot-at=2 exit-at=3",
            "--snapshot-at-ready",
            s(&snap),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    restore(&snap, "record");
    assert!(snap.join(WORKING_SET_FILE).exists());
    // Restored, the guest asks for a snapshot at step 2 into the same directory.
    let again = tandem(&[
        "restore",
        s(&snap),
        "--timeout",
        "60s",
        "--snapshot-dir",
        s(&snap),
    ]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again.stdout.contains("snapshot at 2: taken"),
        "{}",
        again.stdout
    );
    assert!(
        !snap.join(WORKING_SET_FILE).exists(),
        "the working set of the old memory file is left behind"
    );
    let r = tandem(&["restore", s(&snap), "--timeout", "60s"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("final count 3"), "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
