//! `cargo xtask bench backup`, the disk's dimension: what a backup point
//! of a VM with a disk costs against the disk blocks dirtied since the
//! previous point. `kvstore` on a 64 MiB disk puts N keys of 4000-byte
//! values (each record one 4 KiB block of its log, flushed), then asks for
//! a snapshot, which with backups on is also a backup point at the same
//! stop; the run's JSON report gives that point's pages, blocks and write
//! time (fsyncs included). Medians of interleaved runs
//! (`target/bench/backup-disk.json`). The point's guest pause is the
//! write time while points are written on the vCPU thread.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::project::{self, Profile, Project};
use crate::stats::{round3, Summary};
use crate::table::Table;
use crate::{guest, host};

const APP: &str = "kvstore";
const DISK_BYTES: u64 = 64 << 20;
/// Keys put before the point: each is one dirty block.
const KEYS: [usize; 4] = [16, 256, 1024, 4096];
const VALUE_BYTES: usize = 4000;
const MIB: f64 = (1 << 20) as f64;

pub struct Options {
    pub runs: usize,
    pub json: Option<PathBuf>,
}

pub fn parse(args: &[String]) -> Result<Options> {
    let c = crate::bench_args::parse(args, "backup", 3, 1, |_, _| Ok(false))?;
    Ok(Options {
        runs: c.runs,
        json: c.json,
    })
}

/// One point: pages, blocks, milliseconds, bytes of its files.
#[derive(Clone, Copy)]
struct Sample {
    pages: f64,
    blocks: f64,
    ms: f64,
    bytes: f64,
}

fn one(tandem: &Path, image: &Path, dir: &Path, keys: usize) -> Result<Sample> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let disk = dir.join("kv.img");
    File::create(&disk)?.set_len(DISK_BYTES)?;
    let chain = dir.join("chain");
    let mut child = Command::new(tandem)
        .args(["run", "-q", "--json", "--timeout", "600s", "--disk"])
        .arg(format!("path={}", disk.display()))
        .arg("--snapshot-dir")
        .arg(dir.join("snap"))
        .arg("--backup-dir")
        .arg(&chain)
        .args(["--backup-every", "1h"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run tandem")?;
    let value = "v".repeat(VALUE_BYTES);
    let mut input = String::new();
    for k in 0..keys {
        input.push_str(&format!("put k{k:06} {value}\n"));
    }
    input.push_str("snapshot\n");
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stdout.contains("snapshot taken") {
        bail!("kvstore with {keys} keys failed: {stdout}{stderr}");
    }
    let report: Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON report in {stderr:?}"))?;
    let point = report["backups"]
        .as_array()
        .and_then(|b| b.iter().find(|p| p["point"] == 1))
        .with_context(|| format!("no backup point 1 in {report}"))?;
    let num = |k: &str| point[k].as_f64().unwrap_or(f64::NAN);
    // The point's files: its pages, its blocks and its metadata.
    let mut bytes = 0u64;
    for e in fs::read_dir(&chain)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("point-000001") {
            bytes += e.metadata()?.len();
        }
    }
    let _ = fs::remove_dir_all(dir);
    Ok(Sample {
        pages: num("pages"),
        blocks: num("blocks"),
        ms: num("ms"),
        bytes: bytes as f64,
    })
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let tandem = project.host_bin(Profile::Release);
    let image = guest::image(project, APP)?;
    let dir = project.target_dir().join("bench").join("backup-disk");
    eprintln!(
        "bench backup: {} rounds; kvstore puts N keys ({VALUE_BYTES}-byte values, one 4 KiB block each) on a 64 MiB disk, then a point; N = {KEYS:?}, interleaved",
        opts.runs
    );
    let mut samples: Vec<Vec<Sample>> = KEYS.iter().map(|_| Vec::new()).collect();
    for _ in 0..opts.runs {
        for (i, &keys) in KEYS.iter().enumerate() {
            samples[i].push(one(&tandem, &image, &dir, keys)?);
        }
    }
    let mut table = Table::new([
        "keys put",
        "dirty blocks",
        "dirty pages",
        "point (ms)",
        "point max (ms)",
        "point MiB",
    ]);
    let mut rows = Vec::new();
    for (i, &keys) in KEYS.iter().enumerate() {
        let of = |f: fn(&Sample) -> f64| {
            let v: Vec<f64> = samples[i].iter().map(f).collect();
            Summary::of(&v).context("no samples")
        };
        let (blocks, pages, ms, bytes) = (
            of(|s| s.blocks)?,
            of(|s| s.pages)?,
            of(|s| s.ms)?,
            of(|s| s.bytes)?,
        );
        table.row([
            keys.to_string(),
            format!("{:.0}", blocks.median),
            format!("{:.0}", pages.median),
            format!("{:.1}", ms.median),
            format!("{:.1}", ms.max),
            format!("{:.2}", bytes.median / MIB),
        ]);
        rows.push(json!({
            "keys": keys,
            "dirty_blocks": blocks.to_json(),
            "dirty_pages": pages.to_json(),
            "point_ms": ms.to_json(),
            "point_mib": round3(bytes.median / MIB),
        }));
    }
    println!("medians of {} rounds", opts.runs);
    table.print();
    let json = json!({
        "what": "a backup point of kvstore on a 64 MiB disk after N puts (one dirty 4 KiB block each): its pages, blocks, write time (fsyncs included) and bytes",
        "by_dirty_blocks": rows,
    });
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench").join("backup-disk.json"));
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("{}", project.show(&path));
    Ok(())
}
