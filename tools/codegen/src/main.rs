//! `tandem-codegen`, run by `cargo xtask codegen`: regenerates the
//! repository's checked-in generated code from its sources, without
//! `protoc`.
//!
//! - `tests/src/cri_v1.rs`: the CRI `runtime.v1` messages and the gRPC
//!   `RuntimeService` client of `tests/src/cri.rs`, from
//!   `tests/proto/runtime/v1/api.proto` (the Kubernetes CRI API, as the
//!   `k8s-cri` 0.11 crate ships it in `proto/v1.proto`). `protox` compiles the
//!   proto (a protobuf compiler in Rust) and `tonic-prost-build` writes the
//!   code, with `build_server(false)`.
//!
//! `tandem-codegen` writes the files in place. `tandem-codegen --check`
//! regenerates each into a temporary folder and compares: it fails, naming
//! the file and its first differing line, when a checked-in file is not what
//! its source makes (edited by hand, or the proto or the generator changed
//! without regenerating). The generator's versions are pinned by this
//! crate's `Cargo.lock`; run it with `--locked`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// One generated file: a proto, the folder its imports are relative to, and
/// where the code goes (all relative to the repository root).
struct Generated {
    include: &'static str,
    proto: &'static str,
    /// The file `tonic-prost-build` writes: the proto's package, `.rs`.
    package_file: &'static str,
    out: &'static str,
}

const GENERATED: &[Generated] = &[Generated {
    include: "tests/proto",
    proto: "runtime/v1/api.proto",
    package_file: "runtime.v1.rs",
    out: "tests/src/cri_v1.rs",
}];

fn root() -> PathBuf {
    // tools/codegen/ sits two folders under the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Generates `g` into `dir`; the path of the file written.
fn generate(root: &Path, g: &Generated, dir: &Path) -> Result<PathBuf> {
    let include = root.join(g.include);
    let fds = protox::compile([g.proto], [&include])
        .map_err(|e| format!("{}: {e}", include.join(g.proto).display()))?;
    tonic_prost_build::configure()
        .build_server(false)
        .type_attribute(".", "#[allow(clippy::all)]")
        .out_dir(dir)
        .compile_fds(fds)?;
    Ok(dir.join(g.package_file))
}

/// A folder of our own under the system's temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tandem-codegen-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where `a` and `b` first differ, as a 1-based line number and both lines.
fn first_difference(a: &str, b: &str) -> Option<(usize, String, String)> {
    let (mut la, mut lb) = (a.lines(), b.lines());
    for n in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => return (a != b).then(|| (n, String::new(), String::new())),
            (x, y) if x != y => {
                let show = |l: Option<&str>| l.map_or("(end of file)".to_owned(), str::to_owned);
                return Some((n, show(x), show(y)));
            }
            _ => {}
        }
    }
    None
}

fn run(check: bool) -> Result<bool> {
    let root = root();
    let tmp = TempDir::new()?;
    let mut current = true;
    for g in GENERATED {
        let made = generate(&root, g, &tmp.0)?;
        let out = root.join(g.out);
        if check {
            let want = std::fs::read_to_string(&made)?;
            let have =
                std::fs::read_to_string(&out).map_err(|e| format!("cannot read {}: {e}", g.out))?;
            if let Some((line, have, want)) = first_difference(&have, &want) {
                eprintln!(
                    "codegen: {} is not what {}/{} makes (run `cargo xtask codegen`); \
                     first difference at line {line}:\n  checked in: {have}\n  generated:  {want}",
                    g.out, g.include, g.proto
                );
                current = false;
            }
        } else {
            std::fs::copy(&made, &out).map_err(|e| format!("cannot write {}: {e}", g.out))?;
            println!("codegen: wrote {} from {}/{}", g.out, g.include, g.proto);
        }
    }
    Ok(current)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = match args.as_slice() {
        [] => false,
        [a] if a == "--check" => true,
        _ => {
            eprintln!("usage: tandem-codegen [--check]");
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("codegen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(
            first_difference("a\nb\n", "a\nc\n"),
            Some((2, "b".into(), "c".into()))
        );
        assert_eq!(
            first_difference("a\n", "a\nb\n"),
            Some((2, "(end of file)".into(), "b".into()))
        );
        assert!(first_difference("a\n", "a").is_some());
    }
}
