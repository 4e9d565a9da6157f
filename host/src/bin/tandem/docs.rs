//! Man pages and shell completions from the command line's own clap
//! definition, so they never drift from `--help`: `tandem __generate-docs
//! DIR` (what `cargo xtask dist` runs). It is read before clap parses the
//! command line, so it appears in no help, man page or completion.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// The shells completions are made for, and the file each one's goes to.
pub const SHELLS: &[(Shell, &str)] = &[
    (Shell::Bash, "bash"),
    (Shell::Zsh, "zsh"),
    (Shell::Fish, "fish"),
];

/// The argument that asks for the documents instead of a command.
pub const GENERATE_DOCS: &str = "__generate-docs";

/// `DIR` when the command line is exactly `tandem __generate-docs DIR`.
pub fn requested() -> Option<PathBuf> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == GENERATE_DOCS => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// [`generate`], as the process's outcome.
pub fn run(cmd: clap::Command, dir: &Path) -> ExitCode {
    match generate(cmd, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: error: {e:#}");
            ExitCode::from(tandem::exit_code::VMM_ERROR)
        }
    }
}

/// Writes `DIR/man/NAME.1` (and `NAME-SUB.1` per subcommand) and
/// `DIR/completions/{bash,zsh,fish}/...` for `cmd`.
pub fn generate(mut cmd: clap::Command, dir: &Path) -> Result<()> {
    let name = cmd.get_name().to_string();
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    cmd.build();
    man_pages(&cmd, &man)?;
    for (shell, sub) in SHELLS {
        let out = dir.join("completions").join(sub);
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        clap_complete::generate_to(*shell, &mut cmd, &name, &out)
            .with_context(|| format!("cannot write {sub} completions into {}", out.display()))?;
    }
    Ok(())
}

/// One page for `cmd` and one per subcommand, all the way down, but for
/// hidden ones and clap's `help` (whose pages would only repeat the others).
fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            man_pages(sub, dir)?;
        }
    }
    clap_mangen::Man::new(cmd.clone())
        .generate_to(dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(())
}
