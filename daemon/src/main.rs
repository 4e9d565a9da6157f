//! `tandemd`: the Tandem VMM as a host service. A JSON REST API on a Unix
//! socket (docs/openapi.yaml; types in `tandem::api`), desired state in an
//! embedded database written before acting, VMs in worker processes that
//! outlive the daemon, re-adopted after its restart.
//!
//! ```text
//! tandemd --socket /run/tandemd.sock --state-dir /var/lib/tandemd [--group tandem] [--vms-per-worker 64]
//!         [--allow-path DIR]... [--uid-pool 60000-60999] [--cgroup-parent tandem/workers] [--worker-cpu 100%]
//! ```

mod api;
mod daemon;
mod decide;
mod events;
mod fleets;
mod http;
mod jail;
mod metrics;
mod peer;
mod proto;
mod routes;
mod server;
mod store;
mod worker;
mod workers;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// How often the daemon follows its workers.
const TICK: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(name = "tandemd", version, about = "The Tandem VMM as a host service")]
struct Cli {
    /// The API's Unix socket.
    #[arg(long, required = false)]
    socket: Option<PathBuf>,
    /// Where the state database, worker sockets and console logs live.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Members of this group may use the API (besides root and the daemon's uid);
    /// the socket is given to it with mode 0660.
    #[arg(long)]
    group: Option<String>,
    /// Most VM runs one worker process holds.
    #[arg(long, default_value_t = 64)]
    vms_per_worker: usize,
    /// Jail the workers with Landlock: they reach only the state directory,
    /// these directories (images, snapshots, backups, disks; repeatable)
    /// and /dev/kvm, /dev/net/tun; a VM naming a file elsewhere is refused.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// Each worker becomes a free uid of FIRST-LAST (the workers share the
    /// gid FIRST, given the allowed directories); implies the Landlock jail.
    #[arg(long, value_name = "FIRST-LAST")]
    uid_pool: Option<tandem::jail::UidPool>,
    /// Each worker runs in its own cgroup NAME/worker-ID, its memory.max the
    /// sum of its VMs' memory plus --worker-memory-overhead.
    #[arg(long, value_name = "NAME")]
    cgroup_parent: Option<String>,
    /// With --cgroup-parent: each worker's cpu.max, a share of one CPU (150%).
    #[arg(long, value_name = "P%", requires = "cgroup_parent")]
    worker_cpu: Option<String>,
    /// With --cgroup-parent: a worker's memory beyond its VMs' (bytes or 64M).
    #[arg(long, value_name = "SIZE", requires = "cgroup_parent")]
    worker_memory_overhead: Option<String>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// A worker process (started by the daemon).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        socket: PathBuf,
        /// Landlock: the paths it may reach.
        #[arg(long = "allow-path")]
        allow_path: Vec<PathBuf>,
        /// Its uid from this pool.
        #[arg(long)]
        uid_pool: Option<tandem::jail::UidPool>,
    },
    /// A fleet runner (started by the daemon).
    #[command(hide = true)]
    FleetRun {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    // Read before clap parses, so the generator is in no help or page.
    if let Some(dir) = tandem::docs::requested() {
        std::process::exit(tandem::docs::run(Cli::command(), "8", &dir));
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.mode {
        Some(Mode::Worker {
            ref socket,
            ref allow_path,
            ref uid_pool,
        }) => worker::main(socket, allow_path, uid_pool.as_ref()),
        Some(Mode::FleetRun { ref file, ref out }) => fleets::run(file, out),
        None => serve(cli),
    };
    if let Err(e) = result {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.socket.context("--socket is required")?;
    let state_dir = cli.state_dir.context("--state-dir is required")?;
    if cli.vms_per_worker == 0 {
        anyhow::bail!("--vms-per-worker must be at least 1");
    }
    let group = cli
        .group
        .as_deref()
        .map(peer::group_id)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("making {}", state_dir.display()))?;
    let worker_cpu = cli
        .worker_cpu
        .as_deref()
        .map(jail::parse_worker_cpu)
        .transpose()?;
    let overhead = match cli.worker_memory_overhead.as_deref() {
        Some(s) => tandem::units::parse_size(s)
            .map_err(|e| anyhow::anyhow!("--worker-memory-overhead {s}: {e}"))?,
        None => jail::DEFAULT_WORKER_OVERHEAD,
    };
    let jail = jail::JailOptions::new(
        &state_dir,
        &cli.allow_path,
        cli.uid_pool,
        cli.cgroup_parent,
        worker_cpu,
        overhead,
    )?;
    let d = Arc::new(daemon::Daemon::open(daemon::Options {
        state_dir: state_dir.clone(),
        vms_per_worker: cli.vms_per_worker,
        jail,
    })?);
    let fleets = Arc::new(fleets::Fleets::open(d.clone())?);
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(&socket, None, Some(gid))?;
    }
    {
        let d = d.clone();
        std::thread::Builder::new()
            .name("supervise".into())
            .spawn(move || loop {
                d.tick();
                std::thread::sleep(TICK);
            })?;
    }
    log::info!(
        "tandemd {} listening on {} (state in {})",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
        state_dir.display()
    );
    notify_ready(&socket);
    // SAFETY: getuid has no preconditions.
    let own_uid = unsafe { libc::getuid() };
    server::serve(listener, d, fleets, peer::Access { own_uid, group });
    Ok(())
}

/// Tells systemd (`Type=notify`) the API answers: `READY=1` (and a
/// status line) to `$NOTIFY_SOCKET`, when it is set.
fn notify_ready(socket: &std::path::Path) {
    use tandem::sd_notify::{notify, State};
    let status = format!("API on {}", socket.display());
    if let Err(e) = notify(&[State::Ready, State::Status(&status)]) {
        log::warn!("sd_notify READY=1: {e}");
    }
}
