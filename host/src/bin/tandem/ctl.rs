//! `tandem ctl`: drive a running `tandemd` through its API socket
//! (`tandem::api::Client`), with a human answer or, with `--json`, the
//! daemon's own JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use tandem::api::{
    ApplyFleet, Client, ClientError, CreateVm, RestartPolicy, RestoreVm, Size, SnapshotVm, StopVm,
    VmInfo,
};

/// Where the packaged unit (packaging/tandemd.service) puts the socket.
pub const DEFAULT_SOCKET: &str = "/run/tandem/tandemd.sock";
/// The variable that names another socket.
pub const SOCKET_VAR: &str = "TANDEM_SOCKET";

#[derive(Args)]
pub struct CtlArgs {
    /// The daemon's API socket [default: $TANDEM_SOCKET, else /run/tandem/tandemd.sock].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print the daemon's answer as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Create, start, stop and inspect the daemon's VMs.
    #[command(subcommand)]
    Vms(VmsCommand),
    /// Apply fleet files and follow them.
    #[command(subcommand)]
    Fleets(FleetsCommand),
    /// Whether the daemon answers: its version, VMs and workers.
    Health,
}

#[derive(Subcommand)]
enum VmsCommand {
    /// Every VM with its state.
    List,
    /// Create a VM (and start it, with --start).
    Create(CreateArgs),
    /// One VM in full.
    Get { name: String },
    /// Start a VM's run.
    Start { name: String },
    /// Ask a VM's app to stop; it is killed after the grace time.
    Stop {
        name: String,
        /// How long the app gets to stop by itself (e.g. 250ms, 5s).
        #[arg(long)]
        grace: Option<String>,
    },
    /// End a VM's run now.
    Kill { name: String },
    /// Forget a VM (a running one is killed first).
    Delete { name: String },
    /// Print the end of a VM's console log.
    Console { name: String },
    /// Write a snapshot of a running VM into DIR.
    Snapshot { name: String, dir: PathBuf },
    /// Make a VM's next run start from snapshot DIR.
    Restore { name: String, snapshot: PathBuf },
    /// A VM's events (all VMs' without NAME), after SEQ.
    Events {
        name: Option<String>,
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        since: u64,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// Its name: a-z, 0-9, -, _, . (up to 63).
    name: String,
    /// The image to boot (made absolute here; the daemon reads it).
    #[arg(long, required_unless_present = "snapshot")]
    image: Option<PathBuf>,
    /// Start from this snapshot directory instead of booting an image.
    #[arg(long, conflicts_with = "image")]
    snapshot: Option<PathBuf>,
    /// Guest memory (e.g. 64M; default 64M).
    #[arg(long)]
    mem: Option<String>,
    /// The app's command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// What happens when its run ends: never, on-failure, always.
    #[arg(long, default_value = "never", value_parser = parse_restart)]
    restart: RestartPolicy,
    /// A network device, as `tandem run --net`.
    #[arg(long, value_name = "tap=NAME[,mac=M][,ip=A/P][,gw=G]")]
    net: Option<String>,
    /// A disk, as `tandem run --disk` (repeatable).
    #[arg(long = "disk", value_name = "path=FILE[,ro]")]
    disks: Vec<String>,
    /// Write a snapshot into DIR when the app calls ready().
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Start it at once.
    #[arg(long)]
    start: bool,
}

#[derive(Subcommand)]
enum FleetsCommand {
    /// Run FLEET.toml in the daemon.
    Apply { file: PathBuf },
    /// Every fleet applied.
    List,
    /// One fleet, with its report once it is done.
    Get { id: u64 },
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("'{s}': expected never, on-failure or always"))
}

/// The socket `--socket`, `$TANDEM_SOCKET` or the default names.
fn socket(args: &CtlArgs) -> PathBuf {
    args.socket
        .clone()
        .or_else(|| std::env::var_os(SOCKET_VAR).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// A path the daemon can read wherever it runs: absolute.
fn absolute(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    Ok(abs.display().to_string())
}

/// Runs one `tandem ctl` command; the process's exit code.
pub fn run(args: CtlArgs) -> Result<u8> {
    let socket = socket(&args);
    let c = Client::new(&socket);
    let json = args.json;
    let result = match args.what {
        CtlCommand::Health => c.health().map(|h| {
            answer(json, &h, || {
                format!(
                    "tandemd {} on {}: {}, {} VMs, {} workers\n",
                    h.version,
                    socket.display(),
                    h.status,
                    h.vms,
                    h.workers
                )
            })
        }),
        CtlCommand::Vms(cmd) => vms(&c, cmd, json)?,
        CtlCommand::Fleets(cmd) => fleets(&c, cmd, json)?,
    };
    match result {
        Ok(text) => {
            print!("{text}");
            Ok(0)
        }
        Err(e) => Err(explain(e, &socket)),
    }
}

/// What to print: the JSON of `value`, or `text`.
fn answer<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> String {
    if json {
        // The daemon's own types: they serialize.
        let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
        s.push('\n');
        s
    } else {
        text()
    }
}

fn vms(c: &Client, cmd: VmsCommand, json: bool) -> Result<Result<String, ClientError>> {
    let one = |r: Result<VmInfo, ClientError>| r.map(|v| answer(json, &v, || describe(&v)));
    Ok(match cmd {
        VmsCommand::List => c.list().map(|l| answer(json, &l, || table(&l.vms))),
        VmsCommand::Create(a) => {
            let req = CreateVm {
                name: a.name,
                image: a.image.as_deref().map(absolute).transpose()?,
                memory: a.mem.map(Size::Text),
                cmdline: a.cmdline,
                restart: a.restart,
                net: a.net,
                disks: a.disks,
                snapshot: a.snapshot.as_deref().map(absolute).transpose()?,
                checkpoint: a.checkpoint.as_deref().map(absolute).transpose()?,
                start: a.start,
            };
            one(c.create(&req))
        }
        VmsCommand::Get { name } => one(c.get(&name)),
        VmsCommand::Start { name } => one(c.start(&name)),
        VmsCommand::Stop { name, grace } => one(c.stop(&name, &StopVm { grace })),
        VmsCommand::Kill { name } => one(c.kill(&name)),
        VmsCommand::Delete { name } => one(c.delete(&name)),
        VmsCommand::Console { name } => c.console(&name).map(|bytes| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            answer(
                json,
                &serde_json::json!({ "name": name, "console": text }),
                || text.clone(),
            )
        }),
        VmsCommand::Snapshot { name, dir } => {
            let req = SnapshotVm {
                dir: absolute(&dir)?,
            };
            c.snapshot(&name, &req)
                .map(|s| answer(json, &s, || format!("{}: snapshot in {}\n", s.name, s.dir)))
        }
        VmsCommand::Restore { name, snapshot } => {
            let req = RestoreVm {
                snapshot: absolute(&snapshot)?,
            };
            one(c.restore(&name, &req))
        }
        VmsCommand::Events { name, since } => c.events(name.as_deref(), since).map(|l| {
            answer(json, &l, || {
                l.events
                    .iter()
                    .map(|e| {
                        format!(
                            "{:>6}  {:<16} {:<12} {}\n",
                            e.seq,
                            e.vm,
                            wire(e.kind),
                            e.detail
                        )
                    })
                    .collect()
            })
        }),
    })
}

fn fleets(c: &Client, cmd: FleetsCommand, json: bool) -> Result<Result<String, ClientError>> {
    let line = |f: &tandem::api::FleetInfo| {
        let mut s = format!("fleet {}: {} ({})", f.id, wire(f.state), f.file);
        if let Some(e) = &f.error {
            s += &format!(": {e}");
        }
        s.push('\n');
        s
    };
    Ok(match cmd {
        FleetsCommand::Apply { file } => {
            let req = ApplyFleet {
                file: absolute(&file)?,
            };
            c.apply_fleet(&req).map(|f| answer(json, &f, || line(&f)))
        }
        FleetsCommand::List => c
            .fleets()
            .map(|l| answer(json, &l, || l.fleets.iter().map(line).collect())),
        FleetsCommand::Get { id } => c.fleet(id).map(|f| {
            answer(json, &f, || {
                let mut s = line(&f);
                if let Some(r) = &f.report {
                    s += &serde_json::to_string_pretty(r).unwrap_or_default();
                    s.push('\n');
                }
                s
            })
        }),
    })
}

/// A kebab-case enum of the API as its wire name.
fn wire<T: Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `NAME STATE DESIRED RESTARTS WORKER LAST-EXIT`, one VM a line.
fn table(vms: &[VmInfo]) -> String {
    let mut s = format!(
        "{:<24} {:<9} {:<8} {:>8} {:>8}  {}\n",
        "NAME", "STATE", "DESIRED", "RESTARTS", "WORKER", "LAST EXIT"
    );
    for v in vms {
        let worker = v
            .worker
            .as_ref()
            .map_or_else(|| "-".to_string(), |w| w.pid.to_string());
        let exit = v.last_exit.as_ref().map_or_else(
            || "-".to_string(),
            |e| match e.code {
                Some(c) => format!("{c} ({})", e.reason),
                None => e.reason.clone(),
            },
        );
        s += &format!(
            "{:<24} {:<9} {:<8} {:>8} {:>8}  {}\n",
            v.name,
            wire(v.state),
            wire(v.desired),
            v.restarts,
            worker,
            exit
        );
    }
    s
}

/// One VM, a field a line.
fn describe(v: &VmInfo) -> String {
    let mut s = format!("name:        {}\n", v.name);
    s += &format!(
        "state:       {} (desired {})\n",
        wire(v.state),
        wire(v.desired)
    );
    if let Some(i) = &v.spec.image {
        s += &format!("image:       {i}\n");
    }
    if let Some(i) = &v.spec.snapshot {
        s += &format!("snapshot:    {i}\n");
    }
    s += &format!("memory:      {} MiB\n", v.spec.memory >> 20);
    if !v.spec.cmdline.is_empty() {
        s += &format!("cmdline:     {}\n", v.spec.cmdline);
    }
    s += &format!("restart:     {}\n", wire(v.spec.restart));
    s += &format!("runs:        {} ({} restarts)\n", v.generation, v.restarts);
    if let Some(w) = &v.worker {
        s += &format!("worker:      {} (pid {})\n", w.id, w.pid);
    }
    if let Some(e) = &v.last_exit {
        let code = e.code.map_or_else(|| "-".to_string(), |c| c.to_string());
        s += &format!("last exit:   {code}: {}\n", e.reason);
    }
    s += &format!("console:     {} bytes\n", v.console_bytes);
    s
}

/// A client error in words a user can act on: no daemon, no permission,
/// or the daemon's refusal with its reason.
fn explain(e: ClientError, socket: &Path) -> anyhow::Error {
    use std::io::ErrorKind;
    match &e {
        ClientError::Io { source, .. }
            if matches!(
                source.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused
            ) =>
        {
            anyhow::anyhow!(
                "tandemd is not running at {} ({source}): start it (`systemctl start tandemd`, \
                 or `tandemd --socket PATH --state-dir DIR`) or name its socket with --socket \
                 or ${SOCKET_VAR}",
                socket.display()
            )
        }
        ClientError::Io { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
            anyhow::anyhow!(
                "may not use tandemd's socket {} ({source}): members of the daemon's group \
                 (`tandem` for the packaged unit) may",
                socket.display()
            )
        }
        ClientError::Api { status, error } => {
            anyhow::anyhow!(
                "tandemd refused (HTTP {status}, {}): {}",
                error.kind,
                error.error
            )
        }
        _ => anyhow::anyhow!("tandemd at {}: {e}", socket.display()),
    }
}
