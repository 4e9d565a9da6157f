//! `cargo xtask bench api`: the `tandemd` API's request latency (p50, p99)
//! for `POST /v1/vms` (create) and `POST /v1/vms/NAME/start` (recorded in
//! the state database and handed to a worker), `GET /v1/vms` with every VM
//! listed, and the memory an idle VM costs (the workers' resident memory
//! over the VMs they hold, with the `service` app idle after `ready()`).
//! The daemon is a release build on a private socket; every request is a
//! new connection, as `curl --unix-socket` makes.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tandem_abi::stats::quantile;

use crate::project::{Profile, Project};
use crate::stats::{round3, Summary};
use crate::{guest, host};

pub struct Options {
    /// VMs created and started (the measured requests of each kind).
    pub runs: usize,
    /// `--vms-per-worker` of the daemon.
    pub per_worker: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
}

/// Parses `--runs N` (VMs, default 100), `--vms-per-worker N`, `--json FILE`.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut per_worker = 64;
    let c = crate::bench_args::parse(args, "api", 100, 10, |flag, it| {
        Ok(flag == "--vms-per-worker" && {
            let v = crate::bench_args::value(flag, it)?;
            per_worker = v
                .parse()
                .with_context(|| format!("--vms-per-worker takes a number, not `{v}`"))?;
            true
        })
    })?;
    Ok(Options {
        runs: c.runs,
        per_worker,
        json: c.json,
    })
}

/// One request on a new connection: its status and body.
fn request(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: tandemd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A request that must answer `want`; its time in milliseconds.
fn timed(socket: &Path, method: &str, path: &str, body: &str, want: u16) -> Result<f64> {
    let t = Instant::now();
    let (status, text) = request(socket, method, path, body)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if status != want {
        bail!("{method} {path}: HTTP {status}: {text}");
    }
    Ok(ms)
}

/// Resident memory of a process, from `/proc/PID/status` (bytes).
fn rss(pid: u64) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// p50, p99 and the rest, as JSON and for the table.
fn latency(samples: &[f64]) -> Result<(Summary, f64)> {
    let s = Summary::of(samples).context("no samples")?;
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p99 = quantile(&sorted, 0.99).context("no samples")?;
    Ok((s, p99))
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its workers end when their sockets go.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    guest::build(project)?;
    let bin = host::build_daemon(project, Profile::Release)?;
    let image = guest::image(project, "service")?;
    let dir = std::env::temp_dir().join(format!("tandem-bench-api-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let socket = dir.join("api.sock");
    let log = fs::File::create(dir.join("daemon.log"))?;
    let child = Command::new(&bin)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--vms-per-worker")
        .arg(opts.per_worker.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start tandemd")?;
    let d = Daemon {
        child,
        dir: dir.clone(),
    };
    let start = Instant::now();
    while request(&socket, "GET", "/healthz", "").is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("tandemd did not answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    eprintln!(
        "bench api: {} VMs (service, 8M), {} a worker",
        opts.runs, opts.per_worker
    );
    let mut create = Vec::new();
    let mut start_ms = Vec::new();
    for i in 0..opts.runs {
        let body = format!(
            r#"{{"name":"vm-{i}","image":"{}","memory":"8M"}}"#,
            image.display()
        );
        create.push(timed(&socket, "POST", "/v1/vms", &body, 201)?);
        start_ms.push(timed(
            &socket,
            "POST",
            &format!("/v1/vms/vm-{i}/start"),
            "",
            200,
        )?);
    }
    // Every VM ready (idle in the host after ready()).
    let deadline = Instant::now() + Duration::from_secs(300);
    let vms: Vec<Value> = loop {
        let (_, body) = request(&socket, "GET", "/v1/vms", "")?;
        let v: Value = serde_json::from_str(&body)?;
        let vms = v["vms"].as_array().cloned().unwrap_or_default();
        let ready = vms.iter().filter(|v| v["state"] == "ready").count();
        if ready == opts.runs {
            break vms;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {} VMs became ready", opts.runs);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut list = Vec::new();
    for _ in 0..20 {
        list.push(timed(&socket, "GET", "/v1/vms", "", 200)?);
    }
    let mut workers: Vec<u64> = vms
        .iter()
        .filter_map(|v| v["worker"]["pid"].as_u64())
        .collect();
    workers.sort_unstable();
    workers.dedup();
    let workers_rss: u64 = workers.iter().filter_map(|&p| rss(p)).sum();
    let daemon_rss = rss(u64::from(d.child.id())).unwrap_or(0);
    let per_vm = workers_rss as f64 / opts.runs as f64;

    for i in 0..opts.runs {
        let _ = request(&socket, "DELETE", &format!("/v1/vms/vm-{i}"), "");
    }
    drop(d);

    let (c, c99) = latency(&create)?;
    let (s, s99) = latency(&start_ms)?;
    let (l, l99) = latency(&list)?;
    let mut t = crate::table::Table::new(["request (ms)", "p50", "p99", "min", "max"]);
    for (what, s, p99) in [
        ("POST /v1/vms (create)", c, c99),
        ("POST /v1/vms/NAME/start", s, s99),
        ("GET /v1/vms (all listed)", l, l99),
    ] {
        t.row([
            what.to_string(),
            format!("{:.3}", s.median),
            format!("{p99:.3}"),
            format!("{:.3}", s.min),
            format!("{:.3}", s.max),
        ]);
    }
    t.print();
    let mib = |b: f64| b / f64::from(1u32 << 20);
    println!(
        "memory per idle VM: {:.2} MiB ({} workers, {:.1} MiB resident for {} VMs; daemon {:.1} MiB)",
        mib(per_vm),
        workers.len(),
        mib(workers_rss as f64),
        opts.runs,
        mib(daemon_rss as f64)
    );
    let with_p99 = |s: Summary, p99: f64| {
        let mut v = s.to_json();
        v["p99"] = json!(round3(p99));
        v
    };
    let json = json!({
        "what": "tandemd API latency (ms, a new connection per request) and memory per idle VM",
        "vms": opts.runs,
        "vms_per_worker": opts.per_worker,
        "create_ms": with_p99(c, c99),
        "start_ms": with_p99(s, s99),
        "list_ms": with_p99(l, l99),
        "workers": workers.len(),
        "workers_rss_bytes": workers_rss,
        "daemon_rss_bytes": daemon_rss,
        "rss_per_idle_vm_bytes": per_vm.round(),
    });
    let out_dir = project.target_dir().join("bench");
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| out_dir.join("api.json"));
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("{}", project.show(&path));
    Ok(())
}
