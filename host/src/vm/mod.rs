//! A Tandem VM: built from a checked [`Image`], booted straight into the
//! app at CPL3, and run until it exits, breaks the protocol, crashes or times out.
//!
//! The order of setup follows what these machines taught us: guest memory
//! is registered before the vCPU exists (adding a slot later waits on
//! `synchronize_srcu`), no PIT and no in-kernel interrupt controller are
//! created, and everything the guest needs is written before its first
//! instruction.

use std::time::Duration;

use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use tandem_abi::bootinfo::{
    BootInfo, BootPath, CpuInfo, HostStamps, MemKind, MemRegion, ENTROPY_SIZE,
};
use tandem_abi::hypercall::{GuestBuf, Reply};
use tandem_abi::layout::{self, LiveArea};
use tandem_abi::trace::{KernelStats, Phase};
use vm_memory::{Bytes, GuestAddress};

mod builder;
mod check;
mod config;
mod error;
mod report;
mod restore;

pub use builder::VmBuilder;
pub use check::check_mem_size;
pub use config::VmConfig;
pub use error::VmError;
pub use report::{ExitStatus, RunReport, RunStats, SnapshotRecord, SnapshotTrigger};

use error::ioctl;

use crate::arch;
use crate::backup::{BackupRecord, BackupWriter};
use crate::console::Console;
use crate::control::{Kicker, VmEvent, VmHandle, Watch};
use crate::entropy::fill_random;
use crate::hypercall::{self, Action, HypercallError};
use crate::image::Image;
use crate::kvm::Hypervisor;
use crate::memory::GuestRam;
use crate::trace::{rdtsc, BootTrace};

/// A VM with one vCPU, ready to run.
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

/// The guest memory slot: all of guest memory, with dirty logging for backups.
fn memory_slot(ram: &GuestRam, dirty_log: bool) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot: 0,
        flags: if dirty_log {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.host_addr(),
    }
}

const MSR_IA32_TSC: u32 = 0x10;

impl Vm {
    pub(super) fn boot(
        hv: &Hypervisor,
        image: &Image,
        config: VmConfig,
        start_tsc: u64,
    ) -> Result<Self, VmError> {
        check::check_config(&config)?;
        let mut trace = BootTrace::new(0);
        trace.set(Phase::VmmStart, start_tsc);
        trace.stamp(Phase::KvmReady);

        let vm = hv.kvm().create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        trace.stamp(Phase::VmCreated);

        let ram = GuestRam::new(config.mem_size, config.huge_pages)?;
        let region = memory_slot(&ram, config.backup.is_some());
        // SAFETY: the region is a live mapping of `ram.size()` bytes owned by
        // `ram`, which this struct drops after the VM fd (field order).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        trace.stamp(Phase::MemoryMapped);

        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let tsc_khz = hv.tsc_khz(&vcpu)?;
        trace.set_tsc_khz(u64::from(tsc_khz));
        let tsc_offset = guest_tsc_offset(&vcpu)?;

        image.load(&ram.mem)?;
        arch::write_structures(
            &ram.mem,
            config.mem_size,
            &image.segment_maps(),
            image.note.exception_stubs,
        )?;
        let to_guest = |host: u64| host.wrapping_add_signed(tsc_offset);
        let info = boot_info(hv, &config, tsc_khz, to_guest(start_tsc), to_guest(rdtsc()));
        let cpu_features = (info.cpu.features_ecx, info.cpu.features_edx);
        // BOOT_INFO_MAX is 8 KiB, which fits any usize.
        #[allow(clippy::cast_possible_truncation)]
        let mut block = [0u8; layout::BOOT_INFO_MAX as usize];
        let n = info
            .encode(&mut block)
            .map_err(|e| VmError::Config(format!("boot-info block: {e}")))?;
        ram.mem
            .write_slice(&block[..n], GuestAddress(layout::BOOT_INFO_ADDR))?;
        prefault(&ram.mem, image)?;
        trace.stamp(Phase::ImageLoaded);

        vcpu.set_cpuid2(hv.supported_cpuid())
            .map_err(ioctl("KVM_SET_CPUID2"))?;
        let smep = hv.cpuid_leaf(7).is_some_and(|l| l.ebx & (1 << 7) != 0);
        let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&arch::user_mode_sregs(sregs, smep))
            .map_err(ioctl("KVM_SET_SREGS"))?;
        vcpu.set_regs(&arch::entry_regs(image.entry))
            .map_err(ioctl("KVM_SET_REGS"))?;
        trace.stamp(Phase::VcpuReady);

        Ok(Self {
            vcpu,
            vm,
            ram,
            config,
            trace,
            tsc_offset,
            tsc_khz: u64::from(tsc_khz),
            cpu_features,
            live: LiveArea::default(),
            resume_clock: None,
            console_before: 0,
            backup: None,
            backup_records: Vec::new(),
        })
    }

    /// Guest memory (for inspection by tests and tools).
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ram.mem
    }

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

    fn guest_stamp(&self, phase: Phase) -> u64 {
        self.ram
            .mem
            .read_obj(GuestAddress(layout::TRACE_ADDR + phase.offset()))
            .unwrap_or(0)
    }

    fn collect_guest_trace(&mut self, stats: &mut RunStats) {
        let lo = self.trace.get(Phase::VmmStart).unwrap_or(0);
        let hi = self.trace.get(Phase::Exit).unwrap_or(u64::MAX);
        for phase in Phase::ALL.into_iter().filter(|p| p.stamped_by_guest()) {
            let guest = self.guest_stamp(phase);
            let host = guest.wrapping_add_signed(-self.tsc_offset);
            // Stamps are the guest's word: keep only those that fall inside the run.
            if guest != 0 && host >= lo && host <= hi {
                self.trace.set(phase, host);
            }
        }
        let kstat = |off: u64| -> u64 {
            self.ram
                .mem
                .read_obj(GuestAddress(layout::KSTATS_ADDR + off))
                .unwrap_or(0)
        };
        stats.cpl0_entries = kstat(KernelStats::CPL0_ENTRIES);
        stats.cpl0_entries_before_main = kstat(KernelStats::CPL0_BEFORE_MAIN);
    }
}

/// Ranges of which the guest touches several pages on its way to `main` and
/// at exit: the boot-info block, trace stamps, hypercall and console buffers
/// (one prefetch group), and the top of the stack (decoding the boot-info
/// block uses a few pages of it). Measured on hello: guest init 170 µs
/// without these, 75 µs with. The exception path is left alone: completing
/// its groups costs every boot more than it saves the rare faulting one.
const HOT: &[(u64, u64)] = &[
    (
        layout::BOOT_INFO_ADDR,
        layout::CONSOLE_ADDR + layout::PAGE_SIZE,
    ),
    (layout::STACK_TOP - PREFETCH_GROUP, layout::STACK_TOP),
];

/// KVM's shadow MMU maps up to 8 neighbouring pages (an aligned 32 KiB
/// group) on each guest page fault, but stops at the first neighbour whose
/// host page is not yet present. Under PVM each guest fault costs about
/// 22 µs and a host page fault about 3 µs, so for groups of which the guest
/// touches several pages, the host makes every mapped page present and
/// writable: one guest fault then maps the whole group.
const PREFETCH_GROUP: u64 = 8 * layout::PAGE_SIZE;

fn prefault(mem: &vm_memory::GuestMemoryMmap, image: &Image) -> Result<(), VmError> {
    let mapped = |page: u64| {
        layout::LOW_REGIONS
            .iter()
            .any(|r| r.access != layout::Access::None && page >= r.start && page < r.end)
            || image
                .segments
                .iter()
                .any(|s| page >= s.addr & !(layout::PAGE_SIZE - 1) && page < s.addr + s.mem_size)
    };
    let touch_groups = |start: u64, end: u64| -> Result<(), VmError> {
        let mut page = start & !(PREFETCH_GROUP - 1);
        while page < end {
            if mapped(page) {
                // Rewrite what is there: the page becomes present and
                // writable on the host, its content unchanged (the guest
                // has not started).
                let v: u64 = mem.read_obj(GuestAddress(page))?;
                mem.write_obj(v, GuestAddress(page))?;
            }
            page += layout::PAGE_SIZE;
        }
        Ok(())
    };
    for &(start, end) in HOT {
        touch_groups(start, end)?;
    }
    for seg in &image.segments {
        touch_groups(seg.addr, seg.addr + seg.mem_size)?;
    }
    Ok(())
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

/// Guest TSC minus host TSC (zero where the guest TSC is the host's, as under PVM).
pub(crate) fn guest_tsc_offset(vcpu: &VcpuFd) -> Result<i64, VmError> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|e| VmError::Config(format!("MSR list: {e:?}")))?;
    let before = rdtsc();
    let n = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
    let after = rdtsc();
    if n != 1 {
        return Ok(0);
    }
    let host = before + (after - before) / 2;
    let guest = msrs.as_slice()[0].data;
    Ok(guest.wrapping_sub(host) as i64)
}

fn wall_clock(tsc_offset: i64) -> (u64, u64) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    (nanos, rdtsc().wrapping_add_signed(tsc_offset))
}

fn boot_info(
    hv: &Hypervisor,
    config: &VmConfig,
    tsc_khz: u32,
    vmm_start: u64,
    vcpu_ready: u64,
) -> BootInfo {
    let mut memory = heapless::Vec::new();
    let heap = MemRegion {
        start: layout::HEAP_ADDR,
        len: layout::heap_size(config.mem_size),
        kind: MemKind::Usable,
    };
    // Two entries always fit MAX_MEM_REGIONS.
    let _ = memory.push(MemRegion {
        start: 0,
        len: layout::HEAP_ADDR,
        kind: MemKind::Reserved,
    });
    let _ = memory.push(heap);
    let leaf1 = hv.cpuid_leaf(1);
    let mut entropy = [0u8; ENTROPY_SIZE];
    fill_random(&mut entropy);
    BootInfo {
        boot_path: BootPath::TandemPv,
        memory,
        heap,
        // Length checked in check_config.
        cmdline: heapless::String::try_from(config.cmdline.as_str()).unwrap_or_default(),
        cpu: CpuInfo {
            count: 1,
            tsc_khz: u64::from(tsc_khz),
            features_ecx: leaf1.map_or(0, |l| l.ecx),
            features_edx: leaf1.map_or(0, |l| l.edx),
        },
        host: HostStamps {
            vmm_start,
            vcpu_ready,
        },
        vm_id: config.vm_id,
        generation: 0,
        devices: heapless::Vec::new(),
        entropy,
        loader: heapless::String::try_from("tandem").unwrap_or_default(),
    }
}
