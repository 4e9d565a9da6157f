//! What `/metrics` shows, in `tandem::metrics`'s Prometheus registry: per
//! VM, runs started (and how many from a snapshot), runs ended by outcome,
//! and what each finished run's report says (boot-phase histograms, KVM
//! exits, console bytes passed on and dropped), as the worker sent it.

use tandem::api::ExitInfo;
use tandem::metrics::runs::{
    BOOT_PHASE, CONSOLE_BYTES, CONSOLE_DROPPED, EXITS, EXITS_BEFORE_MAIN, RESTORES, RUNS,
    SECONDS_BUCKETS, SNAPSHOTS,
};
use tandem::metrics::Registry;

use crate::proto::RunSummary;

/// Runs started through the daemon (API or restart policy).
pub const STARTS: &str = "tandemd_vm_starts_total";
/// VMs by state.
pub const VMS: &str = "tandemd_vms";
/// Worker processes.
pub const WORKERS: &str = "tandemd_workers";

/// The daemon's series.
#[derive(Debug, Default)]
pub struct Counters {
    reg: Registry,
}

impl Counters {
    /// A run of `vm` was started (`restore`: from a snapshot).
    pub fn started(&mut self, vm: &str, restore: bool) {
        let l = [("vm", vm)];
        let _ = self
            .reg
            .counter_add(STARTS, "VM runs started by the daemon.", &l, 1.0);
        let _ = self.reg.counter_add(
            RESTORES,
            "Runs started from a snapshot.",
            &l,
            f64::from(u8::from(restore)),
        );
    }

    /// A snapshot of `vm` asked through the API was written (or not).
    pub fn snapshot(&mut self, vm: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        let _ = self.reg.counter_add(
            SNAPSHOTS,
            "Snapshots taken during runs, by result.",
            &[("vm", vm), ("result", result)],
            1.0,
        );
    }

    /// A run of `vm` ended.
    pub fn ended(&mut self, vm: &str, exit: &ExitInfo, summary: Option<&RunSummary>) {
        let outcome = summary.map_or(if exit.failed { "failed" } else { "exited_ok" }, |s| {
            s.outcome.as_str()
        });
        let _ = self.reg.counter_add(
            RUNS,
            "VM runs that ended, by outcome.",
            &[("vm", vm), ("outcome", outcome)],
            1.0,
        );
        let Some(s) = summary else { return };
        let l = [("vm", vm)];
        for (phase, secs) in &s.phases {
            let _ = self.reg.histogram_observe(
                BOOT_PHASE,
                "Time from the start of the VM's VMM work to each boot phase it reached.",
                &[("vm", vm), ("phase", phase.as_str())],
                SECONDS_BUCKETS,
                *secs,
            );
        }
        let _ = self
            .reg
            .counter_add(EXITS, "KVM exits of the VM's vCPU.", &l, s.exits as f64);
        let _ = self.reg.counter_add(
            EXITS_BEFORE_MAIN,
            "KVM exits before the app's main.",
            &l,
            s.exits_before_main as f64,
        );
        let _ = self.reg.counter_add(
            CONSOLE_BYTES,
            "Console bytes the guest wrote that were passed on.",
            &l,
            s.console_bytes as f64,
        );
        let _ = self.reg.counter_add(
            CONSOLE_DROPPED,
            "Console bytes the guest wrote that were dropped, over the console's rate or past its limit.",
            &l,
            s.console_dropped as f64,
        );
    }

    /// The page: the counters, with the gauges of this moment.
    pub fn render(&self, states: &[(&'static str, usize)], workers: usize) -> String {
        let mut reg = self.reg.clone();
        for (state, n) in states {
            let _ = reg.gauge_set(
                VMS,
                "VMs the daemon holds, by state.",
                &[("state", state)],
                *n as f64,
            );
        }
        let _ = reg.gauge_set(WORKERS, "Worker processes alive.", &[], workers as f64);
        reg.render()
    }
}
