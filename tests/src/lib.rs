//! Helpers for the integration tests: where the guest apps and the `tandem`
//! binary are, and how to boot them. Tests need `/dev/kvm` and the guest
//! apps built by `cargo xtask test`; without them they fail with a message
//! saying so, never skip.

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use tandem::{ConsoleSink, Hypervisor, Image, RunReport, VmBuilder};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Fails the test unless `/dev/kvm` can be opened.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests boot real VMs and need /dev/kvm, which cannot be opened: {e}");
    }
}

/// Fails the test unless `tool` is a command on PATH, naming the Debian
/// package that has it (`cargo xtask test` installs it).
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: these tests need Debian's {package} \
         (`cargo xtask test` installs it, or `apt-get install {package}`)"
    );
}

/// Fails the test unless QEMU is installed.
pub fn require_qemu() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
}

/// Path of a guest app's image.
pub fn image_path(app: &str) -> PathBuf {
    let dir = std::env::var_os("TANDEM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("guest/target/x86_64-unknown-none/release"));
    let path = dir.join(app);
    assert!(
        path.is_file(),
        "guest app {} is missing: run the tests with `cargo xtask test`, which builds the guest apps",
        path.display()
    );
    path
}

/// Path of the `tandem` binary.
pub fn tandem_bin() -> PathBuf {
    let path = std::env::var_os("TANDEM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/tandem"));
    assert!(
        path.is_file(),
        "the tandem binary {} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// What a `tandem` process did.
pub struct CliRun {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Its stdout (the guest console).
    pub stdout: String,
    /// Its stderr (VMM messages).
    pub stderr: String,
}

impl From<Output> for CliRun {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `tandem` with `args`.
pub fn tandem(args: &[&str]) -> CliRun {
    require_kvm();
    Command::new(tandem_bin())
        .args(args)
        .output()
        .expect("cannot start tandem")
        .into()
}

/// Runs `tandem run APP [extra args]` with a 30 s safety timeout.
pub fn run_app(app: &str, extra: &[&str]) -> CliRun {
    let image = image_path(app);
    let mut args = vec!["run", image.to_str().expect("utf-8 path")];
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "30s"]);
    }
    args.extend_from_slice(extra);
    tandem(&args)
}

/// Boots `app` in this process; returns the report and the console text.
pub fn boot_in_process(hv: &Hypervisor, app: &str, cmdline: &str) -> (RunReport, String) {
    let image = Image::from_file(&image_path(app)).expect("image");
    let console = Arc::new(Mutex::new(Vec::new()));
    let report = VmBuilder::new(hv, &image)
        .cmdline(cmdline)
        .timeout(std::time::Duration::from_secs(30))
        .console(ConsoleSink::Capture(console.clone()))
        .run()
        .expect("VM setup");
    let text = String::from_utf8_lossy(&console.lock().expect("console")).into_owned();
    (report, text)
}

/// Opens KVM for in-process tests.
pub fn hypervisor() -> Hypervisor {
    require_kvm();
    Hypervisor::open().expect("open /dev/kvm")
}
