//! A container's cgroup and resource limits, from its OCI spec
//! (`linux.cgroupsPath`, `linux.resources`), read with `oci-spec`, and the
//! guest memory they imply. Pure: [`crate::service`] creates the group.
//!
//! Choices, all visible here:
//! - The VMM process (and so the whole VM) is the container's process: it
//!   joins the group before it execs, so every page the guest touches is
//!   charged to the container.
//! - `memory.limit` sets the cgroup's memory limit as given, and the guest's
//!   memory to that limit less [`VMM_RESERVE`] (the VMM's own memory: its
//!   code, page tables, console buffers), rounded down to 2 MiB. The
//!   `tandem.dev/memory` annotation, when present, sets the guest memory
//!   instead; it must fit in the limit with the same reserve.
//! - `cpu.quota`/`cpu.period` become `cpu.max`; `cpu.shares` becomes
//!   `cpu.weight` with runc's conversion; `memory.swap` (memory + swap in
//!   OCI's terms) becomes `memory.swap.max` = swap − limit; `pids.limit`
//!   becomes `pids.max`.
//! - `cgroupsPath` is read as runc reads it: `slice:prefix:name` (the
//!   systemd driver's form, as CRI writes it with `SystemdCgroup = true`)
//!   names `<expanded slice>/<prefix>-<name>.scope`; any other value is a
//!   path from the hierarchy's root (containerd's default for `ctr` is
//!   `/<namespace>/<id>`; CRI's cgroupfs driver writes
//!   `<cgroup_parent>/<id>`). The shim creates the directories itself; it
//!   does not ask systemd for a scope.

use std::path::Path;

use oci_spec::runtime::{LinuxResources, Spec};
use tandem::cgroup::{shares_to_weight, CgroupPath, CpuMax, Limits};
use tandem_abi::layout::LARGE_PAGE_SIZE;

use crate::bundle::{self, BundleError, MEMORY_ANNOTATION};

/// Memory of the container's limit left to the VMM process itself, not
/// given to the guest.
pub const VMM_RESERVE: u64 = 16 << 20;
/// CFS period when the spec gives a quota without one (the kernel's default).
const DEFAULT_PERIOD_US: u64 = 100_000;

/// What the shim does with a container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    /// The group's path under the hierarchy root (`a/b/c`), checked.
    pub path: String,
    /// The limits to write.
    pub limits: Limits,
}

/// Reads `bundle/config.json`: the cgroup plan (`None` without a
/// `cgroupsPath`) and the guest memory (`None`: the VMM's default).
pub fn read(bundle: &Path) -> Result<(Option<CgroupPlan>, Option<u64>), BundleError> {
    let path = bundle.join("config.json");
    let bytes = bundle::read_config(&path)?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|source| BundleError::Config {
        path: path.display().to_string(),
        source,
    })?;
    plan(&spec)
}

/// [`read`] on a parsed spec.
pub fn plan(spec: &Spec) -> Result<(Option<CgroupPlan>, Option<u64>), BundleError> {
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let limits = limits(resources)?;
    let annotation = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(MEMORY_ANNOTATION));
    let memory = guest_memory(limits.memory_max, annotation.map(String::as_str))?;
    let cgroup = match linux.and_then(|l| l.cgroups_path().as_ref()) {
        Some(p) if !p.as_os_str().is_empty() => {
            let raw = p.to_string_lossy();
            Some(CgroupPlan {
                path: cgroup_path(&raw)?,
                limits,
            })
        }
        _ => None,
    };
    Ok((cgroup, memory))
}

fn bad(what: &str, value: impl std::fmt::Display, why: &str) -> BundleError {
    BundleError::Resources(format!("{what} {value}: {why}"))
}

/// The limits of an `Update` request: containerd sends the new
/// `LinuxResources` as JSON in an `Any` (typeurl's encoding of a Go type
/// that is not a protobuf message).
pub fn update_limits(type_url: &str, value: &[u8]) -> Result<Limits, BundleError> {
    if !type_url.ends_with("/LinuxResources") {
        return Err(bad(
            "update",
            format!("{type_url:?}"),
            "not LinuxResources (the only update a Tandem task takes)",
        ));
    }
    let resources: LinuxResources = serde_json::from_slice(value).map_err(|e| {
        bad(
            "update",
            "resources",
            &format!("not OCI LinuxResources JSON: {e}"),
        )
    })?;
    limits(Some(&resources))
}

/// `linux.resources` as cgroup v2 limits.
fn limits(resources: Option<&LinuxResources>) -> Result<Limits, BundleError> {
    let mut limits = Limits::default();
    let Some(r) = resources else {
        return Ok(limits);
    };
    if let Some(mem) = r.memory() {
        match mem.limit() {
            Some(l) if l > 0 => limits.memory_max = Some(l.unsigned_abs()),
            Some(l) if l < -1 || l == 0 => {
                return Err(bad("linux.resources.memory.limit", l, "not a size"))
            }
            _ => {}
        }
        if let (Some(swap), Some(limit)) = (mem.swap(), limits.memory_max) {
            if swap > 0 {
                let swap = swap.unsigned_abs();
                limits.swap_max = Some(swap.checked_sub(limit).ok_or_else(|| {
                    bad(
                        "linux.resources.memory.swap",
                        swap,
                        "smaller than the memory limit (OCI's swap is memory + swap)",
                    )
                })?);
            }
        }
    }
    if let Some(cpu) = r.cpu() {
        let period = cpu.period().filter(|&p| p > 0);
        match cpu.quota() {
            Some(q) if q > 0 => {
                limits.cpu_max = Some(CpuMax {
                    quota_us: Some(q.unsigned_abs()),
                    period_us: period.unwrap_or(DEFAULT_PERIOD_US),
                })
            }
            Some(q) if q < -1 || q == 0 => {
                return Err(bad("linux.resources.cpu.quota", q, "not a quota"))
            }
            _ => {
                if let Some(p) = period {
                    limits.cpu_max = Some(CpuMax {
                        quota_us: None,
                        period_us: p,
                    });
                }
            }
        }
        if let Some(shares) = cpu.shares().filter(|&s| s > 0) {
            limits.cpu_weight = Some(shares_to_weight(shares));
        }
    }
    if let Some(pids) = r.pids() {
        if pids.limit() > 0 {
            limits.pids_max = Some(pids.limit().unsigned_abs());
        }
    }
    Ok(limits)
}

/// The guest's memory: the annotation's, else the limit less
/// [`VMM_RESERVE`] in 2 MiB steps, else the VMM's default (`None`).
fn guest_memory(limit: Option<u64>, annotation: Option<&str>) -> Result<Option<u64>, BundleError> {
    let from_annotation = annotation.map(bundle::memory).transpose()?;
    let Some(limit) = limit else {
        return Ok(from_annotation);
    };
    let room = limit.saturating_sub(VMM_RESERVE);
    if let Some(m) = from_annotation {
        if m > room {
            return Err(bad(
                MEMORY_ANNOTATION,
                format!("{} MiB", m >> 20),
                &format!(
                    "does not fit the container's memory limit of {limit} bytes with the {} MiB the VMM keeps for itself",
                    VMM_RESERVE >> 20
                ),
            ));
        }
        return Ok(Some(m));
    }
    let m = room - room % LARGE_PAGE_SIZE;
    tandem::check_mem_size(m).map_err(|why| {
        bad(
            "linux.resources.memory.limit",
            limit,
            &format!(
                "leaves a guest of {} MiB after the VMM's {} MiB: {why}",
                m >> 20,
                VMM_RESERVE >> 20
            ),
        )
    })?;
    Ok(Some(m))
}

/// `linux.cgroupsPath` as a checked path under the hierarchy root.
pub fn cgroup_path(raw: &str) -> Result<String, BundleError> {
    let refuse = |why: String| bad("linux.cgroupsPath", format!("{raw:?}"), &why);
    let path = match systemd_parts(raw) {
        Some((slice, prefix, name)) => {
            let mut path = expand_slice(if slice.is_empty() {
                "system.slice"
            } else {
                slice
            })
            .map_err(refuse)?;
            let unit = if name.ends_with(".slice") {
                name.to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            path.push(unit);
            path.join("/")
        }
        None => raw.to_string(),
    };
    CgroupPath::parse(&path)
        .map(|p| p.as_relative())
        .map_err(|e| refuse(e.to_string()))
}

/// `slice:prefix:name`, the systemd driver's form.
fn systemd_parts(raw: &str) -> Option<(&str, &str, &str)> {
    let mut it = raw.split(':');
    let (slice, prefix, name) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || raw.starts_with('/') {
        return None;
    }
    Some((slice, prefix, name))
}

/// systemd's slice nesting: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`;
/// `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<Vec<String>, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("{slice:?} is not a slice name (ends in .slice)"));
    };
    if stem == "-" {
        return Ok(Vec::new());
    }
    if stem.is_empty()
        || stem.contains('/')
        || stem.contains("--")
        || stem.starts_with('-')
        || stem.ends_with('-')
    {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cgroups_paths_read_as_runc_reads_them() {
        assert_eq!(cgroup_path("/default/abc").unwrap(), "default/abc");
        assert_eq!(cgroup_path("k8s.io/abc").unwrap(), "k8s.io/abc");
        assert_eq!(
            cgroup_path("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
        );
        assert_eq!(
            cgroup_path(":tandem:abc").unwrap(),
            "system.slice/tandem-abc.scope"
        );
        assert_eq!(cgroup_path("-.slice::abc").unwrap(), "abc.scope");
        for bad in [
            "/a/../b",
            "../up",
            "bad:cri:x",
            "a--b.slice:p:x",
            "a.slice:p:x/../../y",
            "/",
        ] {
            assert!(cgroup_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resources_become_limits_and_guest_memory() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/default/c1","resources":{
                "memory":{"limit":67108864,"swap":67108864},
                "cpu":{"shares":1024,"quota":50000,"period":100000},
                "pids":{"limit":32}}}}"#,
        );
        let (plan, memory) = plan(&s).unwrap();
        let plan = plan.unwrap();
        assert_eq!(plan.path, "default/c1");
        assert_eq!(
            plan.limits,
            Limits {
                cpu_max: Some(CpuMax {
                    quota_us: Some(50_000),
                    period_us: 100_000
                }),
                cpu_weight: Some(39),
                memory_max: Some(64 << 20),
                swap_max: Some(0),
                pids_max: Some(32),
            }
        );
        assert_eq!(memory, Some(48 << 20));
    }

    #[test]
    fn no_limits_change_nothing() {
        let (plan, memory) = plan(&spec(r#"{"ociVersion":"1.0.2"}"#)).unwrap();
        assert_eq!((plan, memory), (None, None));
        // ctr's default: a path, unlimited quota (-1), default shares.
        let (plan, memory) = plan_of(
            r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/default/x",
              "resources":{"cpu":{"shares":1024,"quota":-1}}}}"#,
        );
        assert_eq!(plan.unwrap().limits.cpu_max, None);
        assert_eq!(memory, None);
    }

    fn plan_of(json: &str) -> (Option<CgroupPlan>, Option<u64>) {
        plan(&spec(json)).unwrap()
    }

    #[test]
    fn guest_memory_choices() {
        // The limit less the reserve, in 2 MiB steps.
        assert_eq!(guest_memory(Some(100 << 20), None).unwrap(), Some(84 << 20));
        assert_eq!(
            guest_memory(Some((100 << 20) + 12345), None).unwrap(),
            Some(84 << 20)
        );
        // The annotation wins, if it fits.
        assert_eq!(
            guest_memory(Some(128 << 20), Some("32M")).unwrap(),
            Some(32 << 20)
        );
        let err = guest_memory(Some(64 << 20), Some("64M"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
        // Too small a limit for any guest, said at create.
        let err = guest_memory(Some(18 << 20), None).unwrap_err().to_string();
        assert!(err.contains("linux.resources.memory.limit"), "{err}");
        assert!(err.contains("too little"), "{err}");
        // No limit: the annotation or the VMM's default.
        assert_eq!(guest_memory(None, None).unwrap(), None);
        assert_eq!(guest_memory(None, Some("16M")).unwrap(), Some(16 << 20));
    }

    #[test]
    fn updates_read_containerds_json() {
        let url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
        let limits = update_limits(
            url,
            br#"{"memory":{"limit":134217728},"cpu":{"quota":25000,"period":100000}}"#,
        )
        .unwrap();
        assert_eq!(limits.memory_max, Some(128 << 20));
        assert_eq!(
            limits.cpu_max,
            Some(CpuMax {
                quota_us: Some(25_000),
                period_us: 100_000
            })
        );
        assert!(update_limits("io.containerd.cgroups.v1.Metrics", b"{}").is_err());
        assert!(update_limits(url, b"not json").is_err());
    }

    #[test]
    fn bad_resources_are_refused() {
        for json in [
            r#"{"ociVersion":"1","linux":{"resources":{"memory":{"limit":0}}}}"#,
            r#"{"ociVersion":"1","linux":{"resources":{"memory":{"limit":67108864,"swap":1048576}}}}"#,
            r#"{"ociVersion":"1","linux":{"resources":{"cpu":{"quota":-5}}}}"#,
            r#"{"ociVersion":"1","linux":{"cgroupsPath":"/../../etc"}}"#,
        ] {
            assert!(plan(&spec(json)).is_err(), "{json}");
        }
    }
}
