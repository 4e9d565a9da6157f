//! The boot trace: every phase of a VM's life, host and guest, on one clock
//! (the host TSC), with a one-line summary, a table and Chrome trace-event
//! JSON (opens in Perfetto or `chrome://tracing`).

use std::fmt::Write as _;

use serde_json::{json, Value};
use tandem_abi::trace::Phase;

/// Reads the host TSC (the one `rdtsc`, in `tandem-tsc`).
pub use tandem_tsc::rdtsc;

/// Stamps of one VM's boot, in host TSC ticks (`None` = not reached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTrace {
    tsc_khz: u64,
    stamps: [Option<u64>; Phase::COUNT],
}

impl BootTrace {
    /// An empty trace for a TSC of `tsc_khz`.
    pub fn new(tsc_khz: u64) -> Self {
        Self {
            tsc_khz,
            stamps: [None; Phase::COUNT],
        }
    }

    /// Records `phase` at host TSC `tsc` (0 = not reached).
    pub fn set(&mut self, phase: Phase, tsc: u64) {
        self.stamps[phase as usize] = (tsc != 0).then_some(tsc);
    }

    /// Records `phase` now.
    pub fn stamp(&mut self, phase: Phase) {
        self.set(phase, rdtsc());
    }

    /// Sets the TSC frequency (known once a vCPU exists).
    pub fn set_tsc_khz(&mut self, khz: u64) {
        self.tsc_khz = khz;
    }

    /// TSC frequency in kHz.
    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// The raw stamp of `phase`.
    pub fn get(&self, phase: Phase) -> Option<u64> {
        self.stamps[phase as usize]
    }

    /// Microseconds from [`Phase::VmmStart`] to `phase`.
    pub fn micros(&self, phase: Phase) -> Option<f64> {
        let start = self.get(Phase::VmmStart)?;
        let at = self.get(phase)?;
        Some(self.ticks_to_us(at.checked_sub(start)?))
    }

    /// Microseconds between two phases.
    pub fn between(&self, from: Phase, to: Phase) -> Option<f64> {
        Some(self.ticks_to_us(self.get(to)?.checked_sub(self.get(from)?)?))
    }

    fn ticks_to_us(&self, ticks: u64) -> f64 {
        if self.tsc_khz == 0 {
            return 0.0;
        }
        ticks as f64 * 1000.0 / self.tsc_khz as f64
    }

    /// Reached phases in time order, with microseconds since VMM start.
    pub fn reached(&self) -> Vec<(Phase, f64)> {
        let mut v: Vec<_> = Phase::ALL
            .iter()
            .filter_map(|&p| self.micros(p).map(|us| (p, us)))
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v
    }

    /// One line: time to the app's `main` and to exit, and where it went.
    pub fn summary(&self) -> String {
        let mut s = String::from("tandem:");
        if let Some(us) = self.micros(Phase::AppMain) {
            let _ = write!(s, " main at {us:.0} us");
            if let (Some(host), Some(guest)) = (
                self.micros(Phase::VcpuReady),
                self.between(Phase::FirstInstruction, Phase::AppMain),
            ) {
                let _ = write!(s, " (vmm {host:.0} us, guest init {guest:.1} us)");
            }
        } else {
            s.push_str(" main not reached");
        }
        if let Some(us) = self.micros(Phase::AppReady) {
            let _ = write!(s, ", ready at {us:.0} us");
        }
        if let Some(us) = self.micros(Phase::Exit) {
            let _ = write!(s, ", exit at {us:.0} us");
        }
        s
    }

    /// A table of phases: time since VMM start and since the previous phase.
    pub fn table(&self) -> String {
        let mut out = String::from("phase                  side     at (us)   delta (us)\n");
        let mut prev = 0.0;
        for (p, us) in self.reached() {
            let side = if p.stamped_by_guest() {
                "guest"
            } else {
                "host"
            };
            let _ = writeln!(
                out,
                "{:<22} {:<6} {:>10.1} {:>12.1}",
                p.name(),
                side,
                us,
                us - prev
            );
            prev = us;
        }
        out
    }

    /// Chrome trace-event JSON: one complete event per phase (from the
    /// previous reached phase to this one), host and guest on separate tracks.
    pub fn to_chrome_json(&self) -> Value {
        let mut events = vec![
            json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "vmm (host)"}}),
            json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "guest"}}),
            json!({"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "tandem vm"}}),
        ];
        let mut prev = 0.0;
        for (p, us) in self.reached() {
            let tid = if p.stamped_by_guest() { 2 } else { 1 };
            events.push(json!({
                "name": p.name(),
                "cat": if tid == 2 { "guest" } else { "host" },
                "ph": "X",
                "ts": prev,
                "dur": us - prev,
                "pid": 1,
                "tid": tid,
                "args": {"at_us": us},
            }));
            prev = us;
        }
        json!({
            "traceEvents": events,
            "displayTimeUnit": "ns",
            "otherData": {"tsc_khz": self.tsc_khz, "clock": "host TSC"},
        })
    }

    /// Phase name to microseconds since VMM start, for JSON reports.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (p, us) in self.reached() {
            m.insert(p.name().to_string(), json!((us * 1000.0).round() / 1000.0));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_in_order_and_json() {
        let mut t = BootTrace::new(1_000_000); // 1 tick = 1 ns
        for (i, p) in Phase::ALL.iter().enumerate() {
            if *p != Phase::AppReady {
                t.set(*p, 1_000 + i as u64 * 1_000);
            }
        }
        let reached = t.reached();
        assert_eq!(reached.len(), Phase::COUNT - 1);
        assert!(reached.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(t.micros(Phase::AppMain), Some(9.0));
        let json = t.to_chrome_json();
        let events = json["traceEvents"].as_array().unwrap();
        assert_eq!(
            events.iter().filter(|e| e["ph"] == "X").count(),
            Phase::COUNT - 1
        );
        assert!(t.summary().contains("main at 9 us"));
    }
}
