//! `cargo xtask gdb APP [-- ARGS]`: boot APP under `tandem run --gdb` and
//! start gdb on its image, connected, at the guest's first instruction.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::project::{self, Profile, Project};
use crate::{guest, host, qemu};

/// How long tandem may take to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(20);
/// How long tandem may take to end once gdb has.
const END_WAIT: Duration = Duration::from_secs(3);

pub fn gdb(project: &Project, app: &str, cmdline: &str) -> Result<ExitCode> {
    project::require_kvm()?;
    qemu::ensure_tools(qemu::GDB_TOOLS)?;
    guest::build(project)?;
    let image = guest::image(project, app)?;
    host::build(project, Profile::Release, false)?;
    let socket = std::env::temp_dir().join(format!("tandem-gdb-{app}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);

    let mut tandem = Command::new(project.host_bin(Profile::Release));
    tandem
        .arg("run")
        .arg(&image)
        .arg("--gdb")
        .arg(format!("unix:{}", socket.display()));
    if !cmdline.is_empty() {
        tandem.arg("--cmdline").arg(cmdline);
    }
    // The terminal's input is gdb's.
    tandem.stdin(Stdio::null());
    project::echo(&tandem);
    let mut child = tandem.spawn().context("cannot start tandem")?;
    if let Err(e) = wait_for(&socket, &mut child) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }

    let mut gdb = Command::new("gdb");
    gdb.arg(&image)
        .arg("-ex")
        .arg(format!("target remote {}", socket.display()));
    project::echo(&gdb);
    let gdb_status = gdb.status().context("cannot start gdb");

    // gdb kills the guest when it quits while attached; a guest left running
    // (gdb detached) is given a moment, then stopped.
    let deadline = Instant::now() + END_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&socket);
    gdb_status?;
    Ok(ExitCode::from(project::shell_code(status)))
}

/// Waits until tandem listens at `socket` (or fails).
fn wait_for(socket: &Path, child: &mut std::process::Child) -> Result<()> {
    let deadline = Instant::now() + LISTEN_WAIT;
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "tandem ended before gdb could attach ({})",
                project::describe(status)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "tandem did not listen at {} within {LISTEN_WAIT:?}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
