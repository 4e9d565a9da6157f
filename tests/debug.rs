//! Debugging crashed and running guests with a real gdb (Debian's, which
//! `cargo xtask test` installs): core files of `tandem run --core` and
//! `tandem snapshot core` open with the image's symbols and show the
//! faulting function, the panic path, the frozen frame.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_tests::{image_path, run_app, tandem};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-debug-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `gdb -batch` with `commands` (each an `-ex`) on `image` and `core`;
/// returns stdout and stderr together.
fn gdb(image: &Path, core: &Path, commands: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd
        .arg(image)
        .arg(core)
        .output()
        .expect("cannot start gdb: install Debian's gdb (cargo xtask test does)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The hex number after `key` in `text`.
fn hex_after(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        + key.len();
    let digits: String = text[at..]
        .trim_start_matches("0x")
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&digits, 16).unwrap()
}

#[test]
fn a_page_fault_core_shows_the_faulting_function_and_its_registers() {
    let dir = scratch("pagefault");
    let core = dir.join("pagefault.core");
    for (case, function) in [
        ("null", "pagefault::read_null"),
        ("ud", "pagefault::invalid_opcode"),
    ] {
        let r = run_app("pagefault", &["--cmdline", case, "--core", s(&core)]);
        assert_eq!(r.code, Some(102), "{}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("core file written to"), "{}", r.stderr);
        let out = gdb(
            &image_path("pagefault"),
            &core,
            &["bt", "info symbol $pc", "p/x $rip", "p/x $rsp", "p/x $cs"],
        );
        // The faulting frame, then its callers through the frame pointers.
        let frame0 = out.lines().find(|l| l.starts_with("#0")).unwrap();
        assert!(frame0.contains(function), "{out}");
        assert!(out.contains("__tandem_app_main"), "{out}");
        assert!(out.contains("_start"), "{out}");
        assert!(!out.contains("may not match"), "{out}");
        let signal = if case == "ud" { "SIGILL" } else { "SIGSEGV" };
        assert!(out.contains(signal), "{out}");
        // The registers are the fault's: the guest's own report names them.
        let rip = hex_after(&r.stdout, "at rip ");
        let rsp = hex_after(&r.stdout, "stack pointer ");
        assert_eq!(hex_after(&out, "$1 = "), rip, "{out}");
        assert_eq!(hex_after(&out, "$2 = "), rsp, "{out}");
        assert_eq!(hex_after(&out, "$3 = ") & 3, 3, "a CPL3 frame: {out}");
    }
    // Most of guest memory never held data: the file is mostly holes.
    let meta = std::fs::metadata(&core).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.len() >= 62 << 20,
        "covers the guest's RAM: {}",
        meta.len()
    );
    assert!(
        meta.blocks() * 512 < 8 << 20,
        "sparse: {} blocks",
        meta.blocks()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_panic_core_shows_the_panic_path() {
    let dir = scratch("panic");
    let core = dir.join("panic.core");
    let r = run_app("panic", &["--core", s(&core)]);
    assert_eq!(r.code, Some(101), "{}{}", r.stdout, r.stderr);
    let out = gdb(&image_path("panic"), &core, &["bt"]);
    for frame in ["rust_begin_unwind", "panic_fmt", "panic::main", "_start"] {
        assert!(out.contains(frame), "no {frame} in {out}");
    }
    assert!(out.contains("SIGABRT"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_clean_exit_leaves_no_core() {
    let dir = scratch("clean");
    let core = dir.join("hello.core");
    let r = run_app("hello", &["--core", s(&core)]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(!core.exists());
    // An app's own non-zero exit is no crash either.
    let r = run_app("pagefault", &["--cmdline", "bogus", "--core", s(&core)]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    assert!(!core.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_becomes_a_core_file() {
    let dir = scratch("snapshot");
    let snap = dir.join("snap");
    let r = run_app(
        "counter",
        &[
            "--cmdline",
            "snapshot-at=3 exit-at=5",
            "--snapshot-dir",
            s(&snap),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let core = dir.join("snap.core");
    let r = tandem(&["snapshot", "core", s(&snap), s(&core)]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let out = gdb(&image_path("counter"), &core, &["bt", "p/x $rip"]);
    assert!(out.contains("__tandem_app_main"), "{out}");
    assert!(out.contains("_start"), "{out}");
    assert!(!out.contains("may not match"), "{out}");
    // The frame is the snapshot's: the rip `snapshot info` shows.
    let info = tandem(&["snapshot", "info", s(&snap)]);
    assert_eq!(
        hex_after(&out, "$1 = "),
        hex_after(&info.stdout, "rip:         "),
        "{out}"
    );
    // Not a snapshot directory: an error naming it, no file.
    let bad = tandem(&["snapshot", "core", s(&dir), s(&dir.join("x.core"))]);
    assert_eq!(bad.code, Some(125), "{}", bad.stderr);
    assert!(!dir.join("x.core").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
