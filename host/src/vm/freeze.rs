//! Stopping a VM's state into a snapshot or a backup point, between two
//! runs of its vCPU: the VM's side of it (finishing the pending I/O, its
//! account of itself, its clock skipping the write). What is captured is
//! the snapshot module's ([`SnapshotState::capture`]); which pages a point
//! holds and how it is written, the backup module's
//! ([`BackupWriter::write_next`] with the guest stopped, or
//! [`LiveBackup`]'s thread with pre-copy: here only its stop).

use std::path::Path;
use std::time::Instant;

use kvm_ioctls::VcpuExit;

use super::clock::unix_nanos;
use super::error::ioctl;
use super::{Vm, VmError};
use crate::backup::live::FrozenDisk;
use crate::backup::live::LiveBackup;
use crate::backup::staging::Harvester;
use crate::backup::{
    self, BackupConfig, BackupRecord, BackupWriter, CapturedBlocks, DiskSource, MAX_CAPTURED_BYTES,
};
use crate::console::Console;
use crate::devices::blk::{copy, BlkDevice};
use crate::devices::NetDevice;
use crate::snapshot::{self, LiveState, MachineState, SnapshotState, WriteStats};

impl Vm {
    /// Finishes the I/O the last exit left pending (KVM completes an `out`,
    /// advancing RIP, only on the next `KVM_RUN`): a `KVM_RUN` with
    /// `immediate_exit` set does that and returns at once, so the saved RIP
    /// is past the hypercall and a restored guest does not repeat it.
    /// Completing a device register access can run the guest on to its
    /// next one (seen here: the virtio status write after a status read);
    /// that access is carried out, not lost (a lost `DRIVER_OK` or notify
    /// leaves the guest waiting on its device for ever), and it tries again.
    fn complete_pending_io(&mut self) -> Result<(), VmError> {
        const TRIES: usize = 16;
        self.vcpu.set_kvm_immediate_exit(1);
        let mut outcome = Err(VmError::Config(
            "the vCPU kept exiting instead of stopping for a snapshot".into(),
        ));
        for _ in 0..TRIES {
            let mut result = self.vcpu.run();
            if let Ok(VcpuExit::MmioRead(addr, data)) = &mut result {
                super::run::mmio_read(self.net.as_ref(), &self.disks, *addr, data);
                continue;
            }
            let write = match result {
                Err(e) if e.errno() == libc::EINTR => {
                    outcome = Ok(());
                    break;
                }
                Err(e) => {
                    outcome = Err(ioctl("KVM_RUN (immediate exit)")(e));
                    break;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => (addr, data.to_vec()),
                Ok(_) => {
                    outcome = Err(VmError::Config(
                        "the vCPU exited instead of stopping for a snapshot".into(),
                    ));
                    break;
                }
            };
            if let Err(e) = self.mmio_write(write.0, &write.1) {
                outcome = Err(VmError::Config(format!(
                    "a device register write while stopping for a snapshot: {e}"
                )));
                break;
            }
        }
        self.vcpu.set_kvm_immediate_exit(0);
        outcome
    }

    /// Captures everything but memory: vCPU registers, machine, clock,
    /// trace, console totals, the network device. The vCPU must be stopped with no I/O pending.
    fn capture_state(&mut self, console_written: u64) -> Result<SnapshotState, VmError> {
        self.complete_pending_io()?;
        let live = LiveState {
            generation: self.live.generation,
            restores: self.live.restores,
            guest_clock: self.guest_clock(),
            unix_nanos: unix_nanos(),
        };
        let machine = MachineState {
            mem_size: self.config.mem_size,
            cmdline: self.config.cmdline.clone(),
            vm_id: self.config.vm_id,
            console_limit: self.config.console_limit,
            tsc_khz: self.tsc_khz,
            cpu_features: self.cpu_features,
        };
        let trace = self.trace_with_guest_stamps();
        let ipv4 = self.config.net.as_ref().and_then(|n| n.ipv4);
        let net = self.net.as_ref().map(|n| n.state(ipv4));
        Ok(SnapshotState::capture(
            &self.vm,
            &self.vcpu,
            machine,
            live,
            &trace,
            console_written,
            net,
        )?)
    }

    /// Writes a snapshot of this (stopped) VM into `dir`. The VM's own
    /// clock skips the time the write took, as a restored copy's does.
    pub(super) fn take_snapshot(
        &mut self,
        dir: &Path,
        console_written: u64,
    ) -> Result<WriteStats, VmError> {
        let mut state = self.capture_state(console_written)?;
        // The files are the I/O thread's (the vCPU thread opens none).
        let (disks, ram) = (&self.disks, &self.ram);
        let result = crate::io_thread::call(|| {
            copy_disks(disks, dir, &mut state)
                .and_then(|()| Ok(snapshot::write(dir, &mut state, ram)?))
        })
        .map_err(io_thread)
        .and_then(|r| r);
        // With backups on, every snapshot is also a backup point, taken at
        // the same stop (before the clock below changes the live area), so
        // the chain can be restored to exactly the snapshot's moment.
        let chain_started =
            self.live_backup.is_some() || self.backup.as_ref().is_some_and(|b| !b.needs_base());
        if result.is_ok() && chain_started {
            // A point's pages have their own digests: the snapshot's
            // chunk digests stay out of its metadata.
            state.chunks = Default::default();
            match self.write_backup_point(&state) {
                Ok(Some(record)) => self.backup_records.push(record),
                Ok(None) => {}
                Err(e) => log::warn!("backup point failed: {e}"),
            }
        }
        self.set_guest_clock(state.live.guest_clock)?;
        result
    }

    /// Writes the next backup point of this (stopped) VM with the guest
    /// stopped for all of it: the base on the first call, then the pages
    /// dirtied since the previous point.
    pub(super) fn backup_point(
        &mut self,
        cfg: &BackupConfig,
        console: &Console,
    ) -> Result<BackupRecord, VmError> {
        if self.backup.is_none() {
            let dir = &cfg.dir;
            let writer = crate::io_thread::call(|| BackupWriter::create(dir)).map_err(io_thread)?;
            self.backup = Some(writer?);
        }
        let total = console.written() + self.console_before;
        let stopped = Instant::now();
        let stopped_tsc = self.guest_tsc();
        let state = self.capture_state(total)?;
        let record = self.write_backup_point(&state)?;
        self.set_guest_clock(state.live.guest_clock)?;
        let mut record =
            record.ok_or_else(|| VmError::Config("backup point handed over".into()))?;
        record.stopped_tsc = stopped_tsc;
        record.pause = stopped.elapsed();
        Ok(record)
    }

    /// The guest's TSC now.
    fn guest_tsc(&self) -> u64 {
        crate::trace::rdtsc().wrapping_add_signed(self.tsc_offset)
    }

    /// With the base point written, hands the chain to a backup thread
    /// that takes the next points while the guest runs (pre-copy). A
    /// disk's dirty blocks are read at each point's stop and handed over
    /// with the state (see [`Vm::freeze_live`]); the thread has its own
    /// handles on the disks for a point too big for that.
    pub(super) fn start_live_backup(&mut self, cfg: &BackupConfig) {
        let disks = &self.disks;
        let handles = crate::io_thread::call(|| {
            disks
                .iter()
                .map(|d| d.disk().try_clone())
                .collect::<std::io::Result<Vec<_>>>()
        });
        let handles = match handles {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                log::warn!(
                    "cannot share the disks with the backup thread ({e}): points stop the guest"
                );
                return;
            }
            Err(e) => {
                log::warn!(
                    "cannot share the disks with the backup thread ({e:?}): points stop the guest"
                );
                return;
            }
        };
        if let Some(writer) = self.backup.take() {
            let harvester = Harvester::new(self.vm.clone(), self.ram.shared(), self.ram.size());
            match LiveBackup::start(writer, harvester, cfg.every, handles) {
                Ok(live) => self.live_backup = Some(live),
                Err(writer) => {
                    log::warn!("cannot start the backup thread: points stop the guest");
                    self.backup = writer;
                }
            }
        }
    }

    /// Whether points are timed by the backup thread (pre-copy) rather
    /// than by the control thread.
    pub(super) fn backups_live(&self) -> bool {
        self.live_backup.is_some()
    }

    /// The backup thread's stop: the vCPU stopped (`stopped`, host clock)
    /// with `console`'s bytes counted; captures the state and hands the
    /// last set over. The guest clock skips the pause, as it skips a
    /// stopped point's write.
    pub(super) fn live_backup_stop(
        &mut self,
        console: &Console,
        stopped: Instant,
    ) -> Result<usize, VmError> {
        let total = console.written() + self.console_before;
        let tsc = self.guest_tsc();
        let state = match self.capture_state(total) {
            Ok(state) => state,
            Err(e) => {
                if let Some(live) = self.live_backup.as_mut() {
                    live.abandon();
                }
                return Err(e);
            }
        };
        let clock = state.live.guest_clock;
        let n = self.freeze_live(state, (stopped, tsc))?;
        self.set_guest_clock(clock)?;
        Ok(n)
    }

    /// Hands the last set and `state` to the backup thread, with each
    /// disk's dirty blocks read now (the vCPU stopped), so the point's
    /// memory and disks are of one instant while the guest runs on. Past
    /// [`MAX_CAPTURED_BYTES`] of them the point is a stopped one: the
    /// vCPU waits while the thread reads them from the disks.
    fn freeze_live(
        &mut self,
        mut state: SnapshotState,
        stopped: (Instant, u64),
    ) -> Result<usize, VmError> {
        if let Some(net) = self.net.as_mut() {
            let written = net.take_written();
            self.note_host_writes(&written);
        }
        let mut blocks = Vec::with_capacity(self.disks.len());
        for i in 0..self.disks.len() {
            let written = self.disks[i].take_written();
            self.note_host_writes(&written);
            blocks.push(self.disks[i].take_dirty_blocks());
        }
        let total: usize = blocks.iter().map(Vec::len).sum();
        let bytes = CapturedBlocks::bytes_for(total);
        let frozen = if bytes > MAX_CAPTURED_BYTES {
            log::info!(
                "backup point: {} MiB of dirty disk blocks (over {} MiB): the guest stays stopped while it is written",
                bytes >> 20,
                MAX_CAPTURED_BYTES >> 20
            );
            blocks.into_iter().map(FrozenDisk::Stopped).collect()
        } else {
            let disks = &self.disks;
            let read = crate::io_thread::call(|| {
                (disks.iter().zip(blocks))
                    .map(|(d, b)| CapturedBlocks::read(d.disk(), b).map(FrozenDisk::Captured))
                    .collect::<Result<Vec<_>, _>>()
            });
            match read.map_err(io_thread)? {
                Ok(f) => f,
                Err(e) => {
                    if let Some(live) = self.live_backup.as_mut() {
                        live.abandon();
                    }
                    return Err(e.into());
                }
            }
        };
        state.chunks = Default::default();
        state.disks = (self.disks.iter().enumerate())
            .map(|(i, d)| d.state(backup::disk::placeholder_name(i)))
            .collect();
        let Some(live) = self.live_backup.as_mut() else {
            return Err(VmError::Config("backup thread missing".into()));
        };
        Ok(live.freeze(state, stopped, frozen)?)
    }

    /// Ends the backup thread (after the point it is writing) and adds
    /// its points to the run's.
    pub(super) fn finish_live_backup(&mut self) {
        if let Some(mut live) = self.live_backup.take() {
            self.backup_records.extend(live.finish());
        }
    }

    /// Writes the next backup point with `state` (the vCPU stopped): its
    /// memory and, harvested at the same stop, the blocks each disk's
    /// bitmap holds, so memory and disks are of one instant.
    /// With pre-copy it is handed to the backup thread (`None`: the thread
    /// reports it).
    fn write_backup_point(
        &mut self,
        state: &SnapshotState,
    ) -> Result<Option<BackupRecord>, VmError> {
        if self.live_backup.is_some() {
            let stopped = (Instant::now(), self.guest_tsc());
            self.freeze_live(state.clone(), stopped)?;
            return Ok(None);
        }
        // What the devices wrote (the dirty log does not see it).
        if let Some(net) = self.net.as_mut() {
            let written = net.take_written();
            self.note_host_writes(&written);
        }
        let mut blocks = Vec::with_capacity(self.disks.len());
        for i in 0..self.disks.len() {
            let written = self.disks[i].take_written();
            self.note_host_writes(&written);
            blocks.push(self.disks[i].take_dirty_blocks());
        }
        // The point's state names its disks' devices; their blocks are
        // beside it. A snapshot at the same stop gave it its memory file's
        // chunk digests, which are not the point's.
        let mut state = state.clone();
        state.chunks = Default::default();
        state.disks = (self.disks.iter().enumerate())
            .map(|(i, d)| d.state(backup::disk::placeholder_name(i)))
            .collect();
        let sources: Vec<DiskSource<'_>> = (self.disks.iter().zip(blocks))
            .map(|(d, b)| DiskSource {
                disk: d.disk(),
                blocks: Some(b),
                captured: None,
            })
            .collect();
        let Some(writer) = self.backup.as_mut() else {
            return Err(VmError::Config("backup writer missing".into()));
        };
        // The files are the I/O thread's (the vCPU thread opens none).
        let (vm, ram) = (&self.vm, &self.ram);
        let written = crate::io_thread::call(|| writer.write_next(vm, ram, &state, &sources));
        Ok(Some(written.map_err(io_thread)??))
    }

    /// Gives the VM its disks; with backups on, each keeps account of the
    /// blocks the guest writes and of what it writes into guest memory.
    pub(super) fn attach_disks(&mut self, disks: Vec<BlkDevice>) {
        self.disks = disks;
        if self.config.backup.is_some() {
            for d in &mut self.disks {
                d.track_for_backup();
            }
        }
    }

    /// Gives the VM its network device; with backups on, the device keeps
    /// account of what it writes, for the next backup point.
    pub(super) fn attach_net(&mut self, net: Option<NetDevice>) {
        self.net = net;
        if let (Some(net), Some(_)) = (self.net.as_mut(), &self.config.backup) {
            net.track_writes();
        }
    }

    /// Notes guest ranges the VMM wrote, for the next backup point.
    pub(super) fn note_host_writes(&mut self, ranges: &[(u64, u64)]) {
        if let Some(live) = self.live_backup.as_mut() {
            live.note_host_writes(ranges);
        } else if let Some(b) = self.backup.as_mut() {
            b.note_host_writes(ranges);
        }
    }
}

/// Puts each disk's state at this instant into `dir` (a reflink where
/// the file system offers one, else a copy of its data) and into
/// `state`, before the state file that names them is written.
fn copy_disks(disks: &[BlkDevice], dir: &Path, state: &mut SnapshotState) -> Result<(), VmError> {
    if disks.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| VmError::Config(format!("{}: {e}", dir.display())))?;
    for (i, d) in disks.iter().enumerate() {
        let name = format!("disk-{i}-{:016x}", snapshot::files::nonce());
        let disk = d.disk();
        let len = disk.sectors() * crate::devices::blk::request::SECTOR_SIZE;
        let kind = copy::clone_file(disk.file(), disk.path(), len, &dir.join(&name))?;
        log::debug!(
            "disk {} copied into the snapshot as {name} ({kind:?})",
            disk.path().display()
        );
        state.disks.push(d.state(name));
    }
    Ok(())
}

/// The I/O thread lost a job: the VM cannot go on safely.
fn io_thread(e: crate::io_thread::IoThreadError) -> VmError {
    VmError::Config(e.to_string())
}
