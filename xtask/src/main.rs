//! `cargo xtask`: build, run, test and benchmark Tandem.
//!
//! The guest is a cargo workspace of its own (built for `x86_64-unknown-none`),
//! so the commands here tie the two builds together. Cargo is always called
//! through `$CARGO`, the one that runs this program.

mod bench;
mod elf;
mod guest;
mod host;
mod project;
mod stats;
mod table;

use std::ffi::OsString;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use project::{Profile, Project};

const HELP: &str = "\
cargo xtask: build, run, test and benchmark Tandem

USAGE:
    cargo xtask <COMMAND> [OPTIONS]

COMMANDS:
    build [--debug]
        Build every guest app (release, x86_64-unknown-none) and the host
        (`tandem` binary and examples; release unless --debug).

    run [APP] [-- ARGS...]
        Build guest and host (release), then boot APP (default: hello) with
        `tandem run`; ARGS become the guest's command line. Exits with the
        guest's exit code.

    test [-- TEST-ARGS...]
        Check /dev/kvm, build the guest apps and the `tandem` binary, then run
        `cargo test --workspace` with TANDEM_GUEST_DIR and TANDEM_BIN set.
        TEST-ARGS go to the test harness (for example a test-name filter).

    bench [--runs N] [--warmup N] [--json FILE]
        Boot-time figures for the hello app: in process (examples/bench) and
        as whole processes, interleaved with a baseline process that only
        creates a VM and runs one instruction. N defaults to 200 runs and 3
        warm-up runs. Writes JSON to target/bench/boot.json unless --json.

    help
        Show this text.
";

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<ExitCode> {
    let mut args = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<Vec<String>, _>>()
        .map_err(|bad| anyhow::anyhow!("argument is not valid UTF-8: {bad:?}"))?
        .into_iter();
    let Some(command) = args.next() else {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    };
    let args: Vec<String> = args.collect();
    if args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
    {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    let project = Project::locate()?;
    match command.as_str() {
        "build" => build(&project, args),
        "run" => run(&project, args),
        "test" => test(&project, args),
        "bench" => bench_cmd(&project, args),
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}` (see `cargo xtask help`)"),
    }
}

/// Command-line words of one command: flags and positionals before `--`,
/// and everything after it.
struct Args {
    words: std::vec::IntoIter<String>,
    trailing: Vec<String>,
}

impl Args {
    fn new(mut all: Vec<String>) -> Self {
        let trailing = match all.iter().position(|a| a == "--") {
            Some(at) => {
                let rest = all.split_off(at + 1);
                all.pop();
                rest
            }
            None => Vec::new(),
        };
        Args {
            words: all.into_iter(),
            trailing,
        }
    }

    fn next(&mut self) -> Option<String> {
        self.words.next()
    }

    /// The value of `--name VALUE` or `--name=VALUE` when `word` is that flag.
    fn value(&mut self, word: &str, name: &str) -> Result<Option<String>> {
        if word == name {
            return self
                .words
                .next()
                .map(Some)
                .with_context(|| format!("{name} needs a value"));
        }
        Ok(word
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned))
    }
}

fn unexpected(command: &str, word: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "unexpected argument `{word}` for `cargo xtask {command}` (see `cargo xtask help`)"
    )
}

fn build(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut profile = Profile::Release;
    while let Some(word) = args.next() {
        match word.as_str() {
            "--debug" => profile = Profile::Debug,
            _ => return Err(unexpected("build", &word)),
        }
    }
    if let Some(word) = args.trailing.first() {
        return Err(unexpected("build", word));
    }
    guest::build(project)?;
    host::build(project, profile, true)?;
    println!();
    guest::print_images(project)?;
    println!("host VMM: {}", project.show(&project.host_bin(profile)));
    Ok(ExitCode::SUCCESS)
}

fn run(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut app = None;
    while let Some(word) = args.next() {
        if word.starts_with('-') || app.is_some() {
            return Err(unexpected("run", &word));
        }
        app = Some(word);
    }
    let app = app.unwrap_or_else(|| "hello".to_owned());

    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let image = guest::image(project, &app)?;

    let mut cmd = Command::new(project.host_bin(Profile::Release));
    cmd.arg("run").arg(&image);
    if !args.trailing.is_empty() {
        cmd.arg("--cmdline").arg(args.trailing.join(" "));
    }
    project::echo(&cmd);
    let status = cmd.status().with_context(|| {
        format!(
            "cannot start {}",
            project.show(&project.host_bin(Profile::Release))
        )
    })?;
    if !status.success() {
        eprintln!("tandem: {app} ended with {}", project::describe(status));
    }
    Ok(ExitCode::from(project::shell_code(status)))
}

fn test(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    if let Some(word) = args.next() {
        return Err(unexpected("test", &word));
    }
    let start = Instant::now();
    let result = test_steps(project, &args.trailing);
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!("\nxtask test: all steps passed in {secs:.1} s (guest build, host build, cargo test --workspace)");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            eprintln!("xtask test: FAILED after {secs:.1} s");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn test_steps(project: &Project, harness_args: &[String]) -> Result<()> {
    project::require_kvm()?;
    guest::build(project)?;
    host::build(project, Profile::Debug, false)?;

    let guest_dir = project.guest_image_dir();
    let bin = project.host_bin(Profile::Debug);
    let mut cmd = project.cargo();
    cmd.args(["test", "--workspace"])
        .env("TANDEM_GUEST_DIR", &guest_dir)
        .env("TANDEM_BIN", &bin);
    if !harness_args.is_empty() {
        cmd.arg("--").args(harness_args);
    }
    eprintln!(
        "TANDEM_GUEST_DIR={} TANDEM_BIN={}",
        guest_dir.display(),
        bin.display()
    );
    project::run(&mut cmd, "cargo test --workspace")
}

fn bench_cmd(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut opts = bench::Options::default();
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--runs")? {
            opts.runs = parse_count("--runs", &v)?;
        } else if let Some(v) = args.value(&word, "--warmup")? {
            opts.warmup = parse_count("--warmup", &v)?;
        } else if let Some(v) = args.value(&word, "--json")? {
            opts.json = Some(v.into());
        } else {
            return Err(unexpected("bench", &word));
        }
    }
    if let Some(word) = args.trailing.first() {
        return Err(unexpected("bench", word));
    }
    bench::bench(project, &opts)?;
    Ok(ExitCode::SUCCESS)
}

fn parse_count(flag: &str, value: &str) -> Result<usize> {
    value
        .parse()
        .with_context(|| format!("{flag} takes a whole number, not `{value}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn splits_at_double_dash() {
        let mut a = Args::new(words("hello -- a -- b"));
        assert_eq!(a.next().as_deref(), Some("hello"));
        assert_eq!(a.next(), None);
        assert_eq!(a.trailing, words("a -- b"));
    }

    #[test]
    fn flag_values() {
        let mut a = Args::new(words("--runs 5 --json=x.json --runs"));
        let w = a.next().unwrap_or_default();
        assert_eq!(a.value(&w, "--runs").unwrap().as_deref(), Some("5"));
        let w = a.next().unwrap_or_default();
        assert_eq!(a.value(&w, "--runs").unwrap(), None);
        assert_eq!(a.value(&w, "--json").unwrap().as_deref(), Some("x.json"));
        let w = a.next().unwrap_or_default();
        assert!(a.value(&w, "--runs").is_err());
    }
}
