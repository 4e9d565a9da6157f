//! The `tandem` VMM child of a task: which binary, which arguments, the
//! process that dies with the shim, the thread that waits for it, signals
//! and exit statuses, and the pid file a later shim uses to clean up.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use crate::bundle::Payload;
use crate::stdio::{StdioError, Streams};

/// Environment variable naming the `tandem` binary.
pub const TANDEM_BIN_ENV: &str = "TANDEM_BIN";
/// Environment variable naming the directory `tandem.dev/snapshot` names
/// a snapshot in.
pub const SNAPSHOT_DIR_ENV: &str = "TANDEM_SNAPSHOT_DIR";
/// The snapshot directory without `$TANDEM_SNAPSHOT_DIR`.
pub const DEFAULT_SNAPSHOT_DIR: &str = "/var/lib/tandem/snapshots";
/// File in the bundle holding the VMM's pid, for `delete` after a dead shim.
const PID_FILE: &str = "tandem.pid";
/// How long `start` waits for the VMM process to exist.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The exit status of a VMM whose end could not be told.
const UNKNOWN_EXIT: u32 = 255;

/// Why the VMM cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `$TANDEM_BIN` names no file.
    #[error("${TANDEM_BIN_ENV} = {} does not exist", .0.display())]
    BinaryMissing(PathBuf),
    /// No `tandem` anywhere the shim looks.
    #[error("cannot find the tandem binary: set ${TANDEM_BIN_ENV}, or put tandem next to the shim or on PATH")]
    NoBinary,
    /// A pod placeholder has no VM to boot.
    #[error("a pod placeholder boots no VM")]
    Placeholder,
    /// A stream of the task cannot be opened.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// fork or exec failed.
    #[error("cannot start the tandem VMM: {0}")]
    Spawn(#[source] std::io::Error),
    /// The supervising thread did not report the child in time.
    #[error("the VMM did not start within {} s", START_TIMEOUT.as_secs())]
    StartTimeout,
}

/// A signal number `kill` may send (1 to 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(i32);

impl Signal {
    /// SIGKILL.
    pub const KILL: Signal = Signal(libc::SIGKILL);

    /// The signal numbered `raw`, if it is one.
    pub fn new(raw: u32) -> Option<Signal> {
        i32::try_from(raw)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .map(Signal)
    }

    /// The exit status of a process this signal killed: 128 + its number.
    pub fn exit_status(self) -> u32 {
        128 + self.0.unsigned_abs()
    }
}

/// The exit status containerd reports for a VMM that ended with `code`
/// (the guest's exit code, which `tandem` passes on) or was killed by
/// `signal`.
pub fn exit_status(code: Option<i32>, signal: Option<i32>) -> u32 {
    match (code, signal) {
        (Some(c), _) => u32::try_from(c).unwrap_or(UNKNOWN_EXIT),
        (None, Some(sig)) => 128 + sig.unsigned_abs(),
        (None, None) => UNKNOWN_EXIT,
    }
}

fn status_of(st: ExitStatus) -> u32 {
    exit_status(st.code(), st.signal())
}

/// Sends `sig` to `pid`. The caller makes sure `pid` is a child of ours not
/// yet reaped (see `spawn_supervised`).
pub fn send_signal(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid > 0 {
        // SAFETY: kill(2) takes no pointers; the pid is our unreaped child.
        unsafe { libc::kill(pid, sig.0) };
    }
}

/// Finds the `tandem` binary: `$TANDEM_BIN`, else next to the shim, else
/// `tandem` on `PATH`.
pub fn tandem_binary() -> Result<PathBuf, VmmError> {
    let exe = std::env::current_exe().ok();
    find_tandem(
        std::env::var_os(TANDEM_BIN_ENV),
        exe.as_deref().and_then(Path::parent),
        std::env::var_os("PATH"),
    )
}

/// [`tandem_binary`] from the values it reads: `$TANDEM_BIN`, the shim's
/// directory, `$PATH`.
fn find_tandem(
    env: Option<OsString>,
    shim_dir: Option<&Path>,
    path: Option<OsString>,
) -> Result<PathBuf, VmmError> {
    if let Some(p) = env {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VmmError::BinaryMissing(p))
        };
    }
    let on_path = path.iter().flat_map(std::env::split_paths);
    shim_dir
        .map(Path::to_path_buf)
        .into_iter()
        .chain(on_path)
        .map(|dir| dir.join("tandem"))
        .find(|p| p.is_file())
        .ok_or(VmmError::NoBinary)
}

/// The directory snapshots are looked up in.
pub fn snapshot_dir() -> PathBuf {
    snapshot_dir_from(std::env::var_os(SNAPSHOT_DIR_ENV))
}

fn snapshot_dir_from(env: Option<OsString>) -> PathBuf {
    env.map_or_else(|| PathBuf::from(DEFAULT_SNAPSHOT_DIR), PathBuf::from)
}

/// The arguments of `tandem` for `payload`: `run` of its ELF (with `--net
/// net` when it has a network), or `restore` of its snapshot in
/// `snapshots`.
pub fn vm_args(payload: &Payload, snapshots: &Path, net: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(name) = &payload.snapshot {
        // The frozen VM carries its own memory and command line.
        args.extend(["restore", "--quiet", "--"].map(OsString::from));
        args.push(snapshots.join(name).into());
    } else {
        args.extend(["run", "--quiet"].map(OsString::from));
        if let Some(mem) = payload.memory {
            args.push(format!("--mem={mem}").into());
        }
        if let Some(net) = net {
            args.push(format!("--net={net}").into());
        }
        args.push(format!("--cmdline={}", payload.cmdline).into());
        args.push("--".into());
        args.push(payload.elf.clone().into());
    }
    args
}

/// The VMM command: `tandem` with `args`, in the bundle, on the task's
/// streams, killed (`PR_SET_PDEATHSIG`) when the thread that forks it ends.
pub fn command(tandem: &Path, args: &[OsString], bundle: &Path, streams: Streams) -> Command {
    let mut cmd = Command::new(tandem);
    cmd.args(args)
        .current_dir(bundle)
        .stdin(streams.stdin)
        .stdout(streams.stdout)
        .stderr(streams.stderr);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The shim may have died between fork and prctl.
            if libc::getppid().unsigned_abs() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd
}

/// Makes the child join a cgroup before it execs: it writes `0` (itself)
/// into each of `procs`, the group's `cgroup.procs` files opened by the
/// parent, so the VMM's every page is charged to the group from its first.
pub fn join_cgroup(cmd: &mut Command, procs: Vec<fs::File>) {
    let fds: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the forked child before exec and calls
    // only write(2) on descriptors the closure keeps open (it owns `procs`,
    // opened close-on-exec), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &procs;
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Starts `cmd` from a thread that lives as long as the child does (its
/// `PR_SET_PDEATHSIG` fires when the thread that forked it ends) and waits
/// for it there. `on_start(pid)` runs once the child exists, before it can
/// be reaped, so it may signal it; `on_exit(pid, exit_status)` runs once it
/// is reaped. Returns the pid.
pub fn spawn_supervised<S, E>(mut cmd: Command, on_start: S, on_exit: E) -> Result<u32, VmmError>
where
    S: FnOnce(u32) + Send + 'static,
    E: FnOnce(u32, u32) + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(VmmError::Spawn(e)));
                return;
            }
        };
        let pid = child.id();
        on_start(pid);
        let _ = tx.send(Ok(pid));
        let status = child.wait().map_or_else(
            |e| {
                log::error!("waiting for the VMM failed: {e}");
                UNKNOWN_EXIT
            },
            status_of,
        );
        on_exit(pid, status);
    });
    rx.recv_timeout(START_TIMEOUT)
        .unwrap_or(Err(VmmError::StartTimeout))
}

/// Records the VMM's pid in the bundle.
pub fn write_pid_file(bundle: &Path, pid: u32) {
    if let Err(e) = fs::write(bundle.join(PID_FILE), pid.to_string()) {
        log::warn!(
            "cannot write the VMM's pid file in {}: {e}",
            bundle.display()
        );
    }
}

/// Removes the bundle's pid file, if any.
pub fn remove_pid_file(bundle: &Path) {
    let _ = fs::remove_file(bundle.join(PID_FILE));
}

/// The pid a pid file holds, if it holds one.
fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether `exe` (a `/proc/<pid>/exe` link) is a `tandem` binary.
fn is_tandem(exe: Option<&Path>) -> bool {
    exe.and_then(Path::file_name).is_some_and(|n| n == "tandem")
}

/// Kills the VMM named in the bundle's pid file if it is still a `tandem`
/// process, and removes the file. Returns the pid it found.
pub fn kill_leftover(bundle: &Path) -> Option<u32> {
    let file = bundle.join(PID_FILE);
    let text = fs::read_to_string(&file).ok()?;
    let _ = fs::remove_file(&file);
    let pid = parse_pid(&text)?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    if is_tandem(exe.as_deref()) {
        // SAFETY: kill(2) takes no pointers; the pid is a tandem process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    u32::try_from(pid).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::TaskIo;
    use crate::testing::{fake_tandem, tmp_dir};
    use std::sync::mpsc::Receiver;

    fn payload() -> Payload {
        Payload {
            elf: PathBuf::from("/bundle/rootfs/hello"),
            name: "/hello".into(),
            cmdline: "one two MODE=fast".into(),
            memory: None,
            snapshot: None,
            net: false,
        }
    }

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn signals_are_1_to_64() {
        assert_eq!(Signal::new(0), None);
        assert_eq!(Signal::new(65), None);
        assert_eq!(Signal::new(u32::MAX), None);
        assert_eq!(Signal::new(9), Some(Signal::KILL));
        assert_eq!(Signal::new(64).map(Signal::exit_status), Some(192));
    }

    #[test]
    fn exit_status_is_the_guest_code_or_128_plus_the_signal() {
        assert_eq!(exit_status(Some(0), None), 0);
        assert_eq!(exit_status(Some(7), None), 7);
        assert_eq!(exit_status(Some(101), None), 101);
        assert_eq!(exit_status(None, Some(libc::SIGTERM)), 143);
        assert_eq!(exit_status(None, Some(libc::SIGKILL)), 137);
        assert_eq!(exit_status(None, None), UNKNOWN_EXIT);
        // One rule for a signal whether the VMM or the shim saw it.
        let term = Signal::new(15).unwrap();
        assert_eq!(term.exit_status(), exit_status(None, Some(15)));
        assert_eq!(Signal::KILL.exit_status(), 137);
    }

    #[test]
    fn run_arguments() {
        let snapshots = Path::new("/snaps");
        assert_eq!(
            strings(&vm_args(&payload(), snapshots, None)),
            [
                "run",
                "--quiet",
                "--cmdline=one two MODE=fast",
                "--",
                "/bundle/rootfs/hello"
            ]
        );
        let with_mem = Payload {
            memory: Some(32 << 20),
            cmdline: String::new(),
            ..payload()
        };
        assert_eq!(
            strings(&vm_args(&with_mem, snapshots, None)),
            [
                "run",
                "--quiet",
                "--mem=33554432",
                "--cmdline=",
                "--",
                "/bundle/rootfs/hello"
            ]
        );
        assert_eq!(
            strings(&vm_args(
                &payload(),
                snapshots,
                Some("tap=tandem0,ip=10.0.0.2/24")
            )),
            [
                "run",
                "--quiet",
                "--net=tap=tandem0,ip=10.0.0.2/24",
                "--cmdline=one two MODE=fast",
                "--",
                "/bundle/rootfs/hello"
            ]
        );
    }

    #[test]
    fn restore_arguments_ignore_the_image_options() {
        let p = Payload {
            snapshot: Some("counter-ready".into()),
            memory: Some(64 << 20),
            ..payload()
        };
        assert_eq!(
            strings(&vm_args(&p, Path::new("/snaps"), Some("tap=t"))),
            ["restore", "--quiet", "--", "/snaps/counter-ready"]
        );
    }

    #[test]
    fn snapshot_dir_defaults() {
        assert_eq!(snapshot_dir_from(None), Path::new(DEFAULT_SNAPSHOT_DIR));
        assert_eq!(snapshot_dir_from(Some("/s".into())), Path::new("/s"));
    }

    #[test]
    fn tandem_is_found_in_order() {
        let dir = tmp_dir("find-tandem");
        let (shim_dir, on_path, empty) = (dir.join("shim"), dir.join("bin"), dir.join("empty"));
        for d in [&shim_dir, &on_path, &empty] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(shim_dir.join("tandem"), b"").unwrap();
        fs::write(on_path.join("tandem"), b"").unwrap();
        let path = std::env::join_paths([&empty, &on_path]).unwrap();

        let explicit = on_path.join("tandem").into_os_string();
        assert_eq!(
            find_tandem(Some(explicit), Some(&shim_dir), None).unwrap(),
            on_path.join("tandem")
        );
        let missing = dir.join("nope");
        let err = find_tandem(Some(missing.clone().into()), Some(&shim_dir), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("$TANDEM_BIN = {} does not exist", missing.display())
        );
        assert_eq!(
            find_tandem(None, Some(&shim_dir), Some(path.clone())).unwrap(),
            shim_dir.join("tandem")
        );
        assert_eq!(
            find_tandem(None, Some(&empty), Some(path)).unwrap(),
            on_path.join("tandem")
        );
        assert!(matches!(
            find_tandem(None, Some(&empty), Some(empty.clone().into())),
            Err(VmmError::NoBinary)
        ));
        assert!(matches!(
            find_tandem(None, None, None),
            Err(VmmError::NoBinary)
        ));
    }

    #[test]
    fn pid_files() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("tandem"), None);
        assert!(is_tandem(Some(Path::new("/usr/bin/tandem"))));
        assert!(!is_tandem(Some(Path::new("/usr/bin/tandem-shim"))));
        assert!(!is_tandem(None));

        let dir = tmp_dir("pid-file");
        assert_eq!(kill_leftover(&dir), None);
        // A pid that is not a tandem process (this test) is named, not killed.
        write_pid_file(&dir, std::process::id());
        assert_eq!(kill_leftover(&dir), Some(std::process::id()));
        assert!(!dir.join(PID_FILE).exists());
        fs::write(dir.join(PID_FILE), "garbage").unwrap();
        assert_eq!(kill_leftover(&dir), None);
        assert!(!dir.join(PID_FILE).exists());
        write_pid_file(&dir, 1);
        remove_pid_file(&dir);
        assert!(!dir.join(PID_FILE).exists());
    }

    /// Runs the fake tandem with `cmdline` under `spawn_supervised`; returns
    /// its pid and where its exit status arrives.
    fn supervise(cmdline: &str, pending: Option<Signal>) -> (u32, Receiver<(u32, u32)>) {
        let tandem = fake_tandem();
        let dir = tmp_dir(&format!("supervise-{cmdline}"));
        let p = Payload {
            cmdline: cmdline.into(),
            ..payload()
        };
        let cmd = command(
            tandem,
            &vm_args(&p, &dir, None),
            &dir,
            TaskIo::default().open().unwrap(),
        );
        let (tx, rx) = mpsc::channel();
        let pid = spawn_supervised(
            cmd,
            move |pid| {
                if let Some(sig) = pending {
                    send_signal(pid, sig);
                }
            },
            move |pid, status| tx.send((pid, status)).unwrap(),
        )
        .unwrap();
        (pid, rx)
    }

    #[test]
    fn supervised_child_reports_its_exit_code() {
        let (pid, exits) = supervise("exit=7", None);
        assert_eq!(exits.recv_timeout(START_TIMEOUT).unwrap(), (pid, 7));
    }

    #[test]
    fn supervised_child_killed_by_a_signal_reports_128_plus_it() {
        let (pid, exits) = supervise("sleep", None);
        send_signal(pid, Signal::new(15).unwrap());
        assert_eq!(exits.recv_timeout(START_TIMEOUT).unwrap(), (pid, 143));
    }

    #[test]
    fn on_start_may_signal_the_child_before_it_is_reaped() {
        let (pid, exits) = supervise("sleep", Some(Signal::KILL));
        assert_eq!(exits.recv_timeout(START_TIMEOUT).unwrap(), (pid, 137));
    }

    #[test]
    fn spawn_failure_is_an_error() {
        fake_tandem();
        let dir = tmp_dir("spawn-fail");
        let cmd = command(
            &dir.join("no-such-tandem"),
            &[],
            &dir,
            TaskIo::default().open().unwrap(),
        );
        let err = spawn_supervised(cmd, |_| {}, |_, _| {}).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot start the tandem VMM: "),
            "{err}"
        );
    }
}
