//! What a VM is given.

use std::path::PathBuf;
use std::time::Duration;

use tandem_abi::layout;

use super::core::CoreFile;
use crate::backup::BackupConfig;
use crate::console::{ConsoleSink, DEFAULT_CONSOLE_LIMIT, DEFAULT_CONSOLE_RATE};
use crate::control::VmHandle;
use crate::devices::{DiskSpec, NetSpec};

/// What a VM is given.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest memory in bytes (a multiple of 2 MiB).
    pub mem_size: u64,
    /// The app's command line.
    pub cmdline: String,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// Where the console goes.
    pub console: ConsoleSink,
    /// Most console bytes accepted.
    pub console_limit: u64,
    /// Console bytes per second passed on (0: unlimited).
    pub console_rate: u64,
    /// Back guest memory with transparent huge pages.
    pub huge_pages: bool,
    /// Identity handed to the guest.
    pub vm_id: u64,
    /// Where guest-requested and `SIGUSR1` snapshots go (none: the guest's
    /// requests are answered "not taken").
    pub snapshot_dir: Option<PathBuf>,
    /// Take a snapshot into this directory when the app calls `ready()`.
    pub snapshot_at_ready: Option<PathBuf>,
    /// Stop the VM (status [`ExitStatus::Snapshotted`](super::ExitStatus::Snapshotted))
    /// once a snapshot is written.
    pub exit_after_snapshot: bool,
    /// Snapshot into `snapshot_dir` when the process gets `SIGUSR1`
    /// (after [`install_snapshot_signal`](crate::control::install_snapshot_signal)).
    pub snapshot_on_signal: bool,
    /// Keep incremental backups.
    pub backup: Option<BackupConfig>,
    /// Lets other threads follow the run (start, `ready()`) and stop it.
    pub handle: Option<VmHandle>,
    /// The app's standard input is this process's (fd 0); otherwise the app
    /// reads end of input at once.
    pub stdin: bool,
    /// A virtio-net device on this tap. For a restore: the tap to attach
    /// the snapshot's device to (given exactly when the snapshot has one),
    /// with the MAC and IPv4 settings that replace the snapshot's.
    pub net: Option<NetSpec>,
    /// Disks (virtio-blk), in order: the guest sees them in this order.
    pub disks: Vec<DiskSpec>,
    /// A limit every disk of the VM also draws from (a fleet's I/O budget).
    pub io_share: Option<std::sync::Arc<dyn crate::devices::rate_limiter::SharedLimit>>,
    /// Write a core file here if the guest crashes (panic, CPU exception,
    /// triple fault).
    pub core: Option<CoreFile>,
    /// What a restore faults in before the guest runs (ignored by a boot).
    pub prefetch: super::Prefetch,
    /// For a restore: check each chunk of the snapshot's memory file
    /// against its digest when the guest first touches it
    /// (`--verify lazy`; ignored by a boot).
    pub verify_lazily: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            mem_size: layout::DEFAULT_MEM_SIZE,
            cmdline: String::new(),
            timeout: None,
            console: ConsoleSink::Stdout,
            console_limit: DEFAULT_CONSOLE_LIMIT,
            console_rate: DEFAULT_CONSOLE_RATE,
            huge_pages: true,
            vm_id: 0,
            snapshot_dir: None,
            snapshot_at_ready: None,
            exit_after_snapshot: false,
            snapshot_on_signal: false,
            backup: None,
            handle: None,
            stdin: false,
            net: None,
            disks: Vec::new(),
            io_share: None,
            core: None,
            prefetch: super::Prefetch::Auto,
            verify_lazily: false,
        }
    }
}
