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
//!   `restore` (with `memory_plan`, which decides what a restore faults in);
//! - how it runs: `run` (the loop, which only runs), `exit` (what a KVM
//!   exit means, decided by a pure function), `actions` (everything the
//!   run carries out: hypercall actions, due snapshots and backup points),
//!   `stdin`, `clock`, `guest_trace`, `freeze` (stopping the VM's state
//!   into a snapshot or backup point), `core` (a crashed guest's core file),
//!   `teardown` (a finished VM torn down off the runner's path).

mod actions;
mod boot;
mod boot_info;
mod builder;
mod check;
mod clock;
mod config;
mod core;
mod debug;
mod error;
mod exit;
mod freeze;
mod guest_trace;
mod machine;
mod memory_plan;
mod prefault;
mod report;
mod restore;
mod run;
mod stdin;
mod teardown;

use std::sync::Arc;

use kvm_ioctls::{VcpuFd, VmFd};
use tandem_abi::layout::LiveArea;

pub use builder::VmBuilder;
pub use check::check_mem_size;
pub use config::VmConfig;
pub use core::CoreFile;
pub use error::VmError;
pub use memory_plan::Prefetch;
pub use report::{ExitStatus, RunReport, RunStats, SnapshotRecord, SnapshotTrigger};
pub(crate) use restore::RestoreInputs;
pub use teardown::tear_down_in_place;

use crate::backup::live::LiveBackup;
use crate::backup::{BackupRecord, BackupWriter};
use crate::devices::{BlkDevice, NetDevice};
use crate::memory::GuestRam;
use crate::trace::BootTrace;

/// A VM with one vCPU, ready to run: made by [`VmBuilder`] or
/// [`Vm::restore`], consumed by [`Vm::run`].
pub struct Vm {
    // Field order is drop order: the backup thread (joined), vCPU, VM,
    // then guest memory.
    /// Backup points taken while the guest runs (`BackupMode::Precopy`).
    live_backup: Option<LiveBackup>,
    vcpu: VcpuFd,
    /// Shared with the backup thread, which harvests its dirty log.
    vm: Arc<VmFd>,
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
    /// The virtio-net device, if the VM has one.
    net: Option<NetDevice>,
    /// The virtio-blk devices, in the order of `config.disks`.
    disks: Vec<BlkDevice>,
    /// For `--prefetch record`: the snapshot whose working set this run records.
    record_working_set: Option<crate::snapshot::Snapshot>,
}

impl Vm {
    /// Guest memory (for inspection by tests and tools).
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ram.mem
    }

    /// Replaces what a VM is told by its runner (console, timeout, stdin,
    /// follower, snapshot and core settings) with `config`'s, keeping what
    /// it was built with: its machine and memory (a pooled VM taken for a
    /// new start).
    pub(crate) fn reconfigure(&mut self, config: VmConfig) {
        let old = &self.config;
        self.config = VmConfig {
            mem_size: old.mem_size,
            cmdline: old.cmdline.clone(),
            vm_id: old.vm_id,
            console_limit: old.console_limit,
            huge_pages: old.huge_pages,
            backup: None,
            net: None,
            disks: Vec::new(),
            prefetch: old.prefetch,
            verify_lazily: old.verify_lazily,
            ..config
        };
    }

    /// The boot trace, for a pool to restamp a VM's setup at its take.
    pub(crate) fn trace_mut(&mut self) -> &mut BootTrace {
        &mut self.trace
    }

    /// The generation this VM's guest sees (0 for a VM that booted and was
    /// never restored).
    pub fn generation(&self) -> u64 {
        self.live.generation
    }
}
