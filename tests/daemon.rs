//! `tandemd`, the Tandem host daemon, started by each test on a private
//! socket in a temporary directory and driven over HTTP (`tandem::api`'s
//! client, and `curl` where another uid must knock): the lifecycle of a VM,
//! refusals (400, 403, 404, 405, 409, 413), a daemon killed with SIGKILL and
//! started again finding its VMs still running in their workers, a worker
//! killed whose VMs follow their restart policy while other workers' VMs
//! run on, restores and clones from a snapshot, fleets, and `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem::api::{
    ApplyFleet, Client, ClientError, CreateVm, EventKind, FleetState, RestartPolicy, RestoreVm,
    Size, SnapshotVm, StopVm, VmInfo, VmState,
};
use tandem_tests::{image_path, require_kvm, require_tool};

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

/// A daemon of one test, with its directory; everything it started is
/// ended when it drops.
struct Daemon {
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, PathBuf)>,
    child: Option<Child>,
}

impl Daemon {
    fn start(test: &str, args: &[&str]) -> Self {
        let d = Self::prepare(test, args);
        d.spawned()
    }

    /// The daemon's directory made, the daemon not yet started.
    fn prepare(test: &str, args: &[&str]) -> Self {
        require_kvm();
        let dir = std::env::temp_dir().join(format!("tandemd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Daemon {
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
        }
    }

    fn spawned(mut self) -> Self {
        self.spawn();
        self
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon process (again) and waits until it answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(daemon_bin())
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tandemd");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.client().health().is_err() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("tandemd ended ({status}) before answering:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "tandemd does not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> Client {
        Client::new(self.socket())
    }

    /// SIGKILL, as an OOM kill or a crash would.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn create(&self, name: &str, app: &str, cmdline: &str, restart: RestartPolicy) -> VmInfo {
        self.client()
            .create(&CreateVm {
                name: name.into(),
                image: Some(image_path(app).display().to_string()),
                memory: Some(Size::Text("8M".into())),
                cmdline: cmdline.into(),
                restart,
                start: true,
                ..CreateVm::default()
            })
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", self.log()))
    }

    /// Waits until `name` passes `ok`, failing with its last state.
    fn wait_vm(&self, name: &str, what: &str, ok: impl Fn(&VmInfo) -> bool) -> VmInfo {
        let deadline = Instant::now() + WAIT;
        loop {
            let vm = self.client().get(name).unwrap();
            if ok(&vm) {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never {what}: {vm:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_state(&self, name: &str, state: VmState) -> VmInfo {
        self.wait_vm(name, &format!("became {state:?}"), |v| v.state == state)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
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

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn worker_pid(vm: &VmInfo) -> u32 {
    vm.worker
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no worker: {vm:#?}", vm.name))
        .pid
}

fn up(v: &VmInfo) -> bool {
    v.state == VmState::Ready
}

#[test]
fn lifecycle_create_list_start_console_stop_delete() {
    let d = Daemon::start("lifecycle", &[]);
    let c = d.client();
    assert_eq!(c.health().unwrap().status, "ok");

    // A VM that prints and exits; its console is kept.
    let hello = d.create("hello", "hello", "", RestartPolicy::Never);
    assert_eq!(hello.spec.memory, 8 << 20);
    let hello = d.wait_state("hello", VmState::Exited);
    assert_eq!(
        hello.last_exit.as_ref().and_then(|e| e.code),
        Some(0),
        "{hello:#?}"
    );
    let console = String::from_utf8(c.console("hello").unwrap()).unwrap();
    assert!(console.contains("Hello from Tandem!"), "{console}");

    // A VM that runs until it is asked to stop, created then started.
    let svc = c
        .create(&CreateVm {
            name: "svc".into(),
            image: Some(image_path("service").display().to_string()),
            memory: Some(Size::Bytes(8 << 20)),
            ..CreateVm::default()
        })
        .unwrap();
    assert_eq!(svc.state, VmState::Created);
    let names: Vec<(String, VmState)> = c
        .list()
        .unwrap()
        .vms
        .into_iter()
        .map(|v| (v.name, v.state))
        .collect();
    assert_eq!(
        names,
        vec![
            ("hello".to_string(), VmState::Exited),
            ("svc".to_string(), VmState::Created)
        ]
    );
    assert_eq!(c.start("svc").unwrap().state, VmState::Starting);
    let svc = d.wait_vm("svc", "became ready", up);
    assert!(alive(worker_pid(&svc)));
    // Starting a running VM is a conflict.
    match c.start("svc") {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("{other:?}"),
    }

    // A polite stop: the app sees it in its Idle wait and exits 0.
    c.stop("svc", &StopVm::default()).unwrap();
    let svc = d.wait_state("svc", VmState::Exited);
    assert_eq!(
        svc.last_exit.as_ref().and_then(|e| e.code),
        Some(0),
        "{svc:#?}"
    );
    assert!(svc.worker.is_none());

    // Its events, in order (`running` only when the daemon looked between
    // the vCPU's start and the app's ready(), which is quick).
    let kinds: Vec<EventKind> = c
        .events(Some("svc"), 0)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| *k != EventKind::Running)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Created,
            EventKind::Starting,
            EventKind::Ready,
            EventKind::Stopping,
            EventKind::Exited
        ]
    );

    // Started again, killed, deleted.
    c.start("svc").unwrap();
    d.wait_vm("svc", "became ready again", up);
    c.kill("svc").unwrap();
    let svc = d.wait_state("svc", VmState::Exited);
    assert_eq!(svc.generation, 2);
    c.delete("svc").unwrap();
    c.delete("hello").unwrap();
    assert!(c.list().unwrap().vms.is_empty());
    match c.get("svc") {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_bodies_and_unknown_names_are_refused_with_their_reason() {
    let d = Daemon::start("refusals", &[]);
    let c = d.client();
    let hello = image_path("hello").display().to_string();
    let post = |path: &str, body: &str| {
        let r = c.raw("POST", path, Some(body.as_bytes())).unwrap();
        let text = String::from_utf8_lossy(&r.body).to_string();
        (r.status, text)
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "body"),
        ("{}".into(), 400, "name"),
        (
            format!(r#"{{"name":"a","image":"{hello}","memroy":"8M"}}"#),
            400,
            "memroy",
        ),
        (
            format!(r#"{{"name":"a","image":"{hello}","memory":"3M"}}"#),
            400,
            "memory",
        ),
        (
            format!(r#"{{"name":"a","image":"{hello}","memory":"8Q"}}"#),
            400,
            "memory",
        ),
        (
            format!(r#"{{"name":"Bad/Name","image":"{hello}"}}"#),
            400,
            "name",
        ),
        (
            r#"{"name":"a","image":"/no/such/image"}"#.into(),
            400,
            "no such file",
        ),
        (
            format!(r#"{{"name":"a","image":"{hello}","restart":"sometimes"}}"#),
            400,
            "sometimes",
        ),
        (
            format!(r#"{{"name":"a","image":"{hello}","net":"mac=zz"}}"#),
            400,
            "net",
        ),
        (
            r#"{"name":"a","snapshot":"/no/such/snapshot"}"#.into(),
            400,
            "no such directory",
        ),
    ];
    for (body, status, says) in &cases {
        let (got, text) = post("/v1/vms", body);
        assert_eq!(got, *status, "{body} -> {text}");
        assert!(
            text.contains("bad-request") && text.contains(says),
            "{body} -> {text}"
        );
    }
    // Nothing was created by the refused bodies.
    assert!(c.list().unwrap().vms.is_empty());

    let status = |m: &str, p: &str| c.raw(m, p, None).unwrap().status;
    assert_eq!(status("GET", "/v1/vms/nope"), 404);
    assert_eq!(status("POST", "/v1/vms/nope/start"), 404);
    assert_eq!(status("POST", "/v1/vms/nope/stop"), 404);
    assert_eq!(status("DELETE", "/v1/vms/nope"), 404);
    assert_eq!(status("GET", "/v1/vms/nope/console"), 404);
    assert_eq!(status("GET", "/v2/things"), 404);
    assert_eq!(status("GET", "/v1/fleets/9"), 404);
    assert_eq!(status("PUT", "/v1/vms"), 405);
    assert_eq!(status("GET", "/v1/vms/nope/start"), 405);
    assert_eq!(status("GET", "/v1/vms/UPPER"), 400);
    assert_eq!(status("GET", "/v1/events?since=x"), 400);
    assert_eq!(status("POST", "/v1/vms"), 400);

    // A name taken is a conflict.
    let body = format!(r#"{{"name":"a","image":"{hello}","memory":"8M"}}"#);
    assert_eq!(post("/v1/vms", &body).0, 201);
    let (got, text) = post("/v1/vms", &body);
    assert_eq!(got, 409, "{text}");
    // A stop body with a bad grace.
    let (got, text) = post("/v1/vms/a/stop", r#"{"grace":"soon"}"#);
    assert_eq!(got, 400, "{text}");

    // A body over the limit is refused before it is read; a chunked one too.
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "POST /v1/vms HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    write!(
        s,
        "POST /v1/vms HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    // Garbage is a 400, and the daemon answers on.
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(c.health().unwrap().vms, 1);
}

/// `curl` as uid/gid 65534 (nobody/nogroup) with no supplementary groups:
/// the HTTP status it gets for `GET /v1/vms`.
fn status_as_nobody(socket: &Path) -> String {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://tandemd/v1/vms")
        .output()
        .expect("run setpriv curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_peer_with_another_uid_is_refused_and_the_allowed_group_is_served() {
    require_tool("curl", "curl");
    require_tool("setpriv", "util-linux");
    use std::os::unix::fs::PermissionsExt;
    let open_up = |d: &Daemon| {
        // The socket's mode would keep nobody out before the daemon could
        // check it: open it, so the uid check is what refuses.
        std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    };
    let d = Daemon::start("peer", &[]);
    open_up(&d);
    assert_eq!(status_as_nobody(&d.socket()), "403", "{}", d.log());
    assert!(d.log().contains("refused uid 65534"), "{}", d.log());
    // Root (this test) is served.
    assert!(d.client().list().is_ok());
    drop(d);

    let d = Daemon::start("peer-group", &["--group", "nogroup"]);
    open_up(&d);
    assert_eq!(status_as_nobody(&d.socket()), "200", "{}", d.log());
}

#[test]
fn a_daemon_killed_with_sigkill_finds_its_vms_running_after_its_restart() {
    let mut d = Daemon::start("sigkill", &["--vms-per-worker", "1"]);
    // One worker each (--vms-per-worker 1).
    d.create("steady", "service", "", RestartPolicy::Never);
    d.create("phoenix", "service", "", RestartPolicy::Always);
    let steady = d.wait_vm("steady", "became ready", up);
    let phoenix = d.wait_vm("phoenix", "became ready", up);
    let (steady_pid, phoenix_pid) = (worker_pid(&steady), worker_pid(&phoenix));
    assert_ne!(steady_pid, phoenix_pid);

    d.kill9();
    // The workers outlive the daemon.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(steady_pid) && alive(phoenix_pid));
    // While the daemon is away, phoenix's worker dies.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(phoenix_pid as i32, libc::SIGKILL) };

    d.spawn();
    let c = d.client();
    let names: Vec<String> = c.list().unwrap().vms.into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["phoenix", "steady"]);
    // steady was adopted: the same run in the same worker.
    let steady = c.get("steady").unwrap();
    assert_eq!(
        (steady.state, steady.generation, worker_pid(&steady)),
        (VmState::Ready, 1, steady_pid),
        "{steady:#?}"
    );
    let adopted = c.events(Some("steady"), 0).unwrap().events;
    assert!(
        adopted.iter().any(|e| e.kind == EventKind::Adopted),
        "{adopted:#?}"
    );
    // phoenix died meanwhile: restarted by its policy, in a new worker.
    let phoenix = d.wait_vm("phoenix", "was restarted", |v| v.restarts == 1 && up(v));
    assert_ne!(worker_pid(&phoenix), phoenix_pid);
    assert!(
        phoenix.last_exit.as_ref().is_some_and(|e| e.failed),
        "{phoenix:#?}"
    );

    // Both stoppable through the new daemon.
    c.stop("steady", &StopVm::default()).unwrap();
    c.stop("phoenix", &StopVm::default()).unwrap();
    let steady = d.wait_state("steady", VmState::Exited);
    let phoenix = d.wait_state("phoenix", VmState::Exited);
    assert_eq!(steady.last_exit.and_then(|e| e.code), Some(0));
    // Asked to stop: not restarted, whatever the policy.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get("phoenix").unwrap().generation, phoenix.generation);
    assert_eq!(c.get("phoenix").unwrap().state, VmState::Exited);
}

#[test]
fn a_killed_worker_s_vms_follow_their_policy_and_other_workers_run_on() {
    let d = Daemon::start("worker-kill", &["--vms-per-worker", "2"]);
    let c = d.client();
    d.create("a-always", "service", "", RestartPolicy::Always);
    d.wait_vm("a-always", "became ready", up);
    d.create("a-never", "service", "", RestartPolicy::Never);
    d.wait_vm("a-never", "became ready", up);
    d.create("b-never", "service", "", RestartPolicy::Never);
    let b = d.wait_vm("b-never", "became ready", up);
    let a1 = c.get("a-always").unwrap();
    let a2 = c.get("a-never").unwrap();
    // Two VMs a worker at most: a-* share one, b-never has its own.
    assert_eq!(worker_pid(&a1), worker_pid(&a2));
    assert_ne!(worker_pid(&a1), worker_pid(&b));
    let (killed, other) = (worker_pid(&a1), worker_pid(&b));

    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(killed as i32, libc::SIGKILL) };

    let a2 = d.wait_state("a-never", VmState::Failed);
    let why = &a2.last_exit.as_ref().unwrap().reason;
    assert!(
        why.contains("worker") && why.contains(&killed.to_string()),
        "{why}"
    );
    let a1 = d.wait_vm("a-always", "was restarted", |v| v.restarts == 1 && up(v));
    assert_ne!(worker_pid(&a1), killed);
    let events = c.events(Some("a-always"), 0).unwrap().events;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Restarted),
        "{events:#?}"
    );
    // The other worker's VM never noticed.
    let b = c.get("b-never").unwrap();
    assert_eq!(
        (b.state, b.generation, b.restarts, worker_pid(&b)),
        (VmState::Ready, 1, 0, other)
    );
    assert!(alive(other));
    // a-never stays down: its policy is never.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get("a-never").unwrap().state, VmState::Failed);
    c.kill("a-always").unwrap();
    c.kill("b-never").unwrap();
    d.wait_state("a-always", VmState::Exited);
    d.wait_state("b-never", VmState::Exited);
}

#[test]
fn a_crashing_vm_is_restarted_on_failure_and_a_clean_exit_is_not() {
    let d = Daemon::start("policy", &[]);
    let c = d.client();
    d.create(
        "crashy",
        "service",
        "crash-after-ms=10",
        RestartPolicy::OnFailure,
    );
    d.wait_vm("crashy", "was restarted twice", |v| v.restarts >= 2);
    let events = c.events(Some("crashy"), 0).unwrap().events;
    // The app panics: the guest's panic exit code, a failure.
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Failed && e.detail.contains("code 101")),
        "{events:#?}"
    );
    c.kill("crashy").unwrap();
    d.wait_vm("crashy", "ended", |v| !v.state.is_active());

    d.create("done", "service", "exit=0", RestartPolicy::OnFailure);
    let done = d.wait_state("done", VmState::Exited);
    std::thread::sleep(Duration::from_millis(500));
    let again = c.get("done").unwrap();
    assert_eq!(
        (again.state, again.generation, again.restarts),
        (VmState::Exited, 1, 0),
        "{done:#?}"
    );
}

#[test]
fn a_vm_restored_and_cloned_from_its_ready_checkpoint() {
    let d = Daemon::start("restore", &[]);
    let c = d.client();
    let snap = d.dir.join("snap");
    c.create(&CreateVm {
        name: "base".into(),
        image: Some(image_path("service").display().to_string()),
        memory: Some(Size::Text("8M".into())),
        checkpoint: Some(snap.display().to_string()),
        start: true,
        ..CreateVm::default()
    })
    .unwrap();
    d.wait_vm("base", "became ready", up);
    let deadline = Instant::now() + WAIT;
    while !snap.join("state").exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint in {}:\n{}",
            snap.display(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A clone: a new VM from the snapshot (it runs on from after ready()).
    let clone = c
        .create(&CreateVm {
            name: "clone".into(),
            snapshot: Some(snap.display().to_string()),
            start: true,
            ..CreateVm::default()
        })
        .unwrap();
    assert!(clone.spec.image.is_none());
    d.wait_state("clone", VmState::Running);
    // base itself brought back to its checkpoint.
    let base = c
        .restore(
            "base",
            &RestoreVm {
                snapshot: snap.display().to_string(),
            },
        )
        .unwrap();
    assert_eq!(base.generation, 2);
    d.wait_vm("base", "ran from its snapshot", |v| {
        v.state == VmState::Running && v.generation == 2
    });
    for name in ["base", "clone"] {
        c.stop(name, &StopVm::default()).unwrap();
        let vm = d.wait_state(name, VmState::Exited);
        assert_eq!(vm.last_exit.and_then(|e| e.code), Some(0), "{name}");
    }
    let restores = c.raw("GET", "/metrics", None).unwrap();
    let page = tandem::metrics::parse::parse(&String::from_utf8_lossy(&restores.body)).unwrap();
    assert_eq!(
        page.value("tandem_vm_restores_total", &[("vm", "clone")]),
        Some(1.0)
    );
    assert_eq!(
        page.value("tandem_vm_restores_total", &[("vm", "base")]),
        Some(1.0)
    );
}

#[test]
fn a_fleet_applied_through_the_api_runs_to_its_report() {
    let d = Daemon::start("fleet", &[]);
    let c = d.client();
    let file = d.dir.join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "[defaults]\nimage = \"{}\"\nmemory = \"8M\"\nboot_timeout = \"20s\"\n\n[[vm]]\nname = \"job\"\ncount = 3\ncmdline = \"init-ms=2 exit=0\"\n",
            image_path("service").display()
        ),
    )
    .unwrap();
    // A file that does not check is refused with its problem.
    let bad = d.dir.join("bad.toml");
    std::fs::write(&bad, "[[vm]]\nname = \"x\"\nimage = \"/no/such\"\n").unwrap();
    match c.apply_fleet(&ApplyFleet {
        file: bad.display().to_string(),
    }) {
        Err(ClientError::Api { status: 400, error }) => {
            assert!(error.error.contains("fleet file"), "{error:?}")
        }
        other => panic!("{other:?}"),
    }
    let f = c
        .apply_fleet(&ApplyFleet {
            file: file.display().to_string(),
        })
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let done = loop {
        let info = c.fleet(f.id).unwrap();
        if info.state != FleetState::Running {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet never ended: {info:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done.state, FleetState::Done, "{done:?}");
    let report = done.report.unwrap();
    assert_eq!(report["vms"].as_array().map(Vec::len), Some(3), "{report}");
    // Its VMs, by name, as the runner left them.
    let vms: Vec<(String, String)> = done
        .vms
        .iter()
        .map(|v| (v.name.clone(), v.state.clone()))
        .collect();
    assert_eq!(vms.len(), 3, "{vms:?}");
    assert!(
        vms.iter()
            .all(|(n, s)| n.starts_with("job") && s == "finished"),
        "{vms:?}"
    );
    assert_eq!(c.fleets().unwrap().fleets.len(), 1);
}

#[test]
fn the_metrics_page_parses_as_prometheus_text() {
    let d = Daemon::start("metrics", &[]);
    let c = d.client();
    d.create("hello", "hello", "", RestartPolicy::Never);
    d.wait_state("hello", VmState::Exited);
    let r = c.raw("GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.content_type.as_deref(),
        Some(tandem::metrics::CONTENT_TYPE)
    );
    let text = String::from_utf8(r.body).unwrap();
    let page = tandem::metrics::parse::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        page.value(
            "tandem_vm_runs_total",
            &[("vm", "hello"), ("outcome", "exited_ok")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        page.value("tandemd_vm_starts_total", &[("vm", "hello")]),
        Some(1.0)
    );
    assert_eq!(page.value("tandemd_vms", &[("state", "exited")]), Some(1.0));
    assert!(
        page.value("tandem_vm_console_bytes_total", &[("vm", "hello")])
            .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    assert!(
        page.value(
            "tandem_vm_boot_phase_seconds_count",
            &[("vm", "hello"), ("phase", "app_main")]
        ) == Some(1.0),
        "{text}"
    );
}

#[test]
fn a_running_vm_is_snapshotted_on_request_and_runs_on() {
    let d = Daemon::start("live-snapshot", &[]);
    let c = d.client();
    d.create("live", "service", "", RestartPolicy::Never);
    d.wait_vm("live", "became ready", up);
    let snap = d.dir.join("live-snap");
    // The app waits in the host (Idle): the request wakes it for the snapshot.
    let info = c
        .snapshot(
            "live",
            &SnapshotVm {
                dir: snap.display().to_string(),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert_eq!(info.dir, snap.display().to_string());
    assert!(
        snap.join("state").is_file(),
        "no snapshot in {}",
        snap.display()
    );
    // It runs on, in the same run.
    let live = c.get("live").unwrap();
    assert_eq!((live.state, live.generation), (VmState::Ready, 1));
    let events = c.events(Some("live"), 0).unwrap().events;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Snapshot),
        "{events:#?}"
    );
    // A clone of it runs, and stops when asked.
    c.create(&CreateVm {
        name: "copy".into(),
        snapshot: Some(snap.display().to_string()),
        start: true,
        ..CreateVm::default()
    })
    .unwrap();
    d.wait_state("copy", VmState::Running);
    for name in ["live", "copy"] {
        c.stop(name, &StopVm::default()).unwrap();
        let vm = d.wait_state(name, VmState::Exited);
        assert_eq!(vm.last_exit.and_then(|e| e.code), Some(0), "{name}");
    }
    // Not running: a conflict; a relative directory: a bad request.
    match c.snapshot(
        "live",
        &SnapshotVm {
            dir: snap.display().to_string(),
        },
    ) {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("{other:?}"),
    }
    match c.snapshot("live", &SnapshotVm { dir: "rel".into() }) {
        Err(ClientError::Api { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
    let page = c.raw("GET", "/metrics", None).unwrap();
    let page = tandem::metrics::parse::parse(&String::from_utf8_lossy(&page.body)).unwrap();
    assert_eq!(
        page.value(
            "tandem_vm_snapshots_total",
            &[("vm", "live"), ("result", "ok")]
        ),
        Some(1.0)
    );
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_once_the_api_answers() {
    let mut d = Daemon::prepare("notify", &[]);
    let path = d.dir.join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    d.env.push(("NOTIFY_SOCKET".into(), path));
    let d = d.spawned();
    let mut buf = [0u8; 512];
    let n = systemd
        .recv(&mut buf)
        .expect("no notification from tandemd");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Sent once the API answers: it does.
    assert_eq!(d.client().health().unwrap().status, "ok");
}

// The workers' jail: --allow-path, --uid-pool, --cgroup-parent.

/// A daemon with `args` whose `images` directory (allowed with
/// `--allow-path`) holds copies of the `service` and `hello` apps.
fn jailed_daemon(test: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let mut d = Daemon::prepare(test, &[]);
    let images = d.dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for app in ["service", "hello"] {
        std::fs::copy(image_path(app), images.join(app)).unwrap();
    }
    d.args = vec!["--allow-path".into(), images.display().to_string()];
    d.args.extend(args.iter().map(|s| s.to_string()));
    (d.spawned(), images)
}

fn create_from(d: &Daemon, name: &str, image: &Path) -> Result<VmInfo, ClientError> {
    d.client().create(&CreateVm {
        name: name.into(),
        image: Some(image.display().to_string()),
        memory: Some(Size::Text("8M".into())),
        start: true,
        ..CreateVm::default()
    })
}

#[test]
fn a_jailed_daemon_runs_images_inside_its_allowed_paths_and_refuses_others() {
    let (d, images) = jailed_daemon("jail-paths", &[]);
    create_from(&d, "inside", &images.join("service"))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    d.wait_vm("inside", "became ready", up);
    // Outside the allowed paths: refused before any worker sees it.
    let outside = image_path("service");
    match create_from(&d, "outside", &outside) {
        Err(ClientError::Api { status: 400, error }) => assert!(
            error.error.contains(&outside.display().to_string()),
            "the refusal names the image: {}",
            error.error
        ),
        other => panic!("an image outside the allowed paths: {other:?}"),
    }
    // `..` does not lead out either.
    let mut sneaky = images.clone();
    for _ in 1..images.components().count() {
        sneaky.push("..");
    }
    let sneaky = sneaky.join(outside.strip_prefix("/").unwrap());
    assert!(sneaky.is_file(), "{} leads to the image", sneaky.display());
    match create_from(&d, "sneaky", &sneaky) {
        Err(ClientError::Api { status: 400, .. }) => {}
        other => panic!("an image reached through ..: {other:?}"),
    }
    assert!(d.client().get("outside").is_err() && d.client().get("sneaky").is_err());
    // The VM inside stops cleanly.
    d.client().stop("inside", &StopVm::default()).unwrap();
    let vm = d.wait_state("inside", VmState::Exited);
    assert_eq!(vm.last_exit.and_then(|e| e.code), Some(0));
}

#[test]
fn landlock_refuses_a_snapshot_into_a_forbidden_directory_and_the_vm_runs_on() {
    let (d, images) = jailed_daemon("jail-landlock", &[]);
    let c = d.client();
    create_from(&d, "live", &images.join("service")).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    d.wait_vm("live", "became ready", up);
    // The daemon's own directory, but neither the state directory nor an
    // allowed one: the worker's Landlock refuses it.
    let forbidden = d.dir.join("forbidden");
    std::fs::create_dir_all(&forbidden).unwrap();
    let snap = forbidden.join("snap");
    match c.snapshot(
        "live",
        &SnapshotVm {
            dir: snap.display().to_string(),
        },
    ) {
        Err(ClientError::Api { status, error }) => {
            assert!((400..600).contains(&status), "{status}");
            assert!(
                error.error.contains(&snap.display().to_string()),
                "the error names the directory: {}",
                error.error
            );
        }
        other => panic!(
            "a snapshot into a forbidden directory: {other:?}\n{}",
            d.log()
        ),
    }
    assert!(!snap.join("state").exists(), "nothing was written there");
    // The VM runs on, in the same run, and a snapshot where it may works.
    let live = c.get("live").unwrap();
    assert_eq!(
        (live.state, live.generation),
        (VmState::Ready, 1),
        "{live:#?}"
    );
    let allowed = images.join("snap");
    c.snapshot(
        "live",
        &SnapshotVm {
            dir: allowed.display().to_string(),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(allowed.join("state").is_file());
    c.stop("live", &StopVm::default()).unwrap();
    let vm = d.wait_state("live", VmState::Exited);
    assert_eq!(vm.last_exit.and_then(|e| e.code), Some(0));
}

/// The uid a process runs as (its real uid, from /proc/PID/status).
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in {status}"))
}

#[test]
fn a_worker_of_a_uid_pool_runs_as_a_pool_uid_and_its_vms_boot() {
    let (d, images) = jailed_daemon("jail-uid", &["--uid-pool", "60500-60509"]);
    let c = d.client();
    create_from(&d, "pooled", &images.join("service"))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let vm = d.wait_vm("pooled", "became ready", up);
    let uid = uid_of(worker_pid(&vm));
    assert!(
        (60500..=60509).contains(&uid),
        "the worker runs as uid {uid}"
    );
    // It snapshots into an allowed directory (given to the workers' group).
    let snap = images.join("pooled-snap");
    c.snapshot(
        "pooled",
        &SnapshotVm {
            dir: snap.display().to_string(),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(snap.join("state").is_file());
    c.stop("pooled", &StopVm::default()).unwrap();
    let vm = d.wait_state("pooled", VmState::Exited);
    assert_eq!(
        vm.last_exit.clone().and_then(|e| e.code),
        Some(0),
        "{vm:#?}"
    );
    // The console, written by the pool uid through the workers' group.
    create_from(&d, "hello", &images.join("hello")).unwrap();
    d.wait_state("hello", VmState::Exited);
    let console = String::from_utf8_lossy(&c.console("hello").unwrap()).to_string();
    assert!(
        console.contains("Hello from Tandem!"),
        "console {console:?}\n{}",
        d.log()
    );
}

/// A limit of `pid`'s cgroup: `v1` of the controller's v1 group, else `v2`
/// of its v2 group.
fn cgroup_limit(pid: u32, controller: &str, v1: &str, v2: &str) -> String {
    use tandem::cgroup::{Cgroups, Version};
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroups = Cgroups::detect().expect("a cgroup hierarchy");
    let (file, path) = match cgroups.version() {
        Version::V1 => (
            v1,
            membership.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                ctl.split(',').any(|c| c == controller).then_some(path)
            }),
        ),
        Version::V2 => (v2, membership.lines().find_map(|l| l.strip_prefix("0::"))),
    };
    let path = path.unwrap_or_else(|| panic!("no {controller} group in {membership}"));
    let group = cgroups
        .open(path.trim_start_matches('/'))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let dir = group.controller_dir(controller).expect("controller dir");
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

#[test]
fn each_worker_s_cgroup_limits_its_memory_to_its_vms_plus_its_overhead() {
    let parent = format!("tandem-test/workers-{}", std::process::id());
    let (d, images) = jailed_daemon(
        "jail-cgroup",
        &[
            "--cgroup-parent",
            &parent,
            "--worker-cpu",
            "50%",
            "--worker-memory-overhead",
            "32M",
            "--vms-per-worker",
            "2",
        ],
    );
    let c = d.client();
    let image = images.join("service");
    let a = create_from(&d, "a", &image).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let pid = worker_pid(&a);
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.contains(&format!("/{parent}/worker-1")),
        "the worker is in its group: {membership}"
    );
    let memory = || cgroup_limit(pid, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory(), ((32u64 + 8) << 20).to_string());
    assert!(
        ["50000", "50000 100000"]
            .contains(&cgroup_limit(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").as_str()),
        "cpu.max of 50%"
    );
    let b = create_from(&d, "b", &image).unwrap();
    assert_eq!(worker_pid(&b), pid, "both VMs in one worker");
    assert_eq!(memory(), ((32u64 + 16) << 20).to_string());
    d.wait_vm("a", "became ready", up);
    d.wait_vm("b", "became ready", up);
    // A VM gone: the limit comes down to the other's.
    c.kill("b").unwrap();
    d.wait_state("b", VmState::Exited);
    let deadline = Instant::now() + WAIT;
    while memory() != ((32u64 + 8) << 20).to_string() {
        assert!(Instant::now() < deadline, "memory.max stays {}", memory());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(d);
    // The test's groups, emptied by the workers' end, are removed.
    let cgroups = tandem::cgroup::Cgroups::detect().unwrap();
    for path in [format!("{parent}/worker-1"), parent] {
        if let Ok(g) = cgroups.open(&path) {
            let _ = (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                g.remove().is_ok()
            });
        }
    }
}
