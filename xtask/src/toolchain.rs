//! The Rust toolchain the builds need: the guest target's standard library
//! and the lint components (rustfmt, clippy) that `rust-toolchain.toml`
//! lists. rustup adds them on first use only when auto-install is on, and
//! these machines set `RUSTUP_AUTO_INSTALL=0`, so xtask probes the sysroot
//! and adds what is missing itself, as it does for Debian packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project::{self, Project, GUEST_TARGET};

/// The toolchain file rustup reads, looked up from the guest workspace
/// upwards (the legacy name `rust-toolchain` too).
const TOOLCHAIN_FILES: &[&str] = &["rust-toolchain.toml", "rust-toolchain"];

/// Lint tools of `cargo xtask test`: each rustup component with the binary
/// of the toolchain's `bin/` that shows it is installed.
const LINT_COMPONENTS: &[(&str, &str)] = &[("rustfmt", "cargo-fmt"), ("clippy", "cargo-clippy")];

/// What is missing from the toolchain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    Target(&'static str),
    Components(Vec<&'static str>),
}

/// What to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Print `announce`, then run `rustup` with `args`.
    Rustup { announce: String, args: Vec<String> },
    /// Fail with this message.
    Fail(String),
}

/// The `channel` of a `rust-toolchain.toml` (`[toolchain] channel = "..."`),
/// or the whole text of a legacy one-line `rust-toolchain` file.
pub fn parse_channel(text: &str) -> Option<String> {
    let mut in_toolchain = false;
    let mut saw_section = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            saw_section = true;
            in_toolchain = line == "[toolchain]";
            continue;
        }
        if !in_toolchain {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "channel" {
            continue;
        }
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))?;
        return (!unquoted.is_empty()).then(|| unquoted.to_owned());
    }
    if saw_section {
        return None;
    }
    // Legacy format: the file is just the channel name.
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(channel), None) if !channel.contains('=') => Some(channel.to_owned()),
        _ => None,
    }
}

/// The toolchain that builds here. An explicit `RUSTUP_TOOLCHAIN` (from
/// `cargo +name` or the environment) overrides the toolchain file, and is
/// what every child cargo and rustc inherit; one that rustup itself set from
/// the file (`RUSTUP_TOOLCHAIN_SOURCE=toolchain-file`) names the same
/// toolchain as the file's channel, which reads better.
pub fn pick_toolchain(
    env_toolchain: Option<&str>,
    env_source: Option<&str>,
    file_channel: Option<&str>,
) -> Option<String> {
    match (env_toolchain, file_channel) {
        (Some(_), Some(file)) if env_source == Some("toolchain-file") => Some(file.to_owned()),
        (Some(env), _) if !env.is_empty() => Some(env.to_owned()),
        (_, file) => file.map(str::to_owned),
    }
}

/// Whether a sysroot holds the standard library of `target` (its `core`).
pub fn has_target(sysroot: &Path, target: &str) -> bool {
    let lib = sysroot.join("lib/rustlib").join(target).join("lib");
    std::fs::read_dir(lib)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false)
}

/// The lint components a sysroot lacks.
pub fn missing_components(sysroot: &Path) -> Vec<&'static str> {
    LINT_COMPONENTS
        .iter()
        .filter(|(_, bin)| !sysroot.join("bin").join(bin).is_file())
        .map(|(component, _)| *component)
        .collect()
}

/// Decides how to add what is missing: with rustup when it is on PATH, else
/// a failure that names the command to run.
pub fn decide(missing: &Missing, toolchain: Option<&str>, rustup_on_path: bool) -> Action {
    let mut args: Vec<String> = match missing {
        Missing::Target(_) => vec!["target".into(), "add".into()],
        Missing::Components(_) => vec!["component".into(), "add".into()],
    };
    if let Some(toolchain) = toolchain {
        args.extend(["--toolchain".into(), toolchain.to_owned()]);
    }
    let (what, names) = match missing {
        Missing::Target(target) => (format!("the Rust target {target}"), vec![*target]),
        Missing::Components(names) => (
            format!("the Rust components {}", names.join(", ")),
            names.clone(),
        ),
    };
    args.extend(names.iter().map(|n| (*n).to_owned()));
    let command = format!("rustup {}", args.join(" "));
    let for_toolchain = toolchain
        .map(|t| format!(" for toolchain {t}"))
        .unwrap_or_default();
    if rustup_on_path {
        Action::Rustup {
            announce: format!("xtask: installing {what}{for_toolchain} ({command})"),
            args,
        }
    } else {
        let otherwise = match missing {
            Missing::Target(target) => format!("the rust-std package for {target}"),
            Missing::Components(names) => format!("the packages of {}", names.join(" and ")),
        };
        Action::Fail(format!(
            "{what} is not installed{for_toolchain}, and rustup is not on PATH to add it.\n\
             Install it with: {command}\n\
             (a toolchain not managed by rustup needs its own way, for example your \
             distribution's {otherwise})"
        ))
    }
}

/// The toolchain facts the decisions need, read once.
struct Probe {
    sysroot: PathBuf,
    toolchain: Option<String>,
}

impl Probe {
    fn read(project: &Project) -> Result<Self> {
        let guest = project.guest_dir();
        // The rustc the guest cargo runs: same directory, same environment.
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let out = Command::new(&rustc)
            .args(["--print", "sysroot"])
            .current_dir(&guest)
            .output()
            .with_context(|| format!("cannot run {rustc:?} --print sysroot"))?;
        if !out.status.success() {
            bail!(
                "`rustc --print sysroot` failed in {} ({}):\n{}",
                project.show(&guest),
                project::describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let file_channel = toolchain_file(&guest)
            .map(|path| {
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
            })
            .transpose()?
            .as_deref()
            .and_then(parse_channel);
        let env_toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
        let env_source = std::env::var("RUSTUP_TOOLCHAIN_SOURCE").ok();
        let toolchain = pick_toolchain(
            env_toolchain.as_deref(),
            env_source.as_deref(),
            file_channel.as_deref(),
        );
        Ok(Probe { sysroot, toolchain })
    }
}

/// The nearest toolchain file at or above `dir`.
fn toolchain_file(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .flat_map(|d| TOOLCHAIN_FILES.iter().map(move |f| d.join(f)))
        .find(|p| p.is_file())
}

/// Makes sure the toolchain that builds the guest has its target.
pub fn ensure_guest_target(project: &Project) -> Result<()> {
    ensure_target(project, GUEST_TARGET)
}

/// Makes sure the toolchain (the workspace's one `rust-toolchain.toml`)
/// has the standard library of `target`, adding it with rustup if not.
pub fn ensure_target(project: &Project, target: &'static str) -> Result<()> {
    let probe = Probe::read(project)?;
    if has_target(&probe.sysroot, target) {
        return Ok(());
    }
    apply(&probe, &Missing::Target(target))?;
    if !has_target(&Probe::read(project)?.sysroot, target) {
        bail!(
            "{target} is still missing from {} after rustup added it",
            probe.sysroot.display()
        );
    }
    Ok(())
}

/// Makes sure rustfmt and clippy are installed for the lints.
pub fn ensure_lint_components(project: &Project) -> Result<()> {
    let probe = Probe::read(project)?;
    let missing = missing_components(&probe.sysroot);
    if missing.is_empty() {
        return Ok(());
    }
    apply(&probe, &Missing::Components(missing))?;
    let still = missing_components(&Probe::read(project)?.sysroot);
    if !still.is_empty() {
        bail!(
            "{} still missing from {} after rustup added them",
            still.join(", "),
            probe.sysroot.display()
        );
    }
    Ok(())
}

fn apply(probe: &Probe, missing: &Missing) -> Result<()> {
    match decide(
        missing,
        probe.toolchain.as_deref(),
        project::on_path("rustup"),
    ) {
        Action::Rustup { announce, args } => {
            eprintln!("{announce}");
            project::run_downloading(
                || {
                    let mut cmd = Command::new("rustup");
                    cmd.args(&args);
                    cmd
                },
                "rustup",
            )
        }
        Action::Fail(message) => bail!("{message}\n(sysroot: {})", probe.sysroot.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_parsed() {
        let toml = "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"x86_64-unknown-none\"]\n";
        assert_eq!(parse_channel(toml).as_deref(), Some("1.95.0"));
        let commented = "# pinned\n[toolchain]\n  channel='nightly-2026-01-01' # why\n";
        assert_eq!(
            parse_channel(commented).as_deref(),
            Some("nightly-2026-01-01")
        );
        assert_eq!(parse_channel("stable\n").as_deref(), Some("stable"));
        assert_eq!(parse_channel("[toolchain]\nprofile = \"minimal\"\n"), None);
        assert_eq!(parse_channel("[other]\nchannel = \"1.0\"\n"), None);
    }

    #[test]
    fn toolchain_env_overrides_file_unless_it_came_from_it() {
        let full = Some("1.95.0-x86_64-unknown-linux-gnu");
        assert_eq!(
            pick_toolchain(full, Some("toolchain-file"), Some("1.95.0")).as_deref(),
            Some("1.95.0")
        );
        assert_eq!(
            pick_toolchain(Some("nightly"), Some("env"), Some("1.95.0")).as_deref(),
            Some("nightly")
        );
        assert_eq!(
            pick_toolchain(None, None, Some("1.95.0")).as_deref(),
            Some("1.95.0")
        );
        assert_eq!(pick_toolchain(None, None, None), None);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-toolchain-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_target_is_detected() {
        let sysroot = scratch("sysroot");
        let host_lib = sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/lib");
        std::fs::create_dir_all(&host_lib).unwrap();
        std::fs::write(host_lib.join("libcore-0123abcd.rlib"), b"").unwrap();
        // An empty folder (a half-removed target) is not the target either.
        let guest_lib = sysroot.join("lib/rustlib").join(GUEST_TARGET).join("lib");
        std::fs::create_dir_all(&guest_lib).unwrap();
        assert!(has_target(&sysroot, "x86_64-unknown-linux-gnu"));
        assert!(!has_target(&sysroot, GUEST_TARGET));
        std::fs::write(guest_lib.join("libcore-4567ef.rlib"), b"").unwrap();
        assert!(has_target(&sysroot, GUEST_TARGET));
        assert_eq!(missing_components(&sysroot), vec!["rustfmt", "clippy"]);
        std::fs::create_dir_all(sysroot.join("bin")).unwrap();
        std::fs::write(sysroot.join("bin/cargo-fmt"), b"").unwrap();
        assert_eq!(missing_components(&sysroot), vec!["clippy"]);
        std::fs::remove_dir_all(&sysroot).unwrap();
    }

    #[test]
    fn a_missing_target_is_added_with_rustup() {
        let action = decide(&Missing::Target(GUEST_TARGET), Some("1.95.0"), true);
        assert_eq!(
            action,
            Action::Rustup {
                announce: "xtask: installing the Rust target x86_64-unknown-none for toolchain \
                           1.95.0 (rustup target add --toolchain 1.95.0 x86_64-unknown-none)"
                    .into(),
                args: ["target", "add", "--toolchain", "1.95.0", GUEST_TARGET]
                    .map(String::from)
                    .to_vec(),
            }
        );
        let Action::Rustup { args, .. } = decide(
            &Missing::Components(vec!["rustfmt", "clippy"]),
            Some("1.95.0"),
            true,
        ) else {
            panic!("rustup is on PATH");
        };
        assert_eq!(
            args,
            [
                "component",
                "add",
                "--toolchain",
                "1.95.0",
                "rustfmt",
                "clippy"
            ]
            .map(String::from)
        );
    }

    #[test]
    fn no_rustup_gives_the_message_with_the_command() {
        let Action::Fail(message) = decide(&Missing::Target(GUEST_TARGET), Some("1.95.0"), false)
        else {
            panic!("without rustup nothing can be run");
        };
        assert!(
            message.contains("rustup target add --toolchain 1.95.0 x86_64-unknown-none"),
            "{message}"
        );
        assert!(message.contains("rustup is not on PATH"), "{message}");
        let Action::Fail(message) = decide(&Missing::Components(vec!["clippy"]), None, false)
        else {
            panic!("without rustup nothing can be run");
        };
        assert!(message.contains("rustup component add clippy"), "{message}");
    }
}
