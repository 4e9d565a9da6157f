//! `cargo xtask bench backup-pause` (also run by `bench backup`, after
//! the disk figures): what a backup point costs the guest, by
//! dirty pages (16, 1024 and 16,384 dirtied over and over by the
//! `dirtier` app in a 256 MiB guest), with pre-copy (`--backup-mode
//! precopy`) and the old stop-the-world path (`stop`) side by side, runs
//! of the two interleaved.
//!
//! Per point: the guest's pause as the host saw it (vCPU stopped to
//! resumed, `pause_us` of `tandem run --json`), and as the guest saw it
//! (the gap in its own TSC-stamped loop that holds the host's stop
//! instant; the guest TSC is the host's), p50 and p99 over all points of
//! all runs; the pages per point; backup throughput (bytes of a point's
//! pages over the time to write and fsync them). Prints a table and writes
//! JSON (default `target/bench/backup.json`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tandem_abi::stats::quantile;

use crate::project::{self, Profile, Project};
use crate::stats::round3;
use crate::table::Table;
use crate::{guest, host};

const APP: &str = "dirtier";
/// The dirty-set sizes of the figures.
const SIZES: [u64; 3] = [16, 1024, 16_384];
/// Gaps shorter than this are not recorded by the guest (a point's pause
/// plus the kick's exit is longer than that on these hosts).
const GAP_US: u64 = 50;
const PAGE_BYTES: f64 = 4096.0;

/// Options of `cargo xtask bench backup-pause`.
pub struct Options {
    /// Runs (processes) per size and mode.
    pub runs: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
    /// The modes measured.
    pub modes: Vec<&'static str>,
}

/// Parses `--runs N`, `--json FILE`, `--backup-mode stop|precopy|both`.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut modes = vec!["precopy", "stop"];
    let c = crate::bench_args::parse(args, "backup-pause", 3, 1, |flag, it| {
        if flag != "--backup-mode" {
            return Ok(false);
        }
        modes = match crate::bench_args::value(flag, it)? {
            "precopy" => vec!["precopy"],
            "stop" => vec!["stop"],
            "both" => vec!["precopy", "stop"],
            other => bail!("--backup-mode takes stop, precopy or both, not `{other}`"),
        };
        Ok(true)
    })?;
    Ok(Options {
        runs: c.runs,
        json: c.json,
        modes,
    })
}

/// How often points are taken and how long a run lasts for `pages`:
/// long enough between points for the guest to dirty its whole set
/// (each first write after a harvest costs it a fault).
fn schedule(pages: u64) -> (&'static str, u64) {
    if pages >= 8192 {
        ("500ms", 8000)
    } else {
        ("50ms", 3000)
    }
}

/// One point's figures.
struct Point {
    dirty: f64,
    pages: f64,
    host_us: f64,
    guest_us: Option<f64>,
    write_ms: f64,
}

/// Runs the dirtier once; its points after the base.
fn run_once(
    project: &Project,
    image: &std::path::Path,
    scratch: &std::path::Path,
    pages: u64,
    mode: &str,
) -> Result<Vec<Point>> {
    let chain = scratch.join(format!("chain-{pages}-{mode}"));
    let _ = std::fs::remove_dir_all(&chain);
    let (every, run_ms) = schedule(pages);
    let out = Command::new(project.host_bin(Profile::Release))
        .arg("run")
        .arg(image)
        .args(["--mem", "256M", "--cmdline"])
        .arg(format!(
            "pages={pages} every-us=1 run-ms={run_ms} gap-us={GAP_US}"
        ))
        .arg("--backup-dir")
        .arg(&chain)
        .args(["--backup-every", every, "--backup-mode", mode])
        .args(["--timeout", "120s", "--json", "-q"])
        .output()
        .context("cannot start tandem")?;
    project::check(out.status, "tandem run dirtier")?;
    let _ = std::fs::remove_dir_all(&chain);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("tandem printed no JSON report")
        .and_then(|l| serde_json::from_str(l).context("bad JSON report"))?;
    let khz: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("dirtier: tsc-khz "))
        .and_then(|v| v.trim().parse().ok())
        .context("dirtier printed no TSC frequency")?;
    let gaps: Vec<(u64, u64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("gap ")?.split(' ');
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    let points = report["backups"].as_array().cloned().unwrap_or_default();
    Ok(points
        .iter()
        .skip(1)
        .map(|p| {
            let at = p["stopped_tsc"].as_u64().unwrap_or(0);
            let gap = gaps
                .iter()
                .find(|&&(start, len)| start <= at && at <= start.saturating_add(len))
                .map(|&(_, len)| len as f64 * 1000.0 / khz);
            Point {
                dirty: p["dirty_pages"].as_f64().unwrap_or(0.0),
                pages: p["pages"].as_f64().unwrap_or(0.0),
                host_us: p["pause_us"].as_f64().unwrap_or(f64::NAN),
                guest_us: gap,
                write_ms: p["write_ms"].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect())
}

fn q(sorted: &[f64], at: f64) -> f64 {
    quantile(sorted, at).unwrap_or(f64::NAN)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Runs the benchmark.
pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let image = guest::image(project, APP)?;
    let scratch = project.target_dir().join("bench/backup-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;

    let mut results = Vec::new();
    let mut table = Table::new([
        "dirtied pages",
        "mode",
        "points",
        "pages/point (median)",
        "host pause p50",
        "host pause p99",
        "guest pause p50",
        "guest pause p99",
        "write MiB/s (median)",
    ]);
    for pages in SIZES {
        let mut by_mode: Vec<(&str, Vec<Point>)> =
            opts.modes.iter().map(|m| (*m, Vec::new())).collect();
        // Interleaved, so machine noise hits both modes alike.
        for _ in 0..opts.runs {
            for (mode, points) in &mut by_mode {
                points.extend(run_once(project, &image, &scratch, pages, mode)?);
            }
        }
        for (mode, points) in by_mode {
            let host = sorted(points.iter().map(|p| p.host_us).collect());
            // A point whose gap the guest did not record paused it less
            // than GAP_US: counted at that bound.
            let seen = points.iter().filter(|p| p.guest_us.is_some()).count();
            let guest = sorted(
                points
                    .iter()
                    .map(|p| p.guest_us.unwrap_or(GAP_US as f64))
                    .collect(),
            );
            let dirty = sorted(points.iter().map(|p| p.dirty).collect());
            let held = sorted(points.iter().map(|p| p.pages).collect());
            let rate = sorted(
                points
                    .iter()
                    .filter(|p| p.write_ms > 0.0)
                    .map(|p| p.pages * PAGE_BYTES / (1 << 20) as f64 / (p.write_ms / 1e3))
                    .collect(),
            );
            let us = |x: f64| {
                if x >= 1000.0 {
                    format!("{:.1} ms", x / 1e3)
                } else {
                    format!("{x:.0} us")
                }
            };
            table.row([
                pages.to_string(),
                mode.to_string(),
                points.len().to_string(),
                format!("{:.0}", q(&held, 0.5)),
                us(q(&host, 0.5)),
                us(q(&host, 0.99)),
                us(q(&guest, 0.5)),
                us(q(&guest, 0.99)),
                format!("{:.0}", q(&rate, 0.5)),
            ]);
            results.push(json!({
                "dirtied_pages": pages,
                "mode": mode,
                "points": points.len(),
                "dirty_pages_per_point": {"median": q(&dirty, 0.5), "min": dirty.first()},
                "pages_per_point_median": q(&held, 0.5),
                "host_pause_us": {"p50": round3(q(&host, 0.5)), "p99": round3(q(&host, 0.99)),
                                  "max": host.last()},
                "guest_pause_us": {"p50": round3(q(&guest, 0.5)), "p99": round3(q(&guest, 0.99)),
                                   "max": guest.last(), "points_seen": seen,
                                   "unseen_counted_as_us": GAP_US},
                "write_mib_per_s_median": round3(q(&rate, 0.5)),
            }));
        }
    }
    println!("\nbackup points of a 256 MiB guest (dirtier), pause per point:");
    table.print();

    let report = json!({"by_dirty_pages": results, "runs": opts.runs, "gap_us": GAP_US});
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench/backup.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("JSON: {}", project.show(&path));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
