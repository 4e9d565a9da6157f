//! `tandem fleet FLEET.toml`: the command line, live progress and output files.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem::fleet::config::{ConfigError, FleetSpec, LimitOverrides};
use tandem::fleet::runner::{self, RunError, RunOptions, Update};
use tandem::fleet::{report, Scheduler};
use tandem::units::{parse_duration, parse_size};

/// Boot the VMs of a fleet file: priorities, `after` ordering gated on
/// `ready()`, admission limits, restarts. Ctrl-C or SIGTERM stops the fleet
/// in reverse dependency order.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// The fleet file (TOML).
    pub config: PathBuf,
    /// Most VMs booting at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_boots: Option<u64>,
    /// Most guest memory of running VMs (default: half the host's available memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Write the report (per-VM times, restarts, exit codes, summary) as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the fleet's boot as a Gantt chart (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
    /// Stop the fleet once every VM is ready (or has ended for good).
    #[arg(long)]
    pub stop_when_ready: bool,
    /// Stop the fleet after this long (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stop_after: Option<Duration>,
    /// How long a VM asked to stop may take before it is killed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stop_grace: Option<Duration>,
    /// Append each VM's console (every attempt) to DIR/NAME.log.
    #[arg(long, value_name = "DIR")]
    pub console_dir: Option<PathBuf>,
    /// Check the fleet file and print the plan; boot nothing.
    #[arg(long)]
    pub check: bool,
    /// Run the VMs without the seccomp syscall filter (for debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Started as root: become this user (name or uid) once /dev/kvm is open.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// With --user: this group (name or gid) instead of the user's own.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

/// Why `tandem fleet` failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The fleet file was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The fleet could not run.
    #[error(transparent)]
    Run(#[from] RunError),
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code: 125 (refused configuration or VMM failure).
    pub fn exit_code(&self) -> u8 {
        tandem::exit_code::VMM_ERROR
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal);
    }
}

fn status_line(s: &Scheduler) -> String {
    let [pending, booting, ready, stopping, restarting, done, failed] = s.counts();
    format!(
        "queued {pending} · booting {booting} · ready {ready} · restarting {restarting} · stopping {stopping} · done {done} · failed {failed}"
    )
}

/// Runs `tandem fleet`; returns the exit code: 0 when no VM failed or was
/// blocked, 1 otherwise. `quiet`: print only errors and the final summary.
pub fn run(args: FleetArgs, quiet: bool) -> Result<u8, CliError> {
    if args.no_seccomp {
        tandem::seccomp::disable();
    }
    let overrides = LimitOverrides {
        max_concurrent_boots: args
            .max_concurrent_boots
            .and_then(|n| usize::try_from(n).ok()),
        memory_budget: args.memory_budget,
    };
    let spec = FleetSpec::load(&args.config, overrides)?;
    if args.check {
        println!(
            "{}: {} VMs, cap {} concurrent boots, memory budget {} MiB",
            args.config.display(),
            spec.vms.len(),
            spec.limits.max_concurrent_boots,
            spec.limits.memory_budget >> 20
        );
        if let Some(n) = &spec.network {
            println!(
                "  network: bridge {} at {}/{}",
                n.bridge, n.gateway, n.prefix_len
            );
        }
        if let Some(b) = &spec.io_budget {
            use tandem::fleet::io::{BATCH_WEIGHT, STANDARD_WEIGHT};
            let rate = b
                .bytes
                .map_or_else(|| "no byte limit".to_string(), |r| format!("{r} B/s"));
            let iops = b
                .ops
                .map_or_else(|| "no request limit".to_string(), |r| format!("{r} IOPS"));
            println!(
                "  io budget: {rate}, {iops}; critical first, then standard {STANDARD_WEIGHT} : batch {BATCH_WEIGHT}"
            );
        }
        for v in &spec.vms {
            let after: Vec<&str> = v.after.iter().map(|&d| spec.vms[d].name.as_str()).collect();
            let net = v.net.as_ref().map_or_else(String::new, |n| {
                let addr = n.ipv4.map_or_else(String::new, |ip| ip.address.to_string());
                let rate = n
                    .limit
                    .bytes
                    .map_or_else(String::new, |b| format!(", {} B/s", b.rate()));
                let pps = n
                    .limit
                    .ops
                    .map_or_else(String::new, |b| format!(", {} frames/s", b.rate()));
                format!("  net {addr} on {}{rate}{pps}", n.tap)
            });
            println!(
                "  {:<20} priority {:>4}  {:>5} MiB  {}{}{net}",
                v.name,
                v.priority,
                v.mem_size >> 20,
                v.image_path.display(),
                if after.is_empty() {
                    String::new()
                } else {
                    format!("  after {}", after.join(", "))
                }
            );
            if v.net.is_some() && !v.cmdline.is_empty() {
                println!("  {:<20} cmdline {}", "", v.cmdline);
            }
            for d in &v.disks {
                let rate = d
                    .limit
                    .bytes
                    .map_or_else(String::new, |b| format!(", {} B/s", b.rate()));
                let iops = d
                    .limit
                    .ops
                    .map_or_else(String::new, |b| format!(", {} IOPS", b.rate()));
                let mode = if d.read_only { "ro" } else { "rw" };
                let class = spec
                    .io_budget
                    .map_or_else(String::new, |_| format!(", {}", v.io_class.name()));
                println!(
                    "  {:<20} disk {} ({mode}{rate}{iops}{class})",
                    "",
                    d.path.display()
                );
            }
        }
        return Ok(0);
    }
    install_stop_signals();
    let opts = RunOptions {
        stop_when_ready: args.stop_when_ready,
        stop_after: args.stop_after,
        stop_flag: Some(&STOP),
        stop_grace: args.stop_grace,
        user: args.user.clone(),
        group: args.group.clone(),
        console_dir: args.console_dir.clone(),
    };
    let tty = std::io::stderr().is_terminal() && !quiet;
    let bar = tty.then(|| {
        let pb = indicatif::ProgressBar::new(spec.vms.len() as u64);
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ready  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        pb.set_style(style);
        pb
    });
    let start = Instant::now();
    let mut last_draw = Instant::now();
    let run = runner::run(&spec, &opts, |s, update| {
        match (&bar, update) {
            (Some(pb), Update::Line(line)) => {
                // On a terminal: the bar, plus the lines that matter.
                if line.contains("->") && !line.ends_with("finished") || line.starts_with("fleet") {
                    pb.println(line);
                }
            }
            (Some(_), Update::Tick) => {}
            (None, Update::Line(line)) if !quiet => {
                eprintln!("[{:>9.3} ms] {line}", start.elapsed().as_secs_f64() * 1e3);
            }
            (None, _) => {}
        }
        if let Some(pb) = &bar {
            if last_draw.elapsed() > Duration::from_millis(50) {
                last_draw = Instant::now();
                pb.set_position(s.counts()[2] as u64);
                pb.set_message(status_line(s));
            }
        }
    })?;
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let sum = report::summary(&run);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::to_json(&run)).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &args.timeline {
        std::fs::write(path, report::to_svg(&run)).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
    }
    eprintln!(
        "fleet: {} VMs, {} became ready{}, {} restarts, {} failed or blocked; ran {:.1} ms",
        sum.vms,
        sum.ready,
        sum.last_ready_ms
            .map(|t| format!(" (last at {t:.1} ms)"))
            .unwrap_or_default(),
        sum.restarts,
        sum.failed,
        run.duration.as_secs_f64() * 1e3
    );
    for c in &sum.classes {
        eprintln!(
            "  priority {:>4}: {} VMs, ready p50 {} p99 {}",
            c.priority,
            c.vms,
            c.p50_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
            c.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
        );
    }
    if !run.running_at_stop.is_empty() && !quiet {
        eprintln!("  running when stopped: {}", run.running_at_stop.join(", "));
    }
    for r in &run.vms {
        if matches!(r.state.as_str(), "failed" | "blocked") {
            eprintln!(
                "  {} {}: {}",
                r.name,
                r.state,
                r.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(if sum.failed > 0 { 1 } else { 0 })
}
