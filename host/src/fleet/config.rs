//! `FLEET.toml`: parsed by hand from a TOML table so that every problem in
//! the file (unknown keys, bad values, unknown or cyclic dependencies,
//! duplicate names, missing images, budgets too small) is reported at once,
//! before anything starts.
//!
//! ```toml
//! [fleet]                       # optional; command-line options win
//! max_concurrent_boots = 2
//! memory_budget = "1G"
//!
//! [defaults]                    # optional; any VM key except name and after
//! memory = "8M"
//! restart = "on-failure"
//!
//! [[vm]]
//! name = "db"
//! image = "service"             # an app name, or a path relative to this file
//! cmdline = "init-ms=20"
//! priority = 10                 # higher boots first
//! boot_timeout = "2s"           # not ready by then: killed, handled per `restart`
//! restart = "on-failure"        # never | on-failure | always
//! max_restarts = 3
//! backoff = "100ms"             # doubles on each restart, up to backoff_max
//! checkpoint = "state/db"       # snapshot at ready(); restarts restore from it
//!
//! [[vm]]
//! name = "web"
//! count = 4                     # web-0 .. web-3; `after = ["web"]` means all four
//! after = ["db"]                # boots once db has called ready()
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_abi::layout;
use toml::Value;

use crate::image::Image;
use crate::snapshot::Snapshot;

/// Why a fleet file was refused: every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file parsed, but describes a fleet that cannot run.
    #[error("{path}: {} problem{}:\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// What happens when a VM's run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restarted.
    Never,
    /// Restarted when it fails: non-zero exit, crash, protocol violation,
    /// boot timeout.
    OnFailure,
    /// Restarted whenever it ends, unless the fleet is stopping.
    Always,
}

/// One VM of the fleet, checked.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Unique name (`group-i` for replicas).
    pub name: String,
    /// The `[[vm]]` entry's name (replicas share it).
    pub group: String,
    /// The image file.
    pub image_path: PathBuf,
    /// The checked image, shared by every VM booting it.
    pub image: Arc<Image>,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// The app's command line.
    pub cmdline: String,
    /// Higher boots first.
    pub priority: i64,
    /// Indices (into [`FleetSpec::vms`]) of the VMs that must be ready first.
    pub after: Vec<usize>,
    /// Start from this snapshot instead of a cold boot.
    pub snapshot: Option<PathBuf>,
    /// Snapshot the VM here when it first calls `ready()`; restarts restore from it.
    pub checkpoint: Option<PathBuf>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Most restarts before the VM is given up.
    pub max_restarts: u32,
    /// Wait before the first restart; doubled on each further one.
    pub backoff: Duration,
    /// Longest wait between restarts.
    pub backoff_max: Duration,
    /// Longest time from admission to `ready()`.
    pub boot_timeout: Option<Duration>,
}

/// Admission limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most VMs booting (admitted, not yet ready) at once.
    pub max_concurrent_boots: usize,
    /// Most guest memory of live VMs, in bytes.
    pub memory_budget: u64,
}

/// Limits given on the command line; `None` takes the file's, else the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitOverrides {
    /// `--max-concurrent-boots`.
    pub max_concurrent_boots: Option<usize>,
    /// `--memory-budget`.
    pub memory_budget: Option<u64>,
}

/// A checked fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Every VM, replicas expanded, in file order.
    pub vms: Vec<VmSpec>,
    /// Admission limits.
    pub limits: Limits,
}

/// Most replicas of one `[[vm]]` entry.
pub const MAX_COUNT: i64 = 100_000;
/// Longest VM name.
pub const MAX_NAME: usize = 64;
/// Default guest memory of a fleet VM.
pub const DEFAULT_VM_MEMORY: u64 = 8 << 20;

/// The number of CPUs this process may use.
pub fn default_max_concurrent_boots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Half of the host's available memory (`MemAvailable` in `/proc/meminfo`),
/// or 1 GiB when it cannot be read.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kib| kib.saturating_mul(1024) / 2)
}

pub use crate::units::{parse_duration, parse_size};

/// Where app names (`image = "service"`) are looked up: `TANDEM_GUEST_DIR`,
/// else the guest build folder of the source tree the config file is in,
/// else of the current folder.
fn app_dirs(base: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("TANDEM_GUEST_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let rel = Path::new("guest/target/x86_64-unknown-none/release");
    for start in [Some(base.to_path_buf()), std::env::current_dir().ok()]
        .into_iter()
        .flatten()
    {
        for dir in start.ancestors() {
            let cand = dir.join(rel);
            if cand.is_dir() {
                dirs.push(cand);
                break;
            }
        }
    }
    dirs
}

const VM_KEYS: &[&str] = &[
    "name",
    "image",
    "memory",
    "cmdline",
    "priority",
    "after",
    "snapshot",
    "checkpoint",
    "restart",
    "max_restarts",
    "backoff",
    "backoff_max",
    "boot_timeout",
    "count",
];

/// Collects the problems of one file.
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn bad(&mut self, msg: String) {
        self.problems.push(msg);
    }

    fn string(&mut self, t: &toml::Table, key: &str, what: &str) -> Option<String> {
        match t.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.bad(format!(
                    "{what}: `{key}` must be a string, not {}",
                    other.type_str()
                ));
                None
            }
        }
    }

    fn int(&mut self, t: &toml::Table, key: &str, what: &str, range: (i64, i64)) -> Option<i64> {
        match t.get(key)? {
            Value::Integer(n) if *n >= range.0 && *n <= range.1 => Some(*n),
            Value::Integer(n) => {
                self.bad(format!(
                    "{what}: `{key}` = {n} is outside {}..={}",
                    range.0, range.1
                ));
                None
            }
            other => {
                self.bad(format!(
                    "{what}: `{key}` must be an integer, not {}",
                    other.type_str()
                ));
                None
            }
        }
    }

    fn size(&mut self, t: &toml::Table, key: &str, what: &str) -> Option<u64> {
        match t.get(key)? {
            Value::Integer(n) if *n > 0 => Some(n.unsigned_abs()),
            Value::String(s) => match parse_size(s) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.bad(format!("{what}: `{key}`: {e}"));
                    None
                }
            },
            other => {
                self.bad(format!(
                    "{what}: `{key}` must be a size such as \"64M\", not {other}"
                ));
                None
            }
        }
    }

    fn duration(&mut self, t: &toml::Table, key: &str, what: &str) -> Option<Duration> {
        match t.get(key)? {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.bad(format!("{what}: `{key}`: {e}"));
                    None
                }
            },
            other => {
                self.bad(format!(
                    "{what}: `{key}` must be a duration such as \"2s\", not {other}"
                ));
                None
            }
        }
    }
}

/// Raw, per-entry values before names are resolved.
struct Entry {
    group: String,
    count: usize,
    image_path: Option<PathBuf>,
    mem_size: u64,
    cmdline: String,
    priority: i64,
    after: Vec<String>,
    snapshot: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
    restart: RestartPolicy,
    max_restarts: u32,
    backoff: Duration,
    backoff_max: Duration,
    boot_timeout: Option<Duration>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl FleetSpec {
    /// Reads and checks a fleet file; relative paths are taken from its folder.
    pub fn load(path: &Path, overrides: LimitOverrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base, overrides).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
            other => other,
        })
    }

    /// Parses and checks fleet text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path, overrides: LimitOverrides) -> Result<Self, ConfigError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: PathBuf::from("fleet"),
                message: e.to_string(),
            })?;
        let mut c = Checker {
            problems: Vec::new(),
        };
        for key in doc.keys() {
            if !["fleet", "defaults", "vm"].contains(&key.as_str()) {
                c.bad(format!(
                    "unknown top-level key `{key}` (expected [fleet], [defaults] and [[vm]])"
                ));
            }
        }
        let empty = toml::Table::new();
        let table = |c: &mut Checker, key: &str| -> toml::Table {
            match doc.get(key) {
                None => empty.clone(),
                Some(Value::Table(t)) => t.clone(),
                Some(other) => {
                    c.bad(format!("`{key}` must be a table, not {}", other.type_str()));
                    empty.clone()
                }
            }
        };
        let fleet = table(&mut c, "fleet");
        for key in fleet.keys() {
            if !["max_concurrent_boots", "memory_budget"].contains(&key.as_str()) {
                c.bad(format!("[fleet]: unknown key `{key}`"));
            }
        }
        let file_cap = c.int(&fleet, "max_concurrent_boots", "[fleet]", (1, 1 << 20));
        let file_budget = c.size(&fleet, "memory_budget", "[fleet]");
        let limits = Limits {
            max_concurrent_boots: overrides
                .max_concurrent_boots
                .or(file_cap.and_then(|n| usize::try_from(n).ok()))
                .unwrap_or_else(default_max_concurrent_boots),
            memory_budget: overrides
                .memory_budget
                .or(file_budget)
                .unwrap_or_else(default_memory_budget),
        };
        if limits.max_concurrent_boots == 0 {
            c.bad("the cap on concurrent boots must be at least 1".into());
        }

        let defaults = table(&mut c, "defaults");
        for key in defaults.keys() {
            if !VM_KEYS.contains(&key.as_str()) || key == "name" || key == "after" || key == "count"
            {
                c.bad(format!("[defaults]: unknown or per-VM-only key `{key}`"));
            }
        }
        let entries: Vec<toml::Table> = match doc.get("vm") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::Table(t) => Some(t.clone()),
                    other => {
                        c.bad(format!(
                            "[[vm]] #{}: must be a table, not {}",
                            i + 1,
                            other.type_str()
                        ));
                        None
                    }
                })
                .collect(),
            Some(other) => {
                c.bad(format!(
                    "`vm` must be an array of tables ([[vm]]), not {}",
                    other.type_str()
                ));
                Vec::new()
            }
        };
        if entries.is_empty() {
            c.bad("the fleet has no VMs (add [[vm]] entries)".into());
        }

        let dirs = app_dirs(base);
        let resolve = |p: &str| -> PathBuf {
            let path = Path::new(p);
            if path.is_absolute() {
                return path.to_path_buf();
            }
            let rel = base.join(path);
            if rel.exists() || p.contains('/') {
                return rel;
            }
            dirs.iter()
                .map(|d| d.join(p))
                .find(|c| c.is_file())
                .unwrap_or(rel)
        };

        let mut parsed = Vec::new();
        let mut seen_groups: HashMap<String, usize> = HashMap::new();
        for (i, t) in entries.iter().enumerate() {
            let name = match t.get("name") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    c.bad(format!(
                        "[[vm]] #{}: `name` must be a string, not {}",
                        i + 1,
                        other.type_str()
                    ));
                    format!("#{}", i + 1)
                }
                None => {
                    c.bad(format!("[[vm]] #{}: missing `name`", i + 1));
                    format!("#{}", i + 1)
                }
            };
            let what = format!("vm `{name}`");
            if !name.starts_with('#') && !valid_name(&name) {
                c.bad(format!(
                    "{what}: names are 1 to {MAX_NAME} characters of letters, digits, `-`, `_` and `.`"
                ));
            }
            if let Some(first) = seen_groups.insert(name.clone(), i) {
                c.bad(format!(
                    "duplicate VM name `{name}` (entries #{} and #{})",
                    first + 1,
                    i + 1
                ));
            }
            for key in t.keys() {
                if !VM_KEYS.contains(&key.as_str()) {
                    c.bad(format!("{what}: unknown key `{key}`"));
                }
            }
            let get = |key: &str| if t.contains_key(key) { t } else { &defaults };
            let count = c.int(t, "count", &what, (1, MAX_COUNT)).unwrap_or(1);
            let image_path = match c.string(get("image"), "image", &what) {
                Some(s) => Some(resolve(&s)),
                None => {
                    if !get("image").contains_key("image") {
                        c.bad(format!("{what}: missing `image`"));
                    }
                    None
                }
            };
            let mem_size = c
                .size(get("memory"), "memory", &what)
                .unwrap_or(DEFAULT_VM_MEMORY);
            if !(layout::MIN_MEM_SIZE..=layout::MAX_MEM_SIZE).contains(&mem_size)
                || !mem_size.is_multiple_of(layout::LARGE_PAGE_SIZE)
            {
                c.bad(format!(
                    "{what}: memory of {mem_size} bytes: must be a multiple of 2 MiB from {} to {} MiB",
                    layout::MIN_MEM_SIZE >> 20,
                    layout::MAX_MEM_SIZE >> 20
                ));
            }
            let cmdline = c
                .string(get("cmdline"), "cmdline", &what)
                .unwrap_or_default();
            if cmdline.len() > tandem_abi::bootinfo::MAX_CMDLINE {
                c.bad(format!(
                    "{what}: command line of {} bytes is longer than {}",
                    cmdline.len(),
                    tandem_abi::bootinfo::MAX_CMDLINE
                ));
            }
            let priority = c
                .int(get("priority"), "priority", &what, (-1_000_000, 1_000_000))
                .unwrap_or(0);
            let after = match t.get("after") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        other => {
                            c.bad(format!("{what}: `after` holds {other}, not a VM name"));
                            None
                        }
                    })
                    .collect(),
                Some(other) => {
                    c.bad(format!(
                        "{what}: `after` must be a list of VM names, not {}",
                        other.type_str()
                    ));
                    Vec::new()
                }
            };
            let snapshot = c
                .string(get("snapshot"), "snapshot", &what)
                .map(|s| base.join(s));
            if let Some(dir) = &snapshot {
                if let Err(e) = Snapshot::load(dir) {
                    c.bad(format!("{what}: snapshot {}: {e}", dir.display()));
                }
            }
            let checkpoint = c
                .string(get("checkpoint"), "checkpoint", &what)
                .map(|s| base.join(s));
            let restart = match c.string(get("restart"), "restart", &what).as_deref() {
                None | Some("never") => RestartPolicy::Never,
                Some("on-failure") => RestartPolicy::OnFailure,
                Some("always") => RestartPolicy::Always,
                Some(other) => {
                    c.bad(format!(
                        "{what}: `restart` = \"{other}\": expected \"never\", \"on-failure\" or \"always\""
                    ));
                    RestartPolicy::Never
                }
            };
            let max_restarts = c
                .int(get("max_restarts"), "max_restarts", &what, (0, 1_000_000))
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(3);
            let backoff = c
                .duration(get("backoff"), "backoff", &what)
                .unwrap_or(Duration::from_millis(100));
            let backoff_max = c
                .duration(get("backoff_max"), "backoff_max", &what)
                .unwrap_or(Duration::from_secs(10));
            let boot_timeout = c.duration(get("boot_timeout"), "boot_timeout", &what);
            if boot_timeout == Some(Duration::ZERO) {
                c.bad(format!("{what}: `boot_timeout` must be more than 0"));
            }
            if mem_size > limits.memory_budget {
                c.bad(format!(
                    "{what} needs {} MiB, more than the whole memory budget of {} MiB: it could never start",
                    mem_size >> 20,
                    limits.memory_budget >> 20
                ));
            }
            parsed.push(Entry {
                group: name,
                count: usize::try_from(count).unwrap_or(1),
                image_path,
                mem_size,
                cmdline,
                priority,
                after,
                snapshot,
                checkpoint,
                restart,
                max_restarts,
                backoff,
                backoff_max,
                boot_timeout,
            });
        }

        // Images: each distinct file checked once, shared by its VMs.
        let mut images: BTreeMap<PathBuf, Option<Arc<Image>>> = BTreeMap::new();
        for e in &parsed {
            let Some(p) = &e.image_path else { continue };
            if images.contains_key(p) {
                continue;
            }
            let img = match Image::from_file(p) {
                Ok(i) => Some(Arc::new(i)),
                Err(err) => {
                    let mut users: Vec<&str> = parsed
                        .iter()
                        .filter(|o| o.image_path.as_ref() == Some(p))
                        .map(|o| o.group.as_str())
                        .collect();
                    users.dedup();
                    c.bad(format!(
                        "vm `{}`: image {}: {err}",
                        users.join("`, `"),
                        p.display()
                    ));
                    None
                }
            };
            images.insert(p.clone(), img);
        }

        // Names: expand replicas, resolve `after` to indices.
        let mut index_of_group: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut next = 0usize;
        for e in &parsed {
            let ids = (next..next + e.count).collect();
            next += e.count;
            // A duplicate name is reported above; the first entry keeps it.
            index_of_group.entry(e.group.as_str()).or_insert(ids);
        }
        let total = next;
        let mut afters: Vec<Vec<usize>> = Vec::with_capacity(parsed.len());
        for e in &parsed {
            let mut deps = Vec::new();
            for a in &e.after {
                if a == &e.group {
                    c.bad(format!("vm `{}` lists itself in `after`", e.group));
                    continue;
                }
                match index_of_group.get(a.as_str()) {
                    Some(ids) => deps.extend(ids.iter().copied()),
                    None => c.bad(format!(
                        "vm `{}`: `after` names `{a}`, which is not a VM of this fleet",
                        e.group
                    )),
                }
            }
            deps.sort_unstable();
            deps.dedup();
            afters.push(deps);
        }
        for cycle in cycles(&parsed, &index_of_group) {
            c.bad(format!("dependency cycle: {}", cycle.join(" -> ")));
        }
        if !c.problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: PathBuf::from("fleet"),
                problems: c.problems,
            });
        }

        let mut vms = Vec::with_capacity(total);
        for (e, after) in parsed.iter().zip(afters) {
            let (Some(path), Some(Some(image))) = (
                e.image_path.clone(),
                e.image_path.as_ref().and_then(|p| images.get(p)).cloned(),
            ) else {
                continue;
            };
            for r in 0..e.count {
                let name = if e.count == 1 {
                    e.group.clone()
                } else {
                    format!("{}-{r}", e.group)
                };
                vms.push(VmSpec {
                    name,
                    group: e.group.clone(),
                    image_path: path.clone(),
                    image: image.clone(),
                    mem_size: e.mem_size,
                    cmdline: e.cmdline.clone(),
                    priority: e.priority,
                    after: after.clone(),
                    snapshot: e.snapshot.clone(),
                    checkpoint: e.checkpoint.as_ref().map(|d| {
                        if e.count == 1 {
                            d.clone()
                        } else {
                            d.join(r.to_string())
                        }
                    }),
                    restart: e.restart,
                    max_restarts: e.max_restarts,
                    backoff: e.backoff,
                    backoff_max: e.backoff_max,
                    boot_timeout: e.boot_timeout,
                });
            }
        }
        Ok(Self { vms, limits })
    }
}

/// Every dependency cycle among entries, each named once (as group names,
/// first name repeated at the end).
fn cycles(parsed: &[Entry], groups: &HashMap<&str, Vec<usize>>) -> Vec<Vec<String>> {
    let mut idx: HashMap<&str, usize> = HashMap::new();
    for (i, e) in parsed.iter().enumerate() {
        idx.entry(e.group.as_str()).or_insert(i);
    }
    let edges: Vec<Vec<usize>> = parsed
        .iter()
        .map(|e| {
            e.after
                .iter()
                .filter(|a| **a != e.group && groups.contains_key(a.as_str()))
                .filter_map(|a| idx.get(a.as_str()).copied())
                .collect()
        })
        .collect();
    // Iterative DFS with colours; each back edge closes one cycle.
    let n = parsed.len();
    let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut found = Vec::new();
    for root in 0..n {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|&(v, _)| v == to).unwrap_or(0);
                        let mut names: Vec<String> = stack[start..]
                            .iter()
                            .map(|&(v, _)| parsed[v].group.clone())
                            .collect();
                        names.push(parsed[to].group.clone());
                        found.push(names);
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match FleetSpec::parse(text, Path::new("/nonexistent"), LimitOverrides::default()) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(e) => vec![e.to_string()],
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("8X").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1 fortnight").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = problems(
            r#"
            bogus = 1
            [[vm]]
            name = "a"
            image = "/no/such/image"
            after = ["b", "ghost"]
            memory = "3M"
            restart = "sometimes"
            colour = "blue"
            [[vm]]
            name = "b"
            image = "/no/such/image"
            after = ["a"]
            memory = "64G"
            [[vm]]
            name = "a"
            image = "/no/such/image"
            "#,
        );
        let all = p.join("\n");
        for needle in [
            "unknown top-level key `bogus`",
            "`after` names `ghost`",
            "restart",
            "unknown key `colour`",
            "duplicate VM name `a`",
            "dependency cycle",
            "/no/such/image",
            "memory",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn budget_too_small_for_a_vm() {
        let p = FleetSpec::parse(
            "[[vm]]\nname = \"a\"\nimage = \"/x\"\nmemory = \"64M\"\n",
            Path::new("/"),
            LimitOverrides {
                max_concurrent_boots: Some(1),
                memory_budget: Some(32 << 20),
            },
        );
        let Err(ConfigError::Invalid { problems, .. }) = p else {
            panic!("accepted")
        };
        assert!(
            problems.iter().any(|p| p.contains("memory budget")),
            "{problems:?}"
        );
    }

    #[test]
    fn syntax_errors_are_named() {
        assert!(matches!(
            FleetSpec::parse("[[vm]\n", Path::new("/"), LimitOverrides::default()),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn cycles_are_found_once() {
        let p = problems(
            r#"
            [[vm]]
            name = "a"
            image = "/x"
            after = ["c"]
            [[vm]]
            name = "b"
            image = "/x"
            after = ["a"]
            [[vm]]
            name = "c"
            image = "/x"
            after = ["b"]
            "#,
        );
        let cycles: Vec<_> = p.iter().filter(|p| p.contains("cycle")).collect();
        assert_eq!(cycles.len(), 1, "{p:?}");
    }
}
