//! The run loop. It only runs: between two `KVM_RUN`s it ends the run if
//! asked to, lets `actions` carry out what is due, has `handle_kvm_exit`
//! decide what each exit means, and has `actions` serve each hypercall.
//! Under gdb, `debug` drives the same turns ([`Vm::step`]) from the stub.

use std::ops::ControlFlow;
use std::time::Instant;

use kvm_ioctls::VcpuExit;
use tandem_abi::hypercall::HypercallPort;
use tandem_abi::trace::Phase;

use super::actions::PendingIdle;
use super::exit::{handle_kvm_exit, Decision, ExitAction};
use super::guest_trace::guest_stamp;
use super::{ExitStatus, RunReport, RunStats, SnapshotRecord, Vm, VmError};
use crate::console::Console;
use crate::control::{Kicker, VmEvent, VmHandle, Watch};
use crate::devices::{BlkDevice, DeviceError, NetDevice};
use crate::gdb::{GdbConnection, Interrupt};
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
    /// Under gdb: whether it wants to break in (ends waits in the VMM).
    pub(super) debugger: Option<Interrupt>,
    /// An `Idle` wait gdb broke into: it goes on when the guest runs again.
    pub(super) pending_idle: Option<PendingIdle>,
}

/// What one turn of the loop came to.
pub(super) enum Step {
    /// Run again.
    Again,
    /// The guest's exception entry stopped for a debugger.
    DebugTrap,
    /// The run is over.
    End(ExitStatus),
}

/// What the loop watches besides the guest.
pub(super) struct Watchers<'a> {
    /// The control thread, if anything is to be watched.
    pub(super) kicker: Option<&'a Kicker>,
    /// Who may kill the run.
    pub(super) follower: Option<&'a VmHandle>,
}

impl Vm {
    /// Runs the guest until it stops. Protocol violations, crashes and
    /// timeouts are reported in [`RunReport::status`], not as errors: they end
    /// this VM and nothing else.
    pub fn run(self) -> Result<RunReport, VmError> {
        self.run_with(None)
    }

    /// [`Vm::run`] under gdb, on `gdb`'s connection
    /// ([`wait_for_gdb`](crate::gdb::wait_for_gdb)): the guest waits for
    /// gdb before its first instruction; when gdb detaches (or the session
    /// breaks) it runs on without it.
    pub fn run_with_gdb(self, gdb: GdbConnection) -> Result<RunReport, VmError> {
        self.run_with(Some(gdb))
    }

    fn run_with(mut self, gdb: Option<GdbConnection>) -> Result<RunReport, VmError> {
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
            // Pre-copy points are timed by the backup thread.
            backup_every: self
                .config
                .backup
                .as_ref()
                .filter(|_| !self.backups_live())
                .map(|b| b.every),
            snapshot_signal: self.config.snapshot_on_signal && self.config.snapshot_dir.is_some(),
        };
        let kicker = watch.any().then(|| Kicker::start(watch));
        let follower = self.config.handle.clone();
        let attached = follower.as_ref().map(VmHandle::attach);
        let verifying = self
            .ram
            .verifier()
            .map(crate::lazy_verify::LazyVerifier::attach);
        let mut session = Session {
            console,
            snapshots: Vec::new(),
            handle: follower.clone(),
            deadline: self.config.timeout.map(|t| Instant::now() + t),
            debugger: None,
            pending_idle: None,
        };
        if let Some(h) = &follower {
            h.event(VmEvent::Running);
        }
        let mut stats = RunStats::default();
        let watchers = Watchers {
            kicker: kicker.as_ref(),
            follower: follower.as_ref(),
        };
        let debugged = match gdb {
            Some(conn) => self.debug(conn, &mut session, &mut stats, &watchers),
            None => None,
        };
        let status = match debugged {
            Some(status) => status,
            None => loop {
                match self.step(&mut session, &mut stats, &watchers) {
                    Step::Again => continue,
                    Step::DebugTrap => {
                        break ExitStatus::ProtocolViolation(HypercallError::NoDebugger(
                            HypercallPort::DebugTrap as u16,
                        ))
                    }
                    Step::End(status) => break status,
                }
            },
        };
        self.trace.stamp(Phase::Exit);
        // On this thread, before the VM goes: the thread kicks this one.
        self.finish_live_backup();
        self.record_working_set();
        if let Some(net) = &self.net {
            let s = net.stats();
            log::info!(
                "net: {} frames in, {} out, {} kicks, {} dropped, {} held by the rate limit",
                s.rx_frames,
                s.tx_frames,
                s.kicks,
                s.dropped,
                s.held
            );
        }
        for d in &self.disks {
            let s = d.stats();
            log::info!(
                "disk {}: {} reads ({} bytes), {} writes ({} bytes), {} flushes, {} errors, {} kicks, {} held",
                d.disk().path().display(),
                s.reads,
                s.bytes_read,
                s.writes,
                s.bytes_written,
                s.flushes,
                s.errors,
                s.kicks,
                s.held
            );
        }
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
        drop(verifying);
        if let Some(v) = self.ram.verifier() {
            log::debug!(
                "lazy verification: {} chunks served on first touch",
                v.served()
            );
        }
        stats.console_bytes = session.console.written() + self.console_before;
        stats.console_dropped = session.console.dropped();
        self.collect_guest_trace(&mut stats);
        let report = RunReport {
            status,
            trace: std::mem::replace(&mut self.trace, crate::trace::BootTrace::new(0)),
            stats,
            snapshots: session.snapshots,
            backups: std::mem::take(&mut self.backup_records),
        };
        // The tap is let go at once (a next VM may open it); the rest of
        // the VM is torn down off this path.
        drop(self.net.take());
        super::teardown::dispose(self);
        Ok(report)
    }

    /// One turn: what is due, one `KVM_RUN`, and what its exit asks.
    pub(super) fn step(
        &mut self,
        session: &mut Session,
        stats: &mut RunStats,
        watchers: &Watchers<'_>,
    ) -> Step {
        if let Some(why) = self.ram.verifier().and_then(|v| v.failure()) {
            return Step::End(ExitStatus::CorruptMemory(why));
        }
        if watchers.follower.is_some_and(VmHandle::killed) {
            return Step::End(ExitStatus::Stopped);
        }
        if watchers.kicker.is_some_and(Kicker::timed_out) {
            return Step::End(ExitStatus::TimedOut(
                self.config.timeout.unwrap_or_default(),
            ));
        }
        // An Idle wait gdb broke into goes on first: the guest sees one
        // wait, as long as it asked for.
        if let Some(pending) = session.pending_idle.take() {
            if let ControlFlow::Break(status) = self.idle_until(pending, session) {
                return Step::End(status);
            }
            if session.pending_idle.is_some() {
                return Step::Again;
            }
        }
        if let ControlFlow::Break(status) = self.carry_out_live_backup(session) {
            return Step::End(status);
        }
        if let Some(k) = watchers.kicker {
            if let ControlFlow::Break(status) = self.carry_out_due(k, session) {
                return Step::End(status);
            }
        }
        if let Some(h) = watchers.follower {
            if let ControlFlow::Break(status) = self.carry_out_asked(h, session) {
                return Step::End(status);
            }
        }
        let mut result = self.vcpu.run();
        // A chunk that failed its check ends the VM before anything its
        // exit says is acted on (the guest never saw the chunk's bytes).
        if let Some(why) = self.ram.verifier().and_then(|v| v.failure()) {
            return Step::End(ExitStatus::CorruptMemory(why));
        }
        // A device register read is answered in the run area, which the
        // next KVM_RUN hands the guest (the decision below copies out).
        if let Ok(VcpuExit::MmioRead(addr, data)) = &mut result {
            mmio_read(self.net.as_ref(), &self.disks, *addr, data);
        }
        let exit = match handle_kvm_exit(result) {
            Decision::Rerun => return Step::Again,
            Decision::Fail(status) => return Step::End(status),
            Decision::Exited(exit) => exit,
        };
        stats.exits += 1;
        if guest_stamp(&self.ram.mem, Phase::AppMain) == 0 {
            stats.exits_before_main += 1;
        }
        // Every exit drains the console: print! needs no exit of its own.
        if let Err(e) = self.drain_console(&mut session.console) {
            return Step::End(ExitStatus::ProtocolViolation(e));
        }
        let step = match exit {
            ExitAction::Serve { port, data, len } => {
                match self.serve(port, &data[..len], session) {
                    ControlFlow::Break(status) => Step::End(status),
                    ControlFlow::Continue(()) => Step::Again,
                }
            }
            ExitAction::MmioRead { addr } => {
                if !self.mmio_backed(addr) {
                    return Step::End(unbacked(addr));
                }
                Step::Again
            }
            ExitAction::MmioWrite { addr, data, len } => {
                match self.mmio_write(addr, &data[..len]) {
                    Ok(true) => Step::Again,
                    Ok(false) => return Step::End(unbacked(addr)),
                    Err(e) => return Step::End(ExitStatus::DeviceViolation(e)),
                }
            }
            ExitAction::DebugTrap => Step::DebugTrap,
            ExitAction::Stop(status) => return Step::End(status),
        };
        // Every exit fills the guest's receive buffers from the tap (and
        // sends a frame a rate limit held, once it may go).
        if let Some(net) = self.net.as_mut() {
            if let Err(e) = net.pump(&self.ram.mem) {
                return Step::End(ExitStatus::DeviceViolation(e));
            }
        }
        // And serves a disk request a rate limit held, once it may go.
        for d in &mut self.disks {
            if let Err(e) = d.pump(&self.ram.mem) {
                return Step::End(ExitStatus::DeviceViolation(e.into()));
            }
        }
        step
    }

    /// Whether a device's register window holds guest-physical `addr`.
    fn mmio_backed(&self, addr: u64) -> bool {
        self.net.as_ref().is_some_and(|n| n.offset(addr).is_some())
            || self.disks.iter().any(|d| d.offset(addr).is_some())
    }

    /// Hands a register write at `addr` to the device whose window holds
    /// it; `Ok(false)` if none does.
    pub(super) fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Result<bool, DeviceError> {
        let mem = &self.ram.mem;
        if let Some(net) = self.net.as_mut() {
            if let Some(offset) = net.offset(addr) {
                net.write(mem, offset, data)?;
                return Ok(true);
            }
        }
        for d in &mut self.disks {
            if let Some(offset) = d.offset(addr) {
                d.write(mem, offset, data)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Passes on what the guest's console buffer holds.
    pub(super) fn drain_console(&self, console: &mut Console) -> Result<(), HypercallError> {
        let text = hypercall::drain_console(&self.ram.mem)?;
        console.write(&text);
        Ok(())
    }
}

/// Answers a register read at `addr` from the device whose window holds it.
pub(super) fn mmio_read(net: Option<&NetDevice>, disks: &[BlkDevice], addr: u64, data: &mut [u8]) {
    if let Some((net, offset)) = net.and_then(|n| Some((n, n.offset(addr)?))) {
        net.read(offset, data);
    }
    for d in disks {
        if let Some(offset) = d.offset(addr) {
            d.read(offset, data);
        }
    }
}

/// An access to a guest-physical address no memory and no device backs.
fn unbacked(addr: u64) -> ExitStatus {
    ExitStatus::Crashed(format!(
        "access to unbacked guest-physical address {addr:#x}"
    ))
}
