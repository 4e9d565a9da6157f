//! The jail's control group: `--cgroup NAME[,cpu=P%][,memory=SIZE][,pids=N]`,
//! parsed here (purely) and carried out with [`crate::cgroup`]: the group
//! is made (or opened), given its limits, and the whole VMM process moved
//! into it before Landlock shuts the cgroup files away.

use std::str::FromStr;

use crate::cgroup::{CgroupPath, CpuMax, Limits};

use super::JailError;

/// The `cpu.max` period a `cpu=P%` quota is a share of.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The most CPU a `cpu=` may give: this many whole CPUs.
const MAX_CPUS: u64 = 1024;

/// A group and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSpec {
    /// The group's path under the hierarchy's root (`tandem/vm-1`).
    pub path: String,
    /// Its limits (`None` fields left as they are).
    pub limits: Limits,
}

impl FromStr for CgroupSpec {
    type Err = JailError;

    /// `NAME[,cpu=P%][,memory=SIZE][,pids=N]`: `cpu=50%` is half of one
    /// CPU (`cpu.max` `50000 100000`), `cpu=200%` two; `memory=128M` is
    /// `memory.max`; `pids=N` is `pids.max`.
    fn from_str(s: &str) -> Result<Self, JailError> {
        let bad = |why: String| JailError::BadCgroup(format!("{s:?}: {why}"));
        let mut items = s.split(',');
        let path = items.next().unwrap_or("").trim().to_string();
        CgroupPath::parse(&path).map_err(|e| bad(e.to_string()))?;
        let mut limits = Limits::default();
        for item in items {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{item}`: expected KEY=VALUE")))?;
            match key.trim() {
                "cpu" => {
                    let pct = value
                        .trim()
                        .strip_suffix('%')
                        .and_then(|p| p.parse::<u64>().ok())
                        .filter(|p| (1..=MAX_CPUS * 100).contains(p))
                        .ok_or_else(|| {
                            bad(format!(
                                "cpu={value}: expected a share of one CPU from 1% to {}%",
                                MAX_CPUS * 100
                            ))
                        })?;
                    limits.cpu_max = Some(CpuMax {
                        quota_us: Some(CPU_PERIOD_US * pct / 100),
                        period_us: CPU_PERIOD_US,
                    });
                }
                "memory" => {
                    let bytes = crate::units::parse_size(value)
                        .map_err(|e| bad(format!("memory={value}: {e}")))?;
                    if bytes < 1 << 20 {
                        return Err(bad(format!("memory={value}: less than 1M")));
                    }
                    limits.memory_max = Some(bytes);
                }
                "pids" => {
                    let n = value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(format!("pids={value}: expected a number above 0")))?;
                    limits.pids_max = Some(n);
                }
                other => {
                    return Err(bad(format!(
                        "unknown limit `{other}` (cpu=P%, memory=SIZE, pids=N)"
                    )))
                }
            }
        }
        Ok(Self { path, limits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_into_cgroup_terms_and_bad_ones_are_refused() {
        let c: CgroupSpec = "tandem/w1,cpu=50%,memory=128M,pids=64".parse().unwrap();
        assert_eq!(c.path, "tandem/w1");
        assert_eq!(
            c.limits.cpu_max,
            Some(CpuMax {
                quota_us: Some(50_000),
                period_us: 100_000
            })
        );
        assert_eq!(c.limits.memory_max, Some(128 << 20));
        assert_eq!(c.limits.pids_max, Some(64));
        let c: CgroupSpec = "w".parse().unwrap();
        assert_eq!(c.limits, Limits::default());
        let two: CgroupSpec = "w,cpu=200%".parse().unwrap();
        assert_eq!(two.limits.cpu_max.unwrap().quota_us, Some(200_000));
        for (bad, why) in [
            ("", "root"),
            ("../x", "`..`"),
            ("w,cpu=50", "share of one CPU"),
            ("w,cpu=0%", "share of one CPU"),
            ("w,memory=12", "less than 1M"),
            ("w,memory=lots", "memory=lots"),
            ("w,pids=0", "above 0"),
            ("w,io=5", "unknown limit `io`"),
            ("w,cpu", "KEY=VALUE"),
        ] {
            let e = bad.parse::<CgroupSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
