//! `cargo xtask test`: the toolchain, the lints of both workspaces, the
//! builds the tests need, then `cargo test --workspace --no-fail-fast`.
//! Every step runs even when an earlier one failed, so one run reports
//! everything that is wrong; the summary at the end names each failure.

use std::io::{Read, Write};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::project::{self, Profile, Project};
use crate::test_report::{self, StepFailure, TestReport};
use crate::{dist, guest, host, oci, qemu, toolchain};

/// The failed steps so far.
#[derive(Default)]
struct Steps(Vec<StepFailure>);

impl Steps {
    /// Runs one step; a failure is printed now and kept for the summary.
    fn run(&mut self, step: &str, f: impl FnOnce() -> Result<()>) -> bool {
        match f() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("\nxtask test: step `{step}` failed: {e:#}\n");
                self.0.push(StepFailure {
                    step: step.to_owned(),
                    error: format!("{e:#}"),
                });
                false
            }
        }
    }
}

pub fn test(project: &Project, harness_args: &[String]) -> Result<ExitCode> {
    let start = Instant::now();
    let mut steps = Steps::default();

    steps.run("Rust toolchain (guest target, rustfmt, clippy)", || {
        toolchain::ensure_guest_target(project)?;
        toolchain::ensure_lint_components(project)
    });
    steps.run("/dev/kvm", project::require_kvm);
    steps.run("Debian packages", || {
        // The QEMU and GRUB paths are tested too, core files and the gdb
        // stub with Debian's gdb, the containerd shim under Debian's
        // containerd, and the network device on taps made with iproute2.
        qemu::ensure_tools(qemu::QEMU_TOOLS)?;
        qemu::ensure_tools(qemu::GRUB_TOOLS)?;
        qemu::ensure_tools(qemu::GDB_TOOLS)?;
        qemu::ensure_tools(qemu::NET_TOOLS)?;
        qemu::ensure_tools(host::DAEMON_TOOLS)?;
        qemu::ensure_tools(oci::CONTAINERD_TOOLS)?;
        // The unit's `systemd-analyze verify` and the package's `dpkg-deb`.
        qemu::ensure_tools(dist::PACKAGING_TOOLS)
    });
    steps.run("cargo-deb (the package test)", || {
        dist::ensure_cargo_deb(project)
    });

    // The guest is no_std for x86_64-unknown-none: no test targets to lint.
    let lints = [
        (project.cargo(), "fmt --all --check"),
        (
            project.cargo(),
            "clippy --workspace --all-targets -- -D warnings",
        ),
        (project.guest_cargo(), "fmt --check"),
        (project.guest_cargo(), "clippy --workspace -- -D warnings"),
    ];
    for (mut cmd, args) in lints {
        let guest = cmd.get_current_dir() == Some(project.guest_dir().as_path());
        let what = format!("{}cargo {args}", if guest { "guest: " } else { "" });
        cmd.args(args.split_whitespace());
        steps.run(&what, || project::run(&mut cmd, &what));
    }

    steps.run("guest build", || guest::build(project));
    steps.run("host build", || host::build(project, Profile::Debug, false));
    steps.run("shim build", || oci::build_shim(project).map(drop));
    steps.run("daemon build", || {
        host::build_daemon(project, Profile::Debug).map(drop)
    });
    steps.run("OCI images of the test apps", || {
        oci::test_images(project).map(drop)
    });

    // The tests run whatever failed before: those that can pass still do,
    // and those that cannot say why.
    let guest_dir = project.guest_image_dir();
    let bin = project.host_bin(Profile::Debug);
    let mut cmd = project.cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .env("TANDEM_GUEST_DIR", &guest_dir)
        .env("TANDEM_BIN", &bin)
        .env("TANDEM_SHIM", oci::shim_bin(project))
        .env("TANDEM_DAEMON", host::daemon_bin(project, Profile::Debug))
        .env("TANDEM_OCI_DIR", oci::test_image_dir(project));
    if !harness_args.is_empty() {
        cmd.arg("--").args(harness_args);
    }
    eprintln!(
        "TANDEM_GUEST_DIR={} TANDEM_BIN={}",
        guest_dir.display(),
        bin.display()
    );
    let mut report = TestReport::default();
    steps.run("cargo test --workspace --no-fail-fast", || {
        let (status, output) = run_teed(cmd)?;
        report = test_report::parse(&output);
        // Failed tests are named one by one in the summary; a failure with
        // none to name (a build error) is named as the step's.
        if report.failed > 0 || !report.unfinished.is_empty() {
            return Ok(());
        }
        project::check(status, "cargo test --workspace --no-fail-fast")
    });

    let summary = test_report::summary(&steps.0, &report, start.elapsed().as_secs_f64());
    println!("\n{summary}");
    let failed = !steps.0.is_empty() || report.failed > 0 || !report.unfinished.is_empty();
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `cmd` with its stdout and stderr on one pipe (so cargo's `Running`
/// lines stay in order with the tests' output), copying everything to our
/// stdout as it comes and returning it too.
fn run_teed(mut cmd: Command) -> Result<(std::process::ExitStatus, String)> {
    let (mut reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    cmd.stdout(writer.try_clone().context("cannot clone a pipe")?)
        .stderr(writer);
    project::echo(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    // The command holds our copies of the pipe's write end: without dropping
    // it the read below would never see the end.
    drop(cmd);
    let mut captured = Vec::new();
    let mut buf = [0u8; 8192];
    let mut out = std::io::stdout();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the output of cargo test"),
        };
        // Nothing useful to do if our own stdout is gone: keep capturing.
        let _ = out.write_all(&buf[..n]);
        let _ = out.flush();
        captured.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status, String::from_utf8_lossy(&captured).into_owned()))
}
