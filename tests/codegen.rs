//! The checked-in generated code is what its sources make: `cargo xtask
//! codegen --check`'s generator regenerates every file into a temporary
//! folder and compares (tools/codegen). A file edited by hand, or a proto
//! changed without regenerating, fails here.

use std::path::Path;
use std::process::Command;

#[test]
fn generated_code_matches_its_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("tools/codegen");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The same command as `cargo xtask codegen --check`.
    let out = Command::new(cargo)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args(["run", "--quiet", "--locked", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .args(["--", "--check"])
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "the generated code differs from what its sources make \
         (run `cargo xtask codegen`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
