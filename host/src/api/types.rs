//! The request and response bodies. Requests refuse unknown fields (a typo
//! is a 400 naming the field, not a silently ignored option); answers only
//! grow, every new field with a default.

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{MAX_CMDLINE_LEN, MAX_DISKS, MAX_NAME_LEN};

/// What happens when a VM's run ends (the fleet's policies, by the same
/// names as in fleet files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restarted.
    #[default]
    Never,
    /// Restarted when it fails: non-zero exit, crash, protocol violation,
    /// error, its worker lost.
    OnFailure,
    /// Restarted whenever it ends, unless it was asked to stop.
    Always,
}

impl From<RestartPolicy> for crate::fleet::config::RestartPolicy {
    fn from(p: RestartPolicy) -> Self {
        match p {
            RestartPolicy::Never => Self::Never,
            RestartPolicy::OnFailure => Self::OnFailure,
            RestartPolicy::Always => Self::Always,
        }
    }
}

/// A size as a number of bytes or as text (`"64M"`, `"1G"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// `64M`, `2G`: binary units, as `--mem`.
    Text(String),
}

impl Size {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => crate::units::parse_size(t),
        }
    }
}

/// `POST /v1/vms`: a VM to create (and start, with `start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Unique name: 1 to 63 of `a-z`, `0-9`, `-`, `_`, `.`, starting with a
    /// letter or digit.
    pub name: String,
    /// The image file (an absolute path on the daemon's host). Required
    /// unless `snapshot` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Guest memory (default 64M; a multiple of 2 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// The app's command line.
    #[serde(default)]
    pub cmdline: String,
    /// What happens when its run ends.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A network device, as `tandem run --net` (`tap=NAME[,mac=..][,ip=..]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    /// Disks, each as `tandem run --disk`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// Start from this snapshot directory (a clone) instead of booting the
    /// image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Take a snapshot into this directory when the app calls `ready()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Start it at once.
    #[serde(default)]
    pub start: bool,
}

/// A [`CreateVm`] whose fields were checked (the files it names are the
/// daemon's to check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Its name.
    pub name: String,
    /// The image (none: it starts from `snapshot`).
    pub image: Option<String>,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The app's command line.
    pub cmdline: String,
    /// The restart policy.
    pub restart: RestartPolicy,
    /// `--net`, checked.
    pub net: Option<String>,
    /// `--disk`s, checked.
    pub disks: Vec<String>,
    /// The snapshot it starts from.
    pub snapshot: Option<String>,
    /// Snapshot at `ready()` into this directory.
    pub checkpoint: Option<String>,
}

/// Default guest memory of a VM created through the API.
pub const DEFAULT_MEMORY: u64 = 64 << 20;

/// Checks a VM name (it is a path segment and a file name in the state
/// directory).
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::bad_request(format!("name '{name}': {why}")));
    if name.is_empty() {
        return Err(ApiError::bad_request("name: must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only a-z, 0-9, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn check_path(field: &str, p: &str) -> Result<(), ApiError> {
    if p.is_empty() || !p.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "{field} '{p}': must be an absolute path"
        )));
    }
    if p.contains('\0') {
        return Err(ApiError::bad_request(format!("{field}: contains NUL")));
    }
    Ok(())
}

impl CreateVm {
    /// Checks every field that can be checked without the files.
    pub fn check(&self) -> Result<VmSpec, ApiError> {
        check_name(&self.name)?;
        match (&self.image, &self.snapshot) {
            (None, None) => {
                return Err(ApiError::bad_request(
                    "one of image or snapshot is required",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "image and snapshot exclude each other (a snapshot holds its image)",
                ))
            }
            _ => {}
        }
        if let Some(i) = &self.image {
            check_path("image", i)?;
        }
        if let Some(s) = &self.snapshot {
            check_path("snapshot", s)?;
        }
        if let Some(c) = &self.checkpoint {
            check_path("checkpoint", c)?;
        }
        let memory = match &self.memory {
            None => DEFAULT_MEMORY,
            Some(m) => m
                .bytes()
                .map_err(|e| ApiError::bad_request(format!("memory: {e}")))?,
        };
        crate::check_mem_size(memory).map_err(|e| ApiError::bad_request(format!("memory: {e}")))?;
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(ApiError::bad_request(format!(
                "cmdline: longer than {MAX_CMDLINE_LEN} bytes"
            )));
        }
        if let Some(n) = &self.net {
            n.parse::<crate::devices::NetSpec>()
                .map_err(|e| ApiError::bad_request(format!("net '{n}': {e}")))?;
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ApiError::bad_request(format!("disks: at most {MAX_DISKS}")));
        }
        for d in &self.disks {
            d.parse::<crate::devices::DiskSpec>()
                .map_err(|e| ApiError::bad_request(format!("disk '{d}': {e}")))?;
        }
        Ok(VmSpec {
            name: self.name.clone(),
            image: self.image.clone(),
            memory,
            cmdline: self.cmdline.clone(),
            restart: self.restart,
            net: self.net.clone(),
            disks: self.disks.clone(),
            snapshot: self.snapshot.clone(),
            checkpoint: self.checkpoint.clone(),
        })
    }
}

/// Where a VM is, as the daemon last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Created, never started.
    Created,
    /// Handed to a worker, not yet running.
    Starting,
    /// Its vCPU runs.
    Running,
    /// Running, and the app called `ready()`.
    Ready,
    /// Asked to stop, still running.
    Stopping,
    /// Its run ended: exit code 0, or stopped when asked.
    Exited,
    /// Its run failed: non-zero exit, crash, error, or its worker was lost.
    Failed,
}

impl VmState {
    /// Whether a run is in progress (a worker holds the VM).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Ready | VmState::Stopping
        )
    }
}

/// What the daemon keeps a VM at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    /// Not running (created, or stopped when asked).
    #[default]
    Stopped,
    /// Running (restarted per its policy).
    Running,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The guest's exit code, or the VMM's for a crash (see `tandem::exit_code`);
    /// none when the run never started or its worker was lost.
    pub code: Option<u8>,
    /// Whether it counts as a failure for `on-failure`.
    pub failed: bool,
    /// What happened, in words.
    pub reason: String,
}

/// The worker process a VM runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRef {
    /// The worker's number in this daemon's state directory.
    pub id: u32,
    /// Its process id.
    pub pid: u32,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub state: VmState,
    /// What the daemon keeps it at.
    pub desired: Desired,
    /// What it was created with.
    pub spec: VmSpec,
    /// Runs started by its restart policy (not by the API).
    pub restarts: u32,
    /// Runs started in all (each gets a new VM id).
    pub generation: u64,
    /// The worker holding its current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerRef>,
    /// How its last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    /// Console bytes kept from its runs.
    #[serde(default)]
    pub console_bytes: u64,
}

/// `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmList {
    /// Every VM, by name.
    pub vms: Vec<VmInfo>,
}

/// `POST /v1/vms/NAME/stop` (the body is optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopVm {
    /// How long the app gets to stop by itself (it sees the request in its
    /// `Idle` wait) before the VM is killed: `"5s"`, `"250ms"` (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

/// `POST /v1/vms/NAME/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotVm {
    /// The directory to write the snapshot into (absolute; made if missing).
    pub dir: String,
}

/// The answer to a snapshot request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The VM.
    pub name: String,
    /// Where the snapshot is.
    pub dir: String,
}

/// `POST /v1/vms/NAME/restore`: the VM's next run starts from this
/// snapshot (a running VM is stopped first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreVm {
    /// The snapshot directory.
    pub snapshot: String,
}

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A VM was created.
    Created,
    /// A run was handed to a worker.
    Starting,
    /// Its vCPU runs.
    Running,
    /// The app called `ready()`.
    Ready,
    /// A stop was asked.
    Stopping,
    /// A run ended well.
    Exited,
    /// A run failed.
    Failed,
    /// Its restart policy started it again.
    Restarted,
    /// A VM was deleted.
    Deleted,
    /// The daemon found a run of a VM in a worker after its own restart.
    Adopted,
    /// A worker process ended or stopped answering.
    WorkerLost,
    /// A snapshot was written.
    Snapshot,
    /// A fleet changed state.
    Fleet,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing from 1 in this daemon's life (`?since=SEQ` asks for later ones).
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// The VM (or fleet) it is about.
    pub vm: String,
    /// What happened.
    pub kind: EventKind,
    /// More, in words.
    #[serde(default)]
    pub detail: String,
}

/// `GET /v1/events`, `GET /v1/vms/NAME/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    /// Oldest first.
    pub events: Vec<Event>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// VMs known.
    pub vms: usize,
    /// Worker processes alive.
    pub workers: usize,
}

/// `POST /v1/fleets`: run a fleet file and follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyFleet {
    /// The fleet file (absolute path on the daemon's host).
    pub file: String,
}

/// Where a fleet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetState {
    /// Its runner is running.
    Running,
    /// The runner ended and wrote its report.
    Done,
    /// The runner failed or was lost.
    Failed,
}

/// A fleet as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetInfo {
    /// Its number.
    pub id: u64,
    /// The fleet file.
    pub file: String,
    /// Where it is.
    pub state: FleetState,
    /// The runner's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The fleet's report (as `tandem fleet --json`) once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// Its VMs as its runner last wrote them (every few hundred ms while
    /// it runs, and at its end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<FleetVm>,
}

/// One VM of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVm {
    /// Its name in the fleet.
    pub name: String,
    /// The scheduler's word for it: `pending`, `booting`, `ready`,
    /// `stopping`, `restarting`, `finished`, `failed`, `blocked`, `not-started`.
    pub state: String,
    /// Restarts done.
    #[serde(default)]
    pub restarts: u32,
    /// Why it failed or was blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/fleets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetList {
    /// Every fleet applied, oldest first.
    pub fleets: Vec<FleetInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<VmSpec, String> {
        let c: CreateVm = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.check().map_err(|e| e.error)
    }

    #[test]
    fn a_create_body_is_checked() {
        let s = body(r#"{"name":"web-1","image":"/i/hello","memory":"128M"}"#).unwrap();
        assert_eq!(s.memory, 128 << 20);
        assert_eq!(s.restart, RestartPolicy::Never);
        let s =
            body(r#"{"name":"a","image":"/i","memory":67108864,"restart":"on-failure"}"#).unwrap();
        assert_eq!((s.memory, s.restart), (64 << 20, RestartPolicy::OnFailure));
        let e = |j| body(j).unwrap_err();
        assert!(e(r#"{"name":"a","image":"/i","memroy":1}"#).contains("memroy"));
        assert!(e(r#"{"name":"A","image":"/i"}"#).contains("only a-z"));
        assert!(e(r#"{"name":"../x","image":"/i"}"#).contains("start with"));
        assert!(e(r#"{"name":"","image":"/i"}"#).contains("empty"));
        assert!(e(r#"{"name":"a"}"#).contains("image or snapshot"));
        assert!(e(r#"{"name":"a","image":"/i","snapshot":"/s"}"#).contains("exclude"));
        assert!(e(r#"{"name":"a","image":"rel"}"#).contains("absolute"));
        assert!(e(r#"{"name":"a","image":"/i","memory":"3M"}"#).contains("memory"));
        assert!(e(r#"{"name":"a","image":"/i","memory":"lots"}"#).contains("memory"));
        assert!(e(r#"{"name":"a","image":"/i","restart":"sometimes"}"#).contains("sometimes"));
        assert!(e(r#"{"name":"a","image":"/i","net":"mac=zz"}"#).contains("net"));
        assert!(body(r#"{"name":"a","image":"/i","memory":-1}"#).is_err());
        assert!(e(&format!(r#"{{"name":"{}","image":"/i"}}"#, "a".repeat(64))).contains("longer"));
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(ApiError::bad_request("x").status(), 400);
        assert_eq!(ApiError::no_vm("x").status(), 404);
        let j = serde_json::to_string(&ApiError::no_vm("web")).unwrap();
        assert_eq!(j, r#"{"kind":"not-found","error":"no VM named 'web'"}"#);
    }
}
