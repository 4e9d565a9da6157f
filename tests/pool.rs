//! Warm pools (`tandem::pool::Pool`, `tandem restore --pool N`): a VM
//! taken from a pool behaves exactly like a cold-booted one from the same
//! point (same output, every table byte intact) with a generation of its
//! own; the pool's VMs share no memory; the pool refills in the background;
//! configurations a pool cannot give are refused by name.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::pool::{Pool, PoolError};
use tandem::{BackupConfig, ConsoleSink, ExitStatus, Prefetch, Snapshot, VmConfig};
use tandem_tests::{run_app, tandem};

const APP: &str = "ready exit-at=5 pages=600 fill";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A snapshot of the app at `ready()`, and the final line of a cold run of it.
fn setup(name: &str) -> (PathBuf, Snapshot, String) {
    let dir = scratch(name);
    let snap = dir.join("snap");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            APP,
            "--snapshot-at-ready",
            s(&snap),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let cold = run_app("counter", &["--cmdline", APP]);
    assert_eq!(cold.code, Some(0), "{}", cold.stderr);
    (
        dir,
        Snapshot::load(&snap).unwrap(),
        final_state(&cold.stdout),
    )
}

fn final_state(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with("final count"))
        .unwrap_or_else(|| panic!("no final line in {out}"));
    line.split(" generation").next().unwrap_or("").to_string()
}

fn quiet() -> VmConfig {
    VmConfig {
        console: ConsoleSink::Discard,
        timeout: Some(Duration::from_secs(60)),
        ..VmConfig::default()
    }
}

/// Runs a VM taken from `pool` with its own console; (output, generation).
fn run_taken(pool: &Pool) -> (String, u64) {
    let console = Arc::new(Mutex::new(Vec::new()));
    let vm = pool
        .take(Some(VmConfig {
            console: ConsoleSink::Capture(console.clone()),
            ..quiet()
        }))
        .unwrap();
    let generation = vm.generation();
    let report = vm.run().unwrap();
    let out = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    assert_eq!(report.status, ExitStatus::Exited(0), "{out}");
    (out, generation)
}

#[test]
fn pooled_vms_behave_like_cold_boots_with_distinct_generations() {
    let (dir, snap, cold) = setup("pool-same");
    let pool = Pool::new(snap.clone(), 3, quiet()).unwrap();
    assert_eq!(pool.stats().ready, 3);
    let mut generations = vec![snap.state.live.generation];
    // Twice the pool's size: the later VMs come from the refill thread
    // (or are restored on the spot when it falls behind). They run one
    // after another: had two of them shared a page, the later would see
    // the earlier's writes and its table would differ.
    for _ in 0..6 {
        let (out, generation) = run_taken(&pool);
        assert!(out.contains("fill check: 600 pages intact"), "{out}");
        assert_eq!(final_state(&out), cold);
        assert!(
            out.contains(&format!("generation {generation}")),
            "the guest sees its VM's generation: {out}"
        );
        assert_ne!(generation, 0);
        generations.push(generation);
    }
    let mut distinct = generations.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        generations.len(),
        "generations repeat: {generations:?}"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pooled_vms_run_side_by_side_independently() {
    let (dir, snap, cold) = setup("pool-parallel");
    let pool = Pool::new(snap, 2, quiet()).unwrap();
    let outs: Vec<(String, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| run_taken(&pool))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(outs[0].1, outs[1].1);
    for (out, _) in &outs {
        assert_eq!(final_state(out), cold, "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pool_refills_in_the_background_and_counts_its_memory() {
    let (dir, snap, _) = setup("pool-refill");
    let mem = snap.state.machine.mem_size;
    let pool = Pool::new(snap, 2, quiet()).unwrap();
    assert_eq!(pool.memory(), 2 * mem);
    let (a, b) = (pool.take(None).unwrap(), pool.take(None).unwrap());
    assert_eq!(pool.stats().misses, 0);
    assert!(
        pool.wait_full(Duration::from_secs(60)),
        "the pool did not refill: {:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().ready, 2);
    assert_eq!(a.run().unwrap().status, ExitStatus::Exited(0));
    assert_eq!(b.run().unwrap().status, ExitStatus::Exited(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pool_refuses_what_it_cannot_give_by_name() {
    let (dir, snap, _) = setup("pool-refuse");
    let backup = VmConfig {
        backup: Some(BackupConfig {
            dir: dir.join("chain"),
            every: Duration::from_secs(1),
            mode: tandem::backup::BackupMode::Stop,
        }),
        ..quiet()
    };
    let e = Pool::new(snap.clone(), 1, backup.clone()).err().unwrap();
    assert!(matches!(e, PoolError::Config(_)));
    assert!(e.to_string().contains("backups"), "{e}");
    let record = VmConfig {
        prefetch: Prefetch::Record,
        ..quiet()
    };
    let e = Pool::new(snap.clone(), 1, record).err().unwrap();
    assert!(e.to_string().contains("record"), "{e}");
    let pool = Pool::new(snap, 1, quiet()).unwrap();
    let e = pool.take(Some(backup)).err().unwrap();
    assert!(e.to_string().contains("backups"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restore_clones_from_a_pool_on_the_command_line() {
    let (dir, snap, cold) = setup("pool-cli");
    let run = tandem(&[
        "restore",
        s(&snap.dir),
        "--clones",
        "4",
        "--pool",
        "2",
        "--timeout",
        "60s",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut generations = Vec::new();
    for i in 0..4 {
        let prefix = format!("[clone {i}] ");
        let mine: String = run
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(final_state(&mine), cold, "clone {i}: {}", run.stdout);
        generations.push(
            mine.lines()
                .find_map(|l| l.strip_prefix("final count"))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
                .unwrap(),
        );
    }
    generations.sort();
    generations.dedup();
    assert_eq!(generations.len(), 4, "{}", run.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fleet_keeps_warm_vms_within_its_memory_budget() {
    let dir = scratch("pool-fleet");
    // A service snapshotted at ready() that crashes 10 ms after it.
    let snap = dir.join("snap");
    let made = tandem(&[
        "run",
        s(&tandem_tests::image_path("service")),
        "--mem",
        "8M",
        "--cmdline",
        "crash-after-ms=10",
        "--snapshot-at-ready",
        s(&snap),
        "--exit-after-snapshot",
        "-q",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    // Two replicas share a pool of two (16 MiB held for the whole run) in
    // a 32 MiB budget: at most two VMs run at once.
    let fleet = dir.join("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            "[fleet]\nmemory_budget = \"32M\"\n[[vm]]\nname = \"web\"\ncount = 2\nimage = \"{}\"\nmemory = \"8M\"\nsnapshot = \"{}\"\nwarm = 2\nrestart = \"on-failure\"\nmax_restarts = 2\nbackoff = \"5ms\"\n",
            tandem_tests::image_path("service").display(),
            snap.display()
        ),
    )
    .unwrap();
    let json = dir.join("report.json");
    let run = tandem(&[
        "fleet",
        s(&fleet),
        "--json",
        s(&json),
        "-q",
        "--stop-after",
        "5s",
    ]);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("no report ({e}): {}", run.stderr)),
    )
    .unwrap();
    for vm in report["vms"].as_array().unwrap() {
        let attempts = vm["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "{vm}");
        // Every start (restarts too) took a VM from the warm pool.
        assert!(attempts.iter().all(|a| a["source"] == "pool"), "{vm}");
        // Each attempt is the snapshot's service, which crashes as it did.
        assert!(attempts.iter().all(|a| a["exit_code"] == 101), "{vm}");
    }
    let timeline = report["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().all(|t| {
            let m = t["memory"].as_u64().unwrap();
            (16 << 20..=32 << 20).contains(&m)
        }),
        "pool memory is counted and the budget holds: {timeline:?}"
    );
    // warm without a snapshot is refused by name before anything starts.
    std::fs::write(
        &fleet,
        format!(
            "[[vm]]\nname = \"web\"\nimage = \"{}\"\nwarm = 1\n",
            tandem_tests::image_path("service").display()
        ),
    )
    .unwrap();
    let bad = tandem(&["fleet", s(&fleet)]);
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr
            .contains("`warm` keeps VMs restored ahead from a `snapshot`"),
        "{}",
        bad.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
