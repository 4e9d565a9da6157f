//! The fleet's admission logic, pure: no KVM, no threads, no clock. It is
//! fed events (a VM is running, ready, ended; the fleet must stop) with the
//! time since the fleet started, and answers with actions (start this VM
//! from this source, ask that one to stop, kill that one). The runner
//! executes them; tests drive it with made-up times.
//!
//! Rules:
//! - a VM is eligible when every VM it comes `after` is ready now;
//! - eligible VMs are admitted highest priority first (ties: file order)
//!   while fewer than `max_concurrent_boots` VMs are booting (admitted, not
//!   yet ready) and its memory fits what live VMs leave of the budget; a VM
//!   that does not fit is skipped for smaller ones behind it (nothing running
//!   may ever give memory back, so waiting would block the whole queue);
//! - a VM not ready within its `boot_timeout` is killed and counts as failed;
//! - a VM that ends is restarted per its policy after a backoff that doubles
//!   each time, from its checkpoint when one was written, else from its
//!   snapshot, else cold; past `max_restarts` it is given up;
//! - a VM whose dependency has ended for good is blocked, with the reason;
//! - on shutdown nothing more is admitted, and live VMs are asked to stop
//!   in reverse dependency order (a VM once no live VM depends on it),
//!   then killed if they have not stopped after a grace period.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{FleetSpec, Limits, RestartPolicy};

/// How long a VM asked to stop may take before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where an attempt boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartSource {
    /// A cold boot from the image.
    Cold,
    /// The VM's configured snapshot.
    Snapshot(PathBuf),
    /// The checkpoint the VM wrote at an earlier `ready()`.
    Checkpoint(PathBuf),
    /// A VM its `[[vm]]` entry's warm pool restored ahead from this snapshot.
    Pool(PathBuf),
}

impl StartSource {
    /// A short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Snapshot(_) => "snapshot",
            Self::Checkpoint(_) => "checkpoint",
            Self::Pool(_) => "pool",
        }
    }
}

/// What the runner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Boot VM `vm` (its attempt number `attempt`, from 0) from `source`.
    Start {
        /// The VM.
        vm: usize,
        /// Attempt number.
        attempt: u32,
        /// Where from.
        source: StartSource,
    },
    /// Ask the VM's app to stop.
    AskStop(usize),
    /// End the VM now.
    Kill(usize),
}

/// How a VM's run ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The app exited with this code.
    Exited(u8),
    /// Stopped from outside (kill).
    Stopped,
    /// Crashed, broke the protocol, or timed out: the reason.
    Crashed(String),
    /// The VMM could not start it: the reason.
    Error(String),
}

/// One boot of a VM. Times are since the fleet started.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// Where it booted from (`cold`, `snapshot`, `checkpoint`, `pool`).
    pub source: &'static str,
    /// When it became eligible (dependencies ready, backoff over).
    pub eligible_at: Option<Duration>,
    /// When it was admitted.
    pub admitted_at: Duration,
    /// When its vCPU first entered the guest.
    pub running_at: Option<Duration>,
    /// When the app's `main` started (from the boot trace; cold boots only).
    pub main_at: Option<Duration>,
    /// When it called `ready()` (or, restored, started running).
    pub ready_at: Option<Duration>,
    /// When it ended.
    pub ended_at: Option<Duration>,
    /// How it ended.
    pub outcome: Option<String>,
    /// Its exit code, when it exited.
    pub exit_code: Option<u8>,
    /// Boot phases in microseconds from admission (from the boot trace).
    pub phases_us: Vec<(&'static str, f64)>,
    /// The end of the console of a failed attempt.
    pub console_tail: Option<String>,
}

/// Where a VM stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// Waiting for its dependencies or for admission.
    Pending,
    /// Admitted, not yet ready.
    Booting,
    /// Ready and running.
    Ready,
    /// Asked to stop (or killed), not yet ended.
    Stopping,
    /// Waiting to be restarted until this time.
    Backoff(Duration),
    /// Ended for good.
    Done(Final),
}

/// How a VM ended for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// Its last run ended normally (exit 0, or stopped by the fleet).
    Finished(String),
    /// It failed and will not be restarted: why.
    Failed(String),
    /// It never started because a dependency ended: why.
    Blocked(String),
    /// The fleet stopped before it started.
    NotStarted,
}

/// A VM's history.
#[derive(Debug, Clone)]
pub struct VmRecord {
    /// Its name.
    pub name: String,
    /// Its `[[vm]]` entry.
    pub group: String,
    /// Its priority.
    pub priority: i64,
    /// Its guest memory.
    pub mem_size: u64,
    /// Names of the VMs it comes after.
    pub after: Vec<String>,
    /// Every boot, in order.
    pub attempts: Vec<Attempt>,
    /// Restarts done.
    pub restarts: u32,
    /// Its last state (`ready`, `finished`, `failed`, `blocked`, …).
    pub state: String,
    /// Why it failed or was blocked.
    pub reason: Option<String>,
    /// Time from the end of a failed run to ready again, per recovery.
    pub recoveries: Vec<Duration>,
}

/// The fleet's load at a moment (recorded on every change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Since the fleet started.
    pub t: Duration,
    /// VMs admitted and not yet ready.
    pub booting: usize,
    /// VMs with a live vCPU thread.
    pub live: usize,
    /// Guest memory of live VMs and of warm pools.
    pub memory: u64,
    /// VMs ready.
    pub ready: usize,
}

struct Node {
    priority: i64,
    mem: u64,
    after: Vec<usize>,
    dependents: Vec<usize>,
    restart: RestartPolicy,
    max_restarts: u32,
    backoff: Duration,
    backoff_max: Duration,
    boot_timeout: Option<Duration>,
    snapshot: Option<PathBuf>,
    /// Its snapshot starts come from a warm pool (`warm` > 0).
    warm: bool,
    checkpoint: Option<PathBuf>,
}

#[derive(Default, Clone)]
struct Live {
    stop_asked_at: Option<Duration>,
    killed: bool,
    boot_timed_out: bool,
    failed_at: Option<Duration>,
    has_checkpoint: bool,
}

/// The admission state machine of one fleet.
pub struct Scheduler {
    nodes: Vec<Node>,
    limits: Limits,
    state: Vec<VmState>,
    live: Vec<Live>,
    records: Vec<VmRecord>,
    samples: Vec<Sample>,
    booting: usize,
    running: usize,
    memory: u64,
    /// Guest memory the warm pools hold for the whole run.
    pooled: u64,
    shutting_down: bool,
    grace: Duration,
}

/// Guest memory of every warm pool: `warm` VMs per `[[vm]]` entry (its
/// replicas share one pool), each of the entry's memory size.
fn warm_memory(spec: &FleetSpec) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    spec.vms
        .iter()
        .filter(|v| v.warm > 0 && seen.insert(v.group.as_str()))
        .map(|v| crate::pool::pool_memory(v.warm, v.mem_size))
        .fold(0, u64::saturating_add)
}

fn is_live(s: &VmState) -> bool {
    matches!(s, VmState::Booting | VmState::Ready | VmState::Stopping)
}

impl Scheduler {
    /// A scheduler for `spec`, every VM pending.
    pub fn new(spec: &FleetSpec) -> Self {
        let n = spec.vms.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, v) in spec.vms.iter().enumerate() {
            for &d in &v.after {
                if let Some(list) = dependents.get_mut(d) {
                    list.push(i);
                }
            }
        }
        let nodes = spec
            .vms
            .iter()
            .zip(dependents)
            .map(|(v, dependents)| Node {
                priority: v.priority,
                mem: v.mem_size,
                after: v.after.clone(),
                dependents,
                restart: v.restart,
                max_restarts: v.max_restarts,
                backoff: v.backoff,
                backoff_max: v.backoff_max,
                boot_timeout: v.boot_timeout,
                snapshot: v.snapshot.clone(),
                warm: v.warm > 0,
                checkpoint: v.checkpoint.clone(),
            })
            .collect();
        let records = spec
            .vms
            .iter()
            .map(|v| VmRecord {
                name: v.name.clone(),
                group: v.group.clone(),
                priority: v.priority,
                mem_size: v.mem_size,
                after: v.after.iter().map(|&d| spec.vms[d].name.clone()).collect(),
                attempts: Vec::new(),
                restarts: 0,
                state: "pending".into(),
                reason: None,
                recoveries: Vec::new(),
            })
            .collect();
        Self {
            nodes,
            limits: spec.limits,
            state: vec![VmState::Pending; n],
            live: vec![Live::default(); n],
            records,
            samples: Vec::new(),
            booting: 0,
            running: 0,
            memory: 0,
            pooled: warm_memory(spec),
            shutting_down: false,
            grace: STOP_GRACE,
        }
    }

    /// Sets how long a VM asked to stop may take before it is killed.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Where each VM stands.
    pub fn states(&self) -> &[VmState] {
        &self.state
    }

    /// Every VM's history.
    pub fn records(&self) -> &[VmRecord] {
        &self.records
    }

    /// Mutable access for the runner (boot phases, main time).
    pub fn record_mut(&mut self, vm: usize) -> Option<&mut VmRecord> {
        self.records.get_mut(vm)
    }

    /// The load over time.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Whether the fleet is stopping.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Every VM ended for good.
    pub fn finished(&self) -> bool {
        self.state.iter().all(|s| matches!(s, VmState::Done(_)))
    }

    /// Every VM is ready or ended for good (nothing pending, booting or restarting).
    pub fn settled(&self) -> bool {
        self.state
            .iter()
            .all(|s| matches!(s, VmState::Ready | VmState::Done(_)))
    }

    /// Counts of VMs per display state: pending, booting, ready, stopping,
    /// restarting, done ok, failed (failed, blocked, not started).
    pub fn counts(&self) -> [usize; 7] {
        let mut c = [0; 7];
        for s in &self.state {
            let i = match s {
                VmState::Pending => 0,
                VmState::Booting => 1,
                VmState::Ready => 2,
                VmState::Stopping => 3,
                VmState::Backoff(_) => 4,
                VmState::Done(Final::Finished(_)) => 5,
                VmState::Done(_) => 6,
            };
            c[i] += 1;
        }
        c
    }

    fn sample(&mut self, t: Duration) {
        let s = Sample {
            t,
            booting: self.booting,
            live: self.running,
            memory: self.memory + self.pooled,
            ready: self.state.iter().filter(|s| **s == VmState::Ready).count(),
        };
        match self.samples.last_mut() {
            Some(last)
                if (last.booting, last.live, last.memory, last.ready)
                    == (s.booting, s.live, s.memory, s.ready) => {}
            Some(last) if last.t == t => *last = s,
            _ => self.samples.push(s),
        }
    }

    fn set(&mut self, vm: usize, s: VmState) {
        let was_live = is_live(&self.state[vm]);
        let was_booting = self.state[vm] == VmState::Booting;
        let now_live = is_live(&s);
        let now_booting = s == VmState::Booting;
        if was_booting && !now_booting {
            self.booting -= 1;
        }
        if !was_booting && now_booting {
            self.booting += 1;
        }
        if was_live && !now_live {
            self.running -= 1;
            self.memory -= self.nodes[vm].mem;
        }
        if !was_live && now_live {
            self.running += 1;
            self.memory += self.nodes[vm].mem;
        }
        let rec = &mut self.records[vm];
        let (name, reason) = match &s {
            VmState::Pending => ("pending", None),
            VmState::Booting => ("booting", None),
            VmState::Ready => ("ready", None),
            VmState::Stopping => ("stopping", None),
            VmState::Backoff(_) => ("restarting", None),
            VmState::Done(Final::Finished(r)) => ("finished", Some(r.clone())),
            VmState::Done(Final::Failed(r)) => ("failed", Some(r.clone())),
            VmState::Done(Final::Blocked(r)) => ("blocked", Some(r.clone())),
            VmState::Done(Final::NotStarted) => (
                "not-started",
                Some("the fleet stopped before it started".into()),
            ),
        };
        rec.state = name.into();
        if reason.is_some() {
            rec.reason = reason;
        }
        self.state[vm] = s;
    }

    fn attempt(&mut self, vm: usize) -> Option<&mut Attempt> {
        self.records.get_mut(vm)?.attempts.last_mut()
    }

    /// The vCPU of `vm` entered the guest.
    pub fn on_running(&mut self, vm: usize, now: Duration) {
        if let Some(a) = self.attempt(vm) {
            a.running_at.get_or_insert(now);
        }
    }

    /// `vm` called `ready()`. Repeated calls are ignored.
    pub fn on_ready(&mut self, vm: usize, now: Duration) {
        if self.state.get(vm) != Some(&VmState::Booting) {
            return;
        }
        if let Some(a) = self.attempt(vm) {
            a.ready_at = Some(now);
        }
        if let Some(failed) = self.live[vm].failed_at.take() {
            self.records[vm].recoveries.push(now.saturating_sub(failed));
        }
        self.set(vm, VmState::Ready);
        self.sample(now);
    }

    /// `vm`'s run ended; `checkpoint` says whether it wrote its checkpoint.
    pub fn on_ended(&mut self, vm: usize, now: Duration, outcome: Outcome, checkpoint: bool) {
        if !self.state.get(vm).is_some_and(is_live) {
            return;
        }
        let live = std::mem::take(&mut self.live[vm]);
        let has_checkpoint = live.has_checkpoint || checkpoint;
        let asked = live.stop_asked_at.is_some() || (live.killed && !live.boot_timed_out);
        let was_ready = self.attempt(vm).is_some_and(|a| a.ready_at.is_some());
        let (text, failure) = match &outcome {
            _ if live.boot_timed_out => (
                format!(
                    "not ready within its boot_timeout of {:?}",
                    self.nodes[vm].boot_timeout.unwrap_or_default()
                ),
                true,
            ),
            Outcome::Exited(0) => ("exited with code 0".to_string(), false),
            Outcome::Exited(c) => (format!("exited with code {c}"), !asked),
            Outcome::Stopped => ("stopped".to_string(), !asked),
            Outcome::Crashed(why) => (why.clone(), !asked),
            Outcome::Error(why) => (format!("could not start: {why}"), true),
        };
        if let Some(a) = self.attempt(vm) {
            a.ended_at = Some(now);
            a.outcome = Some(text.clone());
            if let Outcome::Exited(c) = outcome {
                a.exit_code = Some(c);
            }
        }
        let node = &self.nodes[vm];
        let wants_restart = !self.shutting_down
            && !asked
            && match node.restart {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => failure,
                RestartPolicy::Always => true,
            };
        let next = if wants_restart {
            let done = self.records[vm].restarts;
            if done >= node.max_restarts {
                VmState::Done(Final::Failed(format!(
                    "{text}; given up after {done} restart{}",
                    if done == 1 { "" } else { "s" }
                )))
            } else {
                let factor = 1u32.checked_shl(done.min(30)).unwrap_or(u32::MAX);
                let wait = node.backoff.saturating_mul(factor).min(node.backoff_max);
                VmState::Backoff(now + wait)
            }
        } else if failure {
            VmState::Done(Final::Failed(text))
        } else if !was_ready && !asked {
            VmState::Done(Final::Failed(format!("{text} without becoming ready")))
        } else {
            VmState::Done(Final::Finished(text))
        };
        self.live[vm] = Live {
            has_checkpoint,
            failed_at: failure.then_some(now),
            ..Live::default()
        };
        self.set(vm, next);
        self.sample(now);
    }

    /// Stop the fleet: admit nothing more, stop live VMs in reverse
    /// dependency order (see [`Scheduler::poll`]).
    pub fn shutdown(&mut self, now: Duration) {
        self.shutting_down = true;
        for vm in 0..self.state.len() {
            if matches!(self.state[vm], VmState::Pending | VmState::Backoff(_)) {
                self.set(vm, VmState::Done(Final::NotStarted));
            }
        }
        self.sample(now);
    }

    /// The next time [`Scheduler::poll`] has something to do without a new
    /// event (a backoff, boot timeout or stop grace ending).
    pub fn next_deadline(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut consider = |t: Duration| next = Some(next.map_or(t, |n| n.min(t)));
        for (vm, s) in self.state.iter().enumerate() {
            match s {
                VmState::Backoff(until) => consider(*until),
                VmState::Booting => {
                    if let (Some(t), Some(a)) = (
                        self.nodes[vm].boot_timeout,
                        self.records[vm].attempts.last(),
                    ) {
                        if !self.live[vm].killed {
                            consider(a.admitted_at + t);
                        }
                    }
                }
                VmState::Stopping => {
                    if let Some(at) = self.live[vm].stop_asked_at {
                        if !self.live[vm].killed {
                            consider(at + self.grace);
                        }
                    }
                }
                _ => {}
            }
        }
        next
    }

    /// Takes every decision due at `now`.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let n = self.state.len();
        // Timers: boot timeouts, stop grace, backoffs.
        for vm in 0..n {
            match self.state[vm].clone() {
                VmState::Booting => {
                    let admitted = self.records[vm].attempts.last().map(|a| a.admitted_at);
                    if let (Some(t), Some(at)) = (self.nodes[vm].boot_timeout, admitted) {
                        if now >= at + t && !self.live[vm].killed {
                            self.live[vm].killed = true;
                            self.live[vm].boot_timed_out = true;
                            actions.push(Action::Kill(vm));
                        }
                    }
                }
                VmState::Stopping => {
                    let l = &mut self.live[vm];
                    if let Some(at) = l.stop_asked_at {
                        if now >= at + self.grace && !l.killed {
                            l.killed = true;
                            actions.push(Action::Kill(vm));
                        }
                    }
                }
                VmState::Backoff(until) if now >= until => {
                    self.records[vm].restarts += 1;
                    self.set(vm, VmState::Pending);
                }
                _ => {}
            }
        }
        if self.shutting_down {
            for vm in 0..n {
                if matches!(self.state[vm], VmState::Booting | VmState::Ready)
                    && !self.nodes[vm]
                        .dependents
                        .iter()
                        .any(|&d| is_live(&self.state[d]))
                {
                    self.live[vm].stop_asked_at = Some(now);
                    self.set(vm, VmState::Stopping);
                    actions.push(Action::AskStop(vm));
                }
            }
            self.sample(now);
            return actions;
        }
        // Blocked: a dependency ended for good.
        loop {
            let mut changed = false;
            for vm in 0..n {
                if self.state[vm] != VmState::Pending {
                    continue;
                }
                let dead = self.nodes[vm]
                    .after
                    .iter()
                    .find(|&&d| matches!(self.state[d], VmState::Done(_)))
                    .copied();
                if let Some(d) = dead {
                    let why = format!(
                        "dependency `{}` {}: {}",
                        self.records[d].name,
                        self.records[d].state,
                        self.records[d].reason.clone().unwrap_or_default()
                    );
                    self.set(vm, VmState::Done(Final::Blocked(why)));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Admission.
        let mut eligible: Vec<usize> = (0..n)
            .filter(|&vm| {
                self.state[vm] == VmState::Pending
                    && self.nodes[vm]
                        .after
                        .iter()
                        .all(|&d| self.state[d] == VmState::Ready)
            })
            .collect();
        for &vm in &eligible {
            let restarts = self.records[vm].restarts;
            let rec = &mut self.records[vm];
            // The pending attempt's eligibility time is kept on the record
            // until admission: use a placeholder attempt slot.
            if rec.attempts.len() == usize::try_from(restarts).unwrap_or(usize::MAX) {
                rec.attempts.push(Attempt {
                    eligible_at: Some(now),
                    admitted_at: now,
                    ..Attempt::default()
                });
            }
        }
        eligible.sort_by_key(|&vm| (std::cmp::Reverse(self.nodes[vm].priority), vm));
        for vm in eligible {
            if self.booting >= self.limits.max_concurrent_boots {
                break;
            }
            if self.memory + self.pooled + self.nodes[vm].mem > self.limits.memory_budget {
                continue;
            }
            let source = if self.live[vm].has_checkpoint {
                self.nodes[vm]
                    .checkpoint
                    .clone()
                    .map_or(StartSource::Cold, StartSource::Checkpoint)
            } else if let Some(s) = &self.nodes[vm].snapshot {
                if self.nodes[vm].warm {
                    StartSource::Pool(s.clone())
                } else {
                    StartSource::Snapshot(s.clone())
                }
            } else {
                StartSource::Cold
            };
            let attempt = self.records[vm].restarts;
            if let Some(a) = self.attempt(vm) {
                a.admitted_at = now;
                a.source = source.kind();
            }
            self.set(vm, VmState::Booting);
            actions.push(Action::Start {
                vm,
                attempt,
                source,
            });
        }
        self.sample(now);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::config::VmSpec;
    use std::sync::Arc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(vms: &[(&str, i64, &[usize])], cap: usize, budget_mib: u64) -> FleetSpec {
        let image = Arc::new(crate::image::Image {
            entry: 0,
            segments: Vec::new(),
            note: tandem_abi::note::AbiNote {
                abi_version: 0,
                flags: 0,
                exception_stubs: 0,
            },
            devices: tandem_abi::note::DeviceSet::NONE,
            name: String::new(),
            file_size: 0,
        });
        FleetSpec {
            vms: vms
                .iter()
                .map(|&(name, priority, after)| VmSpec {
                    name: name.into(),
                    group: name.into(),
                    image_path: PathBuf::new(),
                    image: image.clone(),
                    mem_size: 8 << 20,
                    cmdline: String::new(),
                    priority,
                    after: after.to_vec(),
                    snapshot: None,
                    checkpoint: None,
                    restart: RestartPolicy::OnFailure,
                    max_restarts: 2,
                    backoff: ms(10),
                    backoff_max: ms(100),
                    boot_timeout: Some(ms(500)),
                    warm: 0,
                    net: None,
                    disks: Vec::new(),
                    io_class: Default::default(),
                })
                .collect(),
            limits: Limits {
                max_concurrent_boots: cap,
                memory_budget: budget_mib << 20,
            },
            network: None,
            io_budget: None,
        }
    }

    fn started(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { vm, .. } => Some(*vm),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn priority_order_under_a_cap_of_one() {
        let mut s = Scheduler::new(&spec(
            &[("lo", 1, &[]), ("hi", 9, &[]), ("mid", 5, &[])],
            1,
            1024,
        ));
        assert_eq!(started(&s.poll(ms(0))), [1]);
        s.on_ready(1, ms(1));
        assert_eq!(started(&s.poll(ms(1))), [2]);
        s.on_ready(2, ms(2));
        assert_eq!(started(&s.poll(ms(2))), [0]);
        assert!(s.samples().iter().all(|x| x.booting <= 1));
    }

    #[test]
    fn dependencies_gate_on_ready() {
        let mut s = Scheduler::new(&spec(&[("web", 9, &[1]), ("db", 0, &[])], 4, 1024));
        assert_eq!(started(&s.poll(ms(0))), [1]);
        assert_eq!(started(&s.poll(ms(5))), Vec::<usize>::new());
        s.on_ready(1, ms(6));
        assert_eq!(started(&s.poll(ms(6))), [0]);
    }

    #[test]
    fn memory_budget_is_never_exceeded() {
        let mut s = Scheduler::new(&spec(&[("a", 0, &[]), ("b", 0, &[]), ("c", 0, &[])], 8, 16));
        assert_eq!(started(&s.poll(ms(0))), [0, 1]);
        s.on_ready(0, ms(1));
        s.on_ready(1, ms(1));
        assert!(started(&s.poll(ms(1))).is_empty());
        s.on_ended(0, ms(2), Outcome::Exited(0), false);
        assert_eq!(started(&s.poll(ms(2))), [2]);
        assert!(s.samples().iter().all(|x| x.memory <= 16 << 20));
    }

    #[test]
    fn warm_pools_count_against_the_memory_budget() {
        // 16 MiB of budget, 8 MiB VMs; `a` keeps one warm (8 MiB for the
        // whole run, shared by its two replicas): one VM at a time fits.
        let mut spec = spec(&[("a", 0, &[]), ("b", 0, &[]), ("c", 0, &[])], 8, 16);
        spec.vms[0].warm = 1;
        spec.vms[1].warm = 1;
        spec.vms[1].group = "a".into();
        let mut s = Scheduler::new(&spec);
        assert_eq!(started(&s.poll(ms(0))), [0]);
        s.on_ready(0, ms(1));
        assert!(started(&s.poll(ms(1))).is_empty());
        s.on_ended(0, ms(2), Outcome::Exited(0), false);
        assert_eq!(started(&s.poll(ms(2))), [1]);
        assert!(s.samples().iter().all(|x| x.memory <= 16 << 20));
        assert!(
            s.samples().iter().all(|x| x.memory >= 8 << 20),
            "the pool is counted"
        );
    }

    #[test]
    fn a_warm_vm_starts_from_its_pool_and_a_cold_one_from_its_snapshot() {
        let mut spec = spec(&[("warm", 0, &[]), ("plain", 0, &[])], 8, 1024);
        spec.vms[0].snapshot = Some("/snap".into());
        spec.vms[0].warm = 1;
        spec.vms[1].snapshot = Some("/snap".into());
        let mut s = Scheduler::new(&spec);
        let sources: Vec<(usize, StartSource)> = s
            .poll(ms(0))
            .into_iter()
            .filter_map(|a| match a {
                Action::Start { vm, source, .. } => Some((vm, source)),
                _ => None,
            })
            .collect();
        assert_eq!(
            sources,
            [
                (0, StartSource::Pool("/snap".into())),
                (1, StartSource::Snapshot("/snap".into()))
            ]
        );
        // The report says so, for every attempt.
        s.on_ended(0, ms(1), Outcome::Crashed("boom".into()), false);
        s.poll(ms(20));
        let records = s.records();
        assert!(records[0].attempts.len() >= 2);
        assert!(records[0].attempts.iter().all(|a| a.source == "pool"));
        assert_eq!(records[1].attempts[0].source, "snapshot");
    }

    #[test]
    fn failures_restart_with_backoff_then_give_up_and_block_dependents() {
        let mut s = Scheduler::new(&spec(&[("a", 0, &[]), ("b", 0, &[0])], 8, 1024));
        assert_eq!(started(&s.poll(ms(0))), [0]);
        s.on_ended(0, ms(1), Outcome::Crashed("boom".into()), false);
        assert!(started(&s.poll(ms(5))).is_empty(), "backoff of 10 ms");
        assert_eq!(s.next_deadline(), Some(ms(11)));
        assert_eq!(started(&s.poll(ms(11))), [0]);
        s.on_ended(0, ms(12), Outcome::Exited(3), false);
        assert!(
            started(&s.poll(ms(20))).is_empty(),
            "second backoff is 20 ms"
        );
        assert_eq!(started(&s.poll(ms(32))), [0]);
        s.on_ended(0, ms(33), Outcome::Crashed("boom".into()), false);
        s.poll(ms(34));
        assert!(matches!(s.states()[0], VmState::Done(Final::Failed(_))));
        assert!(matches!(s.states()[1], VmState::Done(Final::Blocked(_))));
        assert!(s.finished());
    }

    #[test]
    fn boot_timeout_kills() {
        let mut s = Scheduler::new(&spec(&[("a", 0, &[])], 8, 1024));
        s.poll(ms(0));
        assert_eq!(s.poll(ms(500)), [Action::Kill(0)]);
        s.on_ended(0, ms(501), Outcome::Stopped, false);
        assert_eq!(s.states()[0], VmState::Backoff(ms(511)));
        assert!(s.records()[0].attempts[0]
            .outcome
            .as_deref()
            .is_some_and(|o| o.contains("boot_timeout")));
    }

    #[test]
    fn shutdown_goes_in_reverse_dependency_order() {
        let mut s = Scheduler::new(&spec(
            &[("db", 0, &[]), ("app", 0, &[0]), ("web", 0, &[1])],
            8,
            1024,
        ));
        s.poll(ms(0));
        s.on_ready(0, ms(1));
        s.poll(ms(1));
        s.on_ready(1, ms(2));
        s.poll(ms(2));
        s.on_ready(2, ms(3));
        s.shutdown(ms(4));
        assert_eq!(s.poll(ms(4)), [Action::AskStop(2)]);
        s.on_ended(2, ms(5), Outcome::Exited(0), false);
        assert_eq!(s.poll(ms(5)), [Action::AskStop(1)]);
        s.on_ended(1, ms(6), Outcome::Exited(0), false);
        assert_eq!(s.poll(ms(6)), [Action::AskStop(0)]);
        assert_eq!(s.poll(ms(6) + STOP_GRACE), [Action::Kill(0)]);
        s.on_ended(0, ms(7) + STOP_GRACE, Outcome::Stopped, false);
        assert!(s.finished());
        assert!(
            s.records().iter().all(|r| r.state == "finished"),
            "{:?}",
            s.records()
        );
    }

    #[test]
    fn restarts_use_the_checkpoint() {
        let mut sp = spec(&[("a", 0, &[])], 8, 1024);
        sp.vms[0].checkpoint = Some("/ck".into());
        let mut s = Scheduler::new(&sp);
        assert!(matches!(
            s.poll(ms(0))[0],
            Action::Start {
                source: StartSource::Cold,
                ..
            }
        ));
        s.on_ready(0, ms(1));
        s.on_ended(0, ms(2), Outcome::Crashed("x".into()), true);
        let a = s.poll(ms(20));
        assert!(
            matches!(
                &a[0],
                Action::Start {
                    source: StartSource::Checkpoint(_),
                    attempt: 1,
                    ..
                }
            ),
            "{a:?}"
        );
        s.on_ready(0, ms(21));
        assert_eq!(s.records()[0].recoveries, [ms(19)]);
    }
}
