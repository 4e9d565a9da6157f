//! A run under gdb: the stub's target (what gdb's packets do to the VM:
//! registers, memory through the guest's page tables, `int3`
//! breakpoints, continue and single step) and the loop that drives
//! gdbstub's state machine and the VM's turns ([`Vm::step`]) in turn.
//!
//! The vCPU stops in one of two places. At the start and after a Ctrl-C it
//! is wherever `KVM_RUN` left it ([`Stopped::Direct`]): gdb sees KVM's
//! registers, and a step sets the trap flag in them. At a breakpoint, a
//! step's #DB or a fault it is in the guest's exception entry, which has
//! written the trapping code's registers to the fault record and stopped
//! at the `DebugTrap` port ([`Stopped::InStub`]): gdb sees and changes the
//! record, and the entry returns to the code through it (or goes on to
//! report a fault, when gdb passes the fault's signal on).

use std::collections::BTreeMap;

use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use tandem_abi::layout::KSTATS_ADDR;
use tandem_abi::trace::{FaultRecord, KernelStats};
use vm_memory::{Bytes, GuestAddress};

use super::run::{Session, Step, Watchers};
use super::{ExitStatus, RunStats, Vm};
use crate::coredump::Stop;
use crate::gdb::pagewalk::translate;
use crate::gdb::regs::{self, TF};
use crate::gdb::{GdbConnection, Watcher};

/// Most software breakpoints at once (gdb's requests are untrusted too).
const MAX_BREAKPOINTS: usize = 256;
/// The `int3` instruction.
const INT3: u8 = 0xCC;
/// The vector of a debug exception (a trap-flag step).
const DB_VECTOR: u64 = 1;
/// The vector of a breakpoint (`int3`): what PVM delivers for an `int3` at
/// CPL3 here, though the gate is DPL0 (`rip` is past the `int3`).
const BP_VECTOR: u64 = 3;
/// The vector of a general-protection fault: what the architecture says
/// an `int3` at CPL3 through a DPL0 gate raises (`rip` is at the `int3`).
const GP_VECTOR: u64 = 13;

/// Where the stopped vCPU's registers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// In KVM's register sets (the first instruction, a Ctrl-C).
    Direct,
    /// In the fault record: the guest's exception entry trapped with this
    /// vector and error code.
    InStub { vector: u64, error: u64 },
}

impl Stopped {
    /// Whether the trap is the debugger's own (a step, a breakpoint) rather
    /// than a fault of the app's.
    fn is_debug_trap(self) -> bool {
        match self {
            Stopped::Direct => true,
            Stopped::InStub { vector, error } => {
                vector == DB_VECTOR || vector == BP_VECTOR || is_int3_gp(vector, error)
            }
        }
    }
}

/// Whether a #GP is an `int3` at CPL3 through the DPL0 breakpoint gate.
fn is_int3_gp(vector: u64, error: u64) -> bool {
    vector == GP_VECTOR && error == KernelStats::INT3_GP_ERROR
}

/// How gdb asked the guest to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    step: bool,
    signal: Option<Signal>,
}

/// The stub's target: the VM and what the session knows about it.
pub(super) struct DebugTarget<'a, 'w> {
    vm: &'a mut Vm,
    session: &'a mut Session,
    stats: &'a mut RunStats,
    watchers: &'a Watchers<'w>,
    stopped: Stopped,
    /// Set by gdb's continue or step, taken when the guest runs.
    resume: Option<Resume>,
    /// Whether the guest runs on gdb's last resume.
    running: bool,
    /// Patched addresses and the bytes they held.
    breakpoints: BTreeMap<u64, u8>,
    /// The guest runs one instruction (the trap flag is set).
    stepping: bool,
}

/// What running the guest came to.
enum RunEvent {
    /// The guest stopped for the debugger.
    Stopped(SingleThreadStopReason<u64>),
    /// gdb sent something (a Ctrl-C).
    Incoming,
    /// The run is over.
    Ended(ExitStatus),
}

fn fatal(e: impl std::fmt::Display) -> TargetError<String> {
    TargetError::Fatal(e.to_string())
}

impl DebugTarget<'_, '_> {
    fn set_kstat(&mut self, offset: u64, value: u64) -> Result<(), String> {
        self.vm
            .ram
            .mem
            .write_obj(value, GuestAddress(KSTATS_ADDR + offset))
            .map_err(|e| e.to_string())
    }

    fn record(&self) -> Result<FaultRecord, String> {
        let mut b = [0u8; FaultRecord::SIZE];
        self.vm
            .ram
            .mem
            .read_slice(
                &mut b,
                GuestAddress(KSTATS_ADDR + KernelStats::FAULT_RECORD),
            )
            .map_err(|e| e.to_string())?;
        FaultRecord::from_bytes(&b).ok_or_else(|| "fault record".to_string())
    }

    fn set_record(&mut self, rec: &FaultRecord) -> Result<(), String> {
        self.vm
            .ram
            .mem
            .write_slice(
                &rec.to_bytes(),
                GuestAddress(KSTATS_ADDR + KernelStats::FAULT_RECORD),
            )
            .map_err(|e| e.to_string())
    }

    /// The guest-physical range behind `len` bytes at `gva` that one page
    /// holds, inside guest memory.
    fn phys(&self, gva: u64, len: usize) -> Option<(u64, usize)> {
        let cr3 = self.vm.vcpu.get_sregs().ok()?.cr3;
        let (gpa, left) = translate(&self.vm.ram.mem, cr3, gva)?;
        let n = len.min(usize::try_from(left).unwrap_or(usize::MAX));
        let end = gpa.checked_add(n as u64)?;
        (end <= self.vm.config.mem_size).then_some((gpa, n))
    }

    fn write_guest(&mut self, gva: u64, data: &[u8]) -> Result<(), ()> {
        // Check the whole range first: a write lands whole or not at all.
        let mut plan = Vec::new();
        let mut done = 0;
        while done < data.len() {
            let (gpa, n) = self
                .phys(gva.wrapping_add(done as u64), data.len() - done)
                .ok_or(())?;
            plan.push((gpa, done, n));
            done += n;
        }
        for (gpa, from, n) in plan {
            self.vm
                .ram
                .mem
                .write_slice(&data[from..from + n], GuestAddress(gpa))
                .map_err(|_| ())?;
            self.vm.note_host_writes(&[(gpa, n as u64)]);
        }
        Ok(())
    }

    /// Before the guest runs on: the trap flag for a step, and what the
    /// exception entry does next.
    fn apply_resume(&mut self) -> Result<(), String> {
        let r = self.resume.take().unwrap_or(Resume {
            step: false,
            signal: None,
        });
        let tf = |flags: u64| (flags & !TF) | if r.step { TF } else { 0 };
        match self.stopped {
            Stopped::Direct => {
                let mut kvm = self.vm.vcpu.get_regs().map_err(|e| e.to_string())?;
                if kvm.rflags != tf(kvm.rflags) {
                    kvm.rflags = tf(kvm.rflags);
                    self.vm.vcpu.set_regs(&kvm).map_err(|e| e.to_string())?;
                }
            }
            Stopped::InStub { .. } => {
                let mut rec = self.record()?;
                rec.rflags = tf(rec.rflags);
                // An int3 still in memory (not one of gdb's, which gdb takes
                // out before it steps on) is stepped over, as a #BP would.
                let mut byte = [0u8];
                let at_int3 = matches!(self.stopped, Stopped::InStub { vector, error } if is_int3_gp(vector, error));
                if at_int3
                    && self.read_guest(rec.rip, &mut byte) == 1
                    && byte[0] == INT3
                    && !self.breakpoints.contains_key(&rec.rip)
                {
                    rec.rip += 1;
                }
                self.set_record(&rec)?;
                // A fault gdb passes on is delivered (reported; the VM
                // ends); one it does not is retried.
                let action = if !self.stopped.is_debug_trap() && r.signal.is_some() {
                    KernelStats::DELIVER
                } else {
                    KernelStats::RESUME
                };
                self.set_kstat(KernelStats::DEBUG_ACTION, action)?;
            }
        }
        self.stepping = r.step;
        Ok(())
    }

    fn read_guest(&self, gva: u64, data: &mut [u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            let Some((gpa, n)) = self.phys(gva.wrapping_add(done as u64), data.len() - done) else {
                break;
            };
            if self
                .vm
                .ram
                .mem
                .read_slice(&mut data[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                break;
            }
            done += n;
        }
        done
    }

    /// Runs the guest until it stops for the debugger, gdb sends
    /// something, or the run ends.
    fn run(&mut self, conn_has_data: bool, watcher: &Watcher) -> RunEvent {
        if conn_has_data {
            return RunEvent::Incoming;
        }
        loop {
            match self.vm.step(self.session, self.stats, self.watchers) {
                Step::Again => {
                    if watcher.has_data() {
                        self.stopped = Stopped::Direct;
                        return RunEvent::Incoming;
                    }
                }
                Step::DebugTrap => return RunEvent::Stopped(self.trapped()),
                Step::End(status) => return RunEvent::Ended(status),
            }
        }
    }

    /// The guest's exception entry stopped: why, as gdb says it.
    fn trapped(&mut self) -> SingleThreadStopReason<u64> {
        let mut rec = self.record().unwrap_or_default();
        self.stopped = Stopped::InStub {
            vector: rec.vector,
            error: rec.error,
        };
        let stepping = std::mem::take(&mut self.stepping);
        // One of gdb's breakpoints as a #BP: gdb wants the pc at the int3,
        // and the guest goes on from there (gdb puts the byte back first).
        let bp_at = rec.rip.wrapping_sub(1);
        if rec.vector == BP_VECTOR && self.breakpoints.contains_key(&bp_at) {
            rec.rip = bp_at;
            if let Err(e) = self.set_record(&rec) {
                log::warn!("gdb: {e}");
            }
            return SingleThreadStopReason::SwBreak(());
        }
        match rec.vector {
            DB_VECTOR if stepping => SingleThreadStopReason::DoneStep,
            GP_VECTOR
                if is_int3_gp(rec.vector, rec.error) && self.breakpoints.contains_key(&rec.rip) =>
            {
                SingleThreadStopReason::SwBreak(())
            }
            _ if self.stopped.is_debug_trap() => SingleThreadStopReason::Signal(Signal::SIGTRAP),
            v => SingleThreadStopReason::Signal(signal(Stop::Exception(v))),
        }
    }

    /// Ends the debugging: breakpoints out, no trap flag, the exception
    /// entry told to go on as without a debugger.
    fn detach(&mut self) {
        let bps: Vec<(u64, u8)> = std::mem::take(&mut self.breakpoints).into_iter().collect();
        for (addr, byte) in bps {
            let _ = self.write_guest(addr, &[byte]);
        }
        self.resume = Some(Resume {
            step: false,
            // Pass a fault on: without a debugger it would have ended the VM.
            signal: Some(Signal::SIGTRAP),
        });
        if let Err(e) = self.apply_resume() {
            log::warn!("gdb: cannot resume the guest cleanly: {e}");
        }
        let _ = self.set_kstat(KernelStats::DEBUGGER, 0);
    }
}

/// A core file's signal for gdb.
fn signal(stop: Stop) -> Signal {
    Signal(u8::try_from(stop.signal()).unwrap_or(Signal::SIGSEGV.0))
}

impl Target for DebugTarget<'_, '_> {
    type Arch = X86_64_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    // The guest's code is patched with int3: gdb need not do it through
    // memory writes.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl SingleThreadBase for DebugTarget<'_, '_> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        let sregs = self.vm.vcpu.get_sregs().map_err(fatal)?;
        *regs = match self.stopped {
            Stopped::Direct => {
                let kvm = self.vm.vcpu.get_regs().map_err(fatal)?;
                regs::from_kvm(&kvm, &sregs)
            }
            Stopped::InStub { .. } => regs::from_record(&self.record().map_err(fatal)?, &sregs),
        };
        // The SSE registers are left out if KVM will not say. (The guest's
        // code is soft-float: its exception entry leaves them as the
        // trapping code had them.)
        if let Ok(xsave) = crate::snapshot::vcpu::capture_xsave(&self.vm.vm, &self.vm.vcpu) {
            regs::add_fxsave(regs, &xsave);
        }
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
        match self.stopped {
            Stopped::Direct => {
                let old = self.vm.vcpu.get_regs().map_err(fatal)?;
                self.vm
                    .vcpu
                    .set_regs(&regs::to_kvm(&old, regs))
                    .map_err(fatal)?;
            }
            Stopped::InStub { .. } => {
                let old = self.record().map_err(fatal)?;
                self.set_record(&regs::to_record(&old, regs))
                    .map_err(fatal)?;
            }
        }
        let mut xsave =
            crate::snapshot::vcpu::capture_xsave(&self.vm.vm, &self.vm.vcpu).map_err(fatal)?;
        if regs::set_fxsave_xmm(&mut xsave, regs) {
            crate::snapshot::vcpu::apply_xsave(&self.vm.vm, &self.vm.vcpu, &xsave)
                .map_err(fatal)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        match self.read_guest(start, data) {
            0 if !data.is_empty() => Err(TargetError::NonFatal),
            n => Ok(n),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        self.write_guest(start, data)
            .map_err(|()| TargetError::NonFatal)
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for DebugTarget<'_, '_> {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Some(Resume {
            step: false,
            signal,
        });
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for DebugTarget<'_, '_> {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Some(Resume { step: true, signal });
        Ok(())
    }
}

impl Breakpoints for DebugTarget<'_, '_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for DebugTarget<'_, '_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.breakpoints.contains_key(&addr) {
            return Ok(true);
        }
        if self.breakpoints.len() >= MAX_BREAKPOINTS {
            return Ok(false);
        }
        let mut byte = [0u8];
        if self.read_guest(addr, &mut byte) != 1 || self.write_guest(addr, &[INT3]).is_err() {
            return Err(TargetError::NonFatal);
        }
        self.breakpoints.insert(addr, byte[0]);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(byte) = self.breakpoints.remove(&addr) else {
            return Ok(false);
        };
        self.write_guest(addr, &[byte])
            .map_err(|()| TargetError::NonFatal)?;
        Ok(true)
    }
}

/// How a debugged run ended: over (with the guest's status), or gdb went
/// away and the guest runs on without it.
enum Outcome {
    Over(ExitStatus),
    Detached,
}

impl Vm {
    /// Runs the guest under gdb on `conn` until the run ends (`Some`) or
    /// gdb detaches or the session breaks (`None`: the caller runs on).
    pub(super) fn debug(
        &mut self,
        conn: GdbConnection,
        session: &mut Session,
        stats: &mut RunStats,
        watchers: &Watchers<'_>,
    ) -> Option<ExitStatus> {
        let watcher = Watcher::start(&conn);
        session.debugger = Some(watcher.interrupt());
        let mut target = DebugTarget {
            vm: self,
            session,
            stats,
            watchers,
            stopped: Stopped::Direct,
            resume: None,
            running: false,
            breakpoints: BTreeMap::new(),
            stepping: false,
        };
        if let Err(e) = target.set_kstat(KernelStats::DEBUGGER, 1) {
            log::error!("gdb: cannot attach: {e}");
            target.session.debugger = None;
            return None;
        }
        let outcome = drive(&mut target, conn, &watcher);
        watcher.disarm();
        target.session.debugger = None;
        match outcome {
            Ok(Outcome::Over(status)) => Some(status),
            Ok(Outcome::Detached) => {
                log::info!("gdb detached; the guest runs on");
                target.detach();
                None
            }
            Err(e) => {
                log::error!("gdb session ended: {e}; the guest runs on");
                target.detach();
                None
            }
        }
    }
}

/// What ended the session, as gdb is told it.
fn exit_reason(status: &ExitStatus) -> SingleThreadStopReason<u64> {
    match status {
        ExitStatus::Exited(code) => SingleThreadStopReason::Exited(*code),
        ExitStatus::Crashed(_) => SingleThreadStopReason::Terminated(signal(Stop::Crash)),
        _ => SingleThreadStopReason::Terminated(Signal::SIGKILL),
    }
}

/// gdbstub's state machine, fed from gdb's connection and the guest's stops.
fn drive(
    target: &mut DebugTarget<'_, '_>,
    conn: GdbConnection,
    watcher: &Watcher,
) -> Result<Outcome, String> {
    let mut ended: Option<ExitStatus> = None;
    let mut gdb = GdbStub::new(conn)
        .run_state_machine(target)
        .map_err(|e| e.to_string())?;
    loop {
        gdb = match gdb {
            GdbStubStateMachine::Idle(mut g) => {
                let byte = match g.borrow_conn().read_byte() {
                    Ok(Some(b)) => b,
                    Ok(None) => return Ok(Outcome::Detached),
                    Err(e) => return Err(format!("reading from gdb: {e}")),
                };
                g.incoming_data(target, byte).map_err(|e| e.to_string())?
            }
            GdbStubStateMachine::Running(mut g) => {
                if let Some(status) = ended.take() {
                    // The guest is gone: tell gdb, then the session ends.
                    let reason = exit_reason(&status);
                    ended = Some(status);
                    g.report_stop(target, reason).map_err(|e| e.to_string())?
                } else {
                    if !target.running {
                        target.apply_resume()?;
                        target.running = true;
                        watcher.arm();
                    }
                    let buffered = g.borrow_conn().has_buffered();
                    match target.run(buffered, watcher) {
                        RunEvent::Stopped(reason) => {
                            watcher.disarm();
                            target.running = false;
                            g.report_stop(target, reason).map_err(|e| e.to_string())?
                        }
                        RunEvent::Incoming => {
                            let byte = match g.borrow_conn().read_byte() {
                                Ok(Some(b)) => b,
                                Ok(None) => return Ok(Outcome::Detached),
                                Err(e) => return Err(format!("reading from gdb: {e}")),
                            };
                            watcher.arm();
                            g.incoming_data(target, byte).map_err(|e| e.to_string())?
                        }
                        RunEvent::Ended(status) => {
                            watcher.disarm();
                            target.running = false;
                            ended = Some(status);
                            GdbStubStateMachine::Running(g)
                        }
                    }
                }
            }
            GdbStubStateMachine::CtrlCInterrupt(g) => {
                watcher.disarm();
                target.running = false;
                target.stopped = Stopped::Direct;
                g.interrupt_handled(
                    target,
                    Some(SingleThreadStopReason::<u64>::Signal(Signal::SIGINT)),
                )
                .map_err(|e| e.to_string())?
            }
            GdbStubStateMachine::Disconnected(g) => {
                return Ok(match (g.get_reason(), ended) {
                    (_, Some(status)) => Outcome::Over(status),
                    (DisconnectReason::Kill, None) => Outcome::Over(ExitStatus::Stopped),
                    (_, None) => Outcome::Detached,
                });
            }
        };
    }
}
