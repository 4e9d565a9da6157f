//! In-process snapshot benchmark, run by `cargo xtask bench snapshot`.
//!
//! `snapbench --counter IMAGE --dir SCRATCH [--runs N]` prints one JSON
//! object: cold boot of the counter app next to restore (setup, and to the
//! guest's exit) for 64 MiB and 1 GiB guests, snapshot time by memory size
//! and by dirty pages, clones per second, and backup point cost by dirty
//! pages. Snapshots are written under SCRATCH and left there for the
//! whole-process measurements xtask makes next.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem::{
    BackupConfig, ConsoleSink, ExitStatus, Hypervisor, Image, Snapshot, Vm, VmBuilder, VmConfig,
};
use tandem_abi::stats::quantile;

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(&v, q).expect("at least one sample");
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({"median": r(at(0.5)), "p10": r(at(0.1)), "p90": r(at(0.9)), "min": r(v[0]), "n": v.len()})
}

fn config(mem: u64, cmdline: &str) -> VmConfig {
    VmConfig {
        mem_size: mem,
        cmdline: cmdline.into(),
        console: ConsoleSink::Discard,
        timeout: Some(Duration::from_secs(60)),
        ..VmConfig::default()
    }
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// Boots the counter to `ready()`, snapshots it there into `dir` and stops.
fn make_snapshot(hv: &Hypervisor, image: &Image, mem: u64, dir: &Path) -> f64 {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = config(mem, "ready exit-at=1");
    c.snapshot_at_ready = Some(dir.to_path_buf());
    c.exit_after_snapshot = true;
    let report = VmBuilder::new(hv, image).config(c).run().expect("boot");
    assert!(
        matches!(report.status, ExitStatus::Snapshotted(_)),
        "{:?}",
        report.status
    );
    let stats = report.snapshots[0].result.as_ref().expect("snapshot");
    stats.elapsed.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let counter = PathBuf::from(arg("--counter").expect("--counter IMAGE"));
    let scratch = PathBuf::from(arg("--dir").expect("--dir SCRATCH"));
    let runs: usize = arg("--runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
        .max(1);
    let hv = Hypervisor::open().expect("open /dev/kvm");
    let image = Image::from_file(&counter).expect("counter image");

    let mut by_mem = serde_json::Map::new();
    for (name, mem) in [("64M", 64u64 << 20), ("1G", 1u64 << 30)] {
        let dir = scratch.join(format!("ready-{name}"));
        let snap_ms = make_snapshot(&hv, &image, mem, &dir);
        let snap = Snapshot::load(&dir).expect("load");
        let (mut cold, mut setup, mut to_exit) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let r = VmBuilder::new(&hv, &image)
                .config(config(mem, "ready exit-at=1"))
                .run()
                .expect("cold boot");
            assert_eq!(r.status, ExitStatus::Exited(0));
            cold.push(us(t));

            let t = Instant::now();
            let vm = Vm::restore(&hv, &snap, config(mem, "")).expect("restore");
            setup.push(us(t));
            let r = vm.run().expect("run");
            assert_eq!(r.status, ExitStatus::Exited(0));
            to_exit.push(us(t));
        }
        by_mem.insert(
            name.into(),
            json!({
                "snapshot_at_ready_ms": (snap_ms * 100.0).round() / 100.0,
                "snapshot_data_pages": snap.state.memory.data_pages,
                "cold_boot_to_exit_us": summary(cold),
                "restore_setup_us": summary(setup),
                "restore_to_exit_us": summary(to_exit),
            }),
        );
    }

    // Clones per second: restore and run to exit, one after another.
    let snap = Snapshot::load(&scratch.join("ready-64M")).expect("load");
    let n = runs * 5;
    let t = Instant::now();
    for _ in 0..n {
        let r = Vm::restore(&hv, &snap, config(64 << 20, ""))
            .expect("restore")
            .run()
            .expect("run");
        assert_eq!(r.status, ExitStatus::Exited(0));
    }
    let clones_per_s = n as f64 / t.elapsed().as_secs_f64();

    // Snapshot and backup point cost by dirty pages (256 MiB guest).
    let mut by_dirty = Vec::new();
    for pages in [16u64, 1024, 16384] {
        let dir = scratch.join(format!("dirty-{pages}"));
        let chain = scratch.join(format!("chain-{pages}"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&chain);
        let mut c = config(
            256 << 20,
            &format!("pages={pages} snapshot-at={pages} exit-at={pages}"),
        );
        c.snapshot_dir = Some(dir.clone());
        c.backup = Some(BackupConfig {
            dir: chain,
            every: Duration::from_secs(3600),
        });
        let report = VmBuilder::new(&hv, &image).config(c).run().expect("run");
        assert_eq!(report.status, ExitStatus::Exited(0));
        let s = report.snapshots[0].result.as_ref().expect("snapshot");
        let b = report.backups.get(1).expect("backup point at the snapshot");
        by_dirty.push(json!({
            "dirtied_pages": pages,
            "snapshot_ms": (s.elapsed.as_secs_f64() * 1e5).round() / 100.0,
            "snapshot_pages_written": s.pages_written,
            "backup_ms": (b.elapsed.as_secs_f64() * 1e5).round() / 100.0,
            "backup_pages": b.pages,
            "backup_dirty_logged": b.dirty_pages,
        }));
    }
    println!(
        "{}",
        json!({
            "by_memory": by_mem,
            "clones_per_s": (clones_per_s * 10.0).round() / 10.0,
            "by_dirty_pages": by_dirty,
            "runs": runs,
        })
    );
}
