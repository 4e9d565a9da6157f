//! `cargo xtask dist` (man pages and shell completions from the clap
//! definitions of the binaries) and `cargo xtask deb` (the Debian package of
//! `[package.metadata.deb]` in host/Cargo.toml, with cargo-deb).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::project::{self, Profile, Project};

/// The argument that makes a binary write its man pages and completions
/// (`tandem __generate-docs DIR`, read before its command line is parsed).
pub const GENERATE_DOCS: &str = "__generate-docs";

/// The binaries whose documents go in the package.
pub const DOCUMENTED: &[&str] = &["tandem", "tandemd"];

/// The cargo-deb version `cargo xtask deb` installs when it is missing.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where the generated documents go: `target/dist` of the repository, the
/// path `[package.metadata.deb]` names (whatever `CARGO_TARGET_DIR` says).
pub fn dist_dir(project: &Project) -> PathBuf {
    project.root().join("target/dist")
}

/// Writes `DIR/man/*.{1,8}` and `DIR/completions/{bash,zsh,fish}/*` for
/// every documented binary of `profile`, which must be built.
pub fn generate(project: &Project, profile: Profile, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for bin in DOCUMENTED {
        let path = project.target_dir().join(profile.dir()).join(bin);
        let mut cmd = Command::new(&path);
        cmd.arg(GENERATE_DOCS).arg(dir);
        project::run(&mut cmd, &format!("{bin} {GENERATE_DOCS}"))?;
    }
    Ok(())
}

/// `cargo xtask dist`: build the binaries, then write their documents.
pub fn dist(project: &Project, profile: Profile, out: Option<PathBuf>) -> Result<PathBuf> {
    crate::host::build(project, profile, false)?;
    crate::host::build_daemon(project, profile)?;
    let dir = out.unwrap_or_else(|| dist_dir(project));
    generate(project, profile, &dir)?;
    println!("man pages and completions in {}", project.show(&dir));
    Ok(dir)
}

fn have_cargo_deb(project: &Project) -> bool {
    project
        .cargo()
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs cargo-deb with `cargo install` when `cargo deb` is missing.
pub fn ensure_cargo_deb(project: &Project) -> Result<()> {
    if have_cargo_deb(project) {
        return Ok(());
    }
    eprintln!("xtask: cargo-deb is missing; installing it with `cargo install cargo-deb --locked`");
    project::run_downloading(
        || {
            let mut cmd = project.cargo();
            // Its own target dir: the workspace's stays the workspace's.
            cmd.env_remove("CARGO_TARGET_DIR").args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ]);
            cmd
        },
        "cargo install cargo-deb",
    )
}

/// What the packaging tests check with (tests/packaging.rs).
pub const PACKAGING_TOOLS: &[(&str, &str)] =
    &[("systemd-analyze", "systemd"), ("dpkg-deb", "dpkg")];

/// `cargo xtask deb`: release builds of `tandem`, `tandemd` and the shim, their
/// documents, then `cargo deb -p tandem --no-build`; the package's path.
pub fn deb(project: &Project, out: Option<PathBuf>) -> Result<PathBuf> {
    ensure_cargo_deb(project)?;
    let mut cmd = project.cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "tandem",
        "-p",
        "tandem-daemon",
        "-p",
        "tandem-shim",
        "--bins",
    ]);
    project::run(&mut cmd, "release build of the packaged binaries")?;
    generate(project, Profile::Release, &dist_dir(project))?;
    let out = out.unwrap_or_else(|| project.target_dir().join("debian"));
    build_deb(project, Profile::Release, &out)
}

/// `cargo deb -p tandem --no-build` of what `profile` built, into `out`.
pub fn build_deb(project: &Project, profile: Profile, out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cmd = project.cargo();
    cmd.args(["deb", "-p", "tandem", "--no-build", "--output"])
        .arg(out);
    if profile == Profile::Debug {
        cmd.args(["--profile", "dev", "--fast"]);
    }
    cmd.stdout(Stdio::piped());
    project::echo(&cmd);
    let output = cmd.output().context("cannot start cargo deb")?;
    project::check(output.status, "cargo deb")?;
    // cargo deb prints the package's path.
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not say where the package went")?;
    println!("package: {}", project.show(&path));
    Ok(path)
}
