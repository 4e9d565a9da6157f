//! One attempt of one VM, on a vCPU thread of its own: boot it (cold or
//! from a snapshot), run it to its end, and send back what happened. What
//! an ended attempt means for the fleet is decided by free functions
//! ([`outcome`], [`checkpoint_written`], [`record`]) with their own tests.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_abi::trace::Phase;

use super::super::config::VmSpec;
use super::super::scheduler::{Attempt, Outcome, StartSource};
use crate::control::{VmEvent, VmHandle};
use crate::devices::rate_limiter::SharedLimit;
use crate::kvm::Hypervisor;
use crate::pool::Pool;
use crate::snapshot::Snapshot;
use crate::trace::rdtsc;
use crate::vm::{ExitStatus, RunReport, SnapshotTrigger, Vm, VmBuilder, VmConfig};
use crate::ConsoleSink;

/// Most console bytes kept from a failed attempt, for its report.
const CONSOLE_TAIL: usize = 512;

/// What the vCPU threads tell the main loop.
pub(super) enum Msg {
    /// A VM's event, at this time since the fleet started.
    Event(usize, VmEvent, Duration),
    /// An attempt ended.
    Ended {
        vm: usize,
        result: Box<Result<RunReport, String>>,
        /// When its thread started, since the fleet started.
        started: Duration,
        console_tail: String,
        /// Everything it printed (for `RunOptions::console_dir`).
        console: Vec<u8>,
        /// It started from a snapshot.
        restored: bool,
    },
}

/// A handle whose events come back to the main loop, stamped with the
/// fleet's clock. A VM restored from a snapshot was frozen after its
/// initialisation (and its `ready()` call): it is ready once it runs.
pub(super) fn event_handle(tx: Sender<Msg>, start: Instant, vm: usize, restored: bool) -> VmHandle {
    let tx = Mutex::new(tx);
    VmHandle::with_events(move |e| {
        let at = start.elapsed();
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(Msg::Event(vm, e, at));
            if restored && e == VmEvent::Running {
                let _ = tx.send(Msg::Event(vm, VmEvent::Ready, at));
            }
        }
    })
}

/// The VM id of attempt `attempt` of VM `vm`: unique in the fleet's run.
pub(super) fn vm_id(vm: usize, attempt: u32) -> u64 {
    (u64::try_from(vm).unwrap_or(0) << 16) | u64::from(attempt)
}

/// Everything one attempt needs on its thread.
pub(super) struct Launch<'a> {
    pub hv: &'a Hypervisor,
    /// The warm pool a start from the VM's snapshot takes from.
    pub pool: Option<&'a Pool>,
    pub spec: &'a VmSpec,
    pub vm: usize,
    pub attempt: u32,
    pub source: StartSource,
    pub handle: VmHandle,
    pub tx: Sender<Msg>,
    /// The fleet's start.
    pub start: Instant,
    /// Its disks' draw on the fleet's I/O budget.
    pub io_share: Option<Arc<dyn SharedLimit>>,
}

impl Launch<'_> {
    /// Boots and runs the attempt on the calling thread (its vCPU thread),
    /// then sends [`Msg::Ended`].
    pub fn run(self) {
        let started = self.start.elapsed();
        let restored = self.source != StartSource::Cold;
        let capture = Arc::new(Mutex::new(Vec::new()));
        let console = ConsoleSink::Capture(capture.clone());
        let vm_id = vm_id(self.vm, self.attempt);
        let result = boot(
            self.hv,
            self.pool,
            self.spec,
            &self.source,
            (self.handle, self.io_share),
            console,
            vm_id,
        );
        let console = capture
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        let console_tail = tail(&console);
        let _ = self.tx.send(Msg::Ended {
            vm: self.vm,
            result: Box::new(result),
            started,
            console_tail,
            console,
            restored,
        });
    }
}

/// Boots one attempt to its end on the calling thread.
fn boot(
    hv: &Hypervisor,
    pool: Option<&Pool>,
    spec: &VmSpec,
    source: &StartSource,
    (handle, io_share): (VmHandle, Option<Arc<dyn SharedLimit>>),
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
        net: spec.net.clone(),
        disks: spec.disks.clone(),
        io_share,
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
        StartSource::Pool(_) if pool.is_some() => {
            let pool = pool.ok_or("no pool")?;
            let vm = pool.take(Some(config)).map_err(|e| e.to_string())?;
            crate::seccomp::lock_down().map_err(|e| e.to_string())?;
            vm.run().map_err(|e| e.to_string())
        }
        // A pool start without a pool (the runner makes one per `warm`
        // entry, so not expected) restores from the snapshot itself.
        StartSource::Snapshot(dir) | StartSource::Checkpoint(dir) | StartSource::Pool(dir) => {
            let snap =
                Snapshot::load(dir).map_err(|e| format!("snapshot {}: {e}", dir.display()))?;
            let vm = Vm::restore_at(hv, &snap, config, start).map_err(|e| e.to_string())?;
            crate::seccomp::lock_down().map_err(|e| e.to_string())?;
            vm.run().map_err(|e| e.to_string())
        }
    }
}

/// The last [`CONSOLE_TAIL`] bytes of a console, as text.
fn tail(bytes: &[u8]) -> String {
    let from = bytes.len().saturating_sub(CONSOLE_TAIL);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// How the scheduler sees an attempt's end.
pub(super) fn outcome(result: &Result<RunReport, String>) -> Outcome {
    match result {
        Ok(r) => match &r.status {
            ExitStatus::Exited(c) => Outcome::Exited(*c),
            ExitStatus::Stopped => Outcome::Stopped,
            ExitStatus::Snapshotted(_) => Outcome::Exited(0),
            ExitStatus::Crashed(why) => Outcome::Crashed(format!("crashed: {why}")),
            ExitStatus::ProtocolViolation(e) => {
                Outcome::Crashed(format!("broke the hypercall protocol: {e}"))
            }
            ExitStatus::DeviceViolation(e) => {
                Outcome::Crashed(format!("broke the virtio protocol: {e}"))
            }
            ExitStatus::TimedOut(d) => Outcome::Crashed(format!("timed out after {d:?}")),
            ExitStatus::CorruptMemory(why) => {
                Outcome::Crashed(format!("snapshot memory refused: {why}"))
            }
        },
        Err(e) => Outcome::Error(e.clone()),
    }
}

/// Whether an outcome is a failure (its console is worth keeping).
pub(super) fn failed(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Exited(0) | Outcome::Stopped)
}

/// Whether the attempt wrote its checkpoint (a snapshot at `ready()`).
pub(super) fn checkpoint_written(result: &Result<RunReport, String>) -> bool {
    result.as_ref().is_ok_and(|r| {
        r.snapshots
            .iter()
            .any(|s| s.trigger == SnapshotTrigger::Ready && s.result.is_ok())
    })
}

/// Adds what only the attempt's own report knows to its record: when it
/// reached main and its boot phases (on the fleet's clock), and the end of
/// its console when it failed (`failed_console`).
pub(super) fn record(
    a: &mut Attempt,
    result: &Result<RunReport, String>,
    started: Duration,
    restored: bool,
    failed_console: Option<String>,
) {
    if let Ok(r) = result {
        let base = started.saturating_sub(a.admitted_at);
        // A restored VM's trace starts after its app's main.
        if !restored {
            a.main_at = r
                .trace
                .micros(Phase::AppMain)
                .map(|m| started + Duration::from_secs_f64(m / 1e6));
        }
        a.phases_us = r
            .trace
            .reached()
            .into_iter()
            .map(|(p, t)| (p.name(), t + base.as_secs_f64() * 1e6))
            .collect();
    }
    if let Some(tail) = failed_console.filter(|t| !t.is_empty()) {
        a.console_tail = Some(tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::BootTrace;
    use crate::vm::{RunStats, SnapshotRecord};

    fn report(status: ExitStatus) -> Result<RunReport, String> {
        // 1 GHz: a tick is a nanosecond.
        let mut trace = BootTrace::new(1_000_000);
        trace.set(Phase::VmmStart, 1_000);
        trace.set(Phase::AppMain, 3_001_000);
        Ok(RunReport {
            status,
            trace,
            stats: RunStats::default(),
            snapshots: Vec::new(),
            backups: Vec::new(),
        })
    }

    #[test]
    fn outcomes_of_an_attempt() {
        assert_eq!(outcome(&report(ExitStatus::Exited(3))), Outcome::Exited(3));
        assert_eq!(outcome(&report(ExitStatus::Stopped)), Outcome::Stopped);
        assert_eq!(
            outcome(&report(ExitStatus::Snapshotted("/s".into()))),
            Outcome::Exited(0)
        );
        assert_eq!(
            outcome(&report(ExitStatus::TimedOut(Duration::from_secs(1)))),
            Outcome::Crashed("timed out after 1s".into())
        );
        assert_eq!(
            outcome(&Err("no memory".into())),
            Outcome::Error("no memory".into())
        );
        assert!(!failed(&Outcome::Exited(0)) && !failed(&Outcome::Stopped));
        assert!(failed(&Outcome::Exited(1)) && failed(&Outcome::Error(String::new())));
    }

    #[test]
    fn a_checkpoint_is_a_snapshot_written_at_ready() {
        let mut r = report(ExitStatus::Exited(0));
        assert!(!checkpoint_written(&r));
        let snap = |trigger, result| SnapshotRecord {
            trigger,
            dir: "/ck".into(),
            result,
        };
        if let Ok(r) = &mut r {
            r.snapshots
                .push(snap(SnapshotTrigger::Ready, Err("full".into())));
            r.snapshots
                .push(snap(SnapshotTrigger::Guest, Ok(Default::default())));
        }
        assert!(!checkpoint_written(&r));
        if let Ok(r) = &mut r {
            r.snapshots
                .push(snap(SnapshotTrigger::Ready, Ok(Default::default())));
        }
        assert!(checkpoint_written(&r));
    }

    #[test]
    fn records_are_put_on_the_fleets_clock() {
        let ms = Duration::from_millis;
        let mut a = Attempt {
            admitted_at: ms(10),
            ..Attempt::default()
        };
        record(&mut a, &report(ExitStatus::Exited(0)), ms(12), false, None);
        // main 3 ms into the trace of a thread started at 12 ms.
        assert_eq!(a.main_at, Some(ms(15)));
        let main = a
            .phases_us
            .iter()
            .find(|(p, _)| *p == Phase::AppMain.name());
        assert_eq!(main.map(|(_, us)| us.round()), Some(5_000.0));
        assert_eq!(a.console_tail, None);

        let mut restored = Attempt::default();
        record(
            &mut restored,
            &report(ExitStatus::Exited(0)),
            ms(12),
            true,
            None,
        );
        assert_eq!(restored.main_at, None);

        let mut failed = Attempt::default();
        record(
            &mut failed,
            &Err("boom".into()),
            ms(1),
            false,
            Some(String::new()),
        );
        assert_eq!(failed.console_tail, None, "an empty console is not kept");
        record(
            &mut failed,
            &Err("boom".into()),
            ms(1),
            false,
            Some("panicked".into()),
        );
        assert_eq!(failed.console_tail.as_deref(), Some("panicked"));
    }

    #[test]
    fn console_tail_and_vm_ids() {
        let long: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz"
            .iter()
            .cycle()
            .take(2000)
            .copied()
            .collect();
        let t = tail(&long);
        assert_eq!(t.len(), CONSOLE_TAIL);
        assert!(long.ends_with(t.as_bytes()));
        assert_eq!(tail(b"short"), "short");
        assert_eq!(vm_id(3, 2), (3 << 16) | 2);
    }
}
