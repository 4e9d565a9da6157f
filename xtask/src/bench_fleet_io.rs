//! The I/O case of `cargo xtask bench fleet`: batch VMs write their disks
//! flat out (`diskbench seqwrite`) while high-priority VMs boot and do a
//! little disk work before `ready()` (`diskbench randwrite`), once with the
//! fleet's I/O scheduler (`[fleet] io_budget`, the high VMs `critical`, the
//! batch VMs `batch`) and once without (no budget: every disk runs free).
//! Reports the high-priority VMs' p50 and p99 time to ready and what the
//! batch VMs wrote per second meanwhile.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::table::Table;

/// Batch VMs, and the MiB each writes.
const BATCH: usize = 4;
const BATCH_MIB: u64 = 64;
/// High-priority VMs, and the 4 KiB writes each makes before `ready()`.
const HIGH: usize = 20;
const HIGH_WRITES: u64 = 64;
/// The fleet's budget in the scheduled run.
const BUDGET: &str = "{ rate = \"64M\", iops = 20000 }";

fn write_fleet(dir: &Path, image: &Path, scheduled: bool) -> Result<std::path::PathBuf> {
    for i in 0..BATCH {
        let f = std::fs::File::create(dir.join(format!("batch-{i}.img")))?;
        f.set_len(BATCH_MIB << 20)?;
    }
    for i in 0..HIGH {
        let f = std::fs::File::create(dir.join(format!("high-{i}.img")))?;
        f.set_len(1 << 20)?;
    }
    let (fleet, batch_class, high_class) = if scheduled {
        (
            format!("[fleet]\nio_budget = {BUDGET}\n\n"),
            "io_class = \"batch\"\n",
            "io_class = \"critical\"\n",
        )
    } else {
        (String::new(), "", "")
    };
    // The batch VMs come first in boot order, so they are writing while
    // the high-priority VMs boot; the I/O class is what the scheduler uses.
    let text = format!(
        "{fleet}[defaults]\nimage = \"{image}\"\nmemory = \"8M\"\nboot_timeout = \"120s\"\n\n\
         [[vm]]\nname = \"batch\"\ncount = {BATCH}\npriority = 20\n{batch_class}\
         cmdline = \"seqwrite {BATCH_MIB}\"\ndisk = [\"path=batch-{{i}}.img\"]\n\n\
         [[vm]]\nname = \"high\"\ncount = {HIGH}\npriority = 10\n{high_class}\
         cmdline = \"randwrite {HIGH_WRITES}\"\ndisk = [\"path=high-{{i}}.img\"]\n",
        image = image.display()
    );
    let path = dir.join(if scheduled {
        "fleet-io-scheduled.toml"
    } else {
        "fleet-io-free.toml"
    });
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Batch MiB written per second: all their bytes over the span from the
/// first batch VM's `main` to the last one's `ready()`.
fn batch_rate(report: &Value) -> Option<f64> {
    let vms = report["vms"].as_array()?;
    let batch: Vec<&Value> = vms.iter().filter(|v| v["group"] == "batch").collect();
    let from = batch
        .iter()
        .filter_map(|v| v["attempts"][0]["main_ms"].as_f64())
        .fold(f64::MAX, f64::min);
    let to = batch
        .iter()
        .filter_map(|v| v["attempts"][0]["ready_ms"].as_f64())
        .fold(0.0, f64::max);
    (to > from).then(|| (BATCH as u64 * BATCH_MIB) as f64 / ((to - from) / 1e3))
}

/// Runs the case `runs` times each way (the median run by high p99 kept);
/// prints a table and returns its JSON.
pub fn bench(tandem: &Path, image: &Path, scratch: &Path, runs: usize) -> Result<Value> {
    let dir = scratch.join("io");
    std::fs::create_dir_all(&dir)?;
    let mut table = Table::new([
        "I/O case",
        "high p50 (ms)",
        "high p99 (ms)",
        "batch MiB/s",
        "all ready (ms)",
    ]);
    let mut results = Vec::new();
    for (mode, scheduled) in [("io scheduler", true), ("no io scheduler", false)] {
        let mut reports = Vec::new();
        for r in 0..runs {
            let config = write_fleet(&dir, image, scheduled)?;
            let out = dir.join(format!("io-{scheduled}-{r}.json"));
            eprintln!("bench fleet: I/O case, {mode}, run {}", r + 1);
            // Every VM admitted at once: the batch VMs stay "booting" until
            // their disks are written.
            reports.push(super::bench_fleet::run_fleet(
                tandem,
                &config,
                BATCH + HIGH,
                &out,
            )?);
        }
        let p99 = |v: &Value| {
            super::bench_fleet::class(v, 10)
                .and_then(|c| c["ready_p99_ms"].as_f64())
                .unwrap_or(f64::MAX)
        };
        reports.sort_by(|a, b| p99(a).total_cmp(&p99(b)));
        let median = reports.swap_remove(reports.len() / 2);
        let hi = super::bench_fleet::class(&median, 10)
            .cloned()
            .unwrap_or(Value::Null);
        let rate = batch_rate(&median);
        let num = super::bench_fleet::num;
        table.row([
            mode.to_string(),
            num(&hi["ready_p50_ms"]),
            num(&hi["ready_p99_ms"]),
            rate.map_or("-".into(), |r| format!("{r:.1}")),
            num(&median["summary"]["all_ready_ms"]),
        ]);
        results.push(json!({
            "mode": mode,
            "budget": if scheduled { Some(BUDGET) } else { None },
            "batch_vms": BATCH,
            "batch_mib_each": BATCH_MIB,
            "high_vms": HIGH,
            "high_writes_each": HIGH_WRITES,
            "runs": runs,
            "high": hi,
            "batch_mib_per_sec": rate,
            "all_ready_ms": median["summary"]["all_ready_ms"],
        }));
    }
    table.print();
    Ok(Value::Array(results))
}
