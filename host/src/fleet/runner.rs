//! Runs a fleet: the [`Scheduler`] decides, this module does. Every VM
//! attempt boots in-process on a thread of its own (the vCPU thread) with
//! a [`VmHandle`] whose events (running, `ready()`) and end come back over
//! one channel; the main loop feeds them to the scheduler and executes its
//! actions. A VM that fails in any way ends its own thread and nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_abi::trace::Phase;

use super::config::FleetSpec;
use super::scheduler::{Action, Outcome, Sample, Scheduler, StartSource, VmRecord};
use crate::control::{VmEvent, VmHandle};
use crate::kvm::Hypervisor;
use crate::snapshot::Snapshot;
use crate::trace::rdtsc;
use crate::vm::{ExitStatus, RunReport, SnapshotTrigger, Vm, VmBuilder, VmConfig};
use crate::ConsoleSink;

/// Stack of each vCPU thread: the run loop needs a few pages of buffers.
const VCPU_STACK: usize = 512 << 10;
/// Most console bytes kept from a failed attempt, for its report.
const CONSOLE_TAIL: usize = 512;
/// Longest the main loop sleeps without looking at signals and progress.
const TICK: Duration = Duration::from_millis(50);

/// Why a fleet could not run at all (a VM's failure never ends the fleet).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `/dev/kvm` could not be opened.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    /// Privileges could not be dropped.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
}

/// How to run a fleet.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop the fleet once every VM is ready or has ended for good.
    pub stop_when_ready: bool,
    /// Stop the fleet after this long.
    pub stop_after: Option<Duration>,
    /// Stop the fleet when this becomes true (signal handlers set it).
    pub stop_flag: Option<&'static AtomicBool>,
    /// How long a VM asked to stop may take before it is killed.
    pub stop_grace: Option<Duration>,
    /// Become this user (and group) once `/dev/kvm` is open, before any VM
    /// thread starts.
    pub user: Option<String>,
    /// With `user`: this group instead of the user's own.
    pub group: Option<String>,
}

/// What happened, for live displays.
#[derive(Debug, Clone)]
pub enum Update {
    /// Something worth a line.
    Line(String),
    /// Nothing in particular (redraw a progress bar).
    Tick,
}

/// Everything a fleet run recorded.
#[derive(Debug, Clone)]
pub struct FleetRun {
    /// Per VM, in file order.
    pub vms: Vec<VmRecord>,
    /// The load over time.
    pub samples: Vec<Sample>,
    /// The limits it ran under.
    pub limits: super::config::Limits,
    /// From start to the last VM's end.
    pub duration: Duration,
    /// When the fleet was asked to stop, if it was.
    pub stopped_at: Option<Duration>,
    /// What was running when it was asked to stop.
    pub running_at_stop: Vec<String>,
    /// Resident memory of this process when every VM was ready or done (bytes).
    pub rss_when_settled: Option<u64>,
}

enum Msg {
    Event(usize, VmEvent, Duration),
    Ended {
        vm: usize,
        result: Box<Result<RunReport, String>>,
        started: Duration,
        console_tail: String,
        restored: bool,
    },
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
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

/// Each VM holds two descriptors (VM and vCPU): lift the soft limit on
/// open files to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn outcome(result: &Result<RunReport, String>) -> Outcome {
    match result {
        Ok(r) => match &r.status {
            ExitStatus::Exited(c) => Outcome::Exited(*c),
            ExitStatus::Stopped => Outcome::Stopped,
            ExitStatus::Snapshotted(_) => Outcome::Exited(0),
            ExitStatus::Crashed(why) => Outcome::Crashed(format!("crashed: {why}")),
            ExitStatus::ProtocolViolation(e) => {
                Outcome::Crashed(format!("broke the hypercall protocol: {e}"))
            }
            ExitStatus::TimedOut(d) => Outcome::Crashed(format!("timed out after {d:?}")),
        },
        Err(e) => Outcome::Error(e.clone()),
    }
}

/// Boots one attempt to its end on the calling thread.
fn boot(
    hv: &Hypervisor,
    spec: &super::config::VmSpec,
    source: &StartSource,
    handle: VmHandle,
    console: ConsoleSink,
    vm_id: u64,
) -> Result<RunReport, String> {
    let start = rdtsc();
    let config = VmConfig {
        mem_size: spec.mem_size,
        cmdline: spec.cmdline.clone(),
        console,
        vm_id,
        handle: Some(handle),
        snapshot_at_ready: match source {
            StartSource::Cold => spec.checkpoint.clone(),
            _ => None,
        },
        ..VmConfig::default()
    };
    match source {
        StartSource::Cold => {
            let vm = VmBuilder::new(hv, &spec.image)
                .config(config)
                .started_at(start)
                .build()
                .map_err(|e| e.to_string())?;
            // This thread only runs this VM from here on (see tandem::seccomp).
            crate::seccomp::lock_down().map_err(|e| e.to_string())?;
            vm.run().map_err(|e| e.to_string())
        }
        StartSource::Snapshot(dir) | StartSource::Checkpoint(dir) => {
            let snap =
                Snapshot::load(dir).map_err(|e| format!("snapshot {}: {e}", dir.display()))?;
            let vm = Vm::restore_at(hv, &snap, config, start).map_err(|e| e.to_string())?;
            crate::seccomp::lock_down().map_err(|e| e.to_string())?;
            vm.run().map_err(|e| e.to_string())
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let from = bytes.len().saturating_sub(CONSOLE_TAIL);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// Runs `spec` to its end; `observe` sees the scheduler after every change.
pub fn run(
    spec: &FleetSpec,
    opts: &RunOptions,
    mut observe: impl FnMut(&Scheduler, Update),
) -> Result<FleetRun, RunError> {
    raise_fd_limit();
    let hv = Hypervisor::open()?;
    // Ids change for every thread that exists: do it before VM threads start.
    crate::privileges::drop_to(opts.user.as_deref(), opts.group.as_deref())?;
    let mut sched = Scheduler::new(spec);
    if let Some(g) = opts.stop_grace {
        sched.set_grace(g);
    }
    let n = spec.vms.len();
    let mut handles: Vec<Option<VmHandle>> = vec![None; n];
    let (tx, rx) = mpsc::channel::<Msg>();
    // The fleet's clock starts once KVM is open: times are the fleet's own.
    let start = Instant::now();
    let mut live = 0usize;
    let mut stopped_at = None;
    let mut running_at_stop = Vec::new();
    let mut rss_when_settled = None;
    let hv = &hv;

    let mut round = 0u64;
    std::thread::scope(|scope| {
        loop {
            // 1. Take every message waiting (the first round decides at once).
            let mut first = round > 0;
            round += 1;
            loop {
                let wait = if first {
                    let now = start.elapsed();
                    let mut w = TICK;
                    if let Some(d) = sched.next_deadline() {
                        w = w.min(d.saturating_sub(now));
                    }
                    if let Some(s) = opts.stop_after {
                        w = w.min(s.saturating_sub(now));
                    }
                    w
                } else {
                    Duration::ZERO
                };
                first = false;
                let msg = match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(_) => break,
                };
                let now = start.elapsed();
                match msg {
                    Msg::Event(vm, VmEvent::Running, at) => {
                        sched.on_running(vm, at);
                    }
                    Msg::Event(vm, VmEvent::Ready, at) => {
                        sched.on_ready(vm, at);
                        let rec = &sched.records()[vm];
                        if let Some(a) = rec.attempts.last() {
                            if a.ready_at == Some(at) {
                                observe(
                                    &sched,
                                    Update::Line(format!(
                                        "{}: ready ({:.1} ms after admission, {})",
                                        rec.name,
                                        at.saturating_sub(a.admitted_at).as_secs_f64() * 1e3,
                                        a.source
                                    )),
                                );
                            }
                        }
                    }
                    Msg::Ended {
                        vm,
                        result,
                        started,
                        console_tail,
                        restored,
                    } => {
                        live -= 1;
                        handles[vm] = None;
                        let result = *result;
                        let checkpoint = result.as_ref().is_ok_and(|r| {
                            r.snapshots
                                .iter()
                                .any(|s| s.trigger == SnapshotTrigger::Ready && s.result.is_ok())
                        });
                        let out = outcome(&result);
                        let failed_now = !matches!(out, Outcome::Exited(0) | Outcome::Stopped);
                        sched.on_ended(vm, now, out, checkpoint);
                        if let Some(rec) = sched.record_mut(vm) {
                            if let Some(a) = rec.attempts.last_mut() {
                                if let Ok(r) = &result {
                                    let base = started.saturating_sub(a.admitted_at);
                                    let us = |p: Phase| r.trace.micros(p);
                                    if !restored {
                                        a.main_at = us(Phase::AppMain)
                                            .map(|m| started + Duration::from_secs_f64(m / 1e6));
                                    }
                                    a.phases_us = r
                                        .trace
                                        .reached()
                                        .into_iter()
                                        .map(|(p, t)| (p.name(), t + base.as_secs_f64() * 1e6))
                                        .collect();
                                }
                                if failed_now && !console_tail.is_empty() {
                                    a.console_tail = Some(console_tail);
                                }
                            }
                            let line = format!(
                                "{}: {} -> {}",
                                rec.name,
                                rec.attempts
                                    .last()
                                    .and_then(|a| a.outcome.clone())
                                    .unwrap_or_default(),
                                rec.state
                            );
                            observe(&sched, Update::Line(line));
                        }
                    }
                }
            }

            // 2. Reasons to stop.
            let now = start.elapsed();
            if !sched.shutting_down() {
                let signal = opts
                    .stop_flag
                    .as_ref()
                    .is_some_and(|f| f.load(Ordering::SeqCst));
                let settled = sched.settled();
                if settled && rss_when_settled.is_none() {
                    rss_when_settled = rss_bytes();
                }
                let why = if signal {
                    Some("asked to stop")
                } else if opts.stop_after.is_some_and(|s| now >= s) {
                    Some("--stop-after reached")
                } else if opts.stop_when_ready && settled {
                    Some("every VM is ready or done")
                } else {
                    None
                };
                if let Some(why) = why {
                    running_at_stop = sched
                        .records()
                        .iter()
                        .zip(sched.states())
                        .filter(|(_, s)| {
                            matches!(
                                s,
                                super::scheduler::VmState::Booting
                                    | super::scheduler::VmState::Ready
                            )
                        })
                        .map(|(r, _)| r.name.clone())
                        .collect();
                    stopped_at = Some(now);
                    sched.shutdown(now);
                    observe(
                        &sched,
                        Update::Line(format!(
                            "fleet: {why}; stopping {} running VMs in reverse dependency order",
                            running_at_stop.len()
                        )),
                    );
                }
            }

            // 3. Decide and act.
            for action in sched.poll(now) {
                match action {
                    Action::Start {
                        vm,
                        attempt,
                        source,
                    } => {
                        // A restored VM was frozen after its initialisation
                        // (and its ready() call): it is ready once it runs.
                        let restored = source != StartSource::Cold;
                        let handle = {
                            let tx = Mutex::new(tx.clone());
                            VmHandle::with_events(move |e| {
                                let at = start.elapsed();
                                if let Ok(tx) = tx.lock() {
                                    let _ = tx.send(Msg::Event(vm, e, at));
                                    if restored && e == VmEvent::Running {
                                        let _ = tx.send(Msg::Event(vm, VmEvent::Ready, at));
                                    }
                                }
                            })
                        };
                        handles[vm] = Some(handle.clone());
                        let vm_spec = &spec.vms[vm];
                        let tx = tx.clone();
                        let capture = Arc::new(Mutex::new(Vec::new()));
                        let console = ConsoleSink::Capture(capture.clone());
                        let vm_id = (u64::try_from(vm).unwrap_or(0) << 16) | u64::from(attempt);
                        observe(
                            &sched,
                            Update::Line(format!(
                                "{}: admitted ({}{})",
                                vm_spec.name,
                                source.kind(),
                                if attempt > 0 {
                                    format!(", restart {attempt}")
                                } else {
                                    String::new()
                                }
                            )),
                        );
                        let spawned = std::thread::Builder::new()
                            .name(format!("vcpu-{}", vm_spec.name))
                            .stack_size(VCPU_STACK)
                            .spawn_scoped(scope, move || {
                                let started = start.elapsed();
                                let result = boot(hv, vm_spec, &source, handle, console, vm_id);
                                let console_tail =
                                    capture.lock().map(|c| tail(&c)).unwrap_or_default();
                                let _ = tx.send(Msg::Ended {
                                    vm,
                                    result: Box::new(result),
                                    started,
                                    console_tail,
                                    restored,
                                });
                            });
                        match spawned {
                            Ok(_) => live += 1,
                            Err(e) => {
                                handles[vm] = None;
                                sched.on_ended(
                                    vm,
                                    now,
                                    Outcome::Error(format!("cannot start a vCPU thread: {e}")),
                                    false,
                                );
                            }
                        }
                    }
                    Action::AskStop(vm) => {
                        if let Some(h) = &handles[vm] {
                            h.request_stop();
                        }
                    }
                    Action::Kill(vm) => {
                        if let Some(h) = &handles[vm] {
                            h.kill();
                        }
                    }
                }
            }
            observe(&sched, Update::Tick);
            if sched.finished() && live == 0 {
                break;
            }
        }
    });

    Ok(FleetRun {
        vms: sched.records().to_vec(),
        samples: sched.samples().to_vec(),
        limits: spec.limits,
        duration: start.elapsed(),
        stopped_at,
        running_at_stop,
        rss_when_settled,
    })
}
