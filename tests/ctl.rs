//! `tandem ctl` against a real `tandemd` on a private socket: a VM's
//! lifecycle through the command line (text and `--json`), the daemon's
//! refusals passed on with their reason, and a clear error when no daemon
//! runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem::api::{VmInfo, VmList, VmState};
use tandem_tests::{image_path, require_kvm, tandem_bin};

/// Generous: the machine is shared and small.
const WAIT: Duration = Duration::from_secs(60);

fn daemon_bin() -> PathBuf {
    let path = std::env::var_os("TANDEM_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tandemd"));
    assert!(
        path.is_file(),
        "the tandemd binary {} is missing: run the tests with `cargo xtask test` (or `cargo build -p tandem-daemon`)",
        path.display()
    );
    path
}

/// What one `tandem ctl` did.
struct Ctl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `tandem ctl --socket SOCKET ARGS...`.
fn ctl(socket: &Path, args: &[&str]) -> Ctl {
    let out = Command::new(tandem_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("TANDEM_SOCKET")
        .output()
        .expect("tandem runs");
    Ctl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tandem ctl` that must succeed: its stdout.
fn ok(socket: &Path, args: &[&str]) -> String {
    let r = ctl(socket, args);
    assert_eq!(
        r.code,
        Some(0),
        "tandem ctl {args:?} failed: {}{}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// A daemon of one test in its own directory; it and its workers are ended
/// when it drops.
struct Daemon {
    dir: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(test: &str) -> Self {
        require_kvm();
        let dir = std::env::temp_dir().join(format!("tandem-ctl-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(daemon_bin())
            .arg("--socket")
            .arg(dir.join("api.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tandemd");
        let d = Daemon { dir, child };
        let deadline = Instant::now() + WAIT;
        while ctl(&d.socket(), &["health"]).code != Some(0) {
            assert!(
                Instant::now() < deadline,
                "tandemd does not answer `tandem ctl health`:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `tandem ctl --json vms get NAME`, decoded.
    fn get(&self, name: &str) -> VmInfo {
        let out = ok(&self.socket(), &["--json", "vms", "get", name]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn wait_state(&self, name: &str, state: VmState) -> VmInfo {
        let deadline = Instant::now() + WAIT;
        loop {
            let vm = self.get(name);
            if vm.state == state {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became {state:?}: {vm:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers outlive the daemon by design: end this test's ones.
        for pid in processes_mentioning(&self.dir) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Processes whose command line names `dir` (this test's workers).
fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn ctl_drives_vms_through_their_lifecycle() {
    let d = Daemon::start("lifecycle");
    let s = d.socket();
    let health = ok(&s, &["health"]);
    assert!(health.contains("ok, 0 VMs"), "{health}");

    // A VM that prints and exits, created and started in one step.
    let hello = image_path("hello").display().to_string();
    let created = ok(
        &s,
        &[
            "vms", "create", "hello", "--image", &hello, "--mem", "8M", "--start",
        ],
    );
    assert!(created.contains("name:        hello"), "{created}");
    let vm = d.wait_state("hello", VmState::Exited);
    assert_eq!(
        vm.last_exit.as_ref().and_then(|e| e.code),
        Some(0),
        "{vm:#?}"
    );
    assert_eq!(vm.spec.memory, 8 << 20);
    let console = ok(&s, &["vms", "console", "hello"]);
    assert!(console.contains("Hello from Tandem!"), "{console}");

    // A service, created, then started; the list shows both.
    let service = image_path("service").display().to_string();
    let created = ok(
        &s,
        &[
            "--json", "vms", "create", "svc", "--image", &service, "--mem", "8M",
        ],
    );
    let svc: VmInfo = serde_json::from_str(&created).unwrap();
    assert_eq!(svc.state, VmState::Created);
    let table = ok(&s, &["vms", "list"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(rows, [["hello", "exited"], ["svc", "created"]], "{table}");
    let list: VmList = serde_json::from_str(&ok(&s, &["--json", "vms", "list"])).unwrap();
    assert_eq!(list.vms.len(), 2);

    ok(&s, &["vms", "start", "svc"]);
    let svc = d.wait_state("svc", VmState::Ready);
    assert!(svc.worker.is_some(), "{svc:#?}");
    // Starting it again is the daemon's 409, passed on with its reason.
    let again = ctl(&s, &["vms", "start", "svc"]);
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("HTTP 409"), "{}", again.stderr);

    // A polite stop: the app exits 0.
    ok(&s, &["vms", "stop", "svc", "--grace", "10s"]);
    let svc = d.wait_state("svc", VmState::Exited);
    assert_eq!(
        svc.last_exit.as_ref().and_then(|e| e.code),
        Some(0),
        "{svc:#?}"
    );
    // Started again and killed.
    ok(&s, &["vms", "start", "svc"]);
    d.wait_state("svc", VmState::Ready);
    ok(&s, &["vms", "kill", "svc"]);
    let svc = d.wait_state("svc", VmState::Exited);
    assert_eq!(svc.generation, 2);

    let events = ok(&s, &["vms", "events", "svc"]);
    for kind in ["created", "starting", "ready", "stopping", "exited"] {
        assert!(events.contains(kind), "no {kind} event in\n{events}");
    }

    ok(&s, &["vms", "delete", "svc"]);
    ok(&s, &["vms", "delete", "hello"]);
    let list: VmList = serde_json::from_str(&ok(&s, &["--json", "vms", "list"])).unwrap();
    assert!(list.vms.is_empty(), "{list:?}");
    let gone = ctl(&s, &["vms", "get", "svc"]);
    assert_eq!(gone.code, Some(i32::from(tandem::exit_code::VMM_ERROR)));
    assert!(
        gone.stderr.contains("HTTP 404") && gone.stderr.contains("no VM named 'svc'"),
        "{}",
        gone.stderr
    );
}

#[test]
fn ctl_passes_on_the_daemon_s_reason_for_a_bad_request() {
    let d = Daemon::start("refusals");
    let s = d.socket();
    let hello = image_path("hello").display().to_string();
    let r = ctl(
        &s,
        &["vms", "create", "a", "--image", &hello, "--mem", "3M"],
    );
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("HTTP 400") && r.stderr.contains("memory"),
        "{}",
        r.stderr
    );
    let r = ctl(&s, &["vms", "create", "Bad/Name", "--image", &hello]);
    assert!(r.stderr.contains("HTTP 400"), "{}", r.stderr);
    // The command line itself is checked before anything is sent.
    let r = ctl(
        &s,
        &[
            "vms",
            "create",
            "a",
            "--image",
            &hello,
            "--restart",
            "sometimes",
        ],
    );
    assert_eq!(r.code, Some(2), "clap's usage error: {}", r.stderr);
    assert!(r.stderr.contains("sometimes"), "{}", r.stderr);
    assert!(ctl(&s, &["--json", "vms", "list"])
        .stdout
        .contains("\"vms\": []"));
}

#[test]
fn ctl_says_when_no_daemon_runs() {
    let dir = std::env::temp_dir().join(format!("tandem-ctl-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // No socket at all, and a socket file nobody listens on (a daemon that
    // died without removing it).
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [dir.join("missing.sock"), stale] {
        let r = ctl(&socket, &["vms", "list"]);
        assert_eq!(
            r.code,
            Some(i32::from(tandem::exit_code::VMM_ERROR)),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("tandemd is not running at")
                && r.stderr.contains(&socket.display().to_string())
                && r.stderr.contains("--socket"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
