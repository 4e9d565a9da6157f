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

/// A `tandem run APP --gdb unix:SOCKET` (or `tandem restore`) in the
/// background, and its socket.
struct Debuggee {
    child: std::process::Child,
    socket: PathBuf,
}

/// How long a test waits for tandem to listen (a loaded machine is slow).
const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl Debuggee {
    fn start(dir: &Path, app: &str, cmdline: &str) -> Self {
        let timeout = if app == "spin" { "3s" } else { "60s" };
        let image = image_path(app);
        Self::spawn(
            dir,
            &["run", s(&image), "--timeout", timeout, "--cmdline", cmdline],
        )
    }

    /// `tandem ARGS --gdb unix:DIR/gdb.sock`, once it listens.
    fn spawn(dir: &Path, args: &[&str]) -> Self {
        tandem_tests::require_kvm();
        let socket = dir.join("gdb.sock");
        let child = Command::new(tandem_tests::tandem_bin())
            .args(args)
            .arg("--gdb")
            .arg(format!("unix:{}", s(&socket)))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        let deadline = std::time::Instant::now() + LISTEN_WAIT;
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

#[test]
fn gdb_debugs_a_restored_guest() {
    let dir = scratch("gdb-restore");
    let snap = dir.join("snap");
    // 1 + 4 + 9 = 14, snapshotted at ready(), before the sum.
    let r = run_app(
        "debugme",
        &["--cmdline", "3 ready", "--snapshot-at-ready", s(&snap)],
    );
    assert_eq!(r.code, Some(14), "{}{}", r.stdout, r.stderr);
    let guest = Debuggee::spawn(&dir, &["restore", s(&snap), "--timeout", "60s"]);
    let out = gdb_remote(
        &image_path("debugme"),
        &guest.socket,
        &[
            "p/x $pc",
            "break debugme_square",
            "continue",
            "bt",
            "p $rdi",
            "p (unsigned long) DEBUGME_TOTAL",
            "delete",
            "continue",
        ],
    );
    let (code, stdout, stderr) = guest.finish();
    // Stopped where the snapshot froze it (the snapshot's rip), in the app.
    let info = tandem(&["snapshot", "info", s(&snap)]);
    assert_eq!(
        hex_after(&out, "$1 = "),
        hex_after(&info.stdout, "rip:         "),
        "{out}"
    );
    assert!(out.contains("Breakpoint 1, 0x"), "{out}");
    let bt: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        bt.first().is_some_and(|l| l.contains("debugme_square")),
        "{out}"
    );
    assert!(bt.iter().any(|l| l.contains("__tandem_app_main")), "{out}");
    // The first square after the snapshot, nothing summed yet.
    assert!(out.contains("$2 = 1\n"), "{out}");
    assert!(out.contains("$3 = 0\n"), "{out}");
    assert!(out.contains("exited with code 016"), "{out}");
    assert_eq!(code, Some(14), "{stdout}{stderr}");
    assert!(stderr.contains("restored"), "{stderr}");
    // One VM per debugger.
    let clones = tandem(&["restore", s(&snap), "--clones", "2", "--gdb", "1"]);
    assert_eq!(clones.code, Some(125), "{}", clones.stderr);
    assert!(clones.stderr.contains("--clones"), "{}", clones.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gdb_reads_and_writes_sse_registers() {
    let dir = scratch("gdb-sse");
    let guest = Debuggee::start(&dir, "debugme", "sse");
    let out = gdb_remote(
        &image_path("debugme"),
        &guest.socket,
        &[
            "break debugme_sse_loaded",
            "continue",
            "p/x $xmm0.v2_int64",
            "p/x $mxcsr",
            "set $xmm1.v2_int64[0] = 0x5555666677778888",
            "p/x $xmm1.v2_int64[0]",
            "continue",
        ],
    );
    let (code, stdout, stderr) = guest.finish();
    // What the app put in xmm0, both halves.
    assert!(
        out.contains("$1 = {0x123456789abcdef, 0xfedcba9876543210}"),
        "{out}"
    );
    // The power-on MXCSR: all exceptions masked.
    assert!(out.contains("$2 = 0x1f80"), "{out}");
    // gdb's write reached the app: it reads xmm1 back after the stop.
    assert!(stdout.contains("xmm1 0x5555666677778888"), "{stdout}{out}");
    assert_eq!(code, Some(55), "{stdout}{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_stops_a_guest_waiting_in_the_host_and_the_wait_goes_on() {
    use std::io::Write;
    // The app waits 8 s in the host (an Idle request, no vCPU running):
    // gdb's Ctrl-C must stop it during the wait, and the wait must still
    // last the 8 s the app asked for once it goes on.
    let dir = scratch("gdb-idle");
    let guest = Debuggee::start(&dir, "debugme", "idle-ms=8000");
    let mut sock = std::os::unix::net::UnixStream::connect(&guest.socket).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    sock.write_all(&packet("c")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    sock.write_all(&[0x03]).unwrap();
    let stop = reply(&mut sock);
    // A stop (SIGINT), not the end of the run: the wait was broken into.
    assert!(
        stop.starts_with("S02") || stop.starts_with("T02"),
        "expected a SIGINT stop while the guest waits: {stop}"
    );
    sock.write_all(b"+").unwrap();
    sock.write_all(&packet("c")).unwrap();
    let end = reply(&mut sock);
    assert!(end.starts_with("W37"), "exit 55: {end}");
    drop(sock);
    let (code, stdout, stderr) = guest.finish();
    assert_eq!(code, Some(55), "{stdout}{stderr}");
    let idled: u64 = stdout
        .split("idled ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `idled N ms` in {stdout}"));
    assert!(idled >= 8000, "the wait was cut short: {idled} ms");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_triple_fault_core_opens_in_gdb() {
    use tandem::{ConsoleSink, CoreFile, ExitStatus, Image, VmBuilder, VmConfig};
    use vm_memory::{Bytes, GuestAddress};
    let dir = scratch("triple");
    let core = dir.join("triple.core");
    let hv = tandem_tests::hypervisor();
    let image = Image::from_file(&image_path("pagefault")).unwrap();
    let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = VmConfig {
        cmdline: "null".into(),
        timeout: Some(std::time::Duration::from_secs(60)),
        console: ConsoleSink::Capture(console.clone()),
        core: Some(CoreFile {
            path: core.clone(),
            program: "pagefault".into(),
        }),
        ..VmConfig::default()
    };
    let vm = VmBuilder::new(&hv, &image).config(config).build().unwrap();
    // With the IDT wiped, the app's page fault cannot be delivered: #PF,
    // then #DF, then shutdown (as in tests/guest.rs).
    vm.memory()
        .write_slice(&[0u8; 4096], GuestAddress(tandem_abi::layout::IDT_ADDR))
        .unwrap();
    let report = vm.run().unwrap();
    let text = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    match &report.status {
        ExitStatus::Crashed(why) => assert!(why.contains("triple fault"), "{why}"),
        other => panic!("expected a triple fault, got {other:?}: {text}"),
    }
    assert_eq!(report.status.code(), tandem::exit_code::CRASHED);
    assert!(core.exists(), "no core file of the triple fault");
    let out = gdb(&image_path("pagefault"), &core, &["bt", "p/x $cs"]);
    assert!(!out.contains("may not match"), "{out}");
    assert!(out.contains("SIGSEGV"), "{out}");
    // Where the vCPU was when it shut down: the faulting function.
    let frame0 = out.lines().find(|l| l.starts_with("#0")).unwrap_or("");
    assert!(frame0.contains("pagefault::read_null"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The local addresses of TCP sockets listening on `port` (from
/// /proc/net/tcp and tcp6), as the kernel writes them.
fn listeners(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Fields: sl, local_address (HEX_IP:HEX_PORT), rem_address, st (0A: LISTEN).
            if f.len() > 3 && f[3] == "0A" && f[1].ends_with(&format!(":{port:04X}")) {
                found.push(f[1].to_string());
            }
        }
    }
    found
}

#[test]
fn gdb_over_tcp_listens_on_localhost_only_and_only_when_asked() {
    tandem_tests::require_kvm();
    // A free port: the kernel's pick, given back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(tandem_tests::tandem_bin())
        .args([
            "run",
            s(&image_path("debugme")),
            "--timeout",
            "60s",
            "--gdb",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start tandem");
    let deadline = std::time::Instant::now() + LISTEN_WAIT;
    let found = loop {
        let found = listeners(port);
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tandem never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // 127.0.0.1 (0100007F as the kernel writes it), nothing else.
    assert_eq!(found, vec![format!("0100007F:{port:04X}")]);
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex"])
        .arg(format!("target remote 127.0.0.1:{port}"))
        .args([
            "-ex",
            "break debugme_square",
            "-ex",
            "continue",
            "-ex",
            "bt",
        ])
        .args(["-ex", "delete", "-ex", "continue"])
        .arg(image_path("debugme"))
        .output()
        .expect("cannot start gdb: install Debian's gdb (cargo xtask test does)");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = child.wait_with_output().unwrap();
    assert!(out.contains("Breakpoint 1, 0x"), "{out}");
    assert!(out.contains("exited with code 067"), "{out}");
    assert_eq!(run.status.code(), Some(55));
    // The listener closed with the connection: one debugger per VM.
    assert!(listeners(port).is_empty());

    // Without --gdb the VMM holds no socket at all.
    let mut spin = Command::new(tandem_tests::tandem_bin())
        .args(["run", s(&image_path("spin")), "--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot start tandem");
    // Wait for the guest's first line: the VM is set up and running.
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(spin.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("spinning"), "{line}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", spin.id())).unwrap();
    let sockets: Vec<PathBuf> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .collect();
    spin.kill().unwrap();
    let _ = spin.wait();
    assert!(sockets.is_empty(), "sockets without --gdb: {sockets:?}");
}
