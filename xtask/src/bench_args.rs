//! The options every `cargo xtask bench SUBJECT` shares: `--runs N` and
//! `--json FILE`, plus whatever flags the subject adds.

use std::path::PathBuf;
use std::slice::Iter;

use anyhow::{bail, Context, Result};

/// `--runs` and `--json` of a bench command.
pub struct Common {
    /// Measured runs (at least the subject's minimum).
    pub runs: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
}

/// The value after `flag`.
pub fn value<'a>(flag: &str, it: &mut Iter<'a, String>) -> Result<&'a str> {
    it.next()
        .map(String::as_str)
        .with_context(|| format!("{flag} needs a value"))
}

/// Parses `args` for `cargo xtask bench SUBJECT`: `--runs N` (default
/// `runs`, at least `min_runs`), `--json FILE`, and every flag `extra`
/// accepts (it returns `false` for a flag it does not know).
pub fn parse(
    args: &[String],
    subject: &str,
    runs: usize,
    min_runs: usize,
    mut extra: impl FnMut(&str, &mut Iter<String>) -> Result<bool>,
) -> Result<Common> {
    let mut common = Common { runs, json: None };
    let mut it = args.iter();
    while let Some(word) = it.next() {
        match word.as_str() {
            "--runs" => {
                let v = value("--runs", &mut it)?;
                common.runs = v
                    .parse()
                    .with_context(|| format!("--runs takes a number, not `{v}`"))?;
            }
            "--json" => common.json = Some(value("--json", &mut it)?.into()),
            other => {
                if !extra(other, &mut it)? {
                    bail!("unexpected argument `{other}` for `cargo xtask bench {subject}`")
                }
            }
        }
    }
    common.runs = common.runs.max(min_runs);
    Ok(common)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn common_and_extra_flags() {
        let mut sizes = String::new();
        let c = parse(
            &words("--runs 1 --sizes 5,6 --json x.json"),
            "t",
            30,
            3,
            |flag, it| {
                Ok(flag == "--sizes" && {
                    sizes = value(flag, it)?.to_owned();
                    true
                })
            },
        )
        .unwrap();
        assert_eq!(
            (c.runs, c.json.as_deref()),
            (3, Some(std::path::Path::new("x.json")))
        );
        assert_eq!(sizes, "5,6");
        assert!(parse(&words("--bogus"), "t", 30, 3, |_, _| Ok(false)).is_err());
        assert!(parse(&words("--runs"), "t", 30, 3, |_, _| Ok(false)).is_err());
    }
}
