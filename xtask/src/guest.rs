//! Building the guest workspace and finding its images.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::project::{self, Project, GUEST_TARGET};
use crate::toolchain;

/// Compiler messages that mean the standard library for the guest target is
/// not installed.
const MISSING_TARGET_SIGNS: &[&str] = &[
    "can't find crate for `core`",
    "can't find crate for `compiler_builtins`",
    "target may not be installed",
];

/// Builds every guest app (release), after adding the guest target to the
/// toolchain when it lacks it. Cargo's messages are passed through and also
/// scanned, so a target that is still missing gets a hint instead of only a
/// wall of compiler errors.
pub fn build(project: &Project) -> Result<()> {
    let guest = project.guest_dir();
    if !guest.join("Cargo.toml").is_file() {
        bail!("no guest workspace at {}", guest.display());
    }
    toolchain::ensure_guest_target(project)?;
    let mut cmd = project.guest_cargo();
    cmd.args(["build", "--release"]);
    // Cargo's stderr is a pipe here: keep its colours when ours is a terminal.
    if std::env::var_os("CARGO_TERM_COLOR").is_none() && std::io::stderr().is_terminal() {
        cmd.args(["--color", "always"]);
    }
    cmd.stderr(Stdio::piped());
    project::echo(&cmd);
    let mut child = cmd
        .spawn()
        .context("cannot start cargo for the guest build")?;

    let mut missing_target = false;
    if let Some(stderr) = child.stderr.take() {
        let mut out = std::io::stderr().lock();
        for line in BufReader::new(stderr).split(b'\n') {
            let line = line.context("reading cargo's output")?;
            let text = String::from_utf8_lossy(&line);
            missing_target |= MISSING_TARGET_SIGNS.iter().any(|s| text.contains(s));
            // Nothing useful to do if our own stderr is gone.
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
        }
    }
    let status = child.wait().context("waiting for the guest build")?;
    if status.success() {
        return Ok(());
    }
    if missing_target {
        bail!(
            "guest build failed: the Rust standard library for {GUEST_TARGET} is not installed.\n\
             Fix: `rustup target add {GUEST_TARGET}` for the toolchain that built it (xtask \
             adds it to the toolchain of rust-toolchain.toml; one picked otherwise, or not \
             managed by rustup, needs it added by hand)."
        );
    }
    bail!("guest build failed ({})", project::describe(status))
}

/// The release image of one app, which must have been built.
pub fn image(project: &Project, app: &str) -> Result<PathBuf> {
    let path = project.guest_image_dir().join(app);
    if path.is_file() {
        return Ok(path);
    }
    let apps = images(project)?;
    if apps.is_empty() {
        bail!(
            "no guest images in {}",
            project.show(&project.guest_image_dir())
        );
    }
    let names: Vec<&str> = apps.iter().map(|(name, _)| name.as_str()).collect();
    bail!(
        "no guest app named `{app}` (built apps: {})",
        names.join(", ")
    )
}

/// Every built image: executable files in the release folder, by name.
pub fn images(project: &Project) -> Result<Vec<(String, PathBuf)>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = project.guest_image_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let meta = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Cargo also leaves `.d` dep-info and `.rlib` files there.
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 && !name.contains('.') {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Prints where the images are.
pub fn print_images(project: &Project) -> Result<()> {
    let apps = images(project)?;
    println!(
        "guest images ({GUEST_TARGET}, release) in {}:",
        project.show(&project.guest_image_dir())
    );
    for (name, path) in &apps {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("  {name:<12} {size:>9} bytes");
    }
    Ok(())
}
