//! `cargo xtask bench disk`: the `diskbench` app on the Tandem VMM (a
//! virtio-blk disk on a sparse file) against the same work done by this
//! process on a host file: sequential writes and reads of 1 MiB calls, and
//! random 4 KiB writes and reads (the same places), writes ending with a
//! flush (fdatasync). Throughput and requests a second, medians of
//! interleaved runs, and their ratio to the host's (`target/bench/disk.json`).
//! The guest times its own loop, so boot is not counted.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::project::{self, Profile, Project};
use crate::stats::{round3, Summary};
use crate::table::Table;
use crate::{guest, host};

const APP: &str = "diskbench";
/// The disk image: large enough for the sequential pass and the scatter.
const DISK_BYTES: u64 = 256 << 20;
const SEQ_MIB: usize = 64;
const RAND_OPS: usize = 2000;
const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;

pub struct Options {
    pub runs: usize,
    pub json: Option<PathBuf>,
}

pub fn parse(args: &[String]) -> Result<Options> {
    let c = crate::bench_args::parse(args, "disk", 5, 1, |_, _| Ok(false))?;
    Ok(Options {
        runs: c.runs,
        json: c.json,
    })
}

/// The four kinds of work, as diskbench names them, and their size.
const MODES: [(&str, usize); 4] = [
    ("seqwrite", SEQ_MIB),
    ("seqread", SEQ_MIB),
    ("randwrite", RAND_OPS),
    ("randread", RAND_OPS),
];

/// One measurement: bytes, requests, seconds.
#[derive(Clone, Copy)]
struct Sample {
    bytes: f64,
    requests: f64,
    secs: f64,
}

impl Sample {
    fn mib_per_s(self) -> f64 {
        self.bytes / MIB as f64 / self.secs
    }
    fn per_s(self) -> f64 {
        self.requests / self.secs
    }
}

fn tandem_run(tandem: &Path, image: &Path, disk: &Path, mode: &str, n: usize) -> Result<Sample> {
    let out = Command::new(tandem)
        .args(["run", "-q", "--timeout", "300s", "--disk"])
        .arg(format!("path={}", disk.display()))
        .args(["--cmdline", &format!("{mode} {n}")])
        .arg(image)
        .output()
        .context("cannot run tandem")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "diskbench {mode} {n} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("diskbench: "))
        .with_context(|| format!("no diskbench line in {stdout:?}"))?;
    let w: Vec<&str> = line.split(' ').collect();
    let num = |i: usize| -> Result<f64> {
        w.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("bad diskbench line {line:?}"))
    };
    Ok(Sample {
        bytes: num(1)?,
        requests: num(3)?,
        secs: num(5)? / 1e6,
    })
}

/// The same work on a host file, by this process: the same call sizes,
/// the same scatter, the same flush.
fn host_run(path: &Path, mode: &str, n: usize) -> Result<Sample> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let seq = mode.starts_with("seq");
    let unit = if seq { MIB } else { BLOCK };
    let blocks = DISK_BYTES / BLOCK as u64;
    let mut buf: Vec<u8> = (0..unit)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let start = Instant::now();
    for i in 0..n {
        let at = if seq {
            (i * unit) as u64
        } else {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % blocks * BLOCK as u64
        };
        if mode.ends_with("write") {
            file.write_all_at(&buf, at)?;
        } else {
            file.read_exact_at(&mut buf, at)?;
        }
    }
    let mut requests = if seq { n * (unit / (64 * 1024)) } else { n };
    if mode.ends_with("write") {
        file.sync_data()?;
        requests += 1;
    }
    Ok(Sample {
        bytes: (n * unit) as f64,
        requests: requests as f64,
        secs: start.elapsed().as_secs_f64(),
    })
}

fn fresh(path: &Path) -> Result<()> {
    let _ = fs::remove_file(path);
    File::create(path)?.set_len(DISK_BYTES)?;
    Ok(())
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let tandem = project.host_bin(Profile::Release);
    let image = guest::image(project, APP)?;
    let dir = project.target_dir().join("bench").join("disk");
    fs::create_dir_all(&dir)?;
    let (vm_disk, host_disk) = (dir.join("vm.img"), dir.join("host.img"));
    eprintln!(
        "bench disk: {} rounds, each: {SEQ_MIB} MiB written then read in 1 MiB calls, {RAND_OPS} random 4 KiB writes then reads; Tandem VMM and host file interleaved",
        opts.runs
    );
    // samples[mode][0 tandem, 1 host]
    let mut samples: Vec<[Vec<Sample>; 2]> = MODES.iter().map(|_| [vec![], vec![]]).collect();
    for _ in 0..opts.runs {
        fresh(&vm_disk)?;
        fresh(&host_disk)?;
        for (m, &(mode, n)) in MODES.iter().enumerate() {
            samples[m][0].push(tandem_run(&tandem, &image, &vm_disk, mode, n)?);
            samples[m][1].push(host_run(&host_disk, mode, n)?);
        }
    }
    let _ = fs::remove_file(&vm_disk);
    let _ = fs::remove_file(&host_disk);

    let mut table = Table::new(["work", "Tandem VMM", "host file", "ratio"]);
    let mut out = serde_json::Map::new();
    for (m, &(mode, n)) in MODES.iter().enumerate() {
        let seq = mode.starts_with("seq");
        let metric = |s: &Sample| if seq { s.mib_per_s() } else { s.per_s() };
        let t: Vec<f64> = samples[m][0].iter().map(metric).collect();
        let h: Vec<f64> = samples[m][1].iter().map(metric).collect();
        let (t, h) = (
            Summary::of(&t).context("no samples")?,
            Summary::of(&h).context("no samples")?,
        );
        let unit = if seq { "MiB/s" } else { "requests/s" };
        table.row([
            format!("{mode} ({unit})"),
            format!("{:.0}", t.median),
            format!("{:.0}", h.median),
            format!("{:.2}", t.median / h.median),
        ]);
        let v: Value = json!({
            "unit": unit,
            "size": if seq { format!("{n} MiB in 1 MiB calls") } else { format!("{n} x 4 KiB") },
            "tandem": t.to_json(),
            "host_file": h.to_json(),
            "tandem_over_host": round3(t.median / h.median),
        });
        out.insert(mode.into(), v);
    }
    println!("medians of {} rounds", opts.runs);
    table.print();
    let json = json!({
        "what": "diskbench on a virtio-blk disk (sparse file) under the Tandem VMM vs the same calls on a host file; writes end with fdatasync; the guest times its own loop",
        "results": out,
    });
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench").join("disk.json"));
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("{}", project.show(&path));
    Ok(())
}
