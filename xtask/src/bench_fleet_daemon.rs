//! The daemon case of `cargo xtask bench fleet`: the same fleets (the
//! `service` app, 6 MiB each) through a release `tandemd` on a private
//! socket and state directory, its VMs spread over worker processes
//! (`--vms-per-worker`). The VMs are created, then all started by
//! [`CLIENTS`] client threads on keep-alive connections; the ready times
//! come from the daemon's event log (`GET /v1/events?since=SEQ`, polled
//! while they boot): the daemon's clock when its tick saw each VM ready.
//! Reports time from the first start request until every VM was ready, VMs
//! ready per second, p50/p99 time to ready, and the load average then.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tandem_abi::stats::quantile;

/// Client threads creating and starting VMs.
pub const CLIENTS: usize = 8;
/// How long a fleet may take to be all ready.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
/// How often the event log is read while the VMs boot.
const POLL: Duration = Duration::from_millis(50);

/// A keep-alive HTTP/1.1 connection to the daemon.
struct Conn {
    r: BufReader<UnixStream>,
}

impl Conn {
    fn open(socket: &Path) -> Result<Self> {
        let s = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            r: BufReader::new(s),
        })
    }

    /// One request: its status and body.
    fn call(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        write!(
            self.r.get_mut(),
            "{method} {path} HTTP/1.1\r\nHost: tandemd\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("{method} {path}: not an HTTP answer: {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                bail!("{method} {path}: connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().context("Content-Length")?;
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A request that must answer `want`.
    fn expect(&mut self, method: &str, path: &str, body: &str, want: u16) -> Result<String> {
        let (status, text) = self.call(method, path, body)?;
        if status != want {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        Ok(text)
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A release tandemd on a private directory; killed, with its workers,
/// when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    workers: Vec<u32>,
}

impl Daemon {
    fn start(bin: &Path, dir: &Path, per_worker: usize) -> Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let socket = dir.join("api.sock");
        let log = fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--vms-per-worker")
            .arg(per_worker.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start tandemd")?;
        let d = Self {
            child,
            dir: dir.to_path_buf(),
            socket,
            workers: Vec::new(),
        };
        let t = Instant::now();
        while Conn::open(&d.socket)
            .and_then(|mut c| c.expect("GET", "/healthz", "", 200))
            .is_err()
        {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("tandemd did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its workers (and their VMs), by pid, so the next case starts on
        // an idle machine.
        for &pid in &self.workers {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let t = Instant::now();
        while self
            .workers
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && t.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` over `0..n` on [`CLIENTS`] threads, each with its own
/// connection.
fn fan_out(
    socket: &Path,
    n: usize,
    f: impl Fn(&mut Conn, usize) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let f = &f;
                s.spawn(move || -> Result<()> {
                    let mut c = Conn::open(socket)?;
                    for i in (t..n).step_by(CLIENTS) {
                        f(&mut c, i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })
}

/// The last event's number.
fn last_seq(c: &mut Conn) -> Result<u64> {
    let v: Value = serde_json::from_str(&c.expect("GET", "/v1/events", "", 200)?)?;
    Ok(v["events"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0))
}

/// One fleet of `n` VMs through a fresh daemon: its figures as JSON.
pub fn run(bin: &Path, image: &Path, n: usize, per_worker: usize) -> Result<Value> {
    let dir = std::env::temp_dir().join(format!(
        "tandem-bench-fleetd-{}-{n}-{per_worker}",
        std::process::id()
    ));
    let mut d = Daemon::start(bin, &dir, per_worker)?;
    let socket = d.socket.clone();
    let t = Instant::now();
    fan_out(&socket, n, |c, i| {
        let body = format!(
            r#"{{"name":"vm-{i}","image":"{}","memory":"6M"}}"#,
            image.display()
        );
        c.expect("POST", "/v1/vms", &body, 201).map(drop)
    })?;
    let create_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut poll = Conn::open(&socket)?;
    let mut seq = last_seq(&mut poll)?;

    let t0 = now_ms();
    let started = Instant::now();
    let mut ready: HashMap<String, f64> = HashMap::new();
    let mut starting: HashMap<String, f64> = HashMap::new();
    let mut failed = Vec::new();
    let mut start_ms = 0.0;
    std::thread::scope(|s| -> Result<()> {
        let starter = s.spawn(|| {
            fan_out(&socket, n, |c, i| {
                c.expect("POST", &format!("/v1/vms/vm-{i}/start"), "", 200)
                    .map(drop)
            })
            .map(|()| started.elapsed().as_secs_f64() * 1e3)
        });
        while ready.len() < n {
            if started.elapsed() > READY_TIMEOUT {
                bail!("only {} of {n} VMs became ready", ready.len());
            }
            std::thread::sleep(POLL);
            let v: Value = serde_json::from_str(&poll.expect(
                "GET",
                &format!("/v1/events?since={seq}"),
                "",
                200,
            )?)?;
            for e in v["events"].as_array().into_iter().flatten() {
                seq = seq.max(e["seq"].as_u64().unwrap_or(0));
                let (vm, at) = (
                    e["vm"].as_str().unwrap_or_default().to_string(),
                    e["at_ms"].as_f64().unwrap_or(0.0),
                );
                match e["kind"].as_str() {
                    Some("ready") => {
                        ready.entry(vm).or_insert(at);
                    }
                    Some("starting") => {
                        starting.entry(vm).or_insert(at);
                    }
                    Some("failed" | "exited" | "worker-lost") => failed.push(format!(
                        "{vm}: {}",
                        e["detail"].as_str().unwrap_or_default()
                    )),
                    _ => {}
                }
            }
            if !failed.is_empty() {
                bail!("VMs ended before ready: {}", failed.join("; "));
            }
        }
        start_ms = starter
            .join()
            .map_err(|_| anyhow::anyhow!("the start thread panicked"))??;
        Ok(())
    })?;
    let load = loadavg();
    let v: Value = serde_json::from_str(&poll.expect("GET", "/v1/vms", "", 200)?)?;
    d.workers = v["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["worker"]["pid"].as_u64())
        .filter_map(|p| u32::try_from(p).ok())
        .collect();
    d.workers.sort_unstable();
    d.workers.dedup();
    let workers = d.workers.len();
    drop(poll);
    drop(d);

    // Time to ready from the first start request, and from the VM's own
    // start (its `starting` event).
    let mut to_ready: Vec<f64> = ready.values().map(|&at| (at - t0).max(0.0)).collect();
    to_ready.sort_by(f64::total_cmp);
    let mut boot: Vec<f64> = ready
        .iter()
        .filter_map(|(vm, &at)| starting.get(vm).map(|s| (at - s).max(0.0)))
        .collect();
    boot.sort_by(f64::total_cmp);
    let all_ready = to_ready.last().copied().unwrap_or(0.0);
    Ok(json!({
        "vms": n,
        "mode": "tandemd",
        "vms_per_worker": per_worker,
        "workers": workers,
        "clients": CLIENTS,
        "create_all_ms": create_ms,
        "start_requests_ms": start_ms,
        "all_ready_ms": all_ready,
        "ready_per_sec": if all_ready > 0.0 { n as f64 * 1e3 / all_ready } else { 0.0 },
        "ready_p50_ms": quantile(&to_ready, 0.5),
        "ready_p99_ms": quantile(&to_ready, 0.99),
        "boot_p50_ms": quantile(&boot, 0.5),
        "boot_p99_ms": quantile(&boot, 0.99),
        "loadavg_1m": load,
    }))
}
