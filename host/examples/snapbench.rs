//! In-process snapshot benchmark, run by `cargo xtask bench snapshot`.
//!
//! `snapbench --counter IMAGE --dir SCRATCH [--runs N]` prints one JSON
//! object: cold boot of the counter app next to restore (setup, and to the
//! guest's exit) for 64 MiB and 1 GiB guests, snapshot time by memory size
//! and by dirty pages, clones per second, and backup point cost by dirty
//! pages; restore with the recorded working set (`Prefetch::Auto`) and
//! lazily; a warm pool's take and take to exit; clones per second restored
//! and from a pool. Snapshots are written under SCRATCH and left there for the
//! whole-process measurements xtask makes next.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem::pool::Pool;
use tandem::trace::BootTrace;
use tandem::{
    BackupConfig, ConsoleSink, ExitStatus, Hypervisor, Image, Prefetch, Snapshot, Vm, VmBuilder,
    VmConfig,
};
use tandem_abi::stats::quantile;
use tandem_abi::trace::Phase;

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

fn with_prefetch(mem: u64, prefetch: Prefetch) -> VmConfig {
    VmConfig {
        prefetch,
        ..config(mem, "")
    }
}

/// Restore setup split by phase: VM created, memory mapped (plan carried
/// out and the slot registered), vCPU ready (created, registers set).
#[derive(Default)]
struct Phases {
    vm: Vec<f64>,
    memory: Vec<f64>,
    vcpu: Vec<f64>,
}

impl Phases {
    fn add(&mut self, t: &BootTrace) {
        let d = |a, b| t.between(a, b).unwrap_or(f64::NAN);
        self.vm.push(d(Phase::VmmStart, Phase::VmCreated));
        self.memory.push(d(Phase::VmCreated, Phase::MemoryMapped));
        self.vcpu.push(d(Phase::MemoryMapped, Phase::VcpuReady));
    }
    fn json(self) -> Value {
        json!({"vm_created": summary(self.vm), "memory_mapped": summary(self.memory), "vcpu_ready": summary(self.vcpu)})
    }
}

/// Restore setup and to-exit times of one restore mode.
#[derive(Default)]
struct Series {
    setup: Vec<f64>,
    to_exit: Vec<f64>,
    phases: Phases,
}

impl Series {
    fn add(&mut self, (setup, to_exit, trace): (f64, f64, BootTrace)) {
        self.setup.push(setup);
        self.to_exit.push(to_exit);
        self.phases.add(&trace);
    }
}

/// Restores `snap` with `prefetch` and runs it to exit: setup time, time
/// to exit, and the run's trace.
fn restore_once(
    hv: &Hypervisor,
    snap: &Snapshot,
    mem: u64,
    prefetch: Prefetch,
) -> (f64, f64, BootTrace) {
    restore_checked(hv, snap, with_prefetch(mem, prefetch), Check::None)
}

/// How a restore checks the memory file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    /// `--verify`: the whole file first (counted in the setup).
    Full,
    /// `--verify lazy`: each chunk on first touch.
    Lazy,
}

fn restore_checked(
    hv: &Hypervisor,
    snap: &Snapshot,
    config: VmConfig,
    check: Check,
) -> (f64, f64, BootTrace) {
    let t = Instant::now();
    if check == Check::Full {
        snap.verify_memory().expect("memory file matches");
    }
    let config = VmConfig {
        verify_lazily: check == Check::Lazy,
        ..config
    };
    let vm = Vm::restore(hv, snap, config).expect("restore");
    let setup = us(t);
    let r = vm.run().expect("run");
    assert_eq!(r.status, ExitStatus::Exited(0));
    (setup, us(t), r.trace)
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// Boots the counter to `ready()`, snapshots it there into `dir` and stops.
fn make_snapshot(hv: &Hypervisor, image: &Image, mem: u64, dir: &Path) -> f64 {
    make_snapshot_of(hv, image, mem, dir, "ready exit-at=1")
}

/// Boots the counter with `cmdline` to `ready()`, snapshots it there into
/// `dir` and stops; the snapshot's time in ms.
fn make_snapshot_of(hv: &Hypervisor, image: &Image, mem: u64, dir: &Path, cmdline: &str) -> f64 {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = config(mem, cmdline);
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

/// The counter with a 16 MiB table filled before `ready()` and read
/// whole at exit: cold boot, and restore to exit lazily, with the memory
/// file's data and with the recorded working set, round by round.
fn heap_app(hv: &Hypervisor, image: &Image, mem: u64, scratch: &Path, runs: usize) -> Value {
    const APP: &str = "ready exit-at=1 pages=4096 fill";
    let dir = scratch.join(format!("heap-{}", mem >> 20));
    make_snapshot_of(hv, image, mem, &dir, APP);
    let snap = Snapshot::load(&dir).expect("load");
    restore_once(hv, &snap, mem, Prefetch::Record);
    let mut cold = Vec::new();
    let (mut lazy, mut data, mut ws) = (Series::default(), Series::default(), Series::default());
    for _ in 0..runs {
        let t = Instant::now();
        let r = VmBuilder::new(hv, image)
            .config(config(mem, APP))
            .run()
            .expect("cold boot");
        assert_eq!(r.status, ExitStatus::Exited(0));
        cold.push(us(t));
        lazy.add(restore_once(hv, &snap, mem, Prefetch::Lazy));
        data.add(restore_once(hv, &snap, mem, Prefetch::Data));
        ws.add(restore_once(hv, &snap, mem, Prefetch::Auto));
    }
    json!({
        "cold_boot_to_exit_us": summary(cold),
        "lazy_restore_to_exit_us": summary(lazy.to_exit),
        "data_restore_to_exit_us": summary(data.to_exit),
        "data_restore_setup_us": summary(data.setup),
        "prefetch_restore_to_exit_us": summary(ws.to_exit),
        "prefetch_restore_setup_us": summary(ws.setup),
    })
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
        // Record the working set once (a restore that faults nothing in
        // and lists what the guest touched), then measure round by round:
        // each round boots cold, restores with the memory file's data,
        // lazily and with the working set, and takes from a warm pool, so
        // machine noise hits every variant alike.
        restore_once(&hv, &snap, mem, Prefetch::Record);
        let ws_pages = snap
            .working_set()
            .expect("working set")
            .map_or(0, |w| w.pages.len());
        let pool = Pool::new(snap.clone(), 2, with_prefetch(mem, Prefetch::Auto)).expect("pool");
        let mut cold = Vec::new();
        let mut data = Series::default();
        let mut lazy = Series::default();
        let mut ws = Series::default();
        let (mut full, mut checked, mut checked_lazy) =
            (Series::default(), Series::default(), Series::default());
        let (mut take, mut pooled_exit) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let r = VmBuilder::new(&hv, &image)
                .config(config(mem, "ready exit-at=1"))
                .run()
                .expect("cold boot");
            assert_eq!(r.status, ExitStatus::Exited(0));
            cold.push(us(t));
            data.add(restore_once(&hv, &snap, mem, Prefetch::Data));
            lazy.add(restore_once(&hv, &snap, mem, Prefetch::Lazy));
            ws.add(restore_once(&hv, &snap, mem, Prefetch::Auto));
            let auto = || with_prefetch(mem, Prefetch::Auto);
            full.add(restore_checked(&hv, &snap, auto(), Check::Full));
            checked.add(restore_checked(&hv, &snap, auto(), Check::Lazy));
            checked_lazy.add(restore_checked(
                &hv,
                &snap,
                with_prefetch(mem, Prefetch::Lazy),
                Check::Lazy,
            ));
            assert!(pool.wait_full(Duration::from_secs(30)), "pool refills");
            let t = Instant::now();
            let vm = pool.take(None).expect("take");
            take.push(us(t));
            let r = vm.run().expect("run");
            assert_eq!(r.status, ExitStatus::Exited(0));
            pooled_exit.push(us(t));
        }
        drop(pool);
        let heap = heap_app(&hv, &image, mem, &scratch, runs);
        by_mem.insert(
            name.into(),
            json!({
                "snapshot_at_ready_ms": (snap_ms * 100.0).round() / 100.0,
                "snapshot_data_pages": snap.state.memory.data_pages,
                "working_set_pages": ws_pages,
                "cold_boot_to_exit_us": summary(cold),
                "restore_setup_us": summary(data.setup),
                "restore_to_exit_us": summary(data.to_exit),
                "restore_phases_us": data.phases.json(),
                "lazy_restore_setup_us": summary(lazy.setup),
                "lazy_restore_to_exit_us": summary(lazy.to_exit),
                "prefetch_restore_setup_us": summary(ws.setup),
                "prefetch_restore_to_exit_us": summary(ws.to_exit),
                "prefetch_restore_phases_us": ws.phases.json(),
                "verify_full_restore_setup_us": summary(full.setup),
                "verify_full_restore_to_exit_us": summary(full.to_exit),
                "verify_lazy_restore_setup_us": summary(checked.setup),
                "verify_lazy_restore_to_exit_us": summary(checked.to_exit),
                "verify_lazy_restore_phases_us": checked.phases.json(),
                "verify_lazy_nothing_prefetched_setup_us": summary(checked_lazy.setup),
                "verify_lazy_nothing_prefetched_to_exit_us": summary(checked_lazy.to_exit),
                "pool_take_us": summary(take),
                "pool_take_to_exit_us": summary(pooled_exit),
                "heap_16m": heap,
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
    // The same from a pool of 4, refilled by its own thread meanwhile.
    let pool = Pool::new(snap.clone(), 4, config(64 << 20, "")).expect("pool");
    let t = Instant::now();
    for _ in 0..n {
        let r = pool.take(None).expect("take").run().expect("run");
        assert_eq!(r.status, ExitStatus::Exited(0));
    }
    let pooled_clones_per_s = n as f64 / t.elapsed().as_secs_f64();
    let pool_misses = pool.stats().misses;
    drop(pool);

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
            // The stop-the-world cost, as before pre-copy.
            mode: tandem::backup::BackupMode::Stop,
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
            "pooled_clones_per_s": (pooled_clones_per_s * 10.0).round() / 10.0,
            "pooled_clones_misses": pool_misses,
            "by_dirty_pages": by_dirty,
            "runs": runs,
        })
    );
}
