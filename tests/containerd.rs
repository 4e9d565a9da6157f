//! The containerd shim (`containerd-shim-tandem-v1`) under a real
//! containerd: each test starts its own containerd as a child, as root, on a
//! private socket, root and state directory under a temporary folder, with
//! the shim's directory on its PATH, and drives it with `ctr`.
//!
//! Needs Debian's `containerd` (with `ctr`), the shim and the OCI images of
//! the test apps: `cargo xtask test` installs and builds all of them. Every
//! wait has a deadline; a missing piece fails the test with a message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_tests::{image_path, require_kvm, tandem_bin};

#[path = "src/cri.rs"]
mod cri;

const RUNTIME: &str = "io.containerd.tandem.v1";
/// Where Debian's containernetworking-plugins puts the plugins.
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The plugins the pod-network test's CNI config uses (containerd adds the
/// loopback network of every pod itself).
const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// Longest any one `ctr` command may take.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn shim_bin() -> PathBuf {
    let path = std::env::var_os("TANDEM_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/containerd-shim-tandem-v1"));
    assert!(
        path.is_file(),
        "the shim {} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// The OCI tarball `cargo xtask test` writes for `name`.
fn oci_image(name: &str) -> PathBuf {
    let dir = std::env::var_os("TANDEM_OCI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/oci"));
    let path = dir.join(format!("{name}.tar"));
    assert!(
        path.is_file(),
        "OCI image {} is missing: run the tests with `cargo xtask test`, which writes it",
        path.display()
    );
    path
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests run containerd, which needs root");
}

/// What a `ctr` command did.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `ctr run` keeps its I/O FIFOs under our folder (`--fifo-dir`), not in
/// /run/containerd/fifo, where detached runs would leave them.
fn with_fifo_dir(args: &[&str], dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if let Some(i) = out.iter().position(|a| a == "run") {
        let fifo = dir.join("fifo").to_string_lossy().into_owned();
        out.splice(i + 1..i + 1, ["--fifo-dir".to_string(), fifo]);
    }
    out
}

/// Waits for a child up to `timeout`, killing it when the time is up.
fn wait_for(child: &mut Child, timeout: Duration, what: &str) -> Option<i32> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code(),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A containerd of our own; killed (and its folder removed) on drop.
struct Containerd {
    dir: PathBuf,
    child: Child,
    n: u32,
}

impl Containerd {
    fn start(name: &str) -> Containerd {
        Containerd::start_with(name, false)
    }

    /// With `cri`, the CRI plugin serves the Kubernetes runtime API on the
    /// same socket, with `tandem` as a runtime handler, no CNI (pods use the
    /// node's network), and `docker.io/tandem/pause:latest` as the sandbox
    /// image (imported, never pulled).
    fn start_with(name: &str, cri: bool) -> Containerd {
        Containerd::start_full(name, cri, None)
    }

    /// CRI as [`Containerd::start_with`], and CNI for pod networks:
    /// `conflist` in the CNI config folder, Debian's plugins (bridge,
    /// host-local, loopback) in the CNI bin folder.
    fn start_with_cni(name: &str, conflist: &str) -> Containerd {
        Containerd::start_full(name, true, Some(conflist))
    }

    fn start_full(name: &str, cri: bool, cni: Option<&str>) -> Containerd {
        require_kvm();
        require_root();
        tandem_tests::require_tool("containerd", "containerd");
        tandem_tests::require_tool("ctr", "containerd");
        let shim = shim_bin();
        let tandem = tandem_bin();
        let dir = std::env::temp_dir().join(format!("tandem-ctd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        if let Some(conflist) = cni {
            let (bin, conf) = (dir.join("cni/bin"), dir.join("cni/conf"));
            fs::create_dir_all(&bin).unwrap();
            fs::create_dir_all(&conf).unwrap();
            for plugin in CNI_PLUGINS {
                let path = Path::new(CNI_PLUGIN_DIR).join(plugin);
                assert!(
                    path.is_file(),
                    "the CNI plugin {} is missing: these tests need Debian's \
                     containernetworking-plugins (`cargo xtask test` installs it, \
                     or `apt-get install containernetworking-plugins`)",
                    path.display()
                );
                std::os::unix::fs::symlink(&path, bin.join(plugin)).unwrap();
            }
            let conflist = conflist.replace("{dir}", &d.to_string());
            fs::write(conf.join("10-tandem-test.conflist"), conflist).unwrap();
        }
        let plugins = if cri {
            let p = "[plugins.\"io.containerd.grpc.v1.cri\"";
            format!(
                "{p}]\n  sandbox_image = \"docker.io/tandem/pause:latest\"\n\
                 {p}.cni]\n  bin_dir = \"{d}/cni/bin\"\n  conf_dir = \"{d}/cni/conf\"\n\
                 {p}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 {p}.containerd.runtimes.tandem]\n  runtime_type = \"io.containerd.tandem.v1\"\n\
                 \x20 pod_annotations = [\"tandem.dev/*\"]\n"
            )
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string()
        };
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             {plugins}"
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![shim.parent().unwrap().to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--address")
            .arg(dir.join("c.sock"))
            .env("PATH", std::env::join_paths(dirs).unwrap())
            .env("TANDEM_BIN", &tandem)
            .env("TANDEM_SNAPSHOT_DIR", dir.join("snapshots"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        let mut c = Containerd { dir, child, n: 0 };
        let sock = c.dir.join("c.sock");
        let start = Instant::now();
        loop {
            if sock.exists() && c.ctr(&["version"]).code == Some(0) {
                break;
            }
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!("containerd exited ({st}) at start:\n{}", c.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not answer within 30 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&mut self, args: &[&str]) -> Out {
        self.n += 1;
        let (o, e) = (
            self.dir.join(format!("ctr-{}.out", self.n)),
            self.dir.join(format!("ctr-{}.err", self.n)),
        );
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(with_fifo_dir(args, &self.dir))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&o).unwrap())
            .stderr(fs::File::create(&e).unwrap())
            .spawn()
            .expect("cannot run ctr");
        let code = wait_for(&mut child, CTR_TIMEOUT, &format!("ctr {}", args.join(" ")));
        Out {
            code,
            stdout: fs::read_to_string(&o).unwrap_or_default(),
            stderr: fs::read_to_string(&e).unwrap_or_default(),
        }
    }

    /// `ctr ARGS` with `input` written to its stdin (then closed).
    fn ctr_with_input(&mut self, args: &[&str], input: &[u8]) -> Out {
        use std::io::Write;
        self.n += 1;
        let (o, e) = (
            self.dir.join(format!("ctr-{}.out", self.n)),
            self.dir.join(format!("ctr-{}.err", self.n)),
        );
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(with_fifo_dir(args, &self.dir))
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&o).unwrap())
            .stderr(fs::File::create(&e).unwrap())
            .spawn()
            .expect("cannot run ctr");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let code = wait_for(&mut child, CTR_TIMEOUT, &format!("ctr {}", args.join(" ")));
        Out {
            code,
            stdout: fs::read_to_string(&o).unwrap_or_default(),
            stderr: fs::read_to_string(&e).unwrap_or_default(),
        }
    }

    fn ok(&mut self, args: &[&str]) -> Out {
        let out = self.ctr(args);
        assert_eq!(out.code, Some(0), "ctr {}: {out}", args.join(" "));
        out
    }

    /// Imports `target/oci/NAME.tar`; returns the image name.
    fn import(&mut self, name: &str) -> String {
        let tar = oci_image(name);
        self.ok(&["images", "import", tar.to_str().unwrap()]);
        format!("docker.io/tandem/{name}:latest")
    }

    /// Status column of `ctr task ls` for `id`, if listed.
    fn task_status(&mut self, id: &str) -> Option<String> {
        let out = self.ok(&["task", "ls"]);
        out.stdout.lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
        })
    }

    /// The VMM's pid from `ctr task ps`.
    fn task_pid(&mut self, id: &str) -> i32 {
        let out = self.ok(&["task", "ps", id]);
        out.stdout
            .lines()
            .skip(1)
            .find_map(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no pid in `ctr task ps {id}`: {out}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // After a failed test, shims of this containerd (found by its
        // socket on their command line) may still run: stop them (their VMs
        // die with them), and unmount what containerd mounted (CRI's /dev/shm
        // of a pod that was never removed).
        let sock = self.dir.join("c.sock");
        let sock = sock.to_string_lossy();
        for pid in shims_of(&sock) {
            // SAFETY: kill(2) on a shim serving our own containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for target in mounts_under(&self.dir) {
            if let Some(path) = target.split_whitespace().nth(1) {
                if let Ok(c) = std::ffi::CString::new(path) {
                    // SAFETY: umount2 with a NUL-terminated path we own.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Pids of `containerd-shim-tandem-v1` processes started for the
/// containerd on socket `sock`.
fn shims_of(sock: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-tandem-v1"))
                && args.contains(&sock.as_bytes())
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie has no exe link once it has exited.
    fs::read_link(format!("/proc/{pid}/exe")).is_ok()
}

fn exe_name(pid: i32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

fn parent_pid(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(String::from)
        .collect()
}

#[test]
fn hello_runs_with_its_output_arguments_env_and_exit_code() {
    let mut c = Containerd::start("hello");
    let hello = c.import("hello");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--env",
        "MODE=fast",
        &hello,
        "hello-1",
        "/hello",
        "one",
        "two",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("Hello from Tandem!"), "{out}");
    assert!(
        out.stdout.contains("command line: \"one two MODE=fast\""),
        "{out}"
    );
    // The entrypoint alone, from the image's config.
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, &hello, "hello-2"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("command line: \"\""), "{out}");

    // The guest's exit code is the task's.
    let service = c.import("service");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &service,
        "svc-exit",
        "/service",
        "exit=7",
    ]);
    assert_eq!(out.code, Some(7), "{out}");
    assert_eq!(c.ok(&["containers", "ls", "-q"]).stdout.trim(), "");
}

#[test]
fn stdin_reaches_the_guest() {
    let mut c = Containerd::start("stdin");
    let cat = c.import("cat");
    let out = c.ctr_with_input(
        &["run", "--rm", "--runtime", RUNTIME, &cat, "cat-1"],
        b"hello\nfrom the host\n",
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("> hello\n> from the host\n"), "{out}");
    assert!(out.stdout.contains("stdin: 20 bytes, 2 lines"), "{out}");
    // Without stdin (--null-io), the guest reads end of input at once.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--null-io",
        "--runtime",
        RUNTIME,
        &cat,
        "cat-2",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn snapshot_annotation_starts_the_vm_from_a_snapshot() {
    let mut c = Containerd::start("snapshot");
    let counter = c.import("counter");
    // A counter frozen at its ready() call, in the shim's snapshot folder.
    let snap = c.dir.join("snapshots").join("counter-ready");
    let out = Command::new(tandem_bin())
        .args(["run", "-q", "--timeout", "30s", "--exit-after-snapshot"])
        .arg("--snapshot-at-ready")
        .arg(&snap)
        .args(["--cmdline", "ready exit-at=10"])
        .arg(image_path("counter"))
        .stdin(Stdio::null())
        .output()
        .expect("tandem run");
    assert!(out.status.success(), "{out:?}");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "tandem.dev/snapshot=counter-ready",
        &counter,
        "snap-1",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    // It carries on from the snapshot: no fresh start, the count ends at 10.
    assert!(out.stdout.contains("final count 10 "), "{out}");
    assert!(!out.stdout.contains("generation 0 restores 0"), "{out}");
    for (value, error) in [
        ("missing", "no snapshot \"missing\""),
        ("../etc", "not a snapshot name"),
    ] {
        let annotation = format!("tandem.dev/snapshot={value}");
        let out = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &annotation,
            &counter,
            "snap-2",
        ]);
        assert_ne!(out.code, Some(0), "{out}");
        assert!(out.stderr.contains(error), "{out}");
    }
}

#[test]
fn crashing_app_reports_failure_in_its_exit_event() {
    let mut c = Containerd::start("panic");
    let panic = c.import("panic");
    let events_file = c.dir.join("events.txt");
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(c.dir.join("c.sock"))
        .arg("events")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&events_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run ctr events");
    // `ctr events` subscribes asynchronously: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, &panic, "panic-1"]);
    assert_eq!(out.code, Some(101), "{out}");
    assert!(out.stdout.contains("deliberate panic"), "{out}");
    let exit_event = || {
        fs::read_to_string(&events_file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":101"))
    };
    let start = Instant::now();
    while !exit_event() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        exit_event(),
        "no /tasks/exit event with exit_status 101:\n{}",
        fs::read_to_string(&events_file).unwrap_or_default()
    );
}

#[test]
fn memory_annotation_sets_guest_memory() {
    let mut c = Containerd::start("memory");
    let sysinfo = c.import("sysinfo");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "tandem.dev/memory=16M",
        &sysinfo,
        "mem-1",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("highest usable address 0x1000000"),
        "{out}"
    );
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "tandem.dev/memory=lots",
        &sysinfo,
        "mem-2",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("tandem.dev/memory"), "{out}");
    // `tandem run --mem` spellings are the annotation's too.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "tandem.dev/memory=32MiB",
        &sysinfo,
        "mem-3",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("highest usable address 0x2000000"),
        "{out}"
    );
    // A size the VMM cannot boot fails `create` (the shim's own message,
    // naming the annotation and the value), not `start`.
    for (value, why) in [("3M", "too little"), ("65M", "not a multiple of 2 MiB")] {
        let annotation = format!("tandem.dev/memory={value}");
        let out = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &annotation,
            &sysinfo,
            "mem-4",
        ]);
        assert_ne!(out.code, Some(0), "{out}");
        assert!(
            out.stderr
                .contains(&format!("annotation tandem.dev/memory=\"{value}\"")),
            "{out}"
        );
        assert!(out.stderr.contains(why), "{out}");
        assert!(
            !out.stdout.contains("highest usable address"),
            "nothing may boot: {out}"
        );
    }
}

/// `--memory-limit` sizes the guest: the limit less the shim's 16 MiB VMM
/// reserve; the `tandem.dev/memory` annotation still wins when it fits; a
/// limit too small for any guest fails `create` naming the limit.
#[test]
fn memory_limit_sizes_the_guest() {
    let mut c = Containerd::start("memlimit");
    let sysinfo = c.import("sysinfo");
    let limit = (64u64 << 20).to_string();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit,
        &sysinfo,
        "lim-1",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    // 64 MiB - 16 MiB = 48 MiB.
    assert!(
        out.stdout.contains("highest usable address 0x3000000"),
        "{out}"
    );
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit,
        "--annotation",
        "tandem.dev/memory=32M",
        &sysinfo,
        "lim-2",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("highest usable address 0x2000000"),
        "{out}"
    );
    // An annotation larger than the limit allows is refused.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit,
        "--annotation",
        "tandem.dev/memory=64M",
        &sysinfo,
        "lim-3",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("does not fit"), "{out}");
    let small = (18u64 << 20).to_string();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &small,
        &sysinfo,
        "lim-4",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("linux.resources.memory.limit"), "{out}");
    assert!(!out.stdout.contains("highest usable address"), "{out}");
}

/// The memory usage `ctr task metrics --format json` reports: containerd
/// prints the cgroup v1 message as `memory.usage.usage`, the v2 one as
/// `memory.usage`.
fn metrics_memory_usage(json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let usage = &v["memory"]["usage"];
    usage["usage"].as_u64().or_else(|| usage.as_u64())
}

/// A container with limits runs its VMM in the cgroup its spec names
/// (ctr's default `/<namespace>/<id>`), with `memory.max` and `cpu.max` (or
/// their v1 files) as the spec says; `ctr task metrics` reads real usage;
/// `delete` removes the group.
#[test]
fn limits_put_the_vm_in_its_cgroup_and_metrics_read_it() {
    use tandem::cgroup::{Cgroups, Version};
    let mut c = Containerd::start("cgroup");
    let service = c.import("service");
    let id = format!("lim-{}", std::process::id());
    let limit = 96u64 << 20;
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &limit.to_string(),
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &service,
        &id,
    ]);
    eventually(Duration::from_secs(20), "the task running", || {
        c.task_status(&id).as_deref() == Some("RUNNING")
    });
    let pid = c.task_pid(&id);
    assert_eq!(exe_name(pid).as_deref(), Some("tandem"), "pid {pid}");
    let path = format!("default/{id}");
    // What the kernel says about the VMM's groups.
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroups = Cgroups::detect().unwrap();
    let group = cgroups
        .open(&path)
        .unwrap_or_else(|e| panic!("no cgroup {path}: {e}\n/proc/{pid}/cgroup:\n{own}"));
    assert!(
        group.pids().unwrap().contains(&pid.unsigned_abs()),
        "the VMM {pid} is not in {path}:\n{own}"
    );
    let read = |controller: &str, file: &str| {
        let dir = group.controller_dir(controller).unwrap();
        fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
            .trim()
            .to_string()
    };
    match cgroups.version() {
        Version::V2 => {
            assert!(own.contains(&format!("0::/{path}")), "{own}");
            assert_eq!(read("memory", "memory.max"), limit.to_string());
            assert_eq!(read("cpu", "cpu.max"), "50000 100000");
        }
        Version::V1 => {
            assert!(own.contains(&format!(":memory:/{path}")), "{own}");
            assert!(
                own.contains(&format!(":cpu:/{path}"))
                    || own.contains(&format!("cpu,cpuacct:/{path}")),
                "{own}"
            );
            assert_eq!(read("memory", "memory.limit_in_bytes"), limit.to_string());
            assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
            assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        }
    }
    // The VMM's memory (guest pages it touched, its own) is charged there.
    let out = c.ok(&["task", "metrics", "--format", "json", &id]);
    let usage = metrics_memory_usage(&out.stdout)
        .unwrap_or_else(|| panic!("no memory usage in the metrics: {out}"));
    assert!(usage > 1 << 20, "memory usage {usage} bytes: {out}");
    assert!(
        usage <= limit,
        "memory usage {usage} above the limit: {out}"
    );
    let table = c.ok(&["task", "metrics", &id]);
    assert!(table.stdout.contains("memory"), "{table}");
    c.ok(&["task", "kill", "-s", "SIGKILL", &id]);
    eventually(Duration::from_secs(20), "the task stopped", || {
        c.task_status(&id).as_deref() == Some("STOPPED")
    });
    c.ok(&["task", "rm", &id]);
    assert!(
        cgroups.open(&path).is_err(),
        "the cgroup {path} outlived the task"
    );
    c.ok(&["containers", "rm", &id]);
}

/// A Kubernetes pod as CRI lays it out: a placeholder (pause) container
/// whose annotations say `sandbox`, and app containers naming its id. They
/// share one shim; the placeholder boots no VM.
#[test]
fn pod_containers_share_one_shim_and_the_placeholder_boots_nothing() {
    let mut c = Containerd::start("pod");
    let hello = c.import("hello");
    let service = c.import("service");
    let sandbox = "io.kubernetes.cri.container-type=sandbox";
    let app = "io.kubernetes.cri.container-type=container";
    let pod = "io.kubernetes.cri.sandbox-id=pod-1";
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        sandbox,
        "--annotation",
        pod,
        &hello,
        "pod-1",
    ]);
    eventually(Duration::from_secs(20), "pod-1 running", || {
        c.task_status("pod-1").as_deref() == Some("RUNNING")
    });
    let shim = c.task_pid("pod-1");
    assert_eq!(
        exe_name(shim).as_deref(),
        Some("containerd-shim-tandem-v1"),
        "the placeholder's pid {shim} is its shim"
    );
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        app,
        "--annotation",
        pod,
        &service,
        "pod-1-svc",
    ]);
    eventually(Duration::from_secs(20), "pod-1-svc running", || {
        c.task_status("pod-1-svc").as_deref() == Some("RUNNING")
    });
    let vmm = c.task_pid("pod-1-svc");
    assert_eq!(
        parent_pid(vmm),
        shim,
        "the app's VMM is a child of the pod's shim"
    );
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        app,
        "--annotation",
        pod,
        &hello,
        "pod-1-hello",
        "/hello",
        "in-pod",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("command line: \"in-pod\""), "{out}");

    // Stop the pod: apps first, then the placeholder; the shim then exits.
    c.ok(&["task", "kill", "pod-1-svc"]);
    eventually(Duration::from_secs(20), "pod-1-svc stopped", || {
        c.task_status("pod-1-svc").as_deref() == Some("STOPPED")
    });
    c.ok(&["task", "rm", "pod-1-svc"]);
    c.ok(&["containers", "rm", "pod-1-svc"]);
    assert!(
        alive(shim),
        "the pod's shim must outlive one of its containers"
    );
    c.ok(&["task", "kill", "pod-1"]);
    eventually(Duration::from_secs(20), "pod-1 stopped", || {
        c.task_status("pod-1").as_deref() == Some("STOPPED")
    });
    c.ok(&["task", "rm", "pod-1"]);
    c.ok(&["containers", "rm", "pod-1"]);
    eventually(Duration::from_secs(10), "the pod's shim exits", || {
        !alive(shim)
    });
    assert!(!alive(vmm));
}

#[test]
fn long_running_app_is_listed_killed_and_deleted() {
    let mut c = Containerd::start("service");
    let service = c.import("service");
    c.ok(&["run", "-d", "--runtime", RUNTIME, &service, "svc-1"]);
    eventually(Duration::from_secs(20), "svc-1 running", || {
        c.task_status("svc-1").as_deref() == Some("RUNNING")
    });
    let pid = c.task_pid("svc-1");
    assert_eq!(exe_name(pid).as_deref(), Some("tandem"), "pid {pid}");
    c.ok(&["task", "kill", "svc-1"]);
    eventually(Duration::from_secs(20), "svc-1 stopped", || {
        c.task_status("svc-1").as_deref() == Some("STOPPED")
    });
    assert!(!alive(pid), "the VMM {pid} outlived the kill");
    let out = c.ok(&["task", "rm", "svc-1"]);
    // SIGTERM: 128 + 15.
    assert!(out.stderr.contains("143"), "{out}");
    c.ok(&["containers", "rm", "svc-1"]);
    assert_eq!(c.task_status("svc-1"), None);
    assert_eq!(c.ok(&["containers", "ls", "-q"]).stdout.trim(), "");
}

#[test]
fn killed_shim_leaves_nothing_running_or_mounted() {
    let mut c = Containerd::start("deadshim");
    let service = c.import("service");
    // Its own id: the cgroup (`default/ID`) is the host's, not this containerd's.
    let id = format!("svc-dead-{}", std::process::id());
    let svc2 = id.as_str();
    c.ok(&["run", "-d", "--runtime", RUNTIME, &service, svc2]);
    eventually(Duration::from_secs(20), "the service running", || {
        c.task_status(svc2).as_deref() == Some("RUNNING")
    });
    let vmm = c.task_pid(svc2);
    let shim = parent_pid(vmm);
    assert_eq!(
        exe_name(shim).as_deref(),
        Some("containerd-shim-tandem-v1"),
        "the VMM's parent {shim}"
    );
    // SAFETY: kill(2) on the shim's pid, checked just above; no memory involved.
    assert_eq!(unsafe { libc::kill(shim, libc::SIGKILL) }, 0);
    eventually(
        Duration::from_secs(10),
        "the VMM dies with its shim",
        || !alive(vmm),
    );
    // containerd notices the dead shim and cleans up after it (`delete`).
    eventually(Duration::from_secs(20), "the task is gone", || {
        c.task_status(svc2).as_deref() != Some("RUNNING")
    });
    let _ = c.ctr(&["task", "rm", svc2]);
    c.ok(&["containers", "rm", svc2]);
    assert_eq!(c.ok(&["containers", "ls", "-q"]).stdout.trim(), "");
    assert_eq!(mounts_under(&c.dir), Vec::<String>::new());
    // The cleanup after the dead shim removed the VM's cgroup too.
    let cgroups = tandem::cgroup::Cgroups::detect().unwrap();
    eventually(Duration::from_secs(10), "the cgroup removed", || {
        cgroups.open(&format!("default/{id}")).is_err()
    });
}

#[test]
fn bad_images_fail_create_with_a_clear_error() {
    let mut c = Containerd::start("bad");
    let notelf = c.import("notelf");
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, &notelf, "bad-1"]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("/notelf is not a Tandem image"),
        "{out}"
    );
    let hello = c.import("hello");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &hello,
        "bad-2",
        "/missing",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("/missing: no such file in the image's root filesystem"),
        "{out}"
    );
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &hello,
        "bad-3",
        "/hello",
        "two words",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("may not contain whitespace"), "{out}");
    // Nothing is left behind.
    eventually(Duration::from_secs(10), "no containers left", || {
        c.ok(&["containers", "ls", "-q"]).stdout.trim().is_empty()
    });
}

/// What kubelet does for a pod with `runtimeClassName: tandem`, through the
/// CRI gRPC API: a pod sandbox with `runtime_handler = "tandem"` (the pause
/// container boots no VM), app containers in it, their logs and exit codes,
/// the pod's `tandem.dev/memory` annotation, then the pod stopped and removed.
#[test]
fn cri_pod_with_runtime_handler_tandem_runs_its_apps() {
    let mut c = Containerd::start_with("cri", true);
    for name in ["pause", "hello", "service", "sysinfo"] {
        let tar = oci_image(name);
        c.ok(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
    }
    let logs = c.dir.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = c.dir.join("c.sock");
    let result = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), cri_pod(sock, logs.clone())).await
    });
    match result {
        Err(_) => panic!("the CRI pod did not finish within 120 s:\n{}", c.log()),
        Ok(Err(e)) => panic!("{e}\n--- containerd log\n{}", c.log()),
        Ok(Ok(())) => {}
    }
    // RemovePodSandbox removed the containers; no task is left.
    assert_eq!(
        c.ok(&["-n", "k8s.io", "containers", "ls", "-q"])
            .stdout
            .trim(),
        ""
    );
    assert_eq!(
        c.ok(&["-n", "k8s.io", "tasks", "ls", "-q"]).stdout.trim(),
        ""
    );
}

/// What kubelet does for a pod with `resources.limits`: the container's
/// VMM runs in `<cgroup_parent>/<id>` with the memory and CPU limits, and
/// CRI's ContainerStats (what `crictl stats` and kubelet read) reports its
/// real memory and CPU use; UpdateContainerResources changes the limits
/// of the running VM's group. Then the same with a systemd slice as the
/// parent, which CRI passes as `slice:cri-containerd:<id>`: the group is
/// `<slice>/cri-containerd-<id>.scope`.
#[test]
fn cri_container_limits_hold_and_stats_are_real() {
    let mut c = Containerd::start_with("cri-limits", true);
    for name in ["pause", "service"] {
        let tar = oci_image(name);
        c.ok(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
    }
    let logs = c.dir.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = std::process::id();
    let plain = format!("tandem-cri-{pid}");
    let slice = format!("tandemcri{pid}.slice");
    let cases: [(&str, GroupOf); 2] = [
        (&plain, |parent, id| format!("{parent}/{id}")),
        (&slice, |slice, id| {
            format!("{slice}/cri-containerd-{id}.scope")
        }),
    ];
    for (parent, group_of) in cases {
        let sock = c.dir.join("c.sock");
        let result = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                cri_limited_pod(sock, logs.clone(), parent, group_of),
            )
            .await
        });
        // The pod's parent group is kubelet's to make and remove; here, ours.
        if let Ok(g) = tandem::cgroup::Cgroups::detect().and_then(|c| c.open(parent)) {
            let _ = g.remove();
        }
        match result {
            Err(_) => panic!(
                "the CRI pod in {parent} did not finish within 120 s:\n{}",
                c.log()
            ),
            Ok(Err(e)) => panic!("pod in {parent}: {e}\n--- containerd log\n{}", c.log()),
            Ok(Ok(())) => {}
        }
    }
}

/// The container's cgroup path from the pod's cgroup parent and its id.
type GroupOf = fn(&str, &str) -> String;

async fn cri_limited_pod(
    sock: PathBuf,
    logs: PathBuf,
    parent: &str,
    group_of: GroupOf,
) -> Result<(), String> {
    use cri::v1::*;
    use tandem::cgroup::{Cgroups, Version};
    let mut client = cri::connect(sock).await?;
    let limit: u64 = 96 << 20;
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("limits-{}", parent.replace('.', "-")),
            uid: format!("uid-{parent}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "tandem".into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "svc".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "docker.io/tandem/service:latest".into(),
                    ..Default::default()
                }),
                log_path: "svc.log".into(),
                linux: Some(LinuxContainerConfig {
                    resources: Some(LinuxContainerResources {
                        memory_limit_in_bytes: limit as i64,
                        cpu_quota: 50_000,
                        cpu_period: 100_000,
                        cpu_shares: 512,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map_err(|e| format!("CreateContainer: {e}"))?
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| format!("StartContainer: {e}"))?;
    let cgroups = Cgroups::detect().map_err(|e| e.to_string())?;
    let path = group_of(parent, &id);
    let group = cgroups
        .open(&path)
        .map_err(|e| format!("the container's cgroup {path}: {e}"))?;
    let pids = group.pids().map_err(|e| e.to_string())?;
    let vmm = pids
        .iter()
        .find(|p| exe_name(**p as i32).as_deref() == Some("tandem"))
        .ok_or_else(|| format!("no tandem VMM in {path}: {pids:?}"))?;
    let read = |controller: &str, file: &str| {
        group
            .controller_dir(controller)
            .and_then(|d| fs::read_to_string(d.join(file)).ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let limits_now = || match cgroups.version() {
        Version::V2 => (read("memory", "memory.max"), read("cpu", "cpu.max")),
        Version::V1 => (
            read("memory", "memory.limit_in_bytes"),
            format!(
                "{} {}",
                read("cpu", "cpu.cfs_quota_us"),
                read("cpu", "cpu.cfs_period_us")
            ),
        ),
    };
    let (mem, cpu) = limits_now();
    if mem != limit.to_string() || cpu != "50000 100000" {
        return Err(format!(
            "{path} (VMM {vmm}): memory limit {mem:?}, cpu {cpu:?}; expected {limit}, \"50000 100000\""
        ));
    }
    // Kubelet's view: ContainerStats, from the shim's Stats.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = client
            .container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| format!("ContainerStats: {e}"))?
            .into_inner()
            .stats
            .ok_or("ContainerStats without stats")?;
        let working_set = stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let cpu = stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        if working_set > 1 << 20 && working_set <= limit && cpu > 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "ContainerStats: working set {working_set} bytes, cpu {cpu} ns: {stats:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A resize in place (UpdateContainerResources) reaches the group.
    let bigger: u64 = 128 << 20;
    client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: bigger as i64,
                cpu_quota: 25_000,
                cpu_period: 100_000,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("UpdateContainerResources: {e}"))?;
    let (mem, cpu) = limits_now();
    if mem != bigger.to_string() || cpu != "25000 100000" {
        return Err(format!(
            "after the update {path}: memory limit {mem:?}, cpu {cpu:?}; expected {bigger}, \"25000 100000\""
        ));
    }
    client
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .map_err(|e| format!("StopContainer: {e}"))?;
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("StopPodSandbox: {e}"))?;
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    if cgroups.open(&path).is_ok() {
        return Err(format!("the cgroup {path} outlived its container"));
    }
    Ok(())
}

async fn cri_pod(sock: PathBuf, logs: PathBuf) -> Result<(), String> {
    use cri::v1::*;
    let mut client = cri::connect(sock).await?;
    let version = client
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .map_err(|e| format!("Version: {e}"))?
        .into_inner();
    if version.runtime_api_version != "v1" {
        return Err(format!("CRI API {}", version.runtime_api_version));
    }
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "tandem-pod".into(),
            uid: "uid-tandem-pod".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        annotations: [("tandem.dev/memory".to_string(), "16M".to_string())].into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                // The node's network: no CNI needed.
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "tandem".into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;

    let apps = [
        ("hello", "docker.io/tandem/hello:latest", vec!["a", "b"], 0),
        ("svc", "docker.io/tandem/service:latest", vec!["exit=3"], 3),
        ("sysinfo", "docker.io/tandem/sysinfo:latest", vec![], 0),
    ];
    let mut ids = Vec::new();
    for (name, image, args, _) in &apps {
        let id = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: (*name).into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: (*image).into(),
                        ..Default::default()
                    }),
                    args: args.iter().map(|a| a.to_string()).collect(),
                    log_path: format!("{name}.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map_err(|e| format!("CreateContainer {name}: {e}"))?
            .into_inner()
            .container_id;
        client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| format!("StartContainer {name}: {e}"))?;
        ids.push(id);
    }
    for ((name, _, _, code), id) in apps.iter().zip(&ids) {
        let status = loop {
            let status = client
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await
                .map_err(|e| format!("ContainerStatus {name}: {e}"))?
                .into_inner()
                .status
                .ok_or("ContainerStatus without a status")?;
            if status.state == ContainerState::ContainerExited as i32 {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if status.exit_code != *code {
            return Err(format!(
                "{name} exited {} ({}), expected {code}",
                status.exit_code, status.reason
            ));
        }
    }
    // CRI log format: "TIME stdout F LINE".
    let log = fs::read_to_string(logs.join("hello.log")).unwrap_or_default();
    if !log.contains("stdout F Hello from Tandem!") || !log.contains("command line: \"a b\"") {
        return Err(format!("hello's log:\n{log}"));
    }
    // The pod's tandem.dev/memory annotation reached the app's VM.
    let log = fs::read_to_string(logs.join("sysinfo.log")).unwrap_or_default();
    if !log.contains("highest usable address 0x1000000") {
        return Err(format!("sysinfo's log (16M expected):\n{log}"));
    }
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("StopPodSandbox: {e}"))?;
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    Ok(())
}

/// A bridge of the test's own holding the pod network's gateway address
/// (so the test reaches pods from the node without changing the node's
/// forwarding), and the CNI config putting pods on it. Dropping it (also
/// after a failure) removes the bridge and any network namespace CNI left
/// with an address on its subnet.
struct PodBridge {
    name: String,
    /// The third octet of the pods' 10.214.N.0/24.
    net: u8,
}

/// The node's named network namespaces (`/var/run/netns`), where CRI pins a
/// pod's.
const NETNS_DIR: &str = "/var/run/netns";

fn ip_cmd(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (Debian's iproute2 is needed): {e}"))
}

fn ip_ok(args: &[&str]) -> String {
    let out = ip_cmd(args);
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PodBridge {
    fn new() -> PodBridge {
        require_root();
        tandem_tests::require_tool("ip", "iproute2");
        tandem_tests::require_tool("tc", "iproute2");
        let pid = std::process::id();
        let bridge = PodBridge {
            name: format!("tdmpod{}", pid % 100_000),
            net: u8::try_from(pid % 200 + 20).unwrap(),
        };
        let _ = ip_cmd(&["link", "del", &bridge.name]);
        ip_ok(&["link", "add", &bridge.name, "type", "bridge"]);
        ip_ok(&["addr", "add", &bridge.gateway_cidr(), "dev", &bridge.name]);
        ip_ok(&["link", "set", &bridge.name, "up"]);
        bridge
    }

    fn gateway(&self) -> String {
        format!("10.214.{}.1", self.net)
    }

    fn gateway_cidr(&self) -> String {
        format!("{}/24", self.gateway())
    }

    /// The CNI config: Debian's bridge plugin on our bridge (no gateway
    /// or masquerading of its own), host-local addresses with a default
    /// route via the bridge; `{dir}` is the test's folder.
    fn conflist(&self) -> String {
        let n = self.net;
        format!(
            r#"{{"cniVersion":"0.4.0","name":"tandem-test","plugins":[{{"type":"bridge","bridge":"{}","isGateway":false,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.214.{n}.0/24","gateway":"10.214.{n}.1"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{{dir}}/cni/ipam"}}}}]}}"#,
            self.name
        )
    }

    /// CRI's network namespaces with an address on our subnet.
    fn namespaces(&self) -> Vec<String> {
        let prefix = format!("10.214.{}.", self.net);
        let Ok(dir) = fs::read_dir(NETNS_DIR) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("cni-"))
            .filter(|name| {
                let out = ip_cmd(&["-n", name, "-4", "-o", "addr", "show"]);
                String::from_utf8_lossy(&out.stdout).contains(&prefix)
            })
            .collect()
    }
}

impl Drop for PodBridge {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            let _ = ip_cmd(&["netns", "del", &ns]);
        }
        let _ = ip_cmd(&["link", "del", &self.name]);
    }
}

/// `GET /` on `addr`: status line and body, or why not.
fn http_get(addr: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// What kubelet does for a pod on the pod network with `runtimeClassName:
/// tandem`: CRI makes the pod's network namespace and runs the CNI bridge
/// plugin (Debian's containernetworking-plugins, host-local addresses) for
/// the placeholder; the shim puts `httpd`'s VM on that network, so a GET
/// on the pod IP from the node answers with httpd's page. A second VM in
/// the same pod is refused the network while the first has it; once the
/// first is stopped its tap and tc filters are gone from the pod's
/// namespace, and the pod is stopped and removed with nothing left.
#[test]
fn cri_pod_on_the_pod_network_answers_on_its_pod_ip() {
    // Dropped last: the bridge and any namespace left go after containerd.
    let bridge = PodBridge::new();
    let mut c = Containerd::start_with_cni("podnet", &bridge.conflist());
    for name in ["pause", "httpd"] {
        let tar = oci_image(name);
        c.ok(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
    }
    let logs = c.dir.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = c.dir.join("c.sock");
    let gateway = bridge.gateway();
    let result = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(180),
            cri_network_pod(sock, logs.clone(), &gateway),
        )
        .await
    });
    let shim_log = || {
        let mut all = c.log();
        for log in ["httpd.log", "httpd-2.log"] {
            all.push_str(&format!(
                "\n--- {log}\n{}",
                fs::read_to_string(logs.join(log)).unwrap_or_default()
            ));
        }
        all
    };
    match result {
        Err(_) => panic!(
            "the networked CRI pod did not finish within 180 s:\n{}",
            shim_log()
        ),
        Ok(Err(e)) => panic!("{e}\n--- containerd log\n{}", shim_log()),
        Ok(Ok(())) => {}
    }
    // The shim's account of the wiring (and its time), shown.
    for line in c.log().lines().filter(|l| l.contains("joined to")) {
        eprintln!("{line}");
    }
    assert_eq!(
        c.ok(&["-n", "k8s.io", "tasks", "ls", "-q"]).stdout.trim(),
        "",
        "no task is left"
    );
    assert_eq!(
        bridge.namespaces(),
        Vec::<String>::new(),
        "RemovePodSandbox removed the pod's network namespace"
    );
}

/// The network namespace CRI made for `pod`, from its verbose status.
fn pod_netns_name(info: &std::collections::HashMap<String, String>) -> Result<String, String> {
    let raw = info
        .get("info")
        .ok_or("PodSandboxStatus: no verbose info")?;
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("PodSandboxStatus info: {e}"))?;
    let path = v["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .ok_or_else(|| format!("no network namespace in the sandbox's spec: {raw}"))?;
    path.strip_prefix(&format!("{NETNS_DIR}/"))
        .map(String::from)
        .ok_or_else(|| format!("the pod's network namespace {path} is not in {NETNS_DIR}"))
}

/// Runs the networked pod; always stops and removes it, returning the
/// first failure.
async fn cri_network_pod(sock: PathBuf, logs: PathBuf, gateway: &str) -> Result<(), String> {
    use cri::v1::*;
    let mut client = cri::connect(sock).await?;
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "tandem-web".into(),
            uid: "uid-tandem-web".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "tandem".into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    let result = network_pod_checks(&mut client, &pod, &pod_config, &logs, gateway).await;
    let stopped = client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("StopPodSandbox: {e}"));
    let removed = client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}"));
    result?;
    stopped?;
    removed?;
    Ok(())
}

type CriClient = cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

async fn create_httpd(
    client: &mut CriClient,
    pod: &str,
    pod_config: &cri::v1::PodSandboxConfig,
    name: &str,
) -> Result<String, String> {
    use cri::v1::*;
    Ok(client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "docker.io/tandem/httpd:latest".into(),
                    ..Default::default()
                }),
                log_path: format!("{name}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map_err(|e| format!("CreateContainer {name}: {e}"))?
        .into_inner()
        .container_id)
}

async fn start_container(client: &mut CriClient, id: &str) -> Result<(), String> {
    client
        .start_container(cri::v1::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(drop)
        .map_err(|e| e.message().to_string())
}

/// GETs `/` on `addr` until httpd's page comes (the VM may still boot).
fn wait_for_page(addr: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(addr) {
            Ok((status, body)) if status.starts_with("HTTP/1.1 200") => {
                if body.contains("<h1>Hello from Tandem!</h1>") {
                    return Ok(());
                }
                return Err(format!("GET http://{addr}/: {status}, body {body:?}"));
            }
            other if Instant::now() > deadline => {
                return Err(format!("GET http://{addr}/ within 60 s: {other:?}"));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// [`wait_for_page`] off the async runtime's thread.
async fn page_at(addr: &str) -> Result<(), String> {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || wait_for_page(&addr))
        .await
        .map_err(|e| e.to_string())?
}

async fn network_pod_checks(
    client: &mut CriClient,
    pod: &str,
    pod_config: &cri::v1::PodSandboxConfig,
    logs: &Path,
    gateway: &str,
) -> Result<(), String> {
    use cri::v1::*;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .map_err(|e| format!("PodSandboxStatus: {e}"))?
        .into_inner();
    let pod_ip = status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .filter(|ip| !ip.is_empty())
        .ok_or("PodSandboxStatus has no pod IP: did CNI run?")?;
    let netns = pod_netns_name(&status.info)?;
    let prefix = gateway.rsplit_once('.').map_or("", |(p, _)| p);
    if !pod_ip.starts_with(prefix) {
        return Err(format!(
            "pod IP {pod_ip} is not on the bridge's {gateway}/24"
        ));
    }

    let httpd = create_httpd(client, pod, pod_config, "httpd").await?;
    let began = Instant::now();
    start_container(client, &httpd)
        .await
        .map_err(|e| format!("StartContainer httpd: {e}"))?;
    let addr = format!("{pod_ip}:80");
    page_at(&addr).await?;
    // Shown, never asserted on.
    eprintln!(
        "StartContainer to httpd's page on the pod IP: {:?}",
        began.elapsed()
    );
    // The VM itself has the pod's address and gateway (CRI log format:
    // "TIME stdout F LINE").
    let log = fs::read_to_string(logs.join("httpd.log")).unwrap_or_default();
    let line = format!("stdout F httpd: {pod_ip}/24 via Some({gateway})");
    if !log.contains(&line) {
        return Err(format!("httpd's log has no {line:?}:\n{log}"));
    }

    // Inside the pod's namespace: our tap, redirected to and from eth0.
    let links = ip_ok(&["-n", &netns, "-o", "link", "show"]);
    if !links.contains("tandem0") {
        return Err(format!("no tap tandem0 in {netns}:\n{links}"));
    }
    let filters = Command::new("ip")
        .args([
            "netns", "exec", &netns, "tc", "filter", "show", "dev", "eth0", "ingress",
        ])
        .output()
        .map_err(|e| format!("tc: {e}"))?;
    let filters = String::from_utf8_lossy(&filters.stdout).into_owned();
    if !filters.contains("mirred") || !filters.contains("tandem0") {
        return Err(format!(
            "eth0's ingress does not redirect to tandem0:\n{filters}"
        ));
    }

    // The pod's network goes to one VM at a time.
    let second = create_httpd(client, pod, pod_config, "httpd-2").await?;
    match start_container(client, &second).await {
        Ok(()) => return Err("a second VM got the pod's network".into()),
        Err(e) if e.contains("a pod's network goes to one Tandem VM at a time") => {}
        Err(e) => return Err(format!("StartContainer httpd-2: unexpected error {e}")),
    }

    // Stopping httpd undoes the wiring; the page is gone.
    client
        .stop_container(StopContainerRequest {
            container_id: httpd.clone(),
            timeout: 10,
        })
        .await
        .map_err(|e| format!("StopContainer httpd: {e}"))?;
    let links = ip_ok(&["-n", &netns, "-o", "link", "show"]);
    if links.contains("tandem0") {
        return Err(format!(
            "tap tandem0 left in {netns} after httpd stopped:\n{links}"
        ));
    }
    let qdiscs = Command::new("ip")
        .args([
            "netns", "exec", &netns, "tc", "qdisc", "show", "dev", "eth0",
        ])
        .output()
        .map_err(|e| format!("tc: {e}"))?;
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout).into_owned();
    if qdiscs.contains("ingress") {
        return Err(format!(
            "eth0's ingress qdisc left after httpd stopped:\n{qdiscs}"
        ));
    }
    let addr_owned = addr.clone();
    if let Ok((status, _)) = tokio::task::spawn_blocking(move || http_get(&addr_owned))
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!(
            "{addr} still answers ({status}) after httpd stopped"
        ));
    }
    Ok(())
}

/// A network namespace an operator wired by hand: `eth0` in it, the other
/// end of a veth pair on the node with the gateway address. Deleted on
/// drop (the veth pair goes with it).
struct HandNetns {
    name: String,
    /// The third octet of its 10.215.N.0/24.
    net: u8,
}

impl HandNetns {
    fn new() -> HandNetns {
        require_root();
        tandem_tests::require_tool("ip", "iproute2");
        let pid = std::process::id();
        let ns = HandNetns {
            name: format!("tdm-ctr-{pid}"),
            net: u8::try_from(pid % 200 + 20).unwrap(),
        };
        let host = format!("tdmv{}", pid % 100_000);
        let _ = ip_cmd(&["netns", "del", &ns.name]);
        let _ = ip_cmd(&["link", "del", &host]);
        ip_ok(&["netns", "add", &ns.name]);
        let n = ns.name.as_str();
        ip_ok(&[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", n,
        ]);
        ip_ok(&[
            "addr",
            "add",
            &format!("10.215.{}.1/24", ns.net),
            "dev",
            &host,
        ]);
        ip_ok(&["link", "set", &host, "up"]);
        ip_ok(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", ns.address()),
            "dev",
            "eth0",
        ]);
        ip_ok(&["-n", n, "link", "set", "eth0", "up"]);
        ip_ok(&[
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            &format!("10.215.{}.1", ns.net),
        ]);
        ns
    }

    fn address(&self) -> String {
        format!("10.215.{}.2", self.net)
    }

    fn path(&self) -> String {
        format!("{NETNS_DIR}/{}", self.name)
    }
}

impl Drop for HandNetns {
    fn drop(&mut self) {
        let _ = ip_cmd(&["netns", "del", &self.name]);
    }
}

/// Without Kubernetes: `ctr run --with-ns network:PATH` puts httpd's VM on
/// a network namespace wired by hand, at that namespace's address; killing
/// the task removes the tap; an image with a network device and no
/// namespace to put it in is refused at create, naming the fix.
#[test]
fn ctr_run_with_a_network_namespace_serves_httpd_at_its_address() {
    let ns = HandNetns::new();
    let mut c = Containerd::start("netns");
    let httpd = c.import("httpd");
    let with_ns = format!("network:{}", ns.path());
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        &httpd,
        "web-1",
    ]);
    let page = wait_for_page(&format!("{}:80", ns.address()));
    let links = ip_ok(&["-n", &ns.name, "-o", "link", "show"]);
    c.ok(&["task", "kill", "web-1"]);
    eventually(Duration::from_secs(20), "web-1 stopped", || {
        c.task_status("web-1").as_deref() == Some("STOPPED")
    });
    let after = ip_ok(&["-n", &ns.name, "-o", "link", "show"]);
    c.ok(&["task", "rm", "web-1"]);
    c.ok(&["containers", "rm", "web-1"]);
    page.unwrap_or_else(|e| panic!("{e}\n--- containerd log\n{}", c.log()));
    assert!(
        links.contains("tandem0"),
        "no tap while httpd ran:\n{links}"
    );
    assert!(
        !after.contains("tandem0"),
        "the tap outlived the VM:\n{after}"
    );

    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, &httpd, "web-2"]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("/httpd declares a network device")
            && out.stderr.contains("--with-ns network:PATH"),
        "{out}"
    );
}
