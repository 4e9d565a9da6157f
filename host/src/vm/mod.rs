//! A Tandem VM: built from a checked [`Image`](crate::image::Image), booted
//! straight into the app at CPL3 (or restored from a snapshot), and run
//! until it exits, breaks the protocol, crashes or times out.
//!
//! The order of setup follows what these machines taught us: guest memory
//! is registered before the vCPU exists (adding a slot later waits on
//! `synchronize_srcu`), no PIT and no in-kernel interrupt controller are
//! created, and everything the guest needs is written before its first
//! instruction.
//!
//! One file per concern:
//! - what a VM is given and tells: `config`, `check` (its validity),
//!   `report`, `error`; the public way in, `builder`;
//! - how it is made: `machine` (the one construction path, with the one
//!   memory-slot call), `boot` (with `boot_info` and `prefault`),
//!   `restore`;
//! - how it runs: `run` (the loop, which only runs), `exit` (what a KVM
//!   exit means, decided by a pure function), `actions` (everything the
//!   run carries out: hypercall actions, due snapshots and backup points),
//!   `stdin`, `clock`, `guest_trace`, `freeze` (stopping the VM's state
//!   into a snapshot or backup point).

mod boot;
mod boot_info;
mod builder;
mod check;
mod clock;
mod config;
mod error;
mod freeze;
mod guest_trace;
mod machine;
mod prefault;
mod report;
mod restore;

use kvm_ioctls::{VcpuFd, VmFd};
use tandem_abi::layout::LiveArea;

pub use builder::VmBuilder;
pub use check::check_mem_size;
pub use config::VmConfig;
pub use error::VmError;
pub use report::{ExitStatus, RunReport, RunStats, SnapshotRecord, SnapshotTrigger};

use std::time::Duration;

use kvm_ioctls::VcpuExit;
use tandem_abi::hypercall::{GuestBuf, Reply};
use tandem_abi::layout;
use tandem_abi::trace::Phase;
use vm_memory::{Bytes, GuestAddress};

use clock::wall_clock;

use crate::backup::{BackupRecord, BackupWriter};
use crate::console::Console;
use crate::control::{Kicker, VmEvent, VmHandle, Watch};
use crate::hypercall::{self, Action, HypercallError};
use crate::memory::GuestRam;
use crate::trace::BootTrace;

/// A VM with one vCPU, ready to run: made by [`VmBuilder`] or
/// [`Vm::restore`], consumed by [`Vm::run`].
pub struct Vm {
    // Field order is drop order: vCPU, VM, then guest memory.
    vcpu: VcpuFd,
    vm: VmFd,
    ram: GuestRam,
    config: VmConfig,
    trace: BootTrace,
    /// Guest TSC minus host TSC.
    tsc_offset: i64,
    /// What the guest was told about its CPU.
    tsc_khz: u64,
    cpu_features: (u32, u32),
    /// The host's copy of the live area.
    live: LiveArea,
    /// For a restored VM: the guest clock at the snapshot, applied to the
    /// live area just before the first run.
    resume_clock: Option<u64>,
    /// Console bytes written before this run (restored VMs).
    console_before: u64,
    /// Incremental backups in progress.
    backup: Option<BackupWriter>,
    /// Backup points written during the run.
    backup_records: Vec<BackupRecord>,
}

impl Vm {
    /// Guest memory (for inspection by tests and tools).
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ram.mem
    }

    /// The generation this VM's guest sees (0 for a VM that booted and was
    /// never restored).
    pub fn generation(&self) -> u64 {
        self.live.generation
    }
}

impl Vm {
    /// Runs the guest until it stops. Protocol violations, crashes and
    /// timeouts are reported in [`RunReport::status`], not as errors: they end
    /// this VM and nothing else.
    pub fn run(mut self) -> Result<RunReport, VmError> {
        self.resume_clock_now()?;
        let mut console = Console::new(
            self.config.console.clone(),
            self.config
                .console_limit
                .saturating_sub(self.console_before),
        )
        .with_rate(self.config.console_rate);
        let mut stats = RunStats::default();
        let mut records = Vec::new();
        if let Some(cfg) = self.config.backup.clone() {
            // The base point: everything, before the guest runs on.
            let record = self.backup_point(&cfg, &console)?;
            self.log_backup(&record);
            self.backup_records.push(record);
        }
        let watch = Watch {
            timeout: self.config.timeout,
            backup_every: self.config.backup.as_ref().map(|b| b.every),
            snapshot_signal: self.config.snapshot_on_signal && self.config.snapshot_dir.is_some(),
        };
        let kicker = watch.any().then(|| Kicker::start(watch));
        let mem_size = self.config.mem_size;
        let handle = self.config.handle.clone();
        let attached = handle.as_ref().map(VmHandle::attach);
        let deadline = self.config.timeout.map(|t| std::time::Instant::now() + t);
        if let Some(h) = &handle {
            h.event(VmEvent::Running);
        }
        let status = loop {
            if handle.as_ref().is_some_and(VmHandle::killed) {
                break ExitStatus::Stopped;
            }
            if let Some(k) = &kicker {
                if k.timed_out() {
                    break ExitStatus::TimedOut(self.config.timeout.unwrap_or_default());
                }
                if k.take_snapshot_request() {
                    if let Err(e) = self.drain_console(&mut console) {
                        break ExitStatus::ProtocolViolation(e);
                    }
                    if let Some(dir) = self.config.snapshot_dir.clone() {
                        let (record, stop) =
                            self.snapshot_now(&dir, SnapshotTrigger::Signal, &console);
                        records.push(record);
                        if stop {
                            break ExitStatus::Snapshotted(dir);
                        }
                    }
                }
                if k.take_backup_due() {
                    if let Err(e) = self.drain_console(&mut console) {
                        break ExitStatus::ProtocolViolation(e);
                    }
                    if let Some(cfg) = self.config.backup.clone() {
                        match self.backup_point(&cfg, &console) {
                            Ok(record) => {
                                self.log_backup(&record);
                                self.backup_records.push(record);
                            }
                            Err(e) => {
                                if self.config.verbose {
                                    eprintln!("tandem: backup point failed: {e}");
                                }
                            }
                        }
                    }
                }
            }
            let main_stamp = GuestAddress(layout::TRACE_ADDR + Phase::AppMain.offset());
            let exit = self.vcpu.run();
            let main_reached = self.ram.mem.read_obj::<u64>(main_stamp).unwrap_or(0) != 0;
            if exit.is_ok() {
                stats.exits += 1;
                if !main_reached {
                    stats.exits_before_main += 1;
                }
            }
            // Copy what the exit carries before touching anything else.
            let event = match exit {
                Ok(VcpuExit::IoOut(port, data)) => Event::Out(port, copy4(data)),
                Ok(VcpuExit::IoIn(port, _)) => Event::In(port),
                Ok(VcpuExit::Shutdown) => {
                    Event::Crash("triple fault (the guest could not handle an exception)".into())
                }
                Ok(VcpuExit::Hlt) => Event::Crash("the guest halted".into()),
                Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => Event::Crash(
                    format!("access to unbacked guest-physical address {addr:#x}"),
                ),
                Ok(VcpuExit::FailEntry(reason, _)) => Event::Crash(format!(
                    "KVM could not enter the guest (reason {reason:#x})"
                )),
                Ok(VcpuExit::InternalError) => Event::Crash("KVM internal error".into()),
                Ok(other) => Event::Crash(format!("unexpected VM exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Event::Interrupted
                }
                Err(e) => {
                    break ExitStatus::Crashed(format!("KVM_RUN failed: {e}"));
                }
            };
            if let Event::Interrupted = event {
                continue;
            }
            // Every exit drains the console: print! needs no exit of its own.
            if let Err(e) = self.drain_console(&mut console) {
                break ExitStatus::ProtocolViolation(e);
            }
            match event {
                Event::Out(port, (data, len)) => {
                    let tsc_offset = self.tsc_offset;
                    let wall = move || wall_clock(tsc_offset);
                    let mut written = Vec::new();
                    let served = hypercall::serve_tracked(
                        &self.ram.mem,
                        mem_size,
                        port,
                        &data[..len],
                        wall,
                        &mut written,
                    );
                    self.note_host_writes(&written);
                    match served {
                        Ok(Action::Continue) => {}
                        Ok(Action::Ready) => {
                            if let Some(h) = &handle {
                                h.event(VmEvent::Ready);
                            }
                            if let Some(dir) = self.config.snapshot_at_ready.take() {
                                let (record, stop) =
                                    self.snapshot_now(&dir, SnapshotTrigger::Ready, &console);
                                records.push(record);
                                if stop {
                                    break ExitStatus::Snapshotted(dir);
                                }
                            }
                        }
                        Ok(Action::Snapshot(reply)) => {
                            match self.guest_snapshot(reply, &console, &mut records) {
                                Ok(None) => {}
                                Ok(Some(status)) => break status,
                                Err(e) => break ExitStatus::ProtocolViolation(e),
                            }
                        }
                        Ok(Action::Exit(code)) => break ExitStatus::Exited(code),
                        Ok(Action::Idle { nanos, reply }) => {
                            let stop = idle(handle.as_ref(), nanos, deadline);
                            let answer = Reply::Idle { stop };
                            if let Err(e) =
                                hypercall::write_reply(&self.ram.mem, mem_size, reply, &answer)
                            {
                                break ExitStatus::ProtocolViolation(e);
                            }
                            self.note_host_writes(&[(reply.addr, u64::from(reply.len))]);
                        }
                        Ok(Action::ReadStdin { buf, reply }) => {
                            let mut data = vec![0u8; buf.len as usize];
                            let n = match read_stdin(
                                self.config.stdin,
                                &mut data,
                                handle.as_ref(),
                                deadline,
                            ) {
                                Some(n) => n,
                                None => {
                                    break ExitStatus::TimedOut(
                                        self.config.timeout.unwrap_or_default(),
                                    )
                                }
                            };
                            if let Err(e) = hypercall::write_input(&self.ram.mem, buf, &data[..n]) {
                                break ExitStatus::ProtocolViolation(e);
                            }
                            // `n` is at most MAX_STDIN_READ.
                            let len = u32::try_from(n).unwrap_or(0);
                            let answer = Reply::ReadStdin { len };
                            if let Err(e) =
                                hypercall::write_reply(&self.ram.mem, mem_size, reply, &answer)
                            {
                                break ExitStatus::ProtocolViolation(e);
                            }
                            self.note_host_writes(&[
                                (buf.addr, n as u64),
                                (reply.addr, u64::from(reply.len)),
                            ]);
                        }
                        Err(e) => break ExitStatus::ProtocolViolation(e),
                    }
                }
                Event::In(port) => {
                    let e = match tandem_abi::hypercall::HypercallPort::try_from(port) {
                        Ok(_) => HypercallError::PortRead(port),
                        Err(port) => HypercallError::UnknownPort(port),
                    };
                    break ExitStatus::ProtocolViolation(e);
                }
                Event::Crash(why) => break ExitStatus::Crashed(why),
                Event::Interrupted => unreachable!("handled above"),
            }
        };
        self.trace.stamp(Phase::Exit);
        drop(kicker);
        drop(attached);
        stats.console_bytes = console.written() + self.console_before;
        self.collect_guest_trace(&mut stats);
        Ok(RunReport {
            status,
            trace: self.trace,
            stats,
            snapshots: records,
            backups: self.backup_records,
        })
    }

    fn drain_console(&self, console: &mut Console) -> Result<(), HypercallError> {
        let text = hypercall::drain_console(&self.ram.mem)?;
        console.write(&text);
        Ok(())
    }

    /// Serves the guest's snapshot request: the reply says "taken" before
    /// the snapshot is written (so restored copies read it too), and is
    /// corrected if the write fails.
    fn guest_snapshot(
        &mut self,
        reply: GuestBuf,
        console: &Console,
        records: &mut Vec<SnapshotRecord>,
    ) -> Result<Option<ExitStatus>, HypercallError> {
        let mem_size = self.config.mem_size;
        let answer = |mem: &vm_memory::GuestMemoryMmap, taken: bool| {
            hypercall::write_reply(mem, mem_size, reply, &Reply::Snapshot { taken })
        };
        let Some(dir) = self.config.snapshot_dir.clone() else {
            answer(&self.ram.mem, false)?;
            return Ok(None);
        };
        answer(&self.ram.mem, true)?;
        self.note_host_writes(&[(reply.addr, u64::from(reply.len))]);
        let (record, stop) = self.snapshot_now(&dir, SnapshotTrigger::Guest, console);
        let failed = record.result.is_err();
        records.push(record);
        if failed {
            answer(&self.ram.mem, false)?;
        }
        Ok(stop.then_some(ExitStatus::Snapshotted(dir)))
    }

    /// Takes a snapshot into `dir`; says whether the VM should stop now.
    fn snapshot_now(
        &mut self,
        dir: &std::path::Path,
        trigger: SnapshotTrigger,
        console: &Console,
    ) -> (SnapshotRecord, bool) {
        let total = console.written() + self.console_before;
        let result = self.take_snapshot(dir, total).map_err(|e| e.to_string());
        if self.config.verbose {
            match &result {
                Ok(s) => eprintln!(
                    "tandem: snapshot ({trigger:?}) written to {}: {} pages in {:.1} ms",
                    dir.display(),
                    s.pages_written,
                    s.elapsed.as_secs_f64() * 1e3
                ),
                Err(e) => eprintln!(
                    "tandem: snapshot ({trigger:?}) to {} failed: {e}",
                    dir.display()
                ),
            }
        }
        let stop = self.config.exit_after_snapshot && result.is_ok();
        let record = SnapshotRecord {
            trigger,
            dir: dir.to_path_buf(),
            result,
        };
        (record, stop)
    }

    fn log_backup(&self, record: &BackupRecord) {
        if self.config.verbose {
            eprintln!(
                "tandem: backup point {} written: {} pages in {:.1} ms",
                record.point,
                record.pages,
                record.elapsed.as_secs_f64() * 1e3
            );
        }
    }
}

/// Longest single wait of a `Request::Idle` (the app asks again if it wants more).
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// Serves `Request::Idle`: waits up to `nanos` (capped by [`MAX_IDLE`] and
/// the run's deadline) or until a stop is asked; returns whether one was.
fn idle(handle: Option<&VmHandle>, nanos: u64, deadline: Option<std::time::Instant>) -> bool {
    let mut limit = Duration::from_nanos(nanos).min(MAX_IDLE);
    if let Some(d) = deadline {
        limit = limit.min(d.saturating_duration_since(std::time::Instant::now()));
    }
    match handle {
        Some(h) => h.idle(limit),
        None => {
            std::thread::sleep(limit);
            false
        }
    }
}

/// Serves `Request::ReadStdin`: waits for this process's standard input
/// (in slices, so a stop request or the run's deadline is seen), then reads
/// what is there. Returns the byte count (0: end of input, no stdin, or a
/// stop was asked), or `None` when the deadline passed.
fn read_stdin(
    enabled: bool,
    buf: &mut [u8],
    handle: Option<&VmHandle>,
    deadline: Option<std::time::Instant>,
) -> Option<usize> {
    if !enabled || buf.is_empty() {
        return Some(0);
    }
    loop {
        if handle.is_some_and(|h| h.stop_asked() || h.killed()) {
            return Some(0);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return None;
        }
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fds` is one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut fds, 1, 50) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Some(0);
        }
        if ready == 0 {
            continue;
        }
        if fds.revents & libc::POLLNVAL != 0 {
            return Some(0);
        }
        // SAFETY: reads at most `buf.len()` bytes into `buf`, which we own.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) => return Some(n.min(buf.len())),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Some(0);
            }
        }
    }
}

enum Event {
    Out(u16, ([u8; 8], usize)),
    In(u16),
    Crash(String),
    Interrupted,
}

fn copy4(data: &[u8]) -> ([u8; 8], usize) {
    let mut out = [0u8; 8];
    let n = data.len().min(8);
    out[..n].copy_from_slice(&data[..n]);
    (out, n)
}
