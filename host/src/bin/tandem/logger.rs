//! The `tandem` binary's logger: the library's `log` records on stderr, one
//! line each, at the level `-q`/`-v` choose, unless `RUST_LOG` says otherwise
//! (env_logger's syntax: `RUST_LOG=debug`, `RUST_LOG=tandem::snapshot=trace`).
//!
//! Each level keeps the prefix the VMM's messages always had: `tandem: ` for
//! notes, `tandem: WARNING: ` and `tandem: error: `; debug and trace lines
//! also name the level and the module.
//!
//! Records come from vCPU threads too, under their seccomp filter: a record
//! is one `write(2)` to stderr, nothing more (no terminal queries, so no
//! printing through the fleet's progress bar, which would ask the terminal
//! its size).

use std::io::Write;

use log::{Level, LevelFilter, Record};

/// The level for `-q` and `-v` given `verbose` times: notes by default,
/// warnings and errors only when quiet, debug with `-v`, trace with `-vv`.
pub fn level(quiet: bool, verbose: u8) -> LevelFilter {
    match verbose {
        0 if quiet => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger, once per process.
pub fn init(level: LevelFilter) {
    let inner = env_logger::Builder::new()
        .filter_level(level)
        // gdbstub notes every packet it does not implement at info.
        .filter_module("gdbstub", level.min(LevelFilter::Warn))
        .parse_default_env()
        .format(|out, record| writeln!(out, "{}", line(record)))
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(inner)).is_ok() {
        log::set_max_level(max);
    }
}

fn line(record: &Record) -> String {
    match record.level() {
        Level::Error => format!("tandem: error: {}", record.args()),
        Level::Warn => format!("tandem: WARNING: {}", record.args()),
        Level::Info => format!("tandem: {}", record.args()),
        Level::Debug => format!("tandem: debug: {}: {}", record.target(), record.args()),
        Level::Trace => format!("tandem: trace: {}: {}", record.target(), record.args()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_choose_the_level() {
        assert_eq!(level(false, 0), LevelFilter::Info);
        assert_eq!(level(true, 0), LevelFilter::Warn);
        assert_eq!(level(false, 1), LevelFilter::Debug);
        assert_eq!(level(true, 1), LevelFilter::Debug);
        assert_eq!(level(false, 3), LevelFilter::Trace);
    }

    #[test]
    fn lines_keep_the_vmm_prefixes() {
        let warn = Record::builder()
            .level(Level::Warn)
            .args(format_args!("--no-seccomp: off"))
            .build();
        assert_eq!(line(&warn), "tandem: WARNING: --no-seccomp: off");
        let debug = Record::builder()
            .level(Level::Debug)
            .target("tandem::seccomp")
            .args(format_args!("installed"))
            .build();
        assert_eq!(line(&debug), "tandem: debug: tandem::seccomp: installed");
    }
}
