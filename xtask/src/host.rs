//! Building the host crate (`tandem`: the VMM binary and its examples).

use anyhow::Result;

use crate::project::{self, Profile, Project};

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
