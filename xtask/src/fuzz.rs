//! `cargo xtask fuzz TARGET [--time SECONDS]`: one cargo-fuzz target under
//! libFuzzer (nightly), from fresh seeds, reporting executions and crashes.
//! A crash is copied to `fuzz/regressions/TARGET/`, which `cargo xtask test`
//! replays on stable Rust (tests/fuzz.rs) once it is fixed and committed.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::project::{self, Profile, Project};
use crate::{guest, host};

/// Target names: the files in fuzz/fuzz_targets/.
pub fn targets(project: &Project) -> Result<Vec<String>> {
    let dir = project.root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn have_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes fresh seeds (generated, plus the current hello image and, when
/// present, a snapshot and a backup point made by the caller).
fn write_seeds(project: &Project) -> Result<()> {
    guest::build(project)?;
    host::build(project, Profile::Release, true)?;
    let hello = guest::image(project, "hello")?;
    let mut cmd = Command::new(project.host_example(Profile::Release, "fuzz_seeds"));
    cmd.arg(project.root().join("fuzz/corpus")).arg(&hello);
    // A real snapshot and backup point of a small app, for their targets.
    let scratch = project.target_dir().join("fuzz-seeds");
    let _ = std::fs::remove_dir_all(&scratch);
    let snap = scratch.join("snapshot");
    let backups = scratch.join("backups");
    let clock = guest::image(project, "clock")?;
    let tandem = project.host_bin(Profile::Release);
    let made_snapshot = Command::new(&tandem)
        .arg("run")
        .arg(&clock)
        .arg("--snapshot-at-ready")
        .arg(&snap)
        .args(["--exit-after-snapshot", "-q"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let made_backup = Command::new(&tandem)
        .arg("run")
        .arg(&clock)
        .arg("--backup-dir")
        .arg(&backups)
        .args(["--backup-every", "1ms", "-q"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made_snapshot {
        cmd.arg(snap.join("state"));
        if made_backup {
            cmd.arg(backups.join("point-000000.meta"));
        }
    }
    project::run(&mut cmd, "writing fuzz seeds")
}

pub fn fuzz(project: &Project, target: &str, seconds: u64) -> Result<()> {
    let known = targets(project)?;
    if !known.iter().any(|t| t == target) {
        bail!(
            "unknown fuzz target `{target}`; targets: {}",
            known.join(", ")
        );
    }
    if !have_nightly() {
        eprintln!("xtask: cargo-fuzz needs the nightly toolchain; installing it with rustup");
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        project::run(&mut cmd, "rustup toolchain install nightly")?;
    }
    if !have_cargo_fuzz() {
        eprintln!("xtask: installing cargo-fuzz with `cargo install cargo-fuzz`");
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "cargo-fuzz", "--locked"]);
        project::run(&mut cmd, "cargo install cargo-fuzz")?;
    }
    write_seeds(project)?;

    let artifacts = project.root().join("fuzz/artifacts").join(target);
    let before = list(&artifacts);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(project.root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .stderr(Stdio::piped());
    project::echo(&cmd);
    let out = cmd.output().context("cannot run cargo fuzz")?;
    let log = String::from_utf8_lossy(&out.stderr);
    let log_path = project.target_dir().join(format!("fuzz-{target}.log"));
    std::fs::write(&log_path, log.as_bytes()).ok();
    let stat = |key: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "fuzz {target}: {} executions in {} s ({} per second), peak RSS {} MB; log {}",
        stat("stat::number_of_executed_units:"),
        seconds,
        stat("stat::average_exec_per_sec:"),
        stat("stat::peak_rss_mb:"),
        project.show(&log_path)
    );
    let crashes: Vec<_> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !crashes.is_empty() {
        let regressions = project.root().join("fuzz/regressions").join(target);
        std::fs::create_dir_all(&regressions)?;
        for crash in &crashes {
            if let Some(name) = crash.file_name() {
                std::fs::copy(crash, regressions.join(name))?;
            }
        }
        bail!(
            "{} crashing input(s) for {target}, copied to {}: fix the decoder, then commit them (cargo xtask test replays them)",
            crashes.len(),
            project.show(&regressions)
        );
    }
    if !out.status.success() {
        bail!(
            "cargo fuzz failed ({}); see {}",
            project::describe(out.status),
            project.show(&log_path)
        );
    }
    Ok(())
}

fn list(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}
