//! What a fleet run leaves behind: the JSON report (per VM: queue wait,
//! boot phases, time to ready, restarts, exit codes; a summary with time
//! until all ready and per-priority medians and p99s) and a Gantt chart of
//! the whole fleet's boot as SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_abi::stats::quantile;

use super::runner::FleetRun;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn opt_ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(ms(d)))
}

/// Figures of one priority class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassStats {
    /// The priority.
    pub priority: i64,
    /// VMs in the class.
    pub vms: usize,
    /// VMs that became ready.
    pub ready: usize,
    /// Median time from fleet start to first ready, ms.
    pub p50_ms: Option<f64>,
    /// p99 of the same.
    pub p99_ms: Option<f64>,
    /// Median time from admission to ready (the boot alone), ms.
    pub boot_p50_ms: Option<f64>,
    /// p99 of the same.
    pub boot_p99_ms: Option<f64>,
}

/// The summary of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// VMs in the fleet.
    pub vms: usize,
    /// VMs that became ready at least once.
    pub ready: usize,
    /// Time from the start until every VM had been ready (None if some never were).
    pub all_ready_ms: Option<f64>,
    /// Time from the start until the last VM that became ready did.
    pub last_ready_ms: Option<f64>,
    /// VMs ready per second over `last_ready_ms`.
    pub ready_per_sec: Option<f64>,
    /// Restarts, all VMs.
    pub restarts: u32,
    /// VMs that ended failed or blocked.
    pub failed: usize,
    /// Most VMs booting at once.
    pub peak_booting: usize,
    /// Most guest memory of live VMs at once.
    pub peak_memory: u64,
    /// Per priority, highest first.
    pub classes: Vec<ClassStats>,
}

/// Computes the summary of `run`.
pub fn summary(run: &FleetRun) -> Summary {
    let first_ready = |r: &super::scheduler::VmRecord| r.attempts.iter().find_map(|a| a.ready_at);
    let ready: Vec<Duration> = run.vms.iter().filter_map(first_ready).collect();
    let last = ready.iter().max().copied();
    let mut classes: BTreeMap<std::cmp::Reverse<i64>, (usize, Vec<f64>, Vec<f64>)> =
        BTreeMap::new();
    for r in &run.vms {
        let c = classes.entry(std::cmp::Reverse(r.priority)).or_default();
        c.0 += 1;
        if let Some(a) = r.attempts.iter().find(|a| a.ready_at.is_some()) {
            if let Some(t) = a.ready_at {
                c.1.push(ms(t));
                c.2.push(ms(t.saturating_sub(a.admitted_at)));
            }
        }
    }
    let classes = classes
        .into_iter()
        .map(|(p, (vms, mut t, mut b))| {
            t.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            ClassStats {
                priority: p.0,
                vms,
                ready: t.len(),
                p50_ms: quantile(&t, 0.5),
                p99_ms: quantile(&t, 0.99),
                boot_p50_ms: quantile(&b, 0.5),
                boot_p99_ms: quantile(&b, 0.99),
            }
        })
        .collect();
    Summary {
        vms: run.vms.len(),
        ready: ready.len(),
        all_ready_ms: (ready.len() == run.vms.len())
            .then_some(last.map(ms))
            .flatten(),
        last_ready_ms: last.map(ms),
        ready_per_sec: last
            .filter(|l| !l.is_zero())
            .map(|l| ready.len() as f64 / l.as_secs_f64()),
        restarts: run.vms.iter().map(|r| r.restarts).sum(),
        failed: run
            .vms
            .iter()
            .filter(|r| matches!(r.state.as_str(), "failed" | "blocked"))
            .count(),
        peak_booting: run.samples.iter().map(|s| s.booting).max().unwrap_or(0),
        peak_memory: run.samples.iter().map(|s| s.memory).max().unwrap_or(0),
        classes,
    }
}

/// The whole run as JSON (times in milliseconds since the fleet started).
pub fn to_json(run: &FleetRun) -> Value {
    let s = summary(run);
    let vms: Vec<Value> = run
        .vms
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let first = r.attempts.first();
            let io = run.io.as_ref().and_then(|io| io.get(i)).map(|u| {
                json!({"bytes": u.bytes, "requests": u.ops, "held": u.held})
            });
            let first_ready = r.attempts.iter().find(|a| a.ready_at.is_some());
            json!({
                "name": r.name,
                "group": r.group,
                "priority": r.priority,
                "memory": r.mem_size,
                "after": r.after,
                "state": r.state,
                "reason": r.reason,
                "restarts": r.restarts,
                "queue_wait_ms": first.and_then(|a| a.eligible_at.map(|e| ms(a.admitted_at.saturating_sub(e)))),
                "ready_ms": opt_ms(first_ready.and_then(|a| a.ready_at)),
                "time_to_ready_ms": first_ready.and_then(|a| a.ready_at.map(|t| ms(t.saturating_sub(a.admitted_at)))),
                "recoveries_ms": r.recoveries.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "exit_codes": r.attempts.iter().filter_map(|a| a.exit_code).collect::<Vec<_>>(),
                "io": io,
                "attempts": r.attempts.iter().map(|a| json!({
                    "source": a.source,
                    "eligible_ms": opt_ms(a.eligible_at),
                    "admitted_ms": ms(a.admitted_at),
                    "running_ms": opt_ms(a.running_at),
                    "main_ms": opt_ms(a.main_at),
                    "ready_ms": opt_ms(a.ready_at),
                    "ended_ms": opt_ms(a.ended_at),
                    "outcome": a.outcome,
                    "exit_code": a.exit_code,
                    "phases_us": a.phases_us.iter().map(|(p, t)| json!({"phase": p, "us": (t * 10.0).round() / 10.0})).collect::<Vec<_>>(),
                    "console_tail": a.console_tail,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "limits": {
            "max_concurrent_boots": run.limits.max_concurrent_boots,
            "memory_budget": run.limits.memory_budget,
        },
        "summary": {
            "vms": s.vms,
            "ready": s.ready,
            "all_ready_ms": s.all_ready_ms,
            "last_ready_ms": s.last_ready_ms,
            "ready_per_sec": s.ready_per_sec,
            "restarts": s.restarts,
            "failed": s.failed,
            "peak_booting": s.peak_booting,
            "peak_memory": s.peak_memory,
            "duration_ms": ms(run.duration),
            "stopped_ms": opt_ms(run.stopped_at),
            "running_at_stop": run.running_at_stop,
            "rss_when_settled": run.rss_when_settled,
            "classes": s.classes.iter().map(|c| json!({
                "priority": c.priority,
                "vms": c.vms,
                "ready": c.ready,
                "ready_p50_ms": c.p50_ms,
                "ready_p99_ms": c.p99_ms,
                "boot_p50_ms": c.boot_p50_ms,
                "boot_p99_ms": c.boot_p99_ms,
            })).collect::<Vec<_>>(),
        },
        "timeline": run.samples.iter().map(|x| json!({
            "ms": ms(x.t),
            "booting": x.booting,
            "live": x.live,
            "memory": x.memory,
            "ready": x.ready,
        })).collect::<Vec<_>>(),
        "vms": vms,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The fleet's boot as a Gantt chart: one row per VM (waiting for
/// dependencies, queued, booting, ready, failed), and under it the number
/// of VMs booting against the cap.
pub fn to_svg(run: &FleetRun) -> String {
    let n = run.vms.len().max(1);
    let end = run
        .vms
        .iter()
        .flat_map(|r| r.attempts.iter())
        .filter_map(|a| a.ready_at.or(a.ended_at))
        .max()
        .unwrap_or(run.duration)
        .max(Duration::from_micros(100));
    // Show the boot: up to the last ready (plus a margin), not the idle hours after.
    let span = end.as_secs_f64() * 1.05;
    let row = (560.0 / n as f64).clamp(1.5, 16.0);
    let labels = row >= 9.0;
    let left = if labels { 130.0 } else { 40.0 };
    let width = 900.0;
    let plot_w = width - left - 20.0;
    let top = 40.0;
    let rows_h = row * n as f64;
    let load_h = 90.0;
    let height = top + rows_h + 30.0 + load_h + 50.0;
    let x = |t: Duration| left + (t.as_secs_f64() / span).min(1.0) * plot_w;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let s = summary(run);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="16" font-size="13">Tandem fleet: {} VMs, {} ready{}; cap {} boots, budget {} MiB</text>"#,
        s.vms,
        s.ready,
        s.last_ready_ms
            .map(|t| format!(" (last at {t:.1} ms)"))
            .unwrap_or_default(),
        run.limits.max_concurrent_boots,
        run.limits.memory_budget >> 20
    );
    let legend = [
        ("#dddddd", "waiting (dependencies, backoff)"),
        ("#9ecae1", "queued"),
        ("#fd8d3c", "booting"),
        ("#74c476", "ready"),
        ("#de2d26", "failed"),
    ];
    let mut lx = left;
    for (c, name) in legend {
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="24" width="10" height="10" fill="{c}"/><text x="{}" y="33">{name}</text>"#,
            lx + 14.0
        );
        lx += 30.0 + 6.2 * name.len() as f64;
    }
    let mut marks = Vec::new();
    for (i, r) in run.vms.iter().enumerate() {
        let y = top + i as f64 * row;
        let h = (row * 0.8).max(1.0);
        if labels {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{} ({})</text>"#,
                left - 4.0,
                y + h,
                esc(&r.name),
                r.priority
            );
        }
        let mut bar = |from: Duration, to: Duration, colour: &str| {
            let (x0, x1) = (x(from), x(to));
            if x1 > x0 {
                let _ = writeln!(
                    out,
                    r#"<rect x="{x0:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}" fill="{colour}"/>"#,
                    (x1 - x0).max(0.5)
                );
            }
        };
        let mut prev_end = Duration::ZERO;
        for a in &r.attempts {
            let eligible = a.eligible_at.unwrap_or(a.admitted_at);
            bar(prev_end, eligible, "#dddddd");
            bar(eligible, a.admitted_at, "#9ecae1");
            let boot_end = a.ready_at.or(a.ended_at).unwrap_or(end);
            bar(a.admitted_at, boot_end, "#fd8d3c");
            if let Some(ready) = a.ready_at {
                bar(ready, a.ended_at.unwrap_or(run.duration), "#74c476");
            }
            if let Some(e) = a.ended_at {
                let failed =
                    a.exit_code != Some(0) && a.outcome.as_deref().is_none_or(|o| o != "stopped");
                if failed {
                    marks.push((x(e), y, h));
                }
                prev_end = e;
            }
        }
    }
    // Failures last, over everything else.
    for (mx, my, mh) in marks {
        let _ = writeln!(
            out,
            r##"<rect x="{:.2}" y="{my:.2}" width="3" height="{mh:.2}" fill="#de2d26"/>"##,
            mx - 1.0
        );
    }
    // Axis.
    let axis_y = top + rows_h + 4.0;
    let _ = writeln!(
        out,
        r##"<line x1="{left}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#444"/>"##,
        left + plot_w
    );
    let step = nice_step(span * 1e3 / 8.0);
    let mut t = 0.0;
    while t <= span * 1e3 {
        let px = left + t / (span * 1e3) * plot_w;
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{axis_y}" x2="{px:.1}" y2="{}" stroke="#444"/><text x="{px:.1}" y="{}" text-anchor="middle">{} ms</text>"##,
            axis_y + 4.0,
            axis_y + 16.0,
            trim(t)
        );
        t += step;
    }
    // Load: VMs booting against the cap.
    let ly = axis_y + 30.0;
    let cap = run.limits.max_concurrent_boots.max(1) as f64;
    let peak = s.peak_booting.max(1) as f64;
    let ymax = cap.max(peak);
    let yv = |v: f64| ly + load_h - v / ymax * load_h;
    let _ = writeln!(
        out,
        r##"<text x="{left}" y="{}" >VMs booting (cap {cap}, dashed)</text>"##,
        ly - 4.0
    );
    let _ = writeln!(
        out,
        r##"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#de2d26" stroke-dasharray="4 3"/>"##,
        yv(cap),
        left + plot_w,
        yv(cap)
    );
    let mut path = format!("M{left:.1},{:.1}", yv(0.0));
    let mut last = 0.0;
    for smp in &run.samples {
        let px = x(smp.t);
        let _ = write!(path, " H{px:.1} V{:.1}", yv(smp.booting as f64));
        last = smp.booting as f64;
    }
    let _ = write!(path, " H{:.1}", left + plot_w);
    let _ = last;
    let _ = writeln!(
        out,
        r##"<path d="{path}" fill="none" stroke="#fd8d3c" stroke-width="1.5"/>"##
    );
    let _ = writeln!(out, "</svg>");
    out
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-6).log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
    }
}
