//! What `cargo test --workspace --no-fail-fast` printed, read back: every
//! failed test with its test binary, binaries that ended without a result,
//! and the passed/failed totals; and the summary `cargo xtask test` ends with.

use std::fmt::Write as _;

/// One failed test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The binary as cargo names it: `tests/boot.rs (target/debug/deps/boot-…)`,
    /// or `Doc-tests tandem`.
    pub binary: String,
    pub test: String,
}

/// The tests of one `cargo test` run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestReport {
    pub passed: u64,
    pub failed: u64,
    pub failures: Vec<Failure>,
    /// Binaries that started but printed no `test result:` line (a crash,
    /// an abort, a signal).
    pub unfinished: Vec<String>,
}

/// A step of `cargo xtask test` other than the tests themselves that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    pub step: String,
    pub error: String,
}

/// Reads libtest's and cargo's output: `Running DESC` and `Doc-tests CRATE`
/// lines say which binary runs, `---- NAME stdout ----` headers and the
/// name list under `failures:` name the failed tests, and `test result:`
/// lines carry the counts.
pub fn parse(output: &str) -> TestReport {
    let mut report = TestReport::default();
    let mut binary: Option<String> = None;
    let mut finished = true;
    let mut list = List::None;
    for raw in output.lines() {
        let line = strip_ansi(raw);
        let line = line.trim_end();
        // The name list counts only when `test result:` follows it, so a
        // test's own output that looks like one is not taken for it.
        list = match list {
            List::Open(mut names) => {
                if let Some(name) = line.strip_prefix("    ").filter(|n| !n.starts_with(' ')) {
                    names.push(name.to_owned());
                    list = List::Open(names);
                    continue;
                }
                if line.is_empty() {
                    list = List::Closed(names);
                    continue;
                }
                List::None
            }
            List::Closed(names) if line.starts_with("test result: ") => {
                for name in &names {
                    add_failure(&mut report, binary.as_deref(), name);
                }
                List::None
            }
            List::Closed(names) if line.is_empty() => {
                list = List::Closed(names);
                continue;
            }
            _ => List::None,
        };
        let trimmed = line.trim_start();
        let started = trimmed
            .strip_prefix("Running ")
            .map(str::to_owned)
            .or_else(|| {
                trimmed
                    .starts_with("Doc-tests ")
                    .then(|| trimmed.to_owned())
            });
        if let Some(started) = started {
            if !finished {
                report.unfinished.extend(binary.take());
            }
            binary = Some(started);
            finished = false;
        } else if line == "failures:" {
            list = List::Open(Vec::new());
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            add_failure(&mut report, binary.as_deref(), name);
        } else if let Some(result) = line.strip_prefix("test result: ") {
            report.passed += count(result, "passed");
            report.failed += count(result, "failed");
            finished = true;
        }
    }
    if !finished {
        report.unfinished.extend(binary);
    }
    report
}

/// Where the reader is in a `failures:` name list.
enum List {
    None,
    /// After `failures:`: indented names.
    Open(Vec<String>),
    /// After the blank line that ends the names; `test result:` confirms them.
    Closed(Vec<String>),
}

fn add_failure(report: &mut TestReport, binary: Option<&str>, test: &str) {
    let failure = Failure {
        binary: binary.unwrap_or("(unknown binary)").to_owned(),
        test: test.to_owned(),
    };
    if !report.failures.contains(&failure) {
        report.failures.push(failure);
    }
}

/// `N` of `N word` in `ok. 3 passed; 1 failed; 0 ignored; …`.
fn count(result: &str, word: &str) -> u64 {
    result
        .split(';')
        .filter_map(|part| {
            let mut words = part.split_whitespace().rev();
            let (w, n) = (words.next()?, words.next()?);
            (w == word).then(|| n.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// The text without terminal colour codes (`ESC [ … letter`), which cargo
/// prints when CARGO_TERM_COLOR=always.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The end of `cargo xtask test`: every failed step, every failed test with
/// its binary, every binary that ended without a result, then the counts
/// alone on the last line (`N passed, M failed`, which CI reads).
pub fn summary(steps: &[StepFailure], tests: &TestReport, secs: f64) -> String {
    let mut out = String::new();
    let ok = steps.is_empty() && tests.failures.is_empty() && tests.unfinished.is_empty();
    let verdict = if ok { "all steps passed" } else { "FAILED" };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "xtask test summary ({verdict}, {secs:.1} s):");
    for s in steps {
        let error = one_line(&s.error);
        // A command's error already starts with the command.
        if error.starts_with(&s.step) {
            let _ = writeln!(out, "  step failed: {error}");
        } else {
            let _ = writeln!(out, "  step failed: {}: {error}", s.step);
        }
    }
    for f in &tests.failures {
        let _ = writeln!(out, "  test failed: {}  [{}]", f.test, f.binary);
    }
    for b in &tests.unfinished {
        let _ = writeln!(out, "  test binary ended without a test result: {b}");
    }
    let _ = writeln!(out, "{} passed, {} failed", tests.passed, tests.failed);
    out
}

/// An error chain on one line.
fn one_line(error: &str) -> String {
    error.lines().map(str::trim).collect::<Vec<_>>().join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
   Compiling tandem v0.1.0 (/w/host)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 1.00s
     Running unittests src/lib.rs (target/debug/deps/tandem-0123)

running 3 tests
test a::ok ... ok
test a::broken ... FAILED
test a::quiet ... FAILED

failures:

---- a::broken stdout ----
thread 'a::broken' panicked at host/src/a.rs:9:5:
failures:
    not a list: this is the test's own output

failures:
    a::broken
    a::quiet

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

error: test failed, to rerun pass `-p tandem --lib`
     Running tests/boot.rs (target/debug/deps/boot-4567)

running 2 tests
test hello ... ok
test world ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.50s

\u{1b}[1m\u{1b}[92m     Running\u{1b}[0m tests/crash.rs (target/debug/deps/crash-89ab)

running 1 test
error: test failed, to rerun pass `-p tandem-tests --test crash`

Caused by:
  process didn't exit successfully: `target/debug/deps/crash-89ab` (signal: 6, SIGABRT)
   Doc-tests tandem

running 1 test
test host/src/lib.rs - Vm (line 10) ... FAILED

failures:

---- host/src/lib.rs - Vm (line 10) stdout ----
boom

failures:
    host/src/lib.rs - Vm (line 10)

test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.20s
";

    #[test]
    fn failures_named_with_their_binary_and_counts_summed() {
        let report = parse(OUTPUT);
        let lib = "unittests src/lib.rs (target/debug/deps/tandem-0123)";
        let failure = |binary: &str, test: &str| Failure {
            binary: binary.into(),
            test: test.into(),
        };
        assert_eq!(
            report.failures,
            vec![
                failure(lib, "a::broken"),
                failure(lib, "a::quiet"),
                failure("Doc-tests tandem", "host/src/lib.rs - Vm (line 10)"),
            ]
        );
        assert_eq!(
            report.unfinished,
            vec!["tests/crash.rs (target/debug/deps/crash-89ab)".to_string()]
        );
        assert_eq!((report.passed, report.failed), (3, 3));

        let steps = [StepFailure {
            step: "clippy (root workspace)".into(),
            error: "cargo clippy failed\n(exit code 101)".into(),
        }];
        let text = summary(&steps, &report, 12.0);
        let fmt = [StepFailure {
            step: "cargo fmt --all --check".into(),
            error: "cargo fmt --all --check failed (exit code 1)".into(),
        }];
        assert!(summary(&fmt, &report, 1.0)
            .contains("  step failed: cargo fmt --all --check failed (exit code 1)\n"));
        assert!(text.contains(
            "step failed: clippy (root workspace): cargo clippy failed / (exit code 101)"
        ));
        assert!(text.contains(&format!("test failed: a::quiet  [{lib}]")));
        assert!(text.contains("ended without a test result: tests/crash.rs"));
        assert_eq!(text.lines().last(), Some("3 passed, 3 failed"));
    }

    #[test]
    fn a_clean_run() {
        let report = parse(
            "     Running tests/boot.rs (target/debug/deps/boot-1)\n\
             test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s\n",
        );
        assert_eq!(
            report,
            TestReport {
                passed: 7,
                ..TestReport::default()
            }
        );
        let text = summary(&[], &report, 1.0);
        assert!(text.starts_with("xtask test summary (all steps passed"));
        assert_eq!(text.lines().last(), Some("7 passed, 0 failed"));
    }
}
