//! Building the host crate (`tandem`: the VMM binary and its examples).

use std::path::PathBuf;

use anyhow::Result;

use crate::project::{self, Profile, Project, LEAN_PROFILE, LEAN_TARGET};
use crate::toolchain;

/// `cargo build -p tandem --bins [--examples]` in the given profile.
pub fn build(project: &Project, profile: Profile, examples: bool) -> Result<()> {
    let mut cmd = project.cargo();
    cmd.args(["build", "-p", "tandem", "--bins"]);
    if examples {
        cmd.arg("--examples");
    }
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    project::run(&mut cmd, "host build")
}

/// What the daemon's tests need besides the daemon: `curl` knocks on its
/// socket as another uid (`setpriv`, in `qemu::NET_TOOLS`).
pub const DAEMON_TOOLS: &[(&str, &str)] = &[("curl", "curl")];

/// `cargo build -p tandem-daemon` (the `tandemd` binary) in the given
/// profile; returns the binary's path.
pub fn build_daemon(project: &Project, profile: Profile) -> Result<std::path::PathBuf> {
    let mut cmd = project.cargo();
    cmd.args(["build", "-p", "tandem-daemon", "--bins"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    project::run(&mut cmd, "daemon build")?;
    Ok(daemon_bin(project, profile))
}

/// Where [`build_daemon`] puts `tandemd`.
pub fn daemon_bin(project: &Project, profile: Profile) -> std::path::PathBuf {
    project.target_dir().join(profile.dir()).join("tandemd")
}

/// The lean build of the VMM binary: `--profile lean` for
/// `x86_64-unknown-linux-musl`, static and not position-independent: no
/// dynamic loader, no shared libraries, no start-up relocations and no NSS
/// (musl reads `/etc/passwd` itself). Adds the target with rustup when it
/// is missing. The flags reach only the target's crates (with `--target`,
/// build scripts and proc macros are built without them).
pub fn build_lean(project: &Project) -> Result<PathBuf> {
    toolchain::ensure_target(project, LEAN_TARGET)?;
    let mut cmd = project.cargo();
    cmd.args([
        "build",
        "-p",
        "tandem",
        "--bins",
        "--profile",
        LEAN_PROFILE,
        "--target",
        LEAN_TARGET,
    ]);
    cmd.env(
        "RUSTFLAGS",
        "-C relocation-model=static -C target-feature=+crt-static",
    );
    project::run(&mut cmd, "lean host build")?;
    Ok(project.host_bin_lean())
}
