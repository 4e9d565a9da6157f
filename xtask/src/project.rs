//! Where things are in the repository, how to call cargo, and the checks that
//! every command needs before it touches KVM.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};

/// The target the guest is built for; `guest/.cargo/config.toml` selects it.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";
/// Target of the lean (static, musl) build of the VMM that `cargo xtask
/// bench` measures next to the default one.
pub const LEAN_TARGET: &str = "x86_64-unknown-linux-musl";
/// Cargo profile of the lean build (`[profile.lean]` in Cargo.toml).
pub const LEAN_PROFILE: &str = "lean";

/// Cargo profile of the host build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The folder cargo puts this profile's artefacts in.
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Paths of the repository, resolved once.
pub struct Project {
    root: PathBuf,
    /// The root workspace's target directory (honours `CARGO_TARGET_DIR`).
    target: PathBuf,
    cargo: PathBuf,
}

impl Project {
    pub fn locate() -> Result<Self> {
        // xtask/ sits directly under the repository root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent folder")?
            .to_path_buf();
        // A relative CARGO_TARGET_DIR is relative to where the user ran cargo;
        // make it absolute because every child cargo runs from the root.
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => std::env::current_dir()
                .context("current directory")?
                .join(dir),
            _ => root.join("target"),
        };
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("cargo"));
        Ok(Project {
            root,
            target,
            cargo,
        })
    }

    pub fn target_dir(&self) -> &Path {
        &self.target
    }

    /// The `tandem` VMM binary of a host build.
    pub fn host_bin(&self, profile: Profile) -> PathBuf {
        self.target.join(profile.dir()).join("tandem")
    }

    /// The `tandem` binary of the lean build (`host::build_lean`).
    pub fn host_bin_lean(&self) -> PathBuf {
        self.target
            .join(LEAN_TARGET)
            .join(LEAN_PROFILE)
            .join("tandem")
    }

    /// An example binary of the `tandem` crate (release or debug).
    pub fn host_example(&self, profile: Profile, name: &str) -> PathBuf {
        self.target.join(profile.dir()).join("examples").join(name)
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The guest workspace.
    pub fn guest_dir(&self) -> PathBuf {
        self.root.join("guest")
    }

    /// Where the release guest images (one ELF per app) come out.
    pub fn guest_image_dir(&self) -> PathBuf {
        self.guest_dir()
            .join("target")
            .join(GUEST_TARGET)
            .join("release")
    }

    /// `$CARGO` running in the root workspace.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root)
            .env("CARGO_TARGET_DIR", &self.target);
        cmd
    }

    /// `$CARGO` running in the guest workspace, with its own target folder
    /// (`guest/target`) whatever `CARGO_TARGET_DIR` says, so images are always
    /// where the docs and the tests look for them.
    pub fn guest_cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(self.guest_dir())
            .env("CARGO_TARGET_DIR", self.guest_dir().join("target"));
        cmd
    }

    /// `$CARGO run` of the code generator (`tools/codegen`, a workspace of
    /// its own with its own target folder, so its protobuf compiler stays out
    /// of every other build), locked to its `Cargo.lock`; `args` go to it.
    pub fn codegen(&self, args: &[&str]) -> Command {
        let dir = self.root.join("tools/codegen");
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .args(["run", "--quiet", "--locked", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .arg("--")
            .args(args);
        cmd
    }

    /// A path for messages: relative to the root when it is inside it.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// Fails with a message saying how to fix it unless `/dev/kvm` can be opened
/// for reading and writing (opening it creates no VM).
pub fn require_kvm() -> Result<()> {
    const KVM: &str = "/dev/kvm";
    match OpenOptions::new().read(true).write(true).open(KVM) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{KVM} does not exist: KVM is not available on this machine.\n\
             Tandem needs Linux on x86_64 with KVM. To fix it:\n  \
             - load the module: `sudo modprobe kvm_intel` (Intel) or `sudo modprobe kvm_amd` (AMD);\n  \
             - enable virtualisation (VT-x / AMD-V) in the firmware settings;\n  \
             - inside a cloud VM, use an instance type with nested virtualisation."
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "{KVM} exists but this user cannot open it for reading and writing.\n\
             To fix it: `sudo usermod -aG kvm \"$USER\"`, then log out and in again \
             (or run `newgrp kvm`).\n\
             Check with: ls -l {KVM}"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open {KVM}")),
    }
}

/// Whether `program` is a file in one of PATH's folders.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Prints the command line the way a shell would show it.
pub fn echo(cmd: &Command) {
    let mut line = String::from("$");
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!(" (cd {} &&", dir.display()));
    }
    line.push(' ');
    // `$CARGO` is a long toolchain path; the name says enough.
    let program = Path::new(cmd.get_program());
    if program.file_name().is_some_and(|n| n == "cargo") {
        line.push_str("cargo");
    } else {
        line.push_str(&program.to_string_lossy());
    }
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) || arg.contains('"') {
            line.push_str(&format!(" {arg:?}"));
        } else {
            line.push(' ');
            line.push_str(&arg);
        }
    }
    if cmd.get_current_dir().is_some() {
        line.push(')');
    }
    eprintln!("{line}");
}

/// Runs a command with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    echo(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    check(status, what)
}

/// Waits between the tries of [`run_downloading`]: a download from a
/// package registry can fail for a minute while the network recovers, and a
/// fresh machine that gives up on the first try fails every later step.
pub const DOWNLOAD_RETRY_WAITS: [std::time::Duration; 3] = [
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(20),
    std::time::Duration::from_secs(60),
];

/// [`run`] for a command that downloads (rustup, apt-get): a failure is
/// tried again after each of `DOWNLOAD_RETRY_WAITS`, saying so; the last
/// failure is the error. `make` builds the command afresh for each try.
pub fn run_downloading(make: impl FnMut() -> Command, what: &str) -> Result<()> {
    run_retrying(make, what, &DOWNLOAD_RETRY_WAITS)
}

fn run_retrying(
    mut make: impl FnMut() -> Command,
    what: &str,
    retry_waits: &[std::time::Duration],
) -> Result<()> {
    let mut waits = retry_waits.iter();
    loop {
        match run(&mut make(), what) {
            Ok(()) => return Ok(()),
            Err(e) => match waits.next() {
                Some(wait) => {
                    eprintln!(
                        "xtask: {what} failed ({e:#}); the network may be down, trying again in {} s",
                        wait.as_secs()
                    );
                    std::thread::sleep(*wait);
                }
                None => {
                    return Err(e.context(format!(
                        "{what} failed {} times; is the package registry reachable?",
                        retry_waits.len() + 1
                    )))
                }
            },
        }
    }
}

pub fn check(status: ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("{what} failed ({})", describe(status))
    }
}

/// "exit code 3" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// The exit code a shell would report for this status (128 + signal when
/// the process was killed).
pub fn shell_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    u8::try_from(code & 0xff).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A command that fails until it has run `fail` times.
    fn flaky(counter: &Path, fail: u32) -> impl FnMut() -> Command + '_ {
        move || {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(format!(
                "n=$(cat {0} 2>/dev/null || echo 0); echo $((n+1)) > {0}; [ $n -ge {fail} ]",
                counter.display()
            ));
            cmd
        }
    }

    #[test]
    fn a_download_that_fails_twice_is_tried_again() {
        let dir = std::env::temp_dir().join(format!("xtask-retry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let counter = dir.join("a");
        let waits = [Duration::ZERO; 3];
        run_retrying(flaky(&counter, 2), "flaky", &waits).unwrap();
        assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");

        let counter = dir.join("b");
        let e = run_retrying(flaky(&counter, 10), "flaky", &waits).unwrap_err();
        assert!(format!("{e:#}").contains("failed 4 times"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "4");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
