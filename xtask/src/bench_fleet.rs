//! `cargo xtask bench fleet`: fleets of 100 and 1000 small VMs (`service`
//! app, 6 MiB each, one in ten of high priority, the rest low), booted by
//! the release `tandem fleet` until every VM is ready, with the scheduler
//! (cap = number of CPUs) and with a naive all-at-once start (cap = fleet
//! size) side by side. Reports time until all ready, VMs ready per second,
//! median and p99 time to ready per priority class, and host memory per VM
//! (resident set of the VMM once all are ready, less that of a one-VM
//! fleet, divided by the VMs). Prints a table and writes JSON (default
//! `target/bench/fleet.json`). Each size also runs through a release
//! `tandemd` (`bench_fleet_daemon`), once per `--vms-per-worker` value,
//! beside the one-process figures (with the load average of each). Then
//! the I/O case (`bench_fleet_io`):
//! batch VMs writing flat out while high-priority VMs boot, with and
//! without the fleet's I/O scheduler.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::project::{Profile, Project};
use crate::table::Table;
use crate::{guest, host};

/// Options of `cargo xtask bench fleet`.
pub struct Options {
    /// Fleet sizes.
    pub sizes: Vec<usize>,
    /// Runs per configuration (the median run by time to all ready is kept).
    pub runs: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
    /// Run the fleet sizes (`--io-only`: no).
    pub sizes_case: bool,
    /// Run the I/O case (`--no-io`: no).
    pub io_case: bool,
    /// `--vms-per-worker` values of the daemon case (`--no-daemon`: none).
    pub per_worker: Vec<usize>,
}

fn numbers(flag: &str, v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{flag} takes numbers like 100,1000, not `{v}`"))
}

/// Parses `--sizes 100,1000`, `--runs N`, `--json FILE`, `--no-io`,
/// `--io-only`, `--vms-per-worker 64,128` and `--no-daemon`.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut sizes = vec![100, 1000];
    let mut per_worker = vec![64, 128];
    let (mut sizes_case, mut io_case) = (true, true);
    let c = crate::bench_args::parse(args, "fleet", 3, 1, |flag, it| {
        match flag {
            "--no-daemon" => {
                per_worker.clear();
                return Ok(true);
            }
            "--vms-per-worker" => {
                per_worker = numbers(flag, crate::bench_args::value(flag, it)?)?;
                return Ok(true);
            }
            "--no-io" => {
                io_case = false;
                return Ok(true);
            }
            "--io-only" => {
                sizes_case = false;
                return Ok(true);
            }
            "--sizes" => {}
            _ => return Ok(false),
        }
        sizes = numbers(flag, crate::bench_args::value(flag, it)?)?;
        Ok(true)
    })?;
    Ok(Options {
        sizes: if sizes_case { sizes } else { Vec::new() },
        runs: c.runs,
        json: c.json,
        sizes_case,
        io_case,
        per_worker,
    })
}

fn write_fleet(dir: &Path, n: usize, image: &Path) -> Result<PathBuf> {
    let high = (n / 10).max(1);
    let low = n.saturating_sub(high);
    let mut text = format!(
        "[defaults]\nimage = \"{}\"\nmemory = \"6M\"\nboot_timeout = \"120s\"\n\n\
         [[vm]]\nname = \"high\"\ncount = {high}\npriority = 10\n",
        image.display()
    );
    if low > 0 {
        text.push_str(&format!(
            "\n[[vm]]\nname = \"low\"\ncount = {low}\npriority = 0\n"
        ));
    }
    let path = dir.join(format!("fleet-{n}.toml"));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub(crate) fn run_fleet(tandem: &Path, config: &Path, cap: usize, out: &Path) -> Result<Value> {
    let status = Command::new(tandem)
        .arg("fleet")
        .arg(config)
        .args(["--stop-when-ready", "-q", "--max-concurrent-boots"])
        .arg(cap.to_string())
        .arg("--json")
        .arg(out)
        .status()
        .context("cannot run tandem fleet")?;
    if !status.success() {
        bail!("tandem fleet {} failed: {status}", config.display());
    }
    let text = std::fs::read_to_string(out)?;
    Ok(serde_json::from_str(&text)?)
}

pub(crate) fn class(report: &Value, priority: i64) -> Option<&Value> {
    report["summary"]["classes"]
        .as_array()?
        .iter()
        .find(|c| c["priority"].as_i64() == Some(priority))
}

/// p50 and p99 time to ready (ms from the fleet's start) over every VM of
/// a `tandem fleet` report.
fn overall(report: &Value) -> (Option<f64>, Option<f64>) {
    let mut t: Vec<f64> = report["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["ready_ms"].as_f64())
        .collect();
    t.sort_by(f64::total_cmp);
    (
        tandem_abi::stats::quantile(&t, 0.5),
        tandem_abi::stats::quantile(&t, 0.99),
    )
}

pub(crate) fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

/// Runs the benchmark.
pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    crate::project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let tandem = project.host_bin(Profile::Release);
    let image = guest::image(project, "service")?;
    let scratch = project.target_dir().join("bench/fleet");
    std::fs::create_dir_all(&scratch)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let one = write_fleet(&scratch, 1, &image)?;
    let base = run_fleet(&tandem, &one, 1, &scratch.join("one.json"))?;
    let base_rss = base["summary"]["rss_when_settled"].as_f64().unwrap_or(0.0);

    let mut table = Table::new([
        "fleet",
        "start",
        "all ready (ms)",
        "VMs ready/s",
        "high p50 (ms)",
        "high p99 (ms)",
        "low p50 (ms)",
        "low p99 (ms)",
        "peak booting",
        "RSS/VM (MiB)",
    ]);
    let daemon = if opts.per_worker.is_empty() || opts.sizes.is_empty() {
        None
    } else {
        Some(host::build_daemon(project, Profile::Release)?)
    };
    let mut side = Table::new([
        "fleet",
        "how",
        "all ready (ms)",
        "VMs ready/s",
        "p50 (ms)",
        "p99 (ms)",
        "vs all at once",
        "load (1m)",
    ]);
    let mut results = Vec::new();
    let mut daemon_results = Vec::new();
    for &n in &opts.sizes {
        let mut at_once_rate = None;
        let config = write_fleet(&scratch, n, &image)?;
        for (mode, cap) in [("scheduler", cpus), ("all at once", n)] {
            let mut runs = Vec::new();
            let mut runs_load = Vec::new();
            for r in 0..opts.runs {
                let out = scratch.join(format!("fleet-{n}-{}-{r}.json", cap));
                eprintln!("bench fleet: {n} VMs, {mode} (cap {cap}), run {}", r + 1);
                runs.push(run_fleet(&tandem, &config, cap, &out)?);
                runs_load.extend(crate::bench_fleet_daemon::loadavg());
            }
            runs_load.sort_by(f64::total_cmp);
            runs.sort_by(|a, b| {
                let t = |v: &Value| v["summary"]["last_ready_ms"].as_f64().unwrap_or(f64::MAX);
                t(a).total_cmp(&t(b))
            });
            let median = runs.swap_remove(runs.len() / 2);
            let s = &median["summary"];
            let rss = s["rss_when_settled"].as_f64().unwrap_or(0.0);
            let rss_per_vm = (rss - base_rss).max(0.0) / (n.max(2) - 1) as f64 / 1048576.0;
            let load = runs_load.get(runs_load.len() / 2).copied();
            let (p50, p99) = overall(&median);
            side.row([
                format!("{n} VMs"),
                format!("one process, {mode}"),
                num(&s["all_ready_ms"]),
                num(&s["ready_per_sec"]),
                num(&json!(p50)),
                num(&json!(p99)),
                "1.00".into(),
                num(&json!(load)),
            ]);
            if cap == n {
                at_once_rate = s["ready_per_sec"].as_f64();
            }
            let hi = class(&median, 10).cloned().unwrap_or(Value::Null);
            let lo = class(&median, 0).cloned().unwrap_or(Value::Null);
            table.row([
                format!("{n} VMs"),
                format!("{mode} (cap {cap})"),
                num(&s["all_ready_ms"]),
                num(&s["ready_per_sec"]),
                num(&hi["ready_p50_ms"]),
                num(&hi["ready_p99_ms"]),
                num(&lo["ready_p50_ms"]),
                num(&lo["ready_p99_ms"]),
                num(&s["peak_booting"]),
                format!("{rss_per_vm:.2}"),
            ]);
            results.push(json!({
                "vms": n,
                "mode": mode,
                "max_concurrent_boots": cap,
                "runs": opts.runs,
                "all_ready_ms": s["all_ready_ms"],
                "ready_per_sec": s["ready_per_sec"],
                "ready_per_sec_per_core": s["ready_per_sec"].as_f64().map(|r| r / cpus as f64),
                "high": hi,
                "low": lo,
                "peak_booting": s["peak_booting"],
                "rss_bytes": rss,
                "rss_per_vm_mib": rss_per_vm,
                "ready_p50_ms": p50,
                "ready_p99_ms": p99,
                "loadavg_1m": load,
            }));
        }
        for &per in daemon.iter().flat_map(|_| &opts.per_worker) {
            let Some(bin) = &daemon else { break };
            let mut runs = Vec::new();
            for r in 0..opts.runs {
                eprintln!(
                    "bench fleet: {n} VMs, tandemd ({per} a worker), run {}",
                    r + 1
                );
                runs.push(crate::bench_fleet_daemon::run(bin, &image, n, per)?);
            }
            runs.sort_by(|a, b| {
                let t = |v: &Value| v["all_ready_ms"].as_f64().unwrap_or(f64::MAX);
                t(a).total_cmp(&t(b))
            });
            let mut m = runs.swap_remove(runs.len() / 2);
            m["runs"] = json!(opts.runs);
            let ratio = m["ready_per_sec"]
                .as_f64()
                .zip(at_once_rate)
                .map(|(d, s)| d / s);
            m["vs_one_process_all_at_once"] = json!(ratio);
            side.row([
                format!("{n} VMs"),
                format!("tandemd, {per} a worker ({} workers)", m["workers"]),
                num(&m["all_ready_ms"]),
                num(&m["ready_per_sec"]),
                num(&m["ready_p50_ms"]),
                num(&m["ready_p99_ms"]),
                ratio.map_or("-".into(), |r| format!("{r:.2}")),
                num(&m["loadavg_1m"]),
            ]);
            daemon_results.push(m);
        }
    }
    if opts.sizes_case {
        table.print();
        println!();
        side.print();
    }
    let io = if opts.io_case {
        let diskbench = guest::image(project, "diskbench")?;
        Some(crate::bench_fleet_io::bench(
            &tandem, &diskbench, &scratch, opts.runs,
        )?)
    } else {
        None
    };
    let json_path = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench/fleet.json"));
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = json!({
        "cpus": cpus,
        "base_rss_bytes": base_rss,
        "results": results,
        "daemon": daemon_results,
        "io": io,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("bench fleet: JSON written to {}", project.show(&json_path));
    Ok(())
}
