//! `cargo xtask bench boot-paths`: the same app booted N times on every
//! path (Tandem PV; QEMU microvm + PVH; QEMU q35 + SeaBIOS + PVH; QEMU q35 +
//! SeaBIOS + GRUB + Multiboot2), under KVM and TCG, with where the time goes.
//! Next to them, Tandem's ways back from a snapshot of the counter app at
//! 64 MiB and 1 GiB: its cold boot, `tandem restore --prefetch data`,
//! `--prefetch auto` with the working set `examples/snapbench` recorded,
//! and (in process, from snapbench) a warm pool's take to exit.
//!
//! Every run is one whole process, timed from spawn to exit. The guest's own
//! stamps (first instruction, `main`, exit) come from its `tandem-trace:`
//! console line on the QEMU paths and from `tandem run --json` on the Tandem
//! path. Where the guest's TSC is the host's (KVM here) the time before the
//! guest's first instruction is exact; under TCG the guest TSC starts at
//! machine reset, so "before guest" counts from reset and QEMU's own start-up
//! lands in "after guest".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tandem_tsc::rdtsc;

use crate::project::{self, Profile, Project};
use crate::qemu::{self, Accel, Boot, Machine};
use crate::{guest, host, stats, table};

pub struct Options {
    pub runs: usize,
    pub json: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    /// Most runs of a path whose single run takes over a second.
    pub slow_runs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            runs: 10,
            json: None,
            svg: None,
            slow_runs: 3,
        }
    }
}

#[derive(Clone)]
enum Kind {
    Tandem,
    /// `tandem run` of the counter app to its exit just after `ready()`,
    /// with this much memory (`--mem`).
    TandemCounter(&'static str),
    /// `tandem restore` of a counter snapshot with this `--prefetch`, at
    /// one of [`SIZES`].
    Restore(PathBuf, &'static str, Size),
    Pvh(Machine),
    Grub,
}

/// The counter app's command line for the paths that restore it: at
/// `ready()` it is snapshotted, and right after it exits.
const COUNTER_CMDLINE: &str = "ready exit-at=1";

/// The guest memory sizes the restore paths run at.
const SIZES: [Size; 2] = [("64M", "64 MiB"), ("1G", "1 GiB")];

/// A guest memory size: `--mem` and label.
type Size = (&'static str, &'static str);

/// What the paths boot.
struct Inputs {
    hello: PathBuf,
    iso: PathBuf,
    counter: PathBuf,
}

struct PathSpec {
    name: String,
    kind: Kind,
    accel: Accel,
}

/// One run's segments, in milliseconds.
#[derive(Default, Clone)]
struct Sample {
    before_guest: f64,
    guest_boot: f64,
    app: f64,
    after_guest: f64,
    total: f64,
}

const SEGMENTS: [&str; 4] = ["before guest", "guest boot", "app", "after guest"];

/// Parses `tandem-trace: v1 tsc_khz=K first_instruction=T ... exit=T`.
fn parse_trace(out: &str) -> Option<BTreeMap<String, u64>> {
    let line = out
        .lines()
        .find_map(|l| l.split("tandem-trace: v1 ").nth(1))?;
    let map: BTreeMap<String, u64> = line
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect();
    (map.contains_key("tsc_khz") && map.contains_key("first_instruction")).then_some(map)
}

fn qemu_sample(out: &str, spawn_tsc: u64, end_tsc: u64, wall_ms: f64) -> Result<Sample> {
    let t = parse_trace(out).context("the guest printed no tandem-trace line")?;
    let khz = t["tsc_khz"] as f64;
    let ms = |ticks: u64| ticks as f64 / khz;
    let (first, main, exit) = (t["first_instruction"], t["app_main"], t["exit"]);
    if main < first || exit < main || khz == 0.0 {
        bail!("inconsistent guest trace: {t:?}");
    }
    let guest_boot = ms(main - first);
    let app = ms(exit - main);
    let aligned = spawn_tsc <= first && exit <= end_tsc;
    let before_guest = if aligned {
        ms(first - spawn_tsc)
    } else {
        ms(first)
    };
    let after_guest = (wall_ms - before_guest - guest_boot - app).max(0.0);
    Ok(Sample {
        before_guest,
        guest_boot,
        app,
        after_guest,
        total: wall_ms,
    })
}

fn tandem_report(stderr: &str) -> Result<Value> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("tandem printed no JSON report")?;
    serde_json::from_str(line).context("tandem's JSON report")
}

fn tandem_sample(stderr: &str, wall_ms: f64) -> Result<Sample> {
    let v = tandem_report(stderr)?;
    let p = &v["phases_us"];
    let us = |k: &str| p[k].as_f64().with_context(|| format!("no {k} in {p}"));
    let (first, main, exit) = (us("first_instruction")?, us("app_main")?, us("exit")?);
    let before_guest = first / 1000.0;
    let guest_boot = (main - first) / 1000.0;
    let app = (exit - main) / 1000.0;
    Ok(Sample {
        before_guest,
        guest_boot,
        app,
        after_guest: (wall_ms - exit / 1000.0).max(0.0),
        total: wall_ms,
    })
}

/// A restored guest does not boot: "before guest" is the VMM's start and
/// the restore up to the vCPU's first entry, "app" from there to the exit.
fn restore_sample(stderr: &str, wall_ms: f64) -> Result<Sample> {
    let v = tandem_report(stderr)?;
    let ready = v["restore_us"]
        .as_f64()
        .with_context(|| format!("no restore_us in {v}"))?;
    let exit = v["phases_us"]["exit"].as_f64().unwrap_or(ready).max(ready);
    Ok(Sample {
        before_guest: ready / 1000.0,
        guest_boot: 0.0,
        app: (exit - ready) / 1000.0,
        after_guest: (wall_ms - exit / 1000.0).max(0.0),
        total: wall_ms,
    })
}

fn run_once(spec: &PathSpec, project: &Project, inputs: &Inputs) -> Result<Sample> {
    let image = inputs.hello.as_path();
    let tandem = || Command::new(project.host_bin(Profile::Release));
    let mut cmd = match &spec.kind {
        Kind::Tandem => {
            let mut c = tandem();
            c.arg("run").arg(image).arg("--json");
            c
        }
        Kind::TandemCounter(mem) => {
            let mut c = tandem();
            c.arg("run").arg(&inputs.counter).args([
                "--mem",
                mem,
                "--cmdline",
                COUNTER_CMDLINE,
                "--json",
            ]);
            c
        }
        Kind::Restore(dir, prefetch, _) => {
            let mut c = tandem();
            c.arg("restore")
                .arg(dir)
                .args(["--prefetch", prefetch, "--json"]);
            c
        }
        Kind::Pvh(machine) => {
            qemu::command(*machine, spec.accel, &Boot::Pvh { image, cmdline: "" })
        }
        Kind::Grub => qemu::command(Machine::Q35, spec.accel, &Boot::Iso(&inputs.iso)),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_tsc = rdtsc();
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    let end_tsc = rdtsc();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = match spec.kind {
        Kind::Tandem | Kind::TandemCounter(_) | Kind::Restore(..) => out.status.success(),
        Kind::Pvh(_) | Kind::Grub => out.status.code().and_then(qemu::guest_code) == Some(0),
    };
    if !ok {
        bail!(
            "{} failed ({}):\n{stdout}\n{stderr}",
            spec.name,
            project::describe(out.status)
        );
    }
    match spec.kind {
        Kind::Tandem | Kind::TandemCounter(_) => tandem_sample(&stderr, wall_ms),
        Kind::Restore(..) => restore_sample(&stderr, wall_ms),
        Kind::Pvh(_) | Kind::Grub => qemu_sample(&stdout, spawn_tsc, end_tsc, wall_ms),
    }
}

fn median_of(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    stats::Summary::of(&samples.iter().map(f).collect::<Vec<_>>()).map_or(0.0, |s| s.median)
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    project::require_kvm()?;
    qemu::ensure_tools(qemu::QEMU_TOOLS)?;
    guest::build(project)?;
    host::build(project, Profile::Release, true)?;
    let image = guest::image(project, "hello")?;
    let iso = qemu::make_iso(project, "hello", &image, "", None)?;
    let inputs = Inputs {
        iso,
        counter: guest::image(project, "counter")?,
        hello: image,
    };
    // The counter app's snapshots at ready(), each with its recorded
    // working set, and the in-process pooled takes: what `cargo xtask
    // bench snapshot` measures, at a few runs.
    let scratch = project.target_dir().join("bench/boot-paths-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    eprintln!("xtask: examples/snapbench (snapshots, working sets, pooled takes)");
    let inproc = crate::bench_snapshot::snapbench(
        project,
        &inputs.counter,
        &scratch,
        opts.runs.min(opts.slow_runs.max(3)),
    )?;

    let mut specs = vec![PathSpec {
        name: "tandem PV".into(),
        kind: Kind::Tandem,
        accel: Accel::Kvm,
    }];
    for (mem, size) in SIZES {
        let snap = scratch.join(format!("ready-{mem}"));
        specs.push(PathSpec {
            name: format!("tandem PV, counter, {size}"),
            kind: Kind::TandemCounter(mem),
            accel: Accel::Kvm,
        });
        specs.push(PathSpec {
            name: format!("tandem restore, {size}"),
            kind: Kind::Restore(snap.clone(), "data", (mem, size)),
            accel: Accel::Kvm,
        });
        specs.push(PathSpec {
            name: format!("tandem restore + working set, {size}"),
            kind: Kind::Restore(snap, "auto", (mem, size)),
            accel: Accel::Kvm,
        });
    }
    for accel in [Accel::Kvm, Accel::Tcg] {
        let a = accel.name();
        specs.push(PathSpec {
            name: format!("qemu microvm + PVH ({a})"),
            kind: Kind::Pvh(Machine::Microvm),
            accel,
        });
        specs.push(PathSpec {
            name: format!("qemu q35 + SeaBIOS + PVH ({a})"),
            kind: Kind::Pvh(Machine::Q35),
            accel,
        });
        specs.push(PathSpec {
            name: format!("qemu q35 + SeaBIOS + GRUB + MB2 ({a})"),
            kind: Kind::Grub,
            accel,
        });
    }

    let mut results: Vec<(String, Vec<Sample>)> = Vec::new();
    for spec in &specs {
        let first = run_once(spec, project, &inputs)?;
        let runs = if first.total > 1000.0 {
            opts.runs.min(opts.slow_runs)
        } else {
            opts.runs
        };
        eprintln!(
            "xtask: {}: {runs} runs ({:.0} ms the first)",
            spec.name, first.total
        );
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(run_once(spec, project, &inputs)?);
        }
        results.push((spec.name.clone(), samples));
        if let Kind::Restore(_, "auto", size) = spec.kind {
            // After the whole-process restores of a size, its pooled take.
            results.push(pooled(&inproc, size)?);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let mut t = table::Table::new([
        "path (medians, ms)",
        "runs",
        "before guest",
        "guest boot",
        "app",
        "after guest",
        "total",
    ]);
    let mut json_paths = Vec::new();
    for (name, samples) in &results {
        let m = [
            median_of(samples, |s| s.before_guest),
            median_of(samples, |s| s.guest_boot),
            median_of(samples, |s| s.app),
            median_of(samples, |s| s.after_guest),
            median_of(samples, |s| s.total),
        ];
        t.row([
            name.clone(),
            samples.len().to_string(),
            format!("{:.3}", m[0]),
            format!("{:.3}", m[1]),
            format!("{:.3}", m[2]),
            format!("{:.3}", m[3]),
            format!("{:.3}", m[4]),
        ]);
        json_paths.push(json!({
            "path": name,
            "runs": samples.len(),
            "median_ms": {
                "before_guest": m[0], "guest_boot": m[1], "app": m[2], "after_guest": m[3], "total": m[4],
            },
        }));
    }
    println!("\nBoot paths: `hello` (counter: to just past ready()), whole process (spawn to exit) but the pooled takes\n");
    print!("{}", t.render());
    println!(
        "\nbefore guest: VMM, firmware and boot loader up to the guest's first instruction (under TCG, from machine reset);\n\
         on a restore, the VMM's start and the restore to the vCPU's first entry; on a pooled take, the take (in process);\n\
         guest boot: first instruction to main (the PVH/Multiboot2 trampolines run at CPL0);\n\
         after guest: teardown (under TCG also QEMU's start-up before reset)."
    );

    let out_dir = project.target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let json_path = opts
        .json
        .clone()
        .unwrap_or_else(|| out_dir.join("boot-paths.json"));
    let report = json!({ "app": "hello", "paths": json_paths, "segments": SEGMENTS });
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let svg_path = opts
        .svg
        .clone()
        .unwrap_or_else(|| out_dir.join("boot-paths.svg"));
    std::fs::write(&svg_path, svg(&results))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    println!(
        "\nwrote {} and {}",
        project.show(&json_path),
        project.show(&svg_path)
    );
    Ok(())
}

/// The in-process pooled take to exit at one size, from snapbench's
/// medians: "before guest" the take, "app" the run to exit.
fn pooled(inproc: &Value, (mem, size): Size) -> Result<(String, Vec<Sample>)> {
    let at = |k: &str| {
        inproc["by_memory"][mem][k]["median"]
            .as_f64()
            .with_context(|| format!("snapbench printed no {mem} {k}"))
    };
    let (take, to_exit) = (at("pool_take_us")?, at("pool_take_to_exit_us")?);
    let runs = inproc["by_memory"][mem]["pool_take_us"]["n"]
        .as_u64()
        .unwrap_or(1);
    let s = Sample {
        before_guest: take / 1000.0,
        guest_boot: 0.0,
        app: (to_exit - take).max(0.0) / 1000.0,
        after_guest: 0.0,
        total: to_exit / 1000.0,
    };
    let n = usize::try_from(runs).unwrap_or(1);
    Ok((
        format!("tandem pooled take (in process), {size}"),
        vec![s; n],
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar per path. Totals span four orders of magnitude, so a
/// bar's length is the log of its total; its colours split it by each
/// phase's share of that total.
fn svg(results: &[(String, Vec<Sample>)]) -> String {
    const COLORS: [&str; 4] = ["#8c8c8c", "#e6862e", "#3a7bd5", "#c9c9c9"];
    let (left, bar_w, row_h, top) = (300.0, 560.0, 30.0, 60.0);
    let (lo, hi) = (0.05f64, 60_000.0f64);
    let scale = |ms: f64| ((ms.clamp(lo, hi) / lo).log10() / (hi / lo).log10()) * bar_w;
    let height = top + row_h * results.len() as f64 + 70.0;
    let width = left + bar_w + 120.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Tandem boot paths: whole process, medians (pooled takes: in process)</text>\n\
         <text x=\"10\" y=\"42\" fill=\"#555\">hello, or the counter app to just past ready(); bar length: total time (log scale); colours: each phase's share of it</text>\n"
    );
    for tick in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let x = left + scale(tick);
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#777\">{} ms</text>\n",
            top - 8.0,
            top + row_h * results.len() as f64,
            top + row_h * results.len() as f64 + 14.0,
            tick
        );
    }
    for (i, (name, samples)) in results.iter().enumerate() {
        let y = top + row_h * i as f64;
        let parts = [
            median_of(samples, |s| s.before_guest),
            median_of(samples, |s| s.guest_boot),
            median_of(samples, |s| s.app),
            median_of(samples, |s| s.after_guest),
        ];
        let total = median_of(samples, |s| s.total);
        let sum: f64 = parts.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let len = scale(total);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            y + 16.0,
            escape(name)
        );
        let mut x = left;
        for (part, color) in parts.iter().zip(COLORS) {
            let w = len * part / sum;
            s += &format!("<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{:.3} ms</title></rect>\n", y + 4.0, row_h - 8.0, part);
            x += w;
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{total:.1} ms</text>\n",
            left + len + 6.0,
            y + 16.0
        );
    }
    let ly = top + row_h * results.len() as f64 + 36.0;
    let mut lx = 10.0;
    for (label, color) in SEGMENTS.iter().zip(COLORS) {
        s += &format!("<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{label}</text>\n", ly - 10.0, lx + 16.0, ly);
        lx += 130.0;
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_trace_line() {
        let out = "noise\ntandem-trace: v1 tsc_khz=1000 first_instruction=5000 early_init=6000 heap_ready=6100 app_main=7000 app_ready=0 exit=9000\n";
        let s = qemu_sample(out, 1000, 20_000, 30.0).unwrap();
        assert_eq!(s.before_guest, 4.0); // aligned: (5000 - 1000) ticks at 1 MHz
        assert_eq!(s.guest_boot, 2.0);
        assert_eq!(s.app, 2.0);
        assert_eq!(s.after_guest, 22.0);
        // Not aligned (TCG): counted from reset.
        let s = qemu_sample(out, 100_000, 200_000, 30.0).unwrap();
        assert_eq!(s.before_guest, 5.0);
        assert!(qemu_sample("no trace", 0, 0, 1.0).is_err());
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let results = vec![(
            "a <b>".to_string(),
            vec![Sample {
                before_guest: 1.0,
                guest_boot: 1.0,
                app: 1.0,
                after_guest: 1.0,
                total: 4.0,
            }],
        )];
        let s = svg(&results);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a &lt;b&gt;"));
    }
}
