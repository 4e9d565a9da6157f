//! `cargo xtask bench snapshot`: what snapshots, restores, clones and
//! backups cost, next to a cold boot of the same app (`counter`).
//! Whole process: `tandem restore --prefetch data` and `--prefetch auto`
//! (with the working set snapbench recorded) against `tandem run`.
//!
//! In process (`examples/snapbench`): cold boot to exit, restore setup (by
//! phase) and restore to exit for 64 MiB and 1 GiB guests with the memory
//! file's data prefetched, lazily and with the recorded working set, a
//! warm pool's take and take to exit (all interleaved round by round), snapshot time by memory
//! size and by dirty pages, clones per second, backup point cost by dirty
//! pages. Whole process: `tandem restore DIR` against `tandem run` of the
//! same app to the same point, alternated run by run so machine noise hits
//! both alike. Prints a table and writes JSON (default
//! `target/bench/snapshot.json`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::project::{self, Profile, Project};
use crate::stats::Summary;
use crate::table::Table;
use crate::{guest, host};

/// Options of `cargo xtask bench snapshot`.
pub struct Options {
    /// Runs per measurement.
    pub runs: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
}

/// Parses `--runs N` and `--json FILE`.
pub fn parse(args: &[String]) -> Result<Options> {
    let c = crate::bench_args::parse(args, "snapshot", 30, 3, |_, _| Ok(false))?;
    Ok(Options {
        runs: c.runs,
        json: c.json,
    })
}

fn wall_ms(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot start tandem")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    project::check(status, "tandem")?;
    Ok(ms)
}

fn get(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Runs `examples/snapbench` (built by `host::build(.., true)`): its JSON,
/// and under `scratch` the `ready-64M` and `ready-1G` snapshots of the
/// counter app at `ready()`, each with its recorded working set.
pub fn snapbench(project: &Project, counter: &Path, scratch: &Path, runs: usize) -> Result<Value> {
    let out = Command::new(project.host_example(Profile::Release, "snapbench"))
        .arg("--counter")
        .arg(counter)
        .arg("--dir")
        .arg(scratch)
        .arg("--runs")
        .arg(runs.to_string())
        .output()
        .context("cannot run examples/snapbench")?;
    project::check(out.status, "examples/snapbench")?;
    serde_json::from_slice(&out.stdout).context("examples/snapbench did not print JSON")
}

/// Runs the benchmark.
pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, true)?;
    let counter = guest::image(project, "counter")?;
    let tandem = project.host_bin(Profile::Release);
    let scratch = project.target_dir().join("bench/snapshot-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;

    let inproc = snapbench(project, &counter, &scratch, opts.runs)?;

    // Whole process: restore the ready snapshot vs boot to the same point.
    let mut whole = serde_json::Map::new();
    for (name, mem) in [("64M", "64M"), ("1G", "1G")] {
        let snap = scratch.join(format!("ready-{name}"));
        let (mut boot, mut restore, mut prefetch) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            boot.push(wall_ms(
                Command::new(&tandem).arg("run").arg(&counter).args([
                    "--mem",
                    mem,
                    "--cmdline",
                    "ready exit-at=1",
                    "-q",
                ]),
            )?);
            restore.push(wall_ms(
                Command::new(&tandem)
                    .arg("restore")
                    .arg(&snap)
                    .args(["--prefetch", "data", "-q"]),
            )?);
            // snapbench recorded the snapshot's working set.
            prefetch.push(wall_ms(
                Command::new(&tandem)
                    .arg("restore")
                    .arg(&snap)
                    .args(["--prefetch", "auto", "-q"]),
            )?);
        }
        let summary = |v: &[f64]| Summary::of(v).context("no samples");
        whole.insert(
            name.into(),
            json!({
                "cold_boot_ms": summary(&boot)?.to_json(),
                "restore_ms": summary(&restore)?.to_json(),
                "prefetch_restore_ms": summary(&prefetch)?.to_json(),
            }),
        );
    }
    let whole = Value::Object(whole);

    let mut t = Table::new(["snapshot benchmark (counter app)", "64 MiB", "1 GiB"]);
    let both = |f: &dyn Fn(&str) -> f64, unit: &str| -> [String; 2] {
        ["64M", "1G"].map(|m| format!("{:.1} {unit}", f(m)))
    };
    let row = |t: &mut Table<3>, label: &str, cells: [String; 2]| {
        let [a, b] = cells;
        t.row([label.to_string(), a, b]);
    };
    let inproc_rows: [(&str, &[&str]); 22] = [
        ("in process: cold boot to exit", &["cold_boot_to_exit_us"]),
        ("in process: restore setup (data)", &["restore_setup_us"]),
        (
            "  of which VM created",
            &["restore_phases_us", "vm_created"],
        ),
        (
            "  of which memory mapped",
            &["restore_phases_us", "memory_mapped"],
        ),
        (
            "  of which vCPU ready",
            &["restore_phases_us", "vcpu_ready"],
        ),
        (
            "in process: restore to exit (data)",
            &["restore_to_exit_us"],
        ),
        (
            "in process: restore to exit (lazy)",
            &["lazy_restore_to_exit_us"],
        ),
        (
            "in process: restore setup (working set)",
            &["prefetch_restore_setup_us"],
        ),
        (
            "in process: restore to exit (working set)",
            &["prefetch_restore_to_exit_us"],
        ),
        (
            "in process: restore setup (--verify full, working set)",
            &["verify_full_restore_setup_us"],
        ),
        (
            "in process: restore to exit (--verify full, working set)",
            &["verify_full_restore_to_exit_us"],
        ),
        (
            "in process: restore setup (--verify lazy, working set)",
            &["verify_lazy_restore_setup_us"],
        ),
        (
            "in process: restore to exit (--verify lazy, working set)",
            &["verify_lazy_restore_to_exit_us"],
        ),
        (
            "in process: restore setup (--verify lazy, nothing prefetched)",
            &["verify_lazy_nothing_prefetched_setup_us"],
        ),
        (
            "in process: restore to exit (--verify lazy, nothing prefetched)",
            &["verify_lazy_nothing_prefetched_to_exit_us"],
        ),
        ("in process: pooled take", &["pool_take_us"]),
        ("in process: pooled take to exit", &["pool_take_to_exit_us"]),
        (
            "16 MiB heap app: cold boot to exit",
            &["heap_16m", "cold_boot_to_exit_us"],
        ),
        (
            "16 MiB heap app: restore to exit (lazy)",
            &["heap_16m", "lazy_restore_to_exit_us"],
        ),
        (
            "16 MiB heap app: restore to exit (data)",
            &["heap_16m", "data_restore_to_exit_us"],
        ),
        (
            "16 MiB heap app: restore setup (working set)",
            &["heap_16m", "prefetch_restore_setup_us"],
        ),
        (
            "16 MiB heap app: restore to exit (working set)",
            &["heap_16m", "prefetch_restore_to_exit_us"],
        ),
    ];
    for (label, path) in inproc_rows {
        let cells = both(
            &|m| {
                let mut p = vec!["by_memory", m];
                p.extend_from_slice(path);
                p.push("median");
                get(&inproc, &p)
            },
            "us",
        );
        row(&mut t, &format!("{label} (median)"), cells);
    }
    for (label, key) in [
        ("whole process: cold boot", "cold_boot_ms"),
        ("whole process: restore (data)", "restore_ms"),
        (
            "whole process: restore (working set)",
            "prefetch_restore_ms",
        ),
    ] {
        let cells = both(&|m| get(&whole, &[m, key, "median"]), "ms");
        row(&mut t, &format!("{label} (median)"), cells);
    }
    row(
        &mut t,
        "working-set pages recorded",
        both(
            &|m| get(&inproc, &["by_memory", m, "working_set_pages"]),
            "",
        ),
    );
    row(
        &mut t,
        "snapshot at ready",
        both(
            &|m| get(&inproc, &["by_memory", m, "snapshot_at_ready_ms"]),
            "ms",
        ),
    );
    t.print();
    println!(
        "clones per second (in process, 64 MiB, run to exit one after another): restored {}, from a pool of 4 (refilled by its own thread) {} ({} takes found it empty)",
        get(&inproc, &["clones_per_s"]),
        get(&inproc, &["pooled_clones_per_s"]),
        get(&inproc, &["pooled_clones_misses"])
    );
    let mut d = Table::new([
        "dirtied pages (256 MiB guest)",
        "snapshot",
        "backup point",
        "backup pages",
    ]);
    for e in inproc["by_dirty_pages"].as_array().into_iter().flatten() {
        d.row([
            format!("{}", e["dirtied_pages"]),
            format!("{:.2} ms", e["snapshot_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.2} ms", e["backup_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{}", e["backup_pages"]),
        ]);
    }
    d.print();

    let report = json!({"in_process": inproc, "whole_process": whole, "runs": opts.runs});
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench/snapshot.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("JSON: {}", project.show(&path));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
