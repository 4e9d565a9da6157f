//! Runs a fleet: the [`Scheduler`] decides, this module does. Every VM
//! attempt boots in-process on a thread of its own (the vCPU thread) with
//! a [`VmHandle`] whose events (running, `ready()`) and end come back over
//! one channel; the main loop feeds them to the scheduler and executes its
//! actions. A VM that fails in any way ends its own thread and nothing else.
//!
//! [`run`] is the loop: take the messages waiting, look for reasons to
//! stop, carry out the scheduler's actions. What it does is in the methods
//! of `Fleet` (starting VMs, handling their ends, stopping, the final
//! record); what it decides by itself (how long to sleep, whether to stop,
//! what to tell the user) is in free functions with their tests. One
//! attempt on its vCPU thread, and what its end means, is in `attempt`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::Scope;
use std::time::{Duration, Instant};

use super::config::FleetSpec;
use super::scheduler::{Action, Outcome, Sample, Scheduler, StartSource, VmRecord, VmState};
use crate::control::{VmEvent, VmHandle};
use crate::kvm::Hypervisor;
use crate::pool::Pool;
use crate::snapshot::Snapshot;
use crate::vm::{RunReport, VmConfig};

mod attempt;
mod io_share;
pub mod network;

use attempt::{Launch, Msg};
use io_share::FleetIo;

/// Stack of each vCPU thread: the run loop needs a few pages of buffers.
const VCPU_STACK: usize = 512 << 10;
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
    /// A warm pool could not be filled.
    #[error("vm `{group}`: cannot fill its warm pool: {reason}")]
    Pool {
        /// The `[[vm]]` entry.
        group: String,
        /// Why.
        reason: String,
    },
    /// The fleet's bridge or taps could not be set up.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The console folder could not be made.
    #[error("cannot make the console folder {path}: {source}")]
    ConsoleDir {
        /// The folder.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One warm pool per `[[vm]]` entry with `warm = N`, shared by its
/// replicas; per VM, the pool it starts from (when it starts from its
/// snapshot).
fn warm_pools(spec: &FleetSpec) -> Result<Vec<Option<Arc<Pool>>>, RunError> {
    let mut by_group: HashMap<&str, Arc<Pool>> = HashMap::new();
    let mut out = Vec::with_capacity(spec.vms.len());
    for v in &spec.vms {
        let pool = match (&v.snapshot, v.warm) {
            (Some(dir), n) if n > 0 => {
                if let Some(p) = by_group.get(v.group.as_str()) {
                    Some(p.clone())
                } else {
                    let fail = |reason: String| RunError::Pool {
                        group: v.group.clone(),
                        reason,
                    };
                    let snap = Snapshot::load(dir).map_err(|e| fail(e.to_string()))?;
                    let template = VmConfig {
                        console: crate::ConsoleSink::Discard,
                        ..VmConfig::default()
                    };
                    let p =
                        Arc::new(Pool::new(snap, n, template).map_err(|e| fail(e.to_string()))?);
                    by_group.insert(&v.group, p.clone());
                    Some(p)
                }
            }
            _ => None,
        };
        out.push(pool);
    }
    Ok(out)
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
    /// Append each VM's console, every attempt, to `DIR/NAME.log`.
    pub console_dir: Option<std::path::PathBuf>,
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
    /// Under `[fleet] io_budget`: per VM, in file order, what its disks
    /// moved and how often the budget held them back.
    pub io: Option<Vec<crate::fleet::io::IoUse>>,
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

/// Most bytes glibc's allocator serves from its heaps rather than a
/// mapping of their own (its ceiling on 64-bit).
#[cfg(target_env = "gnu")]
const MALLOC_MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory glibc keeps at the top of a heap before giving it back.
#[cfg(target_env = "gnu")]
const MALLOC_TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Keeps the allocator from handing memory back to the kernel while VMs
/// boot: with many VMs in one process, each `munmap` or
/// `madvise(MADV_DONTNEED)` it would make calls every VM's MMU notifier
/// (docs/fleet-scaling.md). What is freed stays in the heap for reuse.
fn keep_heap_mapped() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator tunables; both values are in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
    }
}

/// Runs `spec` to its end; `observe` sees the scheduler after every change.
pub fn run(
    spec: &FleetSpec,
    opts: &RunOptions,
    observe: impl FnMut(&Scheduler, Update),
) -> Result<FleetRun, RunError> {
    raise_fd_limit();
    keep_heap_mapped();
    if let Some(dir) = &opts.console_dir {
        std::fs::create_dir_all(dir).map_err(|source| RunError::ConsoleDir {
            path: dir.clone(),
            source,
        })?;
    }
    let hv = Hypervisor::open()?;
    // Before privileges go: making a bridge or tap needs CAP_NET_ADMIN.
    // Dropped last, when every VM thread has ended.
    let _net = match &spec.network {
        Some(net) => Some(network::FleetNet::up(net, &spec.vms)?),
        None => None,
    };
    // Ids change for every thread that exists: do it before VM threads start.
    crate::privileges::drop_to(opts.user.as_deref(), opts.group.as_deref())?;
    let pools = warm_pools(spec)?;
    let io = FleetIo::new(spec);
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut fleet = Fleet::new(spec, opts, &hv, &pools, tx, observe);
    fleet.io = io;
    std::thread::scope(|scope| {
        // The first round decides at once; later ones wait for news.
        let mut wait = Duration::ZERO;
        loop {
            fleet.receive(&rx, wait);
            let now = fleet.start.elapsed();
            fleet.check_stop(now);
            for action in fleet.sched.poll(now) {
                fleet.act(scope, action, now);
            }
            (fleet.observe)(&fleet.sched, Update::Tick);
            if fleet.sched.finished() && fleet.live == 0 {
                break;
            }
            wait = next_wait(
                fleet.start.elapsed(),
                fleet.sched.next_deadline(),
                opts.stop_after,
            );
        }
    });
    Ok(fleet.into_run())
}

/// The doing half of a run: the scheduler it feeds, the handles of the
/// VMs it started, and the channel their threads report on.
struct Fleet<'env, F> {
    spec: &'env FleetSpec,
    opts: &'env RunOptions,
    hv: &'env Hypervisor,
    /// Per VM, the warm pool it starts from, if any.
    pools: &'env [Option<Arc<Pool>>],
    sched: Scheduler,
    /// The handle of each VM's running attempt.
    handles: Vec<Option<VmHandle>>,
    tx: Sender<Msg>,
    /// The fleet's clock starts once KVM is open: times are the fleet's own.
    start: Instant,
    /// vCPU threads that have not reported their end yet.
    live: usize,
    stopped_at: Option<Duration>,
    running_at_stop: Vec<String>,
    rss_when_settled: Option<u64>,
    /// The fleet's I/O budget, when it has one.
    io: Option<Arc<FleetIo>>,
    observe: F,
}

impl<'env, F: FnMut(&Scheduler, Update)> Fleet<'env, F> {
    fn new(
        spec: &'env FleetSpec,
        opts: &'env RunOptions,
        hv: &'env Hypervisor,
        pools: &'env [Option<Arc<Pool>>],
        tx: Sender<Msg>,
        observe: F,
    ) -> Self {
        let mut sched = Scheduler::new(spec);
        if let Some(g) = opts.stop_grace {
            sched.set_grace(g);
        }
        Self {
            spec,
            opts,
            hv,
            pools,
            sched,
            handles: vec![None; spec.vms.len()],
            tx,
            start: Instant::now(),
            live: 0,
            stopped_at: None,
            running_at_stop: Vec::new(),
            rss_when_settled: None,
            io: None,
            observe,
        }
    }

    fn say(&mut self, line: String) {
        (self.observe)(&self.sched, Update::Line(line));
    }

    /// Takes every message waiting, after waiting up to `wait` for the first.
    fn receive(&mut self, rx: &Receiver<Msg>, mut wait: Duration) {
        while let Ok(msg) = rx.recv_timeout(wait) {
            wait = Duration::ZERO;
            let now = self.start.elapsed();
            match msg {
                Msg::Event(vm, VmEvent::Running, at) => self.sched.on_running(vm, at),
                Msg::Event(vm, VmEvent::Ready, at) => {
                    self.sched.on_ready(vm, at);
                    if let Some(line) = ready_line(&self.sched.records()[vm], at) {
                        self.say(line);
                    }
                }
                Msg::Ended {
                    vm,
                    result,
                    started,
                    console_tail,
                    console,
                    restored,
                } => {
                    self.keep_console(vm, &console);
                    self.on_ended(vm, now, &result, started, console_tail, restored)
                }
            }
        }
    }

    /// Appends an attempt's console to its VM's file, if asked to (here, on
    /// the main thread: the vCPU threads may not open files).
    fn keep_console(&mut self, vm: usize, console: &[u8]) {
        use std::io::Write;
        let Some(dir) = &self.opts.console_dir else {
            return;
        };
        let path = dir.join(format!("{}.log", self.spec.vms[vm].name));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(console));
        if let Err(e) = written {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// An attempt ended: the scheduler decides what follows (a restart,
    /// giving up, blocking its dependents); its record gets what only the
    /// attempt's report knows.
    fn on_ended(
        &mut self,
        vm: usize,
        now: Duration,
        result: &Result<RunReport, String>,
        started: Duration,
        console_tail: String,
        restored: bool,
    ) {
        self.live -= 1;
        self.handles[vm] = None;
        let out = attempt::outcome(result);
        let failed = attempt::failed(&out);
        self.sched
            .on_ended(vm, now, out, attempt::checkpoint_written(result));
        let Some(rec) = self.sched.record_mut(vm) else {
            return;
        };
        if let Some(a) = rec.attempts.last_mut() {
            attempt::record(a, result, started, restored, failed.then_some(console_tail));
        }
        let line = ended_line(rec);
        self.say(line);
    }

    /// Starts the shutdown when there is a reason to.
    fn check_stop(&mut self, now: Duration) {
        if self.sched.shutting_down() {
            return;
        }
        let signal = self
            .opts
            .stop_flag
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let settled = self.sched.settled();
        if settled && self.rss_when_settled.is_none() {
            self.rss_when_settled = rss_bytes();
        }
        let Some(why) = stop_reason(self.opts, signal, now, settled) else {
            return;
        };
        self.running_at_stop = running(self.sched.records(), self.sched.states());
        self.stopped_at = Some(now);
        self.sched.shutdown(now);
        let line = stopping_line(why, self.running_at_stop.len());
        self.say(line);
    }

    /// Carries out one of the scheduler's actions.
    fn act<'scope>(&mut self, scope: &'scope Scope<'scope, 'env>, action: Action, now: Duration) {
        match action {
            Action::Start {
                vm,
                attempt,
                source,
            } => self.start_vm(scope, vm, attempt, source, now),
            Action::AskStop(vm) => {
                if let Some(h) = &self.handles[vm] {
                    h.request_stop();
                }
            }
            Action::Kill(vm) => {
                if let Some(h) = &self.handles[vm] {
                    h.kill();
                }
            }
        }
    }

    /// Boots an attempt on a new vCPU thread.
    fn start_vm<'scope>(
        &mut self,
        scope: &'scope Scope<'scope, 'env>,
        vm: usize,
        attempt: u32,
        source: StartSource,
        now: Duration,
    ) {
        let restored = source != StartSource::Cold;
        let handle = attempt::event_handle(self.tx.clone(), self.start, vm, restored);
        self.handles[vm] = Some(handle.clone());
        let fleet_spec: &'env FleetSpec = self.spec;
        let spec = &fleet_spec.vms[vm];
        self.say(admitted_line(&spec.name, &source, attempt));
        let pools: &'env [Option<Arc<Pool>>] = self.pools;
        let launch = Launch {
            hv: self.hv,
            pool: pools.get(vm).and_then(|p| p.as_deref()),
            spec,
            vm,
            attempt,
            source,
            handle,
            tx: self.tx.clone(),
            start: self.start,
            io_share: self
                .io
                .as_ref()
                .filter(|_| !spec.disks.is_empty())
                .map(|io| io.share(vm)),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu-{}", spec.name))
            .stack_size(VCPU_STACK)
            .spawn_scoped(scope, move || launch.run());
        match spawned {
            Ok(_) => self.live += 1,
            Err(e) => {
                self.handles[vm] = None;
                self.sched.on_ended(
                    vm,
                    now,
                    Outcome::Error(format!("cannot start a vCPU thread: {e}")),
                    false,
                );
            }
        }
    }

    /// What the run recorded.
    fn into_run(self) -> FleetRun {
        FleetRun {
            vms: self.sched.records().to_vec(),
            samples: self.sched.samples().to_vec(),
            limits: self.spec.limits,
            duration: self.start.elapsed(),
            stopped_at: self.stopped_at,
            running_at_stop: self.running_at_stop,
            rss_when_settled: self.rss_when_settled,
            io: self
                .io
                .as_ref()
                .map(|io| (0..self.spec.vms.len()).map(|vm| io.usage(vm)).collect()),
        }
    }
}

/// How long the loop may sleep: until the scheduler's next deadline or
/// `--stop-after`, never more than [`TICK`].
fn next_wait(now: Duration, deadline: Option<Duration>, stop_after: Option<Duration>) -> Duration {
    [deadline, stop_after]
        .into_iter()
        .flatten()
        .map(|t| t.saturating_sub(now))
        .fold(TICK, Duration::min)
}

/// Why the fleet should stop now, if it should: a signal, then
/// `--stop-after`, then `--stop-when-ready` once every VM is ready or done.
fn stop_reason(
    opts: &RunOptions,
    signal: bool,
    now: Duration,
    settled: bool,
) -> Option<&'static str> {
    if signal {
        Some("asked to stop")
    } else if opts.stop_after.is_some_and(|s| now >= s) {
        Some("--stop-after reached")
    } else if opts.stop_when_ready && settled {
        Some("every VM is ready or done")
    } else {
        None
    }
}

/// The names of the VMs booting or ready.
fn running(records: &[VmRecord], states: &[VmState]) -> Vec<String> {
    records
        .iter()
        .zip(states)
        .filter(|(_, s)| matches!(s, VmState::Booting | VmState::Ready))
        .map(|(r, _)| r.name.clone())
        .collect()
}

fn admitted_line(name: &str, source: &StartSource, attempt: u32) -> String {
    let restart = if attempt > 0 {
        format!(", restart {attempt}")
    } else {
        String::new()
    };
    format!("{name}: admitted ({}{restart})", source.kind())
}

/// The line for a VM that became ready at `at`, unless that was not its
/// latest attempt's (the scheduler ignored it).
fn ready_line(rec: &VmRecord, at: Duration) -> Option<String> {
    let a = rec.attempts.last().filter(|a| a.ready_at == Some(at))?;
    Some(format!(
        "{}: ready ({:.1} ms after admission, {})",
        rec.name,
        at.saturating_sub(a.admitted_at).as_secs_f64() * 1e3,
        a.source
    ))
}

fn ended_line(rec: &VmRecord) -> String {
    format!(
        "{}: {} -> {}",
        rec.name,
        rec.attempts
            .last()
            .and_then(|a| a.outcome.clone())
            .unwrap_or_default(),
        rec.state
    )
}

fn stopping_line(why: &str, running: usize) -> String {
    format!("fleet: {why}; stopping {running} running VMs in reverse dependency order")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::scheduler::Attempt;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn record(name: &str, attempts: Vec<Attempt>) -> VmRecord {
        VmRecord {
            name: name.into(),
            group: name.into(),
            priority: 0,
            mem_size: 8 << 20,
            after: Vec::new(),
            attempts,
            restarts: 0,
            state: "ready".into(),
            reason: None,
            recoveries: Vec::new(),
        }
    }

    #[test]
    fn the_loop_sleeps_until_the_next_thing_to_do() {
        assert_eq!(next_wait(ms(100), None, None), TICK);
        assert_eq!(next_wait(ms(100), Some(ms(110)), None), ms(10));
        assert_eq!(next_wait(ms(100), Some(ms(130)), Some(ms(105))), ms(5));
        assert_eq!(next_wait(ms(100), Some(ms(90)), None), Duration::ZERO);
        assert_eq!(next_wait(ms(100), Some(ms(1000)), Some(ms(2000))), TICK);
    }

    #[test]
    fn reasons_to_stop_in_order() {
        let opts = RunOptions {
            stop_when_ready: true,
            stop_after: Some(ms(500)),
            ..RunOptions::default()
        };
        assert_eq!(stop_reason(&opts, false, ms(10), false), None);
        assert_eq!(
            stop_reason(&opts, false, ms(10), true),
            Some("every VM is ready or done")
        );
        assert_eq!(
            stop_reason(&opts, false, ms(500), true),
            Some("--stop-after reached")
        );
        assert_eq!(
            stop_reason(&opts, true, ms(500), true),
            Some("asked to stop")
        );
        let forever = RunOptions::default();
        assert_eq!(stop_reason(&forever, false, ms(10_000), true), None);
    }

    #[test]
    fn running_vms_are_the_booting_and_the_ready() {
        let records: Vec<_> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|n| record(n, Vec::new()))
            .collect();
        let states = [
            VmState::Booting,
            VmState::Pending,
            VmState::Ready,
            VmState::Stopping,
        ];
        assert_eq!(running(&records, &states), ["a", "c"]);
    }

    #[test]
    fn lines_for_the_user() {
        assert_eq!(
            admitted_line("db", &StartSource::Cold, 0),
            "db: admitted (cold)"
        );
        assert_eq!(
            admitted_line("db", &StartSource::Checkpoint("/ck".into()), 2),
            "db: admitted (checkpoint, restart 2)"
        );
        let a = Attempt {
            source: "cold",
            admitted_at: ms(10),
            ready_at: Some(ms(15)),
            outcome: Some("exit 0".into()),
            ..Attempt::default()
        };
        let rec = record("db", vec![a]);
        assert_eq!(
            ready_line(&rec, ms(15)).as_deref(),
            Some("db: ready (5.0 ms after admission, cold)")
        );
        assert_eq!(ready_line(&rec, ms(16)), None, "not this attempt's ready");
        assert_eq!(ended_line(&rec), "db: exit 0 -> ready");
        assert_eq!(
            stopping_line("asked to stop", 3),
            "fleet: asked to stop; stopping 3 running VMs in reverse dependency order"
        );
    }
}
