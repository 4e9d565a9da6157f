//! The Tandem VMM as a library: open KVM once ([`Hypervisor`]), check an
//! image once ([`Image`]), then build and run any number of VMs from them
//! ([`VmBuilder`]).
//!
//! This example boots the `hello` app for real (it needs `/dev/kvm` and the
//! guest apps that `cargo xtask build` or `cargo xtask test` builds):
//!
//! ```
//! use tandem::{ConsoleSink, ExitStatus, Hypervisor, Image, VmBuilder};
//! # let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/target/x86_64-unknown-none/release/hello");
//!
//! let hv = Hypervisor::open()?;             // once per process
//! let image = Image::from_file(hello.as_ref())?; // checked once, booted many times
//! for _ in 0..3 {
//!     let report = VmBuilder::new(&hv, &image).console(ConsoleSink::Discard).run()?;
//!     assert_eq!(report.status, ExitStatus::Exited(0));
//!     assert_eq!(report.stats.exits_before_main, 0);
//!     eprintln!("{}", report.trace.summary());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The public surface is the crate root (the VM, its configuration, report
//! and errors) and a few modules: [`snapshot`], [`backup`] and [`coredump`]
//! (files a VM leaves behind), [`cgroup`] (limits for VMM processes), [`fleet`] (many VMs), [`seccomp`] and
//! [`privileges`] (what the VMM gives up before a guest runs), [`trace`],
//! [`units`], [`metrics`] (Prometheus text for a `/metrics` page),
//! [`sd_notify`] (systemd's readiness protocol), [`devices`] (the virtio
//! devices, `--net`'s parser) and [`exit_code`]; with the `fuzzing` feature, `fuzzing` (the fuzz targets'
//! bodies). Everything else is the crate's own.
//!
//! The library reports through the [`log`](https://docs.rs/log) facade
//! (warnings such as a console cut off at its limit, notes at `info`, detail
//! at `debug`); the program that links it chooses the logger.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
mod arch;
pub mod backup;
pub mod cgroup;
mod console;
mod control;
pub mod coredump;
pub mod devices;
#[cfg(feature = "docs")]
pub mod docs;
mod entropy;
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gdb;
mod hypercall;
mod image;
pub mod io_thread;
pub mod jail;
mod kvm;
mod lazy_verify;
mod memory;
pub mod metrics;
pub mod pool;
pub mod privileges;
pub mod sd_notify;
pub mod seccomp;
pub mod snapshot;
pub mod trace;
pub mod units;
mod vm;

pub use arch::ArchError;
pub use backup::{BackupConfig, BackupError, BackupRecord};
pub use console::ConsoleSink;
pub use control::{install_snapshot_signal, VmEvent, VmHandle};
pub use hypercall::HypercallError;
pub use image::{Image, ImageError};
pub use kvm::{Hypervisor, KvmError};
pub use memory::MemoryError;
pub use snapshot::{Snapshot, SnapshotError, WriteStats};
pub use trace::BootTrace;
pub use vm::{
    check_mem_size, tear_down_in_place, CoreFile, ExitStatus, Prefetch, RunReport, RunStats,
    SnapshotRecord, SnapshotTrigger, Vm, VmBuilder, VmConfig, VmError,
};

/// Process exit codes of the `tandem` binary beyond the guest's own (0–255
/// pass through): the table of [`tandem_abi::exit`], with every code's
/// name and meaning.
pub mod exit_code {
    pub use tandem_abi::exit::*;
}

impl ExitStatus {
    /// The process exit code this status stands for.
    pub fn code(&self) -> u8 {
        match self {
            ExitStatus::Exited(c) => *c,
            ExitStatus::ProtocolViolation(_) => exit_code::PROTOCOL,
            ExitStatus::DeviceViolation(_) => exit_code::PROTOCOL,
            ExitStatus::Crashed(_) => exit_code::CRASHED,
            ExitStatus::CorruptMemory(_) => exit_code::CORRUPT_MEMORY,
            ExitStatus::TimedOut(_) => exit_code::TIMEOUT,
            ExitStatus::Snapshotted(_) => 0,
            ExitStatus::Stopped => 0,
        }
    }
}
