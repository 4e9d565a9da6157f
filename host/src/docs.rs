//! Man pages and shell completions of a program from its own clap
//! definition, so they never drift from its `--help` (feature `docs`;
//! `cargo xtask dist` and the Debian package use them).
//!
//! A program asks [`requested`] first thing in `main`, before clap parses
//! its command line: `PROGRAM __generate-docs DIR` then writes the
//! documents instead of running, and the argument appears in no help, man
//! page or completion.
//!
//! ```no_run
//! # fn command() -> clap::Command { clap::Command::new("tandemd") }
//! if let Some(dir) = tandem::docs::requested() {
//!     std::process::exit(tandem::docs::run(command(), "8", &dir));
//! }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The argument that asks for the documents instead of a run.
pub const GENERATE_DOCS: &str = "__generate-docs";

/// The shells completions are made for, and the folder each one's go to.
pub const SHELLS: &[(Shell, &str)] = &[
    (Shell::Bash, "bash"),
    (Shell::Zsh, "zsh"),
    (Shell::Fish, "fish"),
];

/// What went wrong writing the documents.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// A file or folder could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// `DIR` when the command line is exactly `PROGRAM __generate-docs DIR`.
pub fn requested() -> Option<PathBuf> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == GENERATE_DOCS => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// [`generate`], as the process's exit code (an error said on stderr).
pub fn run(cmd: clap::Command, section: &str, dir: &Path) -> i32 {
    let name = cmd.get_name().to_string();
    match generate(cmd, section, dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            i32::from(crate::exit_code::VMM_ERROR)
        }
    }
}

/// Writes `DIR/man/NAME.SECTION` (and `NAME-SUB.SECTION` per subcommand)
/// and `DIR/completions/{bash,zsh,fish}/...` for `cmd`.
pub fn generate(mut cmd: clap::Command, section: &str, dir: &Path) -> Result<(), DocsError> {
    let name = cmd.get_name().to_string();
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DocsError::Write { path, source }
    };
    let man = dir.join("man");
    std::fs::create_dir_all(&man).map_err(write(&man))?;
    cmd.build();
    man_pages(&cmd, section, &man)?;
    for (shell, sub) in SHELLS {
        let out = dir.join("completions").join(sub);
        std::fs::create_dir_all(&out).map_err(write(&out))?;
        clap_complete::generate_to(*shell, &mut cmd, &name, &out).map_err(write(&out))?;
    }
    Ok(())
}

/// One page for `cmd` and one per subcommand, all the way down, but for
/// hidden ones and clap's `help` (whose pages would only repeat the others).
fn man_pages(cmd: &clap::Command, section: &str, dir: &Path) -> Result<(), DocsError> {
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            man_pages(sub, section, dir)?;
        }
    }
    let man = clap_mangen::Man::new(cmd.clone()).section(section);
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render(&mut out)
        .and_then(|()| std::fs::write(&path, out))
        .map_err(|source| DocsError::Write { path, source })
}
