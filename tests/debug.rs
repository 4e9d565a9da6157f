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

/// A `tandem run APP --gdb unix:SOCKET` in the background, and its socket.
struct Debuggee {
    child: std::process::Child,
    socket: PathBuf,
}

impl Debuggee {
    fn start(dir: &Path, app: &str, cmdline: &str) -> Self {
        tandem_tests::require_kvm();
        let socket = dir.join("gdb.sock");
        let child = Command::new(tandem_tests::tandem_bin())
            .args([
                "run",
                s(&image_path(app)),
                "--timeout",
                if app == "spin" { "3s" } else { "60s" },
                "--cmdline",
                cmdline,
            ])
            .arg("--gdb")
            .arg(format!("unix:{}", s(&socket)))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "tandem never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, socket }
    }

    /// Waits for tandem to end: its exit code, stdout and stderr.
    fn finish(self) -> (Option<i32>, String, String) {
        let out = self.child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `gdb -batch` on `image` against the stub at `socket`.
fn gdb_remote(image: &Path, socket: &Path, commands: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args([
        "-batch",
        "-nx",
        "-ex",
        &format!("target remote {}", s(socket)),
    ]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd
        .arg(image)
        .output()
        .expect("cannot start gdb: install Debian's gdb (cargo xtask test does)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn gdb_breaks_steps_reads_and_runs_the_app_to_its_end() {
    let dir = scratch("gdb-session");
    let guest = Debuggee::start(&dir, "debugme", "5");
    let out = gdb_remote(
        &image_path("debugme"),
        &guest.socket,
        &[
            "p/x $pc",
            "break debugme_square",
            "continue",
            "bt",
            "p $rdi",
            "continue",
            "p $rdi",
            "p (unsigned long) DEBUGME_TOTAL",
            "p/x $pc",
            "stepi",
            "p/x $pc",
            "x/i $pc",
            "delete",
            "continue",
        ],
    );
    let (code, stdout, stderr) = guest.finish();
    // Stopped before the first instruction, at the image's entry.
    assert!(out.contains("in _start ()"), "{out}");
    // The breakpoint, with the app's frames behind it.
    assert!(out.contains("Breakpoint 1, 0x"), "{out}");
    let bt: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        bt.first().is_some_and(|l| l.contains("debugme_square")),
        "{out}"
    );
    assert!(bt.iter().any(|l| l.contains("__tandem_app_main")), "{out}");
    assert!(bt.iter().any(|l| l.contains("_start")), "{out}");
    // Arguments and a variable: the second call squares 2, after 1*1.
    assert!(out.contains("$2 = 1\n"), "{out}");
    assert!(out.contains("$3 = 2\n"), "{out}");
    assert!(out.contains("$4 = 1\n"), "{out}");
    // One instruction on.
    let before = hex_after(&out, "$5 = ");
    let after = hex_after(&out, "$6 = ");
    assert!(
        after > before && after - before <= 15,
        "{before:#x} -> {after:#x}: {out}"
    );
    // And on to the end: 1 + 4 + 9 + 16 + 25 = 55 (gdb prints it in octal).
    assert!(out.contains("exited with code 067"), "{out}");
    assert_eq!(code, Some(55), "{stdout}{stderr}");
    assert!(stdout.contains("total 55"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gdb_sees_a_fault_where_it_happens() {
    let dir = scratch("gdb-fault");
    let guest = Debuggee::start(&dir, "pagefault", "null");
    let out = gdb_remote(
        &image_path("pagefault"),
        &guest.socket,
        &["continue", "bt", "continue"],
    );
    let (code, stdout, _) = guest.finish();
    assert!(out.contains("SIGSEGV"), "{out}");
    let frame0 = out.lines().find(|l| l.starts_with("#0")).unwrap_or("");
    assert!(frame0.contains("pagefault::read_null"), "{out}");
    // Passed on, the fault is reported as without a debugger.
    assert_eq!(code, Some(102), "{stdout}");
    assert!(stdout.contains("CPU exception: page fault"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One remote-protocol packet with its checksum.
fn packet(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

/// Reads from `sock` until a whole packet (`$...#xx`) has come; returns its body.
fn reply(sock: &mut std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = sock.read(&mut b).unwrap();
        assert_eq!(
            n,
            1,
            "the stub closed the connection: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(b[0]);
        if let Some(start) = got.iter().position(|&c| c == b'$') {
            let body = &got[start + 1..];
            if body.len() >= 3 && body[body.len() - 3] == b'#' {
                return String::from_utf8_lossy(&body[..body.len() - 3]).into_owned();
            }
        }
    }
}

#[test]
fn hostile_remote_protocol_input_ends_the_session_not_the_vmm() {
    use std::io::Write;
    let dir = scratch("gdb-hostile");
    let guest = Debuggee::start(&dir, "spin", "");
    let mut sock = std::os::unix::net::UnixStream::connect(&guest.socket).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut ask = |body: &str| {
        sock.write_all(&packet(body)).unwrap();
        reply(&mut sock)
    };
    // Memory: the image is readable; outside guest memory, unmapped pages
    // and writes there are errors; a huge read is no crash.
    let text = ask("m200000,4");
    assert!(!text.is_empty() && !text.starts_with('E'), "{text}");
    assert!(ask("mdead0000,4").starts_with('E'));
    assert!(ask("m0,8").starts_with('E'), "the null page is not mapped");
    assert!(ask("Mdead0000,2:0000").starts_with('E'));
    assert!(ask("Mffffffffffffff00,2:0000").starts_with('E'));
    let _ = ask("m200000,ffffffffffffffff");
    assert!(ask("Z0,dead0000,1").starts_with('E'));
    // Registers are there.
    // (Replies may be run-length encoded: only their kind is checked.)
    let regs = ask("g");
    assert!(!regs.is_empty() && !regs.starts_with('E'), "{regs}");
    // Running, then gdb's Ctrl-C stops the guest.
    sock.write_all(&packet("c")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    sock.write_all(&[0x03]).unwrap();
    let stop = reply(&mut sock);
    assert!(stop.starts_with('T') || stop.starts_with('S'), "{stop}");
    // Garbage: bad checksums, stray bytes, a packet that never ends.
    // The stub may hang up at any of it.
    let _ = sock.write_all(b"$g#00+-\xff\x00garbage$m1,1#ff$qSupported:");
    let _ = sock.write_all(&[0xAA; 70_000]);
    drop(sock);
    // The session is over; the VM is not: it runs on until its timeout.
    let (code, _, stderr) = guest.finish();
    assert_eq!(code, Some(124), "{stderr}");
    assert!(stderr.contains("gdb"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
