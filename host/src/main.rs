//! `tandem`: boot a Tandem unikernel image on KVM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tandem::{exit_code, ConsoleSink, ExitStatus, Hypervisor, Image, VmBuilder, VmConfig};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Boot Tandem unikernel images on KVM, straight into the app",
    after_help = "Exit codes: the guest's own code (0-255) when it exits; 122 the guest crashed; \
                  123 the guest broke the hypercall protocol; 124 timeout; 125 the VMM could not \
                  start the guest; 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot IMAGE and run it to the end; exits with the guest's exit code.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The image: an ELF built with tandem-guest.
    image: PathBuf,
    /// Guest memory (bytes, or with a K/M/G suffix; a multiple of 2 MiB).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    mem: u64,
    /// Command line handed to the app.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    cmdline: String,
    /// Write the boot trace as Chrome trace-event JSON (opens in Perfetto).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Stop the guest after this long (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print the run report as one JSON object on stderr instead of the summary line.
    #[arg(long)]
    json: bool,
    /// Print the table of boot phases on stderr.
    #[arg(long)]
    table: bool,
    /// Print nothing but the guest's console.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 64M)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit '{other}' (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 10s)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

fn main() -> ExitCode {
    let start = tandem::trace::rdtsc();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match run(args, start) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("tandem: error: {e:#}");
                ExitCode::from(exit_code::VMM_ERROR)
            }
        },
    }
}

fn run(args: RunArgs, start: u64) -> Result<u8> {
    let hv = Hypervisor::open()?;
    let image = Image::from_file(&args.image)
        .with_context(|| format!("refusing image {}", args.image.display()))?;
    let config = VmConfig {
        mem_size: args.mem,
        cmdline: args.cmdline,
        timeout: args.timeout,
        console: ConsoleSink::Stdout,
        ..VmConfig::default()
    };
    let report = VmBuilder::new(&hv, &image)
        .config(config)
        .started_at(start)
        .run()?;

    if let Some(path) = &args.trace {
        let json = serde_json::to_string_pretty(&report.trace.to_chrome_json())?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write trace file {}", path.display()))?;
    }
    let code = report.status.code();
    if args.json {
        let s = &report.stats;
        let value = serde_json::json!({
            "status": report.status.to_string(),
            "exit_code": code,
            "phases_us": report.trace.to_json(),
            "exits": s.exits,
            "exits_before_main": s.exits_before_main,
            "cpl0_entries": s.cpl0_entries,
            "cpl0_entries_before_main": s.cpl0_entries_before_main,
            "console_bytes": s.console_bytes,
        });
        eprintln!("{value}");
    } else if !args.quiet {
        if !matches!(report.status, ExitStatus::Exited(0)) {
            eprintln!("tandem: {}", report.status);
        }
        eprintln!(
            "{}; {} exits, {} CPL0 entries",
            report.trace.summary(),
            report.stats.exits,
            report.stats.cpl0_entries
        );
    }
    if args.table {
        eprint!("{}", report.trace.table());
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err());
    }
}
