//! `cargo xtask bench net`: `httpd` on the Tandem VMM (a tap) against the
//! same image under QEMU microvm + KVM (user networking): spawn to the
//! first HTTP 200, cold and (Tandem) restored from a snapshot taken at
//! `ready()`, runs interleaved; then requests per second and latency
//! over one kept-alive connection on both, next to the same response served
//! by a thread of this process on 127.0.0.1; then the Tandem VMM's exits per
//! request. As root (the bench makes a tap).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tandem_abi::stats::quantile;

use crate::bench_net_http::{self as http, Client};
use crate::project::{self, Profile, Project};
use crate::stats::{round3, Summary};
use crate::table::Table;
use crate::{guest, host, qemu};

const APP: &str = "httpd";
/// The tap's side and the guest's side of the bench's network.
const HOST_IP: &str = "10.98.0.1";
const GUEST_IP: &str = "10.98.0.2";
const PREFIX: u8 = 24;
/// The guest's MAC, also entered as a permanent neighbour on the tap, so no
/// ARP round (and its one-second retry) sits between the guest's start and
/// the first SYN that reaches it.
const GUEST_MAC: &str = "02:98:00:00:00:02";
/// How long one attempt (connect, then the response) may take while
/// polling for the first 200: a SYN or request sent before the guest is up
/// is lost or held, so this is the granularity of the spawn figures.
const ATTEMPT: Duration = Duration::from_millis(25);
/// How long a VM may take to answer its first 200.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// The `tandem run --timeout` of the exits runs: long enough for the
/// requests, after which the VMM stops the VM and prints its report.
const EXITS_TIMEOUT_S: u64 = 6;

pub struct Options {
    /// Spawn-to-first-200 runs of each VMM.
    pub runs: usize,
    /// Requests over one kept-alive connection.
    pub requests: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
}

/// Parses `--runs N`, `--requests N` and `--json FILE`.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut requests = 2000;
    let c = crate::bench_args::parse(args, "net", 10, 1, |flag, it| {
        if flag != "--requests" {
            return Ok(false);
        }
        let v = crate::bench_args::value(flag, it)?;
        requests = v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--requests takes a positive number, not `{v}`"))?;
        Ok(true)
    })?;
    Ok(Options {
        runs: c.runs,
        requests,
        json: c.json,
    })
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bench's tap, deleted on drop.
struct Tap {
    name: String,
}

impl Tap {
    fn create() -> Result<Tap> {
        let name = format!("tdmbench{}", std::process::id() % 100_000);
        ip(&["tuntap", "add", &name, "mode", "tap"])?;
        let tap = Tap { name };
        ip(&[
            "addr",
            "add",
            &format!("{HOST_IP}/{PREFIX}"),
            "dev",
            &tap.name,
        ])?;
        ip(&["link", "set", &tap.name, "up"])?;
        Ok(tap)
    }

    /// The guest's neighbour entry (again before each VM: a tap without a
    /// VM loses its carrier, and the kernel may drop the entry then).
    fn pin_neighbour(&self) -> Result<()> {
        ip(&[
            "neigh",
            "replace",
            GUEST_IP,
            "lladdr",
            GUEST_MAC,
            "dev",
            &self.name,
            "nud",
            "permanent",
        ])
    }

    fn net_arg(&self) -> String {
        format!(
            "tap={},mac={GUEST_MAC},ip={GUEST_IP}/{PREFIX},gw={HOST_IP}",
            self.name
        )
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A running VM (a `tandem run` or a QEMU), killed and reaped on drop.
struct Vm {
    child: Child,
    addr: SocketAddr,
    spawned: Instant,
}

impl Vm {
    fn tandem(tandem: &Path, image: &Path, tap: &Tap, extra: &[&str]) -> Result<Vm> {
        tap.pin_neighbour()?;
        let mut cmd = Command::new(tandem);
        cmd.arg("run")
            .arg(image)
            .args(["--net", &tap.net_arg()])
            .args(extra);
        let addr = SocketAddr::new(GUEST_IP.parse()?, 80);
        Vm::spawn(cmd, addr)
    }

    /// `tandem restore SNAP` on `tap` (the snapshot's MAC and address).
    fn restored(tandem: &Path, snap: &Path, tap: &Tap) -> Result<Vm> {
        tap.pin_neighbour()?;
        let mut cmd = Command::new(tandem);
        cmd.arg("restore")
            .arg(snap)
            .args(["--net", &format!("tap={}", tap.name)]);
        let addr = SocketAddr::new(GUEST_IP.parse()?, 80);
        Vm::spawn(cmd, addr)
    }

    fn qemu(image: &Path) -> Result<Vm> {
        let port = free_port()?;
        let forwards = qemu::app_forwards(APP, port).context("httpd is not a network app")?;
        let cmd = qemu::command_with_net(
            qemu::Machine::Microvm,
            qemu::Accel::Kvm,
            &qemu::Boot::Pvh { image, cmdline: "" },
            Some(&forwards),
        );
        Vm::spawn(cmd, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn spawn(mut cmd: Command, addr: SocketAddr) -> Result<Vm> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        Ok(Vm {
            child,
            addr,
            spawned,
        })
    }

    /// Polls until `GET /` answers 200: the milliseconds since the spawn and
    /// the response's bytes.
    fn first_200(&mut self) -> Result<(f64, Vec<u8>)> {
        let child = &mut self.child;
        let (at, bytes) = http::first_200(self.addr, ATTEMPT, READY_LIMIT, || {
            match child.try_wait()? {
                Some(st) => bail!("the VM ended ({st}) before it answered"),
                None => Ok(()),
            }
        })?;
        Ok(((at - self.spawned).as_secs_f64() * 1e3, bytes))
    }

    /// Waits for the VM to end by itself; its stderr.
    fn wait_stderr(mut self) -> Result<String> {
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut text)?;
        }
        self.child.wait()?;
        Ok(text)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 free a moment ago.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Throughput and latency of one request loop.
struct Rate {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Rate {
    fn measure(to: SocketAddr, n: usize) -> Result<Rate> {
        let mut c = Client::connect(to, Duration::from_secs(5))
            .with_context(|| format!("cannot connect to {to}"))?;
        let (mut lat, total) = http::request_loop(&mut c, n)?;
        lat.sort_by(f64::total_cmp);
        let q = |p| quantile(&lat, p).map(|s| s * 1e6).context("no samples");
        Ok(Rate {
            per_s: n as f64 / total.as_secs_f64(),
            p50_us: q(0.5)?,
            p99_us: q(0.99)?,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "requests_per_s": round3(self.per_s),
            "p50_us": round3(self.p50_us),
            "p99_us": round3(self.p99_us),
        })
    }
}

/// The VMM's exit count from a `tandem run --json` report on stderr.
fn exits_of(stderr: &str) -> Result<u64> {
    let start = stderr
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| stderr.starts_with('{').then_some(0))
        .with_context(|| format!("no JSON report in tandem's output:\n{stderr}"))?;
    let v: Value = serde_json::from_str(stderr[start..].trim())
        .with_context(|| format!("not a JSON report:\n{stderr}"))?;
    v["exits"]
        .as_u64()
        .with_context(|| format!("no exit count in the report: {v}"))
}

/// Exits of a VM that answers one `GET /` then `requests` more, and of one
/// that answers one and idles, both stopped by the same `--timeout`.
fn exits_per_request(tandem: &Path, image: &Path, tap: &Tap, requests: usize) -> Result<Value> {
    let timeout = format!("{EXITS_TIMEOUT_S}s");
    let extra = ["--json", "--timeout", timeout.as_str()];
    let mut counts = Vec::new();
    for n in [requests, 0] {
        let mut vm = Vm::tandem(tandem, image, tap, &extra)?;
        vm.first_200()?;
        if n > 0 {
            let mut c = Client::connect(vm.addr, Duration::from_secs(5))?;
            let (_, took) = http::request_loop(&mut c, n)?;
            if took.as_secs() + 1 >= EXITS_TIMEOUT_S {
                bail!("{n} requests took {took:?}, too close to the {timeout} timeout");
            }
        }
        counts.push(exits_of(&vm.wait_stderr()?)?);
    }
    let per = (counts[0] as f64 - counts[1] as f64) / requests as f64;
    Ok(json!({
        "how": "exits of a VM that answered 1 + requests GETs minus those of one that answered 1, both run to the same --timeout, divided by requests",
        "requests": requests,
        "timeout_s": EXITS_TIMEOUT_S,
        "exits_with_requests": counts[0],
        "exits_idle": counts[1],
        "exits_per_request": round3(per),
    }))
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench net makes a tap: run it as root (sudo -E cargo xtask bench net)");
    }
    project::require_kvm()?;
    qemu::ensure_tools(qemu::QEMU_TOOLS)?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let tandem = project.host_bin(Profile::Release);
    let image = guest::image(project, APP)?;
    let tap = Tap::create()?;

    // httpd frozen at ready(), for the restored spawns.
    let snap = project.target_dir().join("bench").join("net-snapshot");
    let _ = fs::remove_dir_all(&snap);
    let snap_arg = snap.to_string_lossy().into_owned();
    let made = Vm::tandem(
        &tandem,
        &image,
        &tap,
        &["--snapshot-at-ready", &snap_arg, "--exit-after-snapshot"],
    )?
    .wait_stderr()?;
    if !snap.join("state").is_file() {
        bail!("httpd wrote no snapshot at ready(): {made}");
    }

    eprintln!(
        "bench net: {} spawn runs of each, interleaved, after 1 warm-up run",
        opts.runs
    );
    let mut spawn = [Vec::new(), Vec::new(), Vec::new()];
    let mut page = Vec::new();
    for i in 0..=opts.runs {
        let (t_ms, bytes) = Vm::tandem(&tandem, &image, &tap, &[])?.first_200()?;
        let (r_ms, _) = Vm::restored(&tandem, &snap, &tap)?.first_200()?;
        let (q_ms, _) = Vm::qemu(&image)?.first_200()?;
        page = bytes;
        if i > 0 {
            spawn[0].push(t_ms);
            spawn[1].push(q_ms);
            spawn[2].push(r_ms);
        }
    }

    eprintln!(
        "bench net: {} requests over one kept-alive connection each",
        opts.requests
    );
    let host_addr = http::host_responder(page.clone())?;
    let mut vm = Vm::tandem(&tandem, &image, &tap, &[])?;
    vm.first_200()?;
    let tandem_rate = Rate::measure(vm.addr, opts.requests)?;
    drop(vm);
    let mut vm = Vm::qemu(&image)?;
    vm.first_200()?;
    let qemu_rate = Rate::measure(vm.addr, opts.requests)?;
    drop(vm);
    let host_rate = Rate::measure(host_addr, opts.requests)?;

    eprintln!("bench net: exits per request on the Tandem VMM");
    let exits = exits_per_request(&tandem, &image, &tap, opts.requests)?;
    drop(tap);

    let t_s = Summary::of(&spawn[0]).context("no samples")?;
    let q_s = Summary::of(&spawn[1]).context("no samples")?;
    let r_s = Summary::of(&spawn[2]).context("no samples")?;
    crate::table::print_summaries(
        "spawn to first 200 (ms)",
        &[
            ("Tandem VMM, tap", t_s),
            ("Tandem VMM, tap, restored at ready()", r_s),
            ("QEMU microvm + KVM, user net", q_s),
        ],
    );
    println!();
    let mut table = Table::new([
        "GET / on one connection",
        "requests/s",
        "p50 (us)",
        "p99 (us)",
        "vs host",
    ]);
    for (name, r) in [
        ("Tandem VMM, tap", &tandem_rate),
        ("QEMU microvm + KVM, user net", &qemu_rate),
        ("host thread, 127.0.0.1", &host_rate),
    ] {
        table.row([
            name.into(),
            format!("{:.0}", r.per_s),
            format!("{:.0}", r.p50_us),
            format!("{:.0}", r.p99_us),
            format!("{:.2}", r.per_s / host_rate.per_s),
        ]);
    }
    table.print();
    println!(
        "\nTandem VMM: {} exits per request",
        exits["exits_per_request"]
    );

    let json = json!({
        "what": "httpd: spawn to the first HTTP 200 on GET / (cold, and restored from a snapshot taken at ready()), then GET / over one kept-alive connection",
        "spawn_to_first_200_ms": {
            "tandem_tap": t_s.to_json(),
            "tandem_tap_restored": r_s.to_json(),
            "qemu_microvm_kvm_user": q_s.to_json(),
            "poll_attempt_ms": ATTEMPT.as_millis(),
        },
        "keepalive": {
            "requests": opts.requests,
            "tandem_tap": tandem_rate.to_json(),
            "qemu_microvm_kvm_user": qemu_rate.to_json(),
            "host_thread": host_rate.to_json(),
            "tandem_over_host": round3(tandem_rate.per_s / host_rate.per_s),
            "qemu_over_host": round3(qemu_rate.per_s / host_rate.per_s),
        },
        "tandem_exits": exits,
    });
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| project.target_dir().join("bench").join("net.json"));
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("{}", project.show(&path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let o = parse(&words("--requests 50 --runs 3")).unwrap();
        assert_eq!((o.runs, o.requests), (3, 50));
        let o = parse(&[]).unwrap();
        assert_eq!((o.runs, o.requests, o.json), (10, 2000, None));
        assert!(parse(&words("--requests 0")).is_err());
        assert!(parse(&words("--requests")).is_err());
    }

    #[test]
    fn exit_count_from_the_report() {
        let err = "tandem: timed out\n{\n  \"exits\": 812,\n  \"status\": \"x\"\n}\n";
        assert_eq!(exits_of(err).unwrap(), 812);
        assert_eq!(exits_of("{\"exits\": 3}").unwrap(), 3);
        assert!(exits_of("no report").is_err());
    }
}
