//! The task service's `Stats` answer: a VM's cgroup statistics as the
//! message containerd decodes for `ctr task metrics` and CRI's container
//! stats (`crictl stats`, kubelet): `io.containerd.cgroups.v2.Metrics` for a
//! group in the unified hierarchy, `io.containerd.cgroups.v1.Metrics` on a
//! host whose controllers are v1 ones, as runc's shim answers.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use tandem::cgroup::{CgroupStats, Version};

/// The type URL of cgroup v1 metrics, as containerd registers it.
pub const V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// The type URL of cgroup v2 metrics.
pub const V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// `stats` as the metrics message of `version`, packed in an `Any`.
pub fn to_any(stats: &CgroupStats, pids_limit: Option<u64>, version: Version) -> Any {
    let (type_url, value) = match version {
        Version::V2 => (V2_TYPE_URL, v2_metrics(stats, pids_limit).write_to_bytes()),
        Version::V1 => (V1_TYPE_URL, v1_metrics(stats, pids_limit).write_to_bytes()),
    };
    Any {
        type_url: type_url.to_string(),
        // Encoding a message of plain integers cannot fail.
        value: value.unwrap_or_default(),
        ..Default::default()
    }
}

fn v2_metrics(s: &CgroupStats, pids_limit: Option<u64>) -> v2::Metrics {
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: s.pids_current.unwrap_or(0),
            limit: pids_limit.unwrap_or(0),
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: s.cpu_usage_usec.unwrap_or(0),
            user_usec: s.cpu_user_usec.unwrap_or(0),
            system_usec: s.cpu_system_usec.unwrap_or(0),
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            usage: s.memory_current.unwrap_or(0),
            usage_limit: s.memory_max.unwrap_or(u64::MAX),
            max_usage: s.memory_peak.unwrap_or(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn v1_metrics(s: &CgroupStats, pids_limit: Option<u64>) -> v1::Metrics {
    let ns = |usec: Option<u64>| usec.unwrap_or(0).saturating_mul(1000);
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: s.pids_current.unwrap_or(0),
            limit: pids_limit.unwrap_or(0),
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: ns(s.cpu_usage_usec),
                user: ns(s.cpu_user_usec),
                kernel: ns(s.cpu_system_usec),
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            usage: MessageField::some(v1::MemoryEntry {
                usage: s.memory_current.unwrap_or(0),
                max: s.memory_peak.unwrap_or(0),
                limit: s.memory_max.unwrap_or(u64::MAX),
                ..Default::default()
            }),
            hierarchical_memory_limit: s.memory_max.unwrap_or(u64::MAX),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> CgroupStats {
        CgroupStats {
            memory_current: Some(5 << 20),
            memory_peak: Some(6 << 20),
            memory_max: Some(64 << 20),
            cpu_usage_usec: Some(1500),
            cpu_user_usec: Some(1000),
            cpu_system_usec: Some(500),
            pids_current: Some(3),
        }
    }

    #[test]
    fn v2_metrics_decode_with_the_numbers() {
        let any = to_any(&stats(), Some(32), Version::V2);
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage, 5 << 20);
        assert_eq!(m.memory.usage_limit, 64 << 20);
        assert_eq!(m.memory.max_usage, 6 << 20);
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!(m.cpu.system_usec, 500);
        assert_eq!((m.pids.current, m.pids.limit), (3, 32));
    }

    #[test]
    fn v1_metrics_decode_with_the_numbers() {
        let any = to_any(&stats(), None, Version::V1);
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.usage, 5 << 20);
        assert_eq!(m.memory.usage.max, 6 << 20);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.cpu.usage.total, 1_500_000);
        assert_eq!(m.cpu.usage.user, 1_000_000);
        assert_eq!(m.pids.current, 3);
    }
}
