//! The run loop. It only runs: between two `KVM_RUN`s it ends the run if
//! asked to, lets `actions` carry out what is due, has `handle_kvm_exit`
//! decide what each exit means, and has `actions` serve each hypercall.

use std::ops::ControlFlow;
use std::time::Instant;

use tandem_abi::trace::Phase;

use super::exit::{handle_kvm_exit, Decision, ExitAction};
use super::guest_trace::guest_stamp;
use super::{ExitStatus, RunReport, RunStats, SnapshotRecord, Vm, VmError};
use crate::console::Console;
use crate::control::{Kicker, VmEvent, VmHandle, Watch};
use crate::hypercall::{self, HypercallError};

/// What a run holds besides the VM while the guest runs.
pub(super) struct Session {
    /// The guest's console.
    pub(super) console: Console,
    /// Snapshots taken so far.
    pub(super) snapshots: Vec<SnapshotRecord>,
    /// Who follows the run, if anyone.
    pub(super) handle: Option<VmHandle>,
    /// When the run times out.
    pub(super) deadline: Option<Instant>,
}

impl Vm {
    /// Runs the guest until it stops. Protocol violations, crashes and
    /// timeouts are reported in [`RunReport::status`], not as errors: they end
    /// this VM and nothing else.
    pub fn run(mut self) -> Result<RunReport, VmError> {
        self.resume_clock_now()?;
        let console = Console::new(
            self.config.console.clone(),
            self.config
                .console_limit
                .saturating_sub(self.console_before),
        )
        .with_rate(self.config.console_rate);
        self.first_backup_point(&console)?;
        let watch = Watch {
            timeout: self.config.timeout,
            backup_every: self.config.backup.as_ref().map(|b| b.every),
            snapshot_signal: self.config.snapshot_on_signal && self.config.snapshot_dir.is_some(),
        };
        let kicker = watch.any().then(|| Kicker::start(watch));
        let follower = self.config.handle.clone();
        let attached = follower.as_ref().map(VmHandle::attach);
        let mut session = Session {
            console,
            snapshots: Vec::new(),
            handle: follower.clone(),
            deadline: self.config.timeout.map(|t| Instant::now() + t),
        };
        if let Some(h) = &follower {
            h.event(VmEvent::Running);
        }
        let mut stats = RunStats::default();
        let status = loop {
            if follower.as_ref().is_some_and(VmHandle::killed) {
                break ExitStatus::Stopped;
            }
            if let Some(k) = &kicker {
                if k.timed_out() {
                    break ExitStatus::TimedOut(self.config.timeout.unwrap_or_default());
                }
                if let ControlFlow::Break(status) = self.carry_out_due(k, &mut session) {
                    break status;
                }
            }
            let exit = match handle_kvm_exit(self.vcpu.run()) {
                Decision::Rerun => continue,
                Decision::Fail(status) => break status,
                Decision::Exited(exit) => exit,
            };
            stats.exits += 1;
            if guest_stamp(&self.ram.mem, Phase::AppMain) == 0 {
                stats.exits_before_main += 1;
            }
            // Every exit drains the console: print! needs no exit of its own.
            if let Err(e) = self.drain_console(&mut session.console) {
                break ExitStatus::ProtocolViolation(e);
            }
            match exit {
                ExitAction::Serve { port, data, len } => {
                    if let ControlFlow::Break(status) = self.serve(port, &data[..len], &mut session)
                    {
                        break status;
                    }
                }
                ExitAction::DebugTrap => {
                    break ExitStatus::ProtocolViolation(HypercallError::NoDebugger(
                        tandem_abi::hypercall::HypercallPort::DebugTrap as u16,
                    ))
                }
                ExitAction::Stop(status) => break status,
            }
        };
        self.trace.stamp(Phase::Exit);
        // The run's outcome stands whether or not its core file could be written.
        match self.core_if_crashed(&status) {
            Ok(Some((path, s))) => log::info!(
                "core file written to {} ({} pages of guest memory); open it with `gdb IMAGE {}`",
                path.display(),
                s.pages_written,
                path.display()
            ),
            Ok(None) => {}
            Err(e) => log::error!("{e}"),
        }
        drop(kicker);
        drop(attached);
        stats.console_bytes = session.console.written() + self.console_before;
        self.collect_guest_trace(&mut stats);
        Ok(RunReport {
            status,
            trace: self.trace,
            stats,
            snapshots: session.snapshots,
            backups: self.backup_records,
        })
    }

    /// Passes on what the guest's console buffer holds.
    pub(super) fn drain_console(&self, console: &mut Console) -> Result<(), HypercallError> {
        let text = hypercall::drain_console(&self.ram.mem)?;
        console.write(&text);
        Ok(())
    }
}
