//! `cargo xtask bench`: boot figures for the `hello` app, in process (from
//! the `bench` example of the host crate) and as whole processes, side by side
//! with two floors that only create a VM and run one instruction: the same
//! in Rust (the example's `--baseline-process`) and the minimal C VMM of
//! `tools/minvmm` (static). Each whole process's peak RSS too. `tandem` is
//! measured twice: the default build (glibc, dynamically linked) and the
//! lean one (`host::build_lean`: musl, static, not PIE, `[profile.lean]`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use crate::project::{self, Profile, Project};
use crate::stats::{round3, Summary};
use crate::table::Table;
use crate::{bench_floor, elf, guest, host};

const APP: &str = "hello";
const EXAMPLE: &str = "bench";
/// Runs of each process whose peak RSS is measured (the median is shown).
const RSS_RUNS: usize = 15;

pub struct Options {
    pub runs: usize,
    pub warmup: usize,
    pub json: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 200,
            warmup: 3,
            json: None,
        }
    }
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    ensure!(opts.runs > 0, "--runs must be at least 1");
    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, true)?;
    let lean = host::build_lean(project)?;

    let image = guest::image(project, APP)?;
    let tandem = project.host_bin(Profile::Release);
    let example = project.host_example(Profile::Release, EXAMPLE);
    for bin in [&tandem, &example] {
        ensure!(bin.is_file(), "{} was not built", bin.display());
    }

    let floor = bench_floor::build(project)?;
    let size = image_size(&image)?;
    let in_process = in_process(&example, &image, opts.runs)?;
    let whole = whole_process(&tandem, &lean, &example, &floor, &image, opts)?;

    let report = json!({
        "app": APP,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": machine(),
        "image": {
            "path": project.show(&image),
            "file_bytes": size.file_bytes,
            "load_segments": size.load.segments,
            "load_file_bytes": size.load.file_bytes,
            "load_mem_bytes": size.load.mem_bytes,
        },
        "whole_process_ms": whole.to_json(project, &tandem, &lean, &example, &floor.minvmm, &image),
        "peak_rss_kib": whole.rss_json(),
        "in_process": in_process,
    });

    print_report(project, &image, &size, &whole, &report, opts);

    let out = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench").join("boot.json"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report)? + "\n";
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("\nwrote {}", project.show(&out));
    Ok(())
}

struct ImageSize {
    file_bytes: u64,
    load: elf::LoadSize,
}

fn image_size(image: &Path) -> Result<ImageSize> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let load = elf::load_size(&bytes).with_context(|| format!("parsing {}", image.display()))?;
    Ok(ImageSize {
        file_bytes: u64::try_from(bytes.len())?,
        load,
    })
}

/// Runs the host crate's `bench` example, which measures inside one process
/// and prints a JSON object; it is passed through as is.
fn in_process(example: &Path, image: &Path, runs: usize) -> Result<Value> {
    let mut cmd = Command::new(example);
    cmd.arg("--image")
        .arg(image)
        .args(["--runs", &runs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    project::echo(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", example.display()))?;
    project::check(out.status, "the in-process benchmark (examples/bench)")?;
    let value: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "examples/bench did not print a JSON object on stdout; it printed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    ensure!(
        value.is_object(),
        "examples/bench printed JSON that is not an object: {value}"
    );
    Ok(value)
}

struct WholeProcess {
    tandem: Summary,
    baseline: Summary,
    minvmm: Summary,
    /// The lean build of tandem.
    lean: Summary,
    /// Median peak RSS (KiB) of tandem, the Rust baseline, the C VMM and
    /// the lean tandem.
    rss: [u64; 4],
    warmup: usize,
}

impl WholeProcess {
    fn ratio(&self) -> f64 {
        self.tandem.median / self.baseline.median
    }

    fn ratio_c(&self) -> f64 {
        self.tandem.median / self.minvmm.median
    }

    fn ratio_lean_c(&self) -> f64 {
        self.lean.median / self.minvmm.median
    }

    fn to_json(
        &self,
        project: &Project,
        tandem: &Path,
        lean: &Path,
        example: &Path,
        minvmm: &Path,
        image: &Path,
    ) -> Value {
        json!({
            "warmup": self.warmup,
            "tandem": self.tandem.to_json(),
            "tandem_lean": self.lean.to_json(),
            "ratio_median_lean_c_vmm": round3(self.ratio_lean_c()),
            "tandem_lean_command": format!("{} run -q {}", project.show(lean), project.show(image)),
            "baseline_process": self.baseline.to_json(),
            "c_vmm": self.minvmm.to_json(),
            "ratio_median": round3(self.ratio()),
            "ratio_median_c_vmm": round3(self.ratio_c()),
            "tandem_command": format!("{} run -q {}", project.show(tandem), project.show(image)),
            "baseline_command": format!("{} --baseline-process", project.show(example)),
            "c_vmm_command": project.show(minvmm),
        })
    }

    fn rss_json(&self) -> Value {
        json!({
            "runs": RSS_RUNS,
            "tandem": self.rss[0],
            "baseline_process": self.rss[1],
            "c_vmm": self.rss[2],
            "tandem_lean": self.rss[3],
        })
    }
}

/// Times `tandem run -q IMAGE`, the Rust baseline process and the C VMM,
/// alternating one run of each so that noise on the machine hits all alike;
/// then their peak RSS.
fn whole_process(
    tandem: &Path,
    lean: &Path,
    example: &Path,
    floor: &bench_floor::Floor,
    image: &Path,
    opts: &Options,
) -> Result<WholeProcess> {
    let tandem_args = [
        tandem.as_os_str(),
        "run".as_ref(),
        "-q".as_ref(),
        image.as_os_str(),
    ];
    let lean_args = [
        lean.as_os_str(),
        "run".as_ref(),
        "-q".as_ref(),
        image.as_os_str(),
    ];
    let baseline_args = [example.as_os_str(), "--baseline-process".as_ref()];
    let minvmm_args = [floor.minvmm.as_os_str()];
    let command = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let mut run_tandem = command(&tandem_args);
    let mut run_baseline = command(&baseline_args);
    let mut run_minvmm = command(&minvmm_args);
    let mut run_lean = command(&lean_args);
    eprintln!(
        "timing {} whole-process runs each of `tandem run -q {APP}` (default and lean builds), the baseline \
         and the C VMM (after {} warm-up runs)",
        opts.runs, opts.warmup
    );

    for _ in 0..opts.warmup {
        time(&mut run_tandem, "tandem run")?;
        time(&mut run_baseline, "the baseline process")?;
        time(&mut run_minvmm, "the C VMM")?;
        time(&mut run_lean, "lean tandem run")?;
    }
    let mut d = Vec::with_capacity(opts.runs);
    let mut a = Vec::with_capacity(opts.runs);
    let mut b = Vec::with_capacity(opts.runs);
    let mut c = Vec::with_capacity(opts.runs);
    for _ in 0..opts.runs {
        a.push(time(&mut run_tandem, "tandem run")?);
        b.push(time(&mut run_baseline, "the baseline process")?);
        c.push(time(&mut run_minvmm, "the C VMM")?);
        d.push(time(&mut run_lean, "lean tandem run")?);
    }
    let mut rss = [const { Vec::new() }; 4];
    for _ in 0..RSS_RUNS {
        for (i, args) in [&tandem_args[..], &baseline_args, &minvmm_args, &lean_args]
            .into_iter()
            .enumerate()
        {
            rss[i].push(bench_floor::peak_rss_kib(&floor.rss, args)?);
        }
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    Ok(WholeProcess {
        tandem: Summary::of(&a).context("no samples")?,
        baseline: Summary::of(&b).context("no samples")?,
        minvmm: Summary::of(&c).context("no samples")?,
        lean: Summary::of(&d).context("no samples")?,
        rss: [
            median(&mut rss[0]),
            median(&mut rss[1]),
            median(&mut rss[2]),
            median(&mut rss[3]),
        ],
        warmup: opts.warmup,
    })
}

/// Wall time of one run, spawn to reaped, in milliseconds.
fn time(cmd: &mut Command, what: &str) -> Result<f64> {
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!(
            "{what} failed during the benchmark ({}); its output is hidden while timing, \
             run it by hand to see why (for tandem: `cargo xtask run {APP}`)",
            project::describe(status)
        );
    }
    Ok(elapsed.as_secs_f64() * 1000.0)
}

/// Facts about the machine, so results from different hosts are not mixed up.
fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    json!({ "kernel": kernel, "cpu": cpu, "cpus": cpus })
}

fn print_report(
    project: &Project,
    image: &Path,
    size: &ImageSize,
    whole: &WholeProcess,
    report: &Value,
    opts: &Options,
) {
    println!();
    println!("Tandem boot benchmark: `{APP}`, {} runs", opts.runs);
    println!();
    let mut t = Table::new(["image", "bytes"]);
    t.row([
        format!("{} (file)", project.show(image)),
        size.file_bytes.to_string(),
    ]);
    t.row([
        format!("PT_LOAD file bytes ({} segments)", size.load.segments),
        size.load.file_bytes.to_string(),
    ]);
    t.row([
        "PT_LOAD memory bytes".to_owned(),
        size.load.mem_bytes.to_string(),
    ]);
    t.print();
    println!();

    let mut t = Table::new([
        "whole process (ms)",
        "median",
        "p10",
        "p90",
        "min",
        "peak RSS (KiB)",
    ]);
    for (name, s, rss) in [
        (
            format!("tandem run -q {APP} (glibc, dynamic)"),
            whole.tandem,
            whole.rss[0],
        ),
        (
            format!("tandem run -q {APP} (lean: musl, static, no PIE)"),
            whole.lean,
            whole.rss[3],
        ),
        (
            "baseline, Rust (VM + 1 instruction)".to_owned(),
            whole.baseline,
            whole.rss[1],
        ),
        (
            "C VMM, static (VM + 1 instruction)".to_owned(),
            whole.minvmm,
            whole.rss[2],
        ),
    ] {
        t.row([
            name,
            format!("{:.3}", s.median),
            format!("{:.3}", s.p10),
            format!("{:.3}", s.p90),
            format!("{:.3}", s.min),
            rss.to_string(),
        ]);
    }
    t.print();
    println!(
        "ratio of medians, tandem / Rust baseline: {:.2}; tandem / C VMM: {:.2}; lean tandem / C VMM: {:.2}",
        whole.ratio(),
        whole.ratio_c(),
        whole.ratio_lean_c()
    );
    println!();

    let mut fields = Vec::new();
    flatten("", &report["in_process"], &mut fields);
    let mut t = Table::new(["in process (examples/bench)", "value"]);
    for (key, value) in fields {
        t.row([key, value]);
    }
    t.print();
}

/// Numeric leaves of a JSON object as dotted keys, in key order.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => flatten_map(prefix, map, out),
        Value::Number(n) => {
            let shown = match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i.to_string(),
                (None, Some(f)) => format!("{f:.3}"),
                (None, None) => n.to_string(),
            };
            out.push((prefix.to_owned(), shown));
        }
        _ => {}
    }
}

fn flatten_map(prefix: &str, map: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (key, value) in map {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        flatten(&key, value, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_numbers_only() {
        let v = json!({"a": {"median": 1.5, "n": 3}, "b": 7, "c": "text", "d": [1, 2]});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"a.median") && keys.contains(&"a.n") && keys.contains(&"b"));
        assert_eq!(out.len(), 3);
    }
}
