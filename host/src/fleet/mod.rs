//! Fleets: many VMs booted on one host, with priorities, readiness-gated
//! ordering, admission limits, restarts and recovery from snapshots.
//!
//! - [`config`]: the `FLEET.toml` format, checked whole before anything starts
//!   (every problem reported at once, at its line and column);
//! - [`Scheduler`]: the admission state machine (pure, unit-tested; its
//!   decisions are the crate's own, its records are in the report);
//! - [`runner`]: boots the VMs in-process, one vCPU thread each, and feeds
//!   their events to the scheduler, telling the caller as it goes
//!   ([`runner::Update`]: the `tandem` binary draws its progress from it);
//! - [`report`]: the JSON report and the Gantt chart.
//!
//! ```no_run
//! use std::path::Path;
//! use tandem::fleet::{config::{FleetSpec, LimitOverrides}, runner::{self, RunOptions}, report};
//! let spec = FleetSpec::load(Path::new("examples/fleet.toml"), LimitOverrides::default())?;
//! let opts = RunOptions { stop_when_ready: true, ..RunOptions::default() };
//! let run = runner::run(&spec, &opts, |_, _| {})?;
//! println!("{}", report::to_json(&run));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod io;
pub mod report;
pub mod runner;
mod scheduler;

pub use scheduler::{Attempt, Sample, Scheduler, VmRecord};
