//! `FLEET.toml`: read with serde into the file's own shape ([`raw`]), then
//! checked whole ([`check`]) so that every problem in the file (unknown keys,
//! values of the wrong type, bad values, unknown or cyclic dependencies,
//! duplicate names, missing images, budgets too small) is reported at once,
//! each at its line and column, before anything starts.
//!
//! ```toml
//! [fleet]                       # optional; command-line options win
//! max_concurrent_boots = 2
//! memory_budget = "1G"
//! # A bridge and an address pool: every VM whose image declares a network
//! # device gets a tap on it (tandem0-0, ...), the next address, a MAC made
//! # from it; rate limits as `--net` takes them (optional).
//! network = { bridge = "tandem0", subnet = "10.77.0.0/24", rate = "10M", pps = "10k" }
//! # Bytes and disk requests a second for all the VMs' disks together,
//! # shared by `io_class` (critical first, then standard 4 : batch 1).
//! io_budget = { rate = "200M", iops = 20000 }
//!
//! [defaults]                    # optional; any VM key except name, after and count
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
//! # snapshot = "snaps/db"       # start from this snapshot instead of booting
//! # warm = 2                    # with `snapshot`: keep 2 restored ahead (a warm pool)
//!
//! [[vm]]
//! name = "web"
//! count = 4                     # web-0 .. web-3; `after = ["web"]` means all four
//! after = ["db"]                # boots once db has called ready()
//! cmdline = "db=${db.ip}"       # another VM's address: it must be in `after`
//! net = { rate = "1M" }         # its own limits over the fleet network's
//! # disk = ["path=web-{i}.img"]  # its disks; io_rate = "50M", iops = 2000 limit each
//! # io_class = "batch"          # critical | standard (default) | batch
//! ```

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::image::Image;

mod check;
pub mod network;
mod raw;

pub use network::FleetNetwork;

/// Why a fleet file was refused.
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
    #[error("{path} is not valid TOML: {problem}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, at the place it stopped.
        problem: Problem,
    },
    /// The file parsed, but describes a fleet that cannot run.
    #[error("{path}: {} problem{}:\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, in file order (those with no place first).
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a fleet file, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file; `None` for a problem that has no place in it (no
    /// VM at all, a command-line limit).
    pub at: Option<Location>,
    /// What is wrong, naming the VM or table it is in.
    pub message: String,
}

/// A place in a file, as editors count: line and column from 1, the
/// column in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// From 1.
    pub line: usize,
    /// From 1, in characters.
    pub column: usize,
}

impl Location {
    /// The place of byte `offset` of `text` (clamped to its end).
    pub fn of(text: &str, offset: usize) -> Self {
        let before = &text.as_bytes()[..offset.min(text.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Self {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            // Characters, not bytes: count the bytes that start one.
            column: before[line_start..]
                .iter()
                .filter(|&&b| b & 0xC0 != 0x80)
                .count()
                + 1,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(Location { line, column }) => write!(f, "{line}:{column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Collects the problems of one file, placing each by its byte range.
struct Problems<'t> {
    text: &'t str,
    found: Vec<Problem>,
}

impl<'t> Problems<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text,
            found: Vec::new(),
        }
    }

    /// A problem at the value or key that spans `span` in the text.
    fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.found.push(Problem {
            at: Some(Location::of(self.text, span.start)),
            message: message.into(),
        });
    }

    /// A problem with no place in the file.
    fn unplaced(&mut self, message: impl Into<String>) {
        self.found.push(Problem {
            at: None,
            message: message.into(),
        });
    }

    fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// In file order; problems found at one place keep the order found.
    fn into_sorted(mut self) -> Vec<Problem> {
        self.found.sort_by_key(|p| p.at);
        self.found
    }
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
    /// VMs of this `[[vm]]` entry kept restored ahead from its snapshot (one
    /// warm pool, shared by its replicas; counted against the budget).
    pub warm: usize,
    /// Its network device, when the fleet has a network and its image
    /// declares one: its tap on the bridge, address, MAC, rate limits.
    pub net: Option<crate::devices::NetSpec>,
    /// Its disks (`disk = [...]`, `{i}` replaced by its replica index),
    /// with `io_rate` and `iops` under each disk's own limits.
    pub disks: Vec<crate::devices::DiskSpec>,
    /// Its class in the share of `[fleet] io_budget`.
    pub io_class: crate::fleet::io::IoClass,
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
    /// The bridge and address pool of `[fleet] network`.
    pub network: Option<FleetNetwork>,
    /// `[fleet] io_budget`: bytes and requests a second shared by every
    /// VM's disks, by I/O class.
    pub io_budget: Option<crate::fleet::io::IoBudget>,
}

/// Most VMs one `[[vm]]` entry keeps warm.
pub const MAX_WARM: i64 = 64;

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

/// How problems name the `index`th `[[vm]]` entry (from 0): by its name
/// when it has one.
fn vm_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(name) => format!("vm `{name}`"),
        None => format!("[[vm]] #{}", index + 1),
    }
}

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
            ConfigError::Syntax { problem, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                problem,
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
        let doc = toml::de::DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("fleet"),
            problem: Problem {
                at: e.span().map(|s| Location::of(text, s.start)),
                message: e.message().trim_end().to_string(),
            },
        })?;
        let mut problems = Problems::new(text);
        let spec = raw::decode(doc, &mut problems)
            .and_then(|file| check::fleet(&file, base, overrides, &mut problems));
        match spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ => Err(ConfigError::Invalid {
                path: PathBuf::from("fleet"),
                problems: problems.into_sorted(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match FleetSpec::parse(text, Path::new("/nonexistent"), LimitOverrides::default()) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(e) => vec![e.to_string()],
            Ok(_) => Vec::new(),
        }
    }

    const NETWORK: &str = "[fleet]\nnetwork = { bridge = \"tdm0\", subnet = \"10.77.0.0/24\" }\n";

    #[test]
    fn a_vm_on_the_fleet_network_is_not_kept_warm() {
        let text = format!(
            "{NETWORK}[[vm]]\nname = \"web\"\nimage = \"/no/such/image\"\nsnapshot = \"nosnap\"\nwarm = 2\n"
        );
        let p = problems(&text);
        assert!(
            p.iter().any(|l| l
                == "7:8: vm `web`: `warm` pools keep VMs without devices, and this VM is on the fleet network"),
            "{p:#?}"
        );
    }

    #[test]
    fn references_to_other_vms_are_checked_at_their_place() {
        let text = format!(
            "{NETWORK}[[vm]]\nname = \"web\"\nimage = \"/no/such/image\"\n\
             [[vm]]\nname = \"db\"\nimage = \"/no/such/image\"\n\
             [[vm]]\nname = \"app\"\nimage = \"/no/such/image\"\nafter = [\"web\"]\n\
             cmdline = \"a=${{web.ip}} b=${{db.ip}} c=${{ghost.ip}}\"\n"
        );
        let p = problems(&text);
        let refs: Vec<&String> = p.iter().filter(|l| l.contains("`cmdline`")).collect();
        assert_eq!(
            refs,
            [
                "13:26: vm `app`: `cmdline`: `${db.ip}`: `db` is not in `after` (add after = [\"db\"], so that it is up first)",
                "13:37: vm `app`: `cmdline`: `${ghost.ip}` names no VM of this fleet",
            ],
            "{p:#?}"
        );
        let p = problems(&format!(
            "{NETWORK}[[vm]]\nname = \"a\"\nimage = \"/no/such/image\"\ncmdline = \"x ${{a.mac}}\"\n"
        ));
        assert!(
            p.iter()
                .any(|l| l.starts_with("6:14: vm `a`: `cmdline`: `${a.mac}` is not a reference")),
            "{p:#?}"
        );
        // Without a fleet network no VM has an address to name.
        let p = problems(
            "[[vm]]\nname = \"web\"\nimage = \"/no/such/image\"\n\
             [[vm]]\nname = \"app\"\nimage = \"/no/such/image\"\nafter = [\"web\"]\ncmdline = \"${web.ip}\"\n",
        );
        assert!(
            p.iter().any(|l| l.starts_with(
                "8:12: vm `app`: `cmdline`: `${web.ip}`: vm `web` has no network device"
            )),
            "{p:#?}"
        );
    }

    #[test]
    fn a_vms_own_limits_are_checked_at_their_place() {
        let p = problems(&format!(
            "{NETWORK}[[vm]]\nname = \"a\"\nimage = \"/no/such/image\"\nnet = {{ rate = \"fast\" }}\n"
        ));
        assert!(
            p.iter()
                .any(|l| l.starts_with("6:16: vm `a`: `net`: rate=\"fast\": 'fast' is not a size")),
            "{p:#?}"
        );
        let p = problems(&format!(
            "{NETWORK}[[vm]]\nname = \"a\"\nimage = \"/no/such/image\"\nnet = {{ pps_burst = 3 }}\n"
        ));
        assert!(
            p.iter()
                .any(|l| l.starts_with("6:7: vm `a`: `net`: pps_burst= needs pps=")),
            "{p:#?}"
        );
        let p =
            problems("[[vm]]\nname = \"a\"\nimage = \"/no/such/image\"\nnet = { rate = \"1M\" }\n");
        assert!(
            p.iter()
                .any(|l| l.starts_with("4:7: vm `a`: `net` limits need a fleet network")),
            "{p:#?}"
        );
    }

    #[test]
    fn network_tables_are_checked_at_their_place() {
        let vm = "[[vm]]\nname = \"a\"\nimage = \"/no/such/image\"\n";
        for (network, says) in [
            (
                "{ bridge = \"tdm0\" }",
                "2:11: [fleet] network: needs `bridge` and `subnet`",
            ),
            (
                "{ bridge = \"tdm0\", subnet = \"10.77.0.9/24\" }",
                "2:39: [fleet] network: `subnet`: subnet `10.77.0.9/24` has host bits set",
            ),
            (
                "{ bridge = \"no/slash\", subnet = \"10.77.0.0/24\" }",
                "2:22: [fleet] network: `bridge`: `no/slash` is not an interface name",
            ),
            (
                "{ bridge = \"tdm0\", subnet = \"10.77.0.0/24\", rate = \"10Q\" }",
                "2:62: [fleet] network: rate=\"10Q\": unknown size unit",
            ),
            (
                "{ bridge = \"tdm0\", subnet = \"10.77.0.0/24\", pps_burst = 5 }",
                "2:11: [fleet] network: pps_burst= needs pps=",
            ),
            (
                "{ bridge = \"tdm0\", subnet = \"10.77.0.0/24\", colour = 1 }",
                "2:55: [fleet]: `network`: unknown field `colour`",
            ),
        ] {
            let p = problems(&format!("[fleet]\nnetwork = {network}\n{vm}"));
            assert!(p.iter().any(|l| l.starts_with(says)), "{says}:\n{p:#?}");
        }
        // A pool too small and tap names too long, at the values.
        let p = problems(
            "[fleet]\nnetwork = { bridge = \"tdm-fleet-long\", subnet = \"10.77.0.0/30\" }\n\
             [[vm]]\nname = \"a\"\ncount = 2\nimage = \"/no/such/image\"\n",
        );
        assert!(
            p.iter().any(|l| l.starts_with(
                "2:49: [fleet] network: subnet 10.77.0.0/30 has room for 1 VMs, and 2 VMs"
            )),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|l| l
                .starts_with("2:22: [fleet] network: bridge name `tdm-fleet-long` is too long")),
            "{p:#?}"
        );
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

    fn problems_with(text: &str, overrides: LimitOverrides) -> Vec<String> {
        match FleetSpec::parse(text, Path::new("/nonexistent"), overrides) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("not refused as invalid: {other:?}"),
        }
    }

    const LIMITS: LimitOverrides = LimitOverrides {
        max_concurrent_boots: Some(2),
        memory_budget: Some(1 << 30),
    };

    #[test]
    fn every_problem_is_reported_at_its_line_and_column() {
        let text = r#"[fleet]
max_concurrent_boots = "two"

[defaults]
memory = "3M"

[[vm]]
name = "db"
image = "/no/such/db"
after = ["db", "ghost"]

[[vm]]
name = "web"
image = "/no/such/db"
count = 0
shape = "round"
restart = "sometimes"
after = ["api"]

[[vm]]
name = "api"
image = "/no/such/db"
memory = "8M"
boot_timeout = 5
after = ["web"]

[[vm]]
name = "db"
image = "/no/such/db"
memory = "8M"
"#;
        let too_little = "3 MiB of memory is too little: Tandem needs at least 6 MiB (layout 4 MiB + 2 MiB heap)";
        assert_eq!(
            problems_with(text, LIMITS),
            [
                "2:24: [fleet]: `max_concurrent_boots`: invalid type: string \"two\", expected an integer".to_string(),
                format!("5:10: vm `db`: {too_little}"),
                format!("5:10: vm `web`: {too_little}"),
                "9:9: vm `db`, `web`, `api`: cannot read image /no/such/db: No such file or directory (os error 2)".to_string(),
                "10:10: vm `db` lists itself in `after`".to_string(),
                "10:16: vm `db`: `after` names `ghost`, which is not a VM of this fleet".to_string(),
                "15:9: vm `web`: `count` = 0 is outside 1..=100000".to_string(),
                "16:1: vm `web`: unknown key `shape`".to_string(),
                "17:11: vm `web`: `restart`: \"sometimes\" is not a policy: expected \"never\", \"on-failure\" or \"always\"".to_string(),
                "24:16: vm `api`: `boot_timeout`: invalid type: integer `5`, expected a duration such as \"2s\"".to_string(),
                "25:10: dependency cycle: web -> api -> web".to_string(),
                "28:8: duplicate VM name `db` (entries #1 and #4)".to_string(),
            ]
        );
    }

    #[test]
    fn type_errors_are_placed_and_hide_nothing_else() {
        // Two type errors and an unknown key in one entry, one in another:
        // serde alone would stop at the first.
        let text = "[[vm]]\nname = \"a\"\nimage = \"/x\"\npriority = \"high\"\ncolour = 1\nmax_restarts = [3]\nafter = [\"b\", 7, \"nobody\"]\n[[vm]]\nname = \"b\"\nimage = \"/x\"\nmemory = true\n";
        let p = problems_with(text, LIMITS);
        assert_eq!(
            p,
            [
                "3:9: vm `a`, `b`: cannot read image /x: No such file or directory (os error 2)",
                "4:12: vm `a`: `priority`: invalid type: string \"high\", expected an integer",
                "5:1: vm `a`: unknown key `colour`",
                "6:16: vm `a`: `max_restarts`: invalid type: sequence, expected an integer",
                "7:15: vm `a`: `after`: invalid type: integer `7`, expected a string",
                "7:18: vm `a`: `after` names `nobody`, which is not a VM of this fleet",
                "11:10: vm `b`: `memory`: invalid type: boolean `true`, expected a size such as \"64M\"",
            ],
        );
    }

    #[test]
    fn refused_values_are_not_also_called_missing() {
        let p = problems_with("[defaults]\nimage = 5\n[[vm]]\nname = 5\n", LIMITS);
        assert_eq!(
            p,
            [
                "2:9: [defaults]: `image`: invalid type: integer `5`, expected a string",
                "4:8: [[vm]] #1: `name`: invalid type: integer `5`, expected a string",
            ]
        );
        let p = problems_with("[[vm]]\ncount = 2\n", LIMITS);
        assert_eq!(
            p,
            [
                "1:1: [[vm]] #1: missing `name`",
                "1:1: [[vm]] #1: missing `image`",
            ]
        );
    }

    #[test]
    fn tables_of_the_wrong_shape_are_placed() {
        let p = problems_with(
            "vm = [1, { name = \"x\", image = \"/x\", after = \"y\" }]\nfleet = 3\n[defaults]\nafter = []\ncount = 2\n",
            LIMITS,
        );
        assert_eq!(
            p,
            [
                "1:7: [[vm]] #1: invalid type: integer `1`, expected a table",
                "1:32: vm `x`: cannot read image /x: No such file or directory (os error 2)",
                "1:46: vm `x`: `after`: invalid type: string \"y\", expected a list of VM names",
                "2:9: [fleet]: invalid type: integer `3`, expected a table",
                "4:9: [defaults]: unknown or per-VM-only key `after`",
                "5:9: [defaults]: unknown or per-VM-only key `count`",
            ]
        );
        assert_eq!(
            problems_with("", LIMITS),
            ["the fleet has no VMs (add [[vm]] entries)"]
        );
    }

    #[test]
    fn warm_pools_need_a_snapshot_a_bound_and_room_in_the_budget() {
        let text = "[[vm]]\nname = \"a\"\nimage = \"/x\"\nwarm = 2\n[[vm]]\nname = \"b\"\nimage = \"/x\"\nsnapshot = \"nosnap\"\nwarm = 65\n[[vm]]\nname = \"c\"\nimage = \"/x\"\nmemory = \"512M\"\nsnapshot = \"nosnap\"\nwarm = 2\n";
        let p = problems_with(text, LIMITS);
        let has = |s: &str| p.iter().any(|l| l.contains(s));
        assert!(
            has("4:8: vm `a`: `warm` keeps VMs restored ahead from a `snapshot`, and it has none"),
            "{p:#?}"
        );
        assert!(has("9:8: vm `b`: `warm` = 65 is outside 0..=64"), "{p:#?}");
        assert!(
            has("warm pools hold 1024 MiB of the 1024 MiB memory budget: vm `a` (8 MiB) could never start"),
            "{p:#?}"
        );
    }

    #[test]
    fn value_rules_are_placed() {
        let long = "x".repeat(tandem_abi::bootinfo::MAX_CMDLINE + 1);
        let text = format!(
            "[[vm]]\nname = \"no spaces\"\nimage = \"/x\"\ncmdline = \"{long}\"\nboot_timeout = \"0s\"\nsnapshot = \"nosnap\"\nmax_restarts = -1\npriority = 2000000\nmemory = \"2G\"\n"
        );
        let p = problems_with(&text, LIMITS);
        let expected = [
            "2:8: vm `no spaces`: names are 1 to 64 characters",
            "3:9: vm `no spaces`: cannot read image /x",
            "4:11: vm `no spaces`: command line of",
            "5:16: vm `no spaces`: `boot_timeout` must be more than 0",
            "6:12: vm `no spaces`: snapshot /nonexistent/nosnap: ",
            "7:16: vm `no spaces`: `max_restarts` = -1 is outside 0..=1000000",
            "8:12: vm `no spaces`: `priority` = 2000000 is outside -1000000..=1000000",
            "9:10: vm `no spaces` needs 2048 MiB, more than the whole memory budget of 1024 MiB",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expected) {
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
    }

    #[test]
    fn locations_count_lines_and_characters() {
        let text = "ab\nçé = 1\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 3), Location { line: 2, column: 1 });
        // `=` is byte 8 of the text (ç and é take two bytes each), the
        // fourth character of its line.
        assert_eq!(Location::of(text, 8), Location { line: 2, column: 4 });
        assert_eq!(Location::of(text, 999), Location { line: 3, column: 1 });
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
            problems
                .iter()
                .any(|p| p.to_string().starts_with("4:10: ") && p.message.contains("memory budget")),
            "{problems:?}"
        );
    }

    #[test]
    fn syntax_errors_are_named() {
        let e = FleetSpec::parse("[[vm]\n", Path::new("/"), LimitOverrides::default());
        let Err(ConfigError::Syntax { problem, .. }) = e else {
            panic!("not a syntax error: {e:?}")
        };
        assert_eq!(
            problem.to_string(),
            "1:6: unclosed array table, expected `]`"
        );
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
