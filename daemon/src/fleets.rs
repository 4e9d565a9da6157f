//! `/v1/fleets`: a fleet file run by the library's fleet runner in a
//! process of its own (`tandemd fleet-run`, in its own process group, so it
//! outlives the daemon as workers do), followed through the files it
//! leaves in `fleets/ID/` of the state directory: `report.json` (as
//! `tandem fleet --json`) when it is done, `error.txt` when it failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tandem::api::{
    ApiError, ApplyFleet, ErrorKind, EventKind, FleetInfo, FleetList, FleetState, FleetVm,
};
use tandem::fleet::config::{FleetSpec, LimitOverrides};

use crate::daemon::Daemon;
use crate::store::FleetRecord;

/// The report a finished fleet leaves.
pub const REPORT: &str = "report.json";
/// What a failed fleet runner leaves.
pub const ERROR: &str = "error.txt";
/// Its VMs' states, rewritten while it runs.
pub const STATUS: &str = "vms.json";
/// How often the runner rewrites [`STATUS`] (at most).
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The fleets.
pub struct Fleets {
    d: Arc<Daemon>,
    known: Mutex<BTreeMap<u64, (FleetRecord, Option<Child>)>>,
}

fn dir_of(state_dir: &Path, id: u64) -> PathBuf {
    state_dir.join("fleets").join(id.to_string())
}

impl Fleets {
    /// The fleets an earlier daemon applied, and new ones.
    pub fn open(d: Arc<Daemon>) -> anyhow::Result<Self> {
        let known = d
            .store()
            .fleets()?
            .into_iter()
            .map(|f| (f.id, (f, None)))
            .collect();
        Ok(Self {
            d,
            known: Mutex::new(known),
        })
    }

    fn info(&self, rec: &FleetRecord, child: &mut Option<Child>) -> FleetInfo {
        let dir = dir_of(self.d.state_dir(), rec.id);
        let report = std::fs::read(dir.join(REPORT))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let error = std::fs::read_to_string(dir.join(ERROR)).ok();
        let vms = std::fs::read(dir.join(STATUS))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let alive = match child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => Path::new(&format!("/proc/{}", rec.pid)).exists(),
        };
        let (state, error) = match (&report, error) {
            (Some(_), _) => (FleetState::Done, None),
            (None, Some(e)) => (FleetState::Failed, Some(e.trim().to_string())),
            (None, None) if alive => (FleetState::Running, None),
            (None, None) => (
                FleetState::Failed,
                Some("the fleet runner ended without a report".into()),
            ),
        };
        FleetInfo {
            id: rec.id,
            file: rec.file.clone(),
            state,
            pid: Some(rec.pid),
            error,
            report,
            vms,
        }
    }

    /// `GET /v1/fleets`.
    pub fn list(&self) -> FleetList {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        FleetList {
            fleets: known.values_mut().map(|(r, c)| self.info(r, c)).collect(),
        }
    }

    /// `GET /v1/fleets/ID`.
    pub fn get(&self, id: u64) -> Result<FleetInfo, ApiError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let (r, c) = known
            .get_mut(&id)
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no fleet {id}")))?;
        Ok(self.info(r, c))
    }

    /// `POST /v1/fleets`: checks the file, then starts its runner.
    pub fn apply(&self, req: ApplyFleet) -> Result<FleetInfo, ApiError> {
        use std::os::unix::process::CommandExt;
        if !req.file.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "file '{}': must be an absolute path",
                req.file
            )));
        }
        FleetSpec::load(Path::new(&req.file), LimitOverrides::default())
            .map_err(|e| ApiError::bad_request(format!("fleet file {}: {e}", req.file)))?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let id = known.keys().next_back().map_or(1, |k| k + 1);
        let dir = dir_of(self.d.state_dir(), id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("{}: {e}", dir.display())))?;
        let exe = std::env::current_exe().map_err(|e| ApiError::internal(e.to_string()))?;
        let child = Command::new(exe)
            .arg0("tandemd")
            .arg("fleet-run")
            .arg("--file")
            .arg(&req.file)
            .arg("--out")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| ApiError::internal(format!("starting the fleet runner: {e}")))?;
        let rec = FleetRecord {
            id,
            file: req.file.clone(),
            pid: child.id(),
        };
        self.d
            .store()
            .put_fleet(&rec)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.d.note(
            &format!("fleet-{id}"),
            EventKind::Fleet,
            format!("applied {}", req.file),
        );
        let mut child = Some(child);
        let info = self.info(&rec, &mut child);
        known.insert(id, (rec, child));
        Ok(info)
    }
}

/// `tandemd fleet-run`: runs the fleet file to its end and leaves its
/// report (or its error) in `out`.
pub fn run(file: &Path, out: &Path) -> anyhow::Result<()> {
    let result = FleetSpec::load(file, LimitOverrides::default())
        .map_err(anyhow::Error::from)
        .and_then(|spec| {
            let opts = tandem::fleet::runner::RunOptions {
                console_dir: Some(out.join("console")),
                ..Default::default()
            };
            let mut last: Option<std::time::Instant> = None;
            let run = tandem::fleet::runner::run(&spec, &opts, |sched, _| {
                if last.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                    last = Some(std::time::Instant::now());
                    write_status(out, sched.records());
                }
            })?;
            write_status(out, &run.vms);
            Ok(run)
        });
    match result {
        Ok(run) => {
            let json = serde_json::to_vec_pretty(&tandem::fleet::report::to_json(&run))?;
            let tmp = out.join("report.json.tmp");
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, out.join(REPORT))?;
            Ok(())
        }
        Err(e) => {
            std::fs::write(out.join(ERROR), format!("{e:#}\n"))?;
            Err(e)
        }
    }
}

/// Writes the fleet's VMs' states to [`STATUS`] (temp file, rename).
fn write_status(out: &Path, records: &[tandem::fleet::VmRecord]) {
    let vms: Vec<FleetVm> = records
        .iter()
        .map(|r| FleetVm {
            name: r.name.clone(),
            state: r.state.clone(),
            restarts: r.restarts,
            reason: r.reason.clone(),
        })
        .collect();
    let tmp = out.join("vms.json.tmp");
    let written = serde_json::to_vec(&vms)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, out.join(STATUS)));
    if let Err(e) = written {
        log::warn!("{}: {e}", out.join(STATUS).display());
    }
}
