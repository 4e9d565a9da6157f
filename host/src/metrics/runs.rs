//! What the library records about VM runs and fleets, as metric series:
//! boot phases, exits, restores, snapshots, backup points, console bytes
//! (and those dropped), queue waits; labelled `vm`, `fleet` (when the VM is
//! in one) and `phase`.
//!
//! Series accumulate: record every run of a VM into one [`Registry`] and its
//! counters count them all, its histograms hold every boot.

use std::time::Duration;

use tandem_abi::trace::Phase;

use super::{Registry, Result};
use crate::fleet::runner::FleetRun;
use crate::vm::{ExitStatus, RunReport};

/// Buckets of times in seconds, from 10 µs (a VMM phase) to 10 s (a slow
/// app's readiness or a long queue).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Time from the start of a VM's VMM work to each boot phase.
pub const BOOT_PHASE: &str = "tandem_vm_boot_phase_seconds";
/// Runs that ended, by how (`outcome`).
pub const RUNS: &str = "tandem_vm_runs_total";
/// KVM exits.
pub const EXITS: &str = "tandem_vm_exits_total";
/// KVM exits before the app's `main`.
pub const EXITS_BEFORE_MAIN: &str = "tandem_vm_exits_before_main_total";
/// Guest CPL0 entries.
pub const CPL0_ENTRIES: &str = "tandem_vm_cpl0_entries_total";
/// Runs started from a snapshot.
pub const RESTORES: &str = "tandem_vm_restores_total";
/// Snapshots taken, by `result`.
pub const SNAPSHOTS: &str = "tandem_vm_snapshots_total";
/// Backup points written.
pub const BACKUP_POINTS: &str = "tandem_vm_backup_points_total";
/// Pages written into backup points.
pub const BACKUP_PAGES: &str = "tandem_vm_backup_pages_total";
/// Disk blocks written into backup points.
pub const BACKUP_BLOCKS: &str = "tandem_vm_backup_blocks_total";
/// Time to write one backup point.
pub const BACKUP_WRITE: &str = "tandem_vm_backup_write_seconds";
/// Console bytes passed on.
pub const CONSOLE_BYTES: &str = "tandem_vm_console_bytes_total";
/// Console bytes dropped (rate or limit).
pub const CONSOLE_DROPPED: &str = "tandem_vm_console_dropped_bytes_total";
/// Time a VM waited to be admitted once it was eligible.
pub const QUEUE_WAIT: &str = "tandem_vm_queue_wait_seconds";
/// Restarts a fleet made.
pub const FLEET_RESTARTS: &str = "tandem_fleet_restarts_total";
/// A fleet's VMs by their last state.
pub const FLEET_VMS: &str = "tandem_fleet_vms";

/// Whose run it is.
#[derive(Debug, Clone, Copy)]
pub struct RunLabels<'a> {
    /// The VM's name.
    pub vm: &'a str,
    /// Its fleet's name, when it is in one.
    pub fleet: Option<&'a str>,
}

impl<'a> RunLabels<'a> {
    /// A VM on its own.
    pub fn vm(vm: &'a str) -> Self {
        Self { vm, fleet: None }
    }

    fn pairs(&self) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![("vm", self.vm)];
        if let Some(f) = self.fleet {
            v.push(("fleet", f));
        }
        v
    }

    fn with(&self, key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut v = self.pairs();
        v.push((key, value));
        v
    }
}

/// Where a run started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStart {
    /// A cold boot of the image.
    Boot,
    /// A restore of a snapshot (or a clone, or a warm pool's VM).
    Restore,
}

/// The `outcome` label of a run that ended with `status`.
pub fn outcome(status: &ExitStatus) -> &'static str {
    match status {
        ExitStatus::Exited(0) => "exited_ok",
        ExitStatus::Exited(_) => "exited_error",
        ExitStatus::ProtocolViolation(_) => "protocol_violation",
        ExitStatus::DeviceViolation(_) => "device_violation",
        ExitStatus::Crashed(_) => "crashed",
        ExitStatus::TimedOut(_) => "timed_out",
        ExitStatus::Snapshotted(_) => "snapshotted",
        ExitStatus::CorruptMemory(_) => "corrupt_memory",
        ExitStatus::Stopped => "stopped",
    }
}

/// Records one finished run of a VM.
pub fn record_run(
    reg: &mut Registry,
    who: RunLabels<'_>,
    start: RunStart,
    report: &RunReport,
) -> Result<()> {
    let vm = who.pairs();
    reg.counter_add(
        RUNS,
        "VM runs that ended, by outcome.",
        &who.with("outcome", outcome(&report.status)),
        1.0,
    )?;
    for (phase, us) in report.trace.reached() {
        if phase == Phase::VmmStart {
            continue;
        }
        reg.histogram_observe(
            BOOT_PHASE,
            "Time from the start of the VM's VMM work to each boot phase it reached.",
            &who.with("phase", phase.name()),
            SECONDS_BUCKETS,
            us / 1e6,
        )?;
    }
    let s = &report.stats;
    reg.counter_add(EXITS, "KVM exits of the VM's vCPU.", &vm, s.exits as f64)?;
    reg.counter_add(
        EXITS_BEFORE_MAIN,
        "KVM exits before the app's main.",
        &vm,
        s.exits_before_main as f64,
    )?;
    reg.counter_add(
        CPL0_ENTRIES,
        "Guest CPL0 entries (exceptions).",
        &vm,
        s.cpl0_entries as f64,
    )?;
    let restored = f64::from(u8::from(start == RunStart::Restore));
    reg.counter_add(RESTORES, "Runs started from a snapshot.", &vm, restored)?;
    for snap in &report.snapshots {
        let result = if snap.result.is_ok() { "ok" } else { "failed" };
        reg.counter_add(
            SNAPSHOTS,
            "Snapshots taken during runs, by result.",
            &who.with("result", result),
            1.0,
        )?;
    }
    reg.counter_add(
        BACKUP_POINTS,
        "Backup points written.",
        &vm,
        report.backups.len() as f64,
    )?;
    for b in &report.backups {
        reg.counter_add(
            BACKUP_PAGES,
            "Pages written into backup points.",
            &vm,
            b.pages as f64,
        )?;
        reg.counter_add(
            BACKUP_BLOCKS,
            "Disk blocks written into backup points.",
            &vm,
            b.blocks as f64,
        )?;
        reg.histogram_observe(
            BACKUP_WRITE,
            "Time to write one backup point, fsyncs included.",
            &vm,
            SECONDS_BUCKETS,
            b.elapsed.as_secs_f64(),
        )?;
    }
    reg.counter_add(
        CONSOLE_BYTES,
        "Console bytes the guest wrote that were passed on (a restored run counts from its snapshot's).",
        &vm,
        s.console_bytes as f64,
    )?;
    reg.counter_add(
        CONSOLE_DROPPED,
        "Console bytes the guest wrote that were dropped, over the console's rate or past its limit.",
        &vm,
        s.console_dropped as f64,
    )?;
    Ok(())
}

/// Records how long a VM waited for admission once it was eligible.
pub fn record_queue_wait(reg: &mut Registry, who: RunLabels<'_>, wait: Duration) -> Result<()> {
    reg.histogram_observe(
        QUEUE_WAIT,
        "Time a VM waited for admission once it was eligible.",
        &who.pairs(),
        SECONDS_BUCKETS,
        wait.as_secs_f64(),
    )
}

/// Records a fleet run: per VM its attempts' boot phases (from admission),
/// queue waits, restores and outcomes; per fleet its restarts and its VMs by
/// state.
pub fn record_fleet(reg: &mut Registry, fleet: &str, run: &FleetRun) -> Result<()> {
    let mut states: Vec<(&str, u32)> = Vec::new();
    for vm in &run.vms {
        let who = RunLabels {
            vm: &vm.name,
            fleet: Some(fleet),
        };
        for a in &vm.attempts {
            if let Some(eligible) = a.eligible_at {
                record_queue_wait(reg, who, a.admitted_at.saturating_sub(eligible))?;
            }
            for (phase, us) in &a.phases_us {
                reg.histogram_observe(
                    BOOT_PHASE,
                    "Time from the start of the VM's VMM work to each boot phase it reached.",
                    &who.with("phase", phase),
                    SECONDS_BUCKETS,
                    us / 1e6,
                )?;
            }
            let restored = f64::from(u8::from(a.source != "cold"));
            reg.counter_add(
                RESTORES,
                "Runs started from a snapshot.",
                &who.pairs(),
                restored,
            )?;
        }
        match states.iter_mut().find(|(s, _)| *s == vm.state) {
            Some((_, n)) => *n += 1,
            None => states.push((&vm.state, 1)),
        }
    }
    let restarts: u32 = run.vms.iter().map(|v| v.restarts).sum();
    reg.counter_add(
        FLEET_RESTARTS,
        "Restarts of crashed or failed VMs the fleet made.",
        &[("fleet", fleet)],
        f64::from(restarts),
    )?;
    for (state, n) in states {
        reg.gauge_set(
            FLEET_VMS,
            "The fleet's VMs by their last state.",
            &[("fleet", fleet), ("state", state)],
            f64::from(n),
        )?;
    }
    Ok(())
}

/// The metrics page of one VM run on its own.
pub fn render_run(who: RunLabels<'_>, start: RunStart, report: &RunReport) -> Result<String> {
    let mut reg = Registry::new();
    record_run(&mut reg, who, start, report)?;
    Ok(reg.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupRecord;
    use crate::fleet::{Attempt, VmRecord};
    use crate::metrics::parse::parse;
    use crate::trace::BootTrace;
    use crate::vm::{RunStats, SnapshotRecord, SnapshotTrigger};

    fn report(status: ExitStatus) -> RunReport {
        let mut trace = BootTrace::new(1_000_000); // 1 tick = 1 ns
        trace.set(Phase::VmmStart, 1_000);
        trace.set(Phase::VcpuReady, 301_000); // 300 µs
        trace.set(Phase::AppMain, 401_000);
        trace.set(Phase::Exit, 2_001_000); // 2 ms
        RunReport {
            status,
            trace,
            stats: RunStats {
                exits: 7,
                exits_before_main: 0,
                cpl0_entries: 1,
                cpl0_entries_before_main: 0,
                console_bytes: 120,
                console_dropped: 30,
            },
            snapshots: vec![SnapshotRecord {
                trigger: SnapshotTrigger::Ready,
                dir: "/tmp/s".into(),
                result: Err("no room".into()),
            }],
            backups: vec![BackupRecord {
                point: 0,
                pages: 64,
                dirty_pages: 0,
                blocks: 5,
                elapsed: Duration::from_millis(3),
                pause: Duration::from_millis(3),
                write: Duration::from_millis(3),
                rounds: 0,
                live: false,
                stopped_tsc: 0,
            }],
        }
    }

    #[test]
    fn a_run_renders_as_valid_text_with_its_counts() {
        let who = RunLabels {
            vm: "web \"1\"\\\n",
            fleet: Some("edge"),
        };
        let mut reg = Registry::new();
        record_run(
            &mut reg,
            who,
            RunStart::Boot,
            &report(ExitStatus::Exited(0)),
        )
        .unwrap();
        record_run(
            &mut reg,
            who,
            RunStart::Restore,
            &report(ExitStatus::Crashed("x".into())),
        )
        .unwrap();
        record_queue_wait(&mut reg, who, Duration::from_millis(20)).unwrap();
        let text = reg.render();
        let page = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let vm = [("vm", who.vm), ("fleet", "edge")];
        assert_eq!(page.value(EXITS, &vm), Some(14.0));
        assert_eq!(page.value(RESTORES, &vm), Some(1.0));
        assert_eq!(page.value(BACKUP_POINTS, &vm), Some(2.0));
        assert_eq!(page.value(BACKUP_PAGES, &vm), Some(128.0));
        assert_eq!(page.value(BACKUP_BLOCKS, &vm), Some(10.0));
        assert_eq!(page.value(CONSOLE_DROPPED, &vm), Some(60.0));
        assert_eq!(page.value(CONSOLE_BYTES, &vm), Some(240.0));
        assert_eq!(page.value(RUNS, &[("outcome", "exited_ok")]), Some(1.0));
        assert_eq!(page.value(RUNS, &[("outcome", "crashed")]), Some(1.0));
        assert_eq!(page.value(SNAPSHOTS, &[("result", "failed")]), Some(2.0));
        let main = [("phase", "app_main"), ("le", "0.0005")];
        assert_eq!(
            page.value(&format!("{BOOT_PHASE}_bucket"), &main),
            Some(2.0)
        );
        let vcpu = [("phase", "vcpu_ready"), ("le", "0.00025")];
        assert_eq!(
            page.value(&format!("{BOOT_PHASE}_bucket"), &vcpu),
            Some(0.0)
        );
        assert_eq!(
            page.value(&format!("{BOOT_PHASE}_count"), &[("phase", "exit")]),
            Some(2.0)
        );
        assert_eq!(page.value(&format!("{QUEUE_WAIT}_count"), &vm), Some(1.0));
        assert_eq!(page.families[BOOT_PHASE].kind, "histogram");
        assert_eq!(page.families[EXITS].kind, "counter");
        // A second, independent reader finds the same samples (it keeps
        // label values escaped, so only names and values are compared).
        let lines: Vec<_> = text.lines().map(|l| Ok(l.to_string())).collect();
        let other = prometheus_parse::Scrape::parse(lines.into_iter()).unwrap();
        let plain = |v: &prometheus_parse::Value| match v {
            prometheus_parse::Value::Counter(x)
            | prometheus_parse::Value::Gauge(x)
            | prometheus_parse::Value::Untyped(x) => Some(*x),
            _ => None,
        };
        let exits: Vec<_> = other.samples.iter().filter(|s| s.metric == EXITS).collect();
        assert_eq!(exits.len(), 1);
        assert_eq!(exits[0].value, prometheus_parse::Value::Counter(14.0));
        for s in &page.samples {
            if s.name.ends_with("_bucket") || s.name.ends_with("_sum") || s.name.ends_with("_count")
            {
                continue;
            }
            let found = other
                .samples
                .iter()
                .any(|o| o.metric == s.name && plain(&o.value) == Some(s.value));
            assert!(found, "prometheus-parse did not read {s:?}");
        }
        let phases = other.samples.iter().filter(|s| s.metric == BOOT_PHASE);
        assert!(phases.count() >= 3, "histogram series of the boot phases");
    }

    #[test]
    fn a_fleet_renders_per_vm_and_per_fleet() {
        let attempt = |source, eligible_ms, admitted_ms| Attempt {
            source,
            eligible_at: Some(Duration::from_millis(eligible_ms)),
            admitted_at: Duration::from_millis(admitted_ms),
            phases_us: vec![("app_main", 800.0), ("app_ready", 1500.0)],
            ..Attempt::default()
        };
        let vm = |name: &str, state: &str, attempts, restarts| VmRecord {
            name: name.into(),
            group: "g".into(),
            priority: 0,
            mem_size: 1 << 20,
            after: vec![],
            attempts,
            restarts,
            state: state.into(),
            reason: None,
            recoveries: vec![],
        };
        let run = FleetRun {
            vms: vec![
                vm("a", "ready", vec![attempt("cold", 0, 5)], 0),
                vm(
                    "b",
                    "ready",
                    vec![attempt("cold", 0, 1), attempt("checkpoint", 10, 40)],
                    1,
                ),
                vm("c", "failed", vec![attempt("cold", 2, 2)], 0),
            ],
            samples: vec![],
            io: None,
            limits: crate::fleet::config::Limits {
                max_concurrent_boots: 4,
                memory_budget: 1 << 30,
            },
            duration: Duration::from_secs(1),
            stopped_at: None,
            running_at_stop: vec![],
            rss_when_settled: None,
        };
        let mut reg = Registry::new();
        record_fleet(&mut reg, "f", &run).unwrap();
        let text = reg.render();
        let page = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(page.value(FLEET_RESTARTS, &[("fleet", "f")]), Some(1.0));
        assert_eq!(page.value(FLEET_VMS, &[("state", "ready")]), Some(2.0));
        assert_eq!(page.value(FLEET_VMS, &[("state", "failed")]), Some(1.0));
        assert_eq!(page.value(RESTORES, &[("vm", "b")]), Some(1.0));
        let b_wait = [("vm", "b"), ("le", "0.025")];
        // b waited 1 ms, then 30 ms: one of its two waits is within 25 ms.
        assert_eq!(
            page.value(&format!("{QUEUE_WAIT}_bucket"), &b_wait),
            Some(1.0)
        );
        assert_eq!(
            page.value(
                &format!("{BOOT_PHASE}_count"),
                &[("vm", "b"), ("phase", "app_ready")]
            ),
            Some(2.0)
        );
    }

    #[test]
    fn one_run_alone() {
        let text = render_run(
            RunLabels::vm("solo"),
            RunStart::Boot,
            &report(ExitStatus::Stopped),
        )
        .unwrap();
        let page = parse(&text).unwrap();
        assert_eq!(
            page.value(RUNS, &[("vm", "solo"), ("outcome", "stopped")]),
            Some(1.0)
        );
        assert!(page.samples.iter().all(|s| !s.labels.contains_key("fleet")));
    }
}
