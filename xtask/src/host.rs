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
