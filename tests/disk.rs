//! Disks (virtio-blk on the Tandem VMM): the `kvstore` app keeps every
//! acknowledged write across a SIGKILL of its VMM, a read-only disk
//! refuses writes, bad disk images and mismatched manifests are refused
//! before boot by name, and each hostile request ends only its VM.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tandem_tests::{image_path, require_kvm, require_tool, run_app, tandem_bin};

/// A scratch directory for this test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// A sparse image of `len` bytes.
    fn image(&self, name: &str, len: u64) -> PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(len))
            .expect("disk image");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn disk_arg(path: &Path, extra: &str) -> String {
    format!("path={}{extra}", path.display())
}

/// `tandem run kvstore --disk ...` with piped stdin and stdout.
fn spawn_kvstore(disk: &str) -> Child {
    require_kvm();
    Command::new(tandem_bin())
        .args(["run", "--timeout", "120s", "--disk", disk])
        .arg(image_path("kvstore"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start tandem")
}

/// Runs kvstore on `disk` with `input`, to the end of its input; returns
/// its exit code and console.
fn kvstore(disk: &str, input: &str) -> (Option<i32>, String, String) {
    let mut child = spawn_kvstore(disk);
    let mut stdin = child.stdin.take().expect("piped stdin");
    let data = input.as_bytes().to_vec();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("tandem run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The answer lines (every line but kvstore's banner).
fn answers(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("kvstore:"))
        .collect()
}

#[test]
fn kvstore_keeps_its_keys_across_runs() {
    let s = Scratch::new("runs");
    let disk = disk_arg(&s.image("kv.img", 8 << 20), "");
    let (code, out, err) = kvstore(
        &disk,
        "put a 1\nput b two words\nget a\nget b\nget c\ndel a\nget a\nbogus\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        answers(&out),
        [
            "ok",
            "ok",
            "1",
            "two words",
            "missing",
            "ok",
            "missing",
            "error: usage: put KEY VALUE | get KEY | del KEY | snapshot"
        ],
        "{out}"
    );
    let (code, out, err) = kvstore(&disk, "get a\nget b\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("kvstore: 1 keys from 3 records"), "{out}");
    assert_eq!(answers(&out), ["missing", "two words"], "{out}");
}

#[test]
fn kvstore_has_every_acknowledged_write_after_sigkill() {
    let s = Scratch::new("kill");
    let disk = disk_arg(&s.image("kv.img", 16 << 20), "");
    let mut child = spawn_kvstore(&disk);
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    // Lines as they come, from a thread, so the test can stop reading at any moment.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A writer that never waits: puts stream in while acknowledgements come back.
    let writer = std::thread::spawn(move || {
        for i in 0..100_000u32 {
            if writeln!(
                stdin,
                "put key{i} value-{i}-{}",
                "x".repeat(i as usize % 300)
            )
            .is_err()
            {
                break;
            }
        }
    });
    let mut acked = 0u32;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked < 60 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "ok" => acked += 1,
            Ok(line) if line.starts_with("kvstore:") => {}
            Ok(line) => panic!("kvstore answered {line:?} to a put"),
            Err(_) => panic!("only {acked} puts acknowledged in 90 s"),
        }
    }
    // Mid-stream: more puts are queued, some perhaps half written.
    // Child::kill is SIGKILL: no chance to flush or clean up.
    child.kill().expect("kill -9 tandem");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), None, "tandem was killed by a signal");
    // Everything acknowledged before the kill is counted.
    while let Ok(line) = rx.try_recv() {
        if line == "ok" {
            acked += 1;
        }
    }
    let _ = writer.join();

    let queries: String = (0..acked).map(|i| format!("get key{i}\n")).collect();
    let (code, out, err) = kvstore(&disk, &queries);
    assert_eq!(code, Some(0), "{err}");
    let got = answers(&out);
    assert_eq!(got.len(), acked as usize, "{out}");
    for (i, value) in got.iter().enumerate() {
        let want = format!("value-{i}-{}", "x".repeat(i % 300));
        assert_eq!(*value, want, "acknowledged put key{i} was lost");
    }
    let banner = out.lines().next().unwrap_or_default();
    let keys: u32 = banner
        .strip_prefix("kvstore: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no banner: {out}"));
    assert!(keys >= acked, "{keys} keys replayed, {acked} acknowledged");
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let s = Scratch::new("ro");
    let img = s.image("kv.img", 4 << 20);
    let (code, out, err) = kvstore(&disk_arg(&img, ""), "put k v\n");
    assert_eq!(code, Some(0), "{out}{err}");
    let before = std::fs::read(&img).expect("read image");
    let (code, out, err) = kvstore(&disk_arg(&img, ",ro"), "get k\nput k w\nget k\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(", read-only"), "{out}");
    assert_eq!(
        answers(&out),
        ["v", "error: disk: the disk is read-only", "v"],
        "{out}"
    );
    // The device refused the write: the host saw it and answered with an error.
    assert!(
        err.contains("0 writes (0 bytes)") && err.contains("1 errors"),
        "{err}"
    );
    assert_eq!(std::fs::read(&img).expect("read image"), before);
}

#[test]
fn bad_disk_images_are_refused_by_name() {
    require_tool("chattr", "e2fsprogs");
    let s = Scratch::new("bad");
    let small = s.image("small.img", 1024);
    let odd = s.image("odd.img", (1 << 20) + 100);
    let frozen = s.image("frozen.img", 1 << 20);
    let ok = s.image("ok.img", 1 << 20);
    let chattr = |flag: &str| {
        let st = Command::new("chattr").arg(flag).arg(&frozen).status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "chattr {flag} {} failed: the scratch file system must take the immutable flag",
            frozen.display()
        );
    };
    chattr("+i");
    let missing = s.0.join("missing.img");
    let cases: [(String, &str); 5] = [
        (disk_arg(&missing, ""), "missing.img does not exist"),
        (disk_arg(&small, ""), "small.img is too small: 1024 bytes"),
        (disk_arg(&odd, ""), "not a multiple of the 512-byte sector"),
        (disk_arg(&frozen, ""), "frozen.img is not writable"),
        (format!("{},rw", disk_arg(&ok, "")), "unknown item \"rw\""),
    ];
    for (disk, says) in &cases {
        let out = run_app("kvstore", &["--disk", disk]);
        assert_ne!(out.code, Some(0), "{disk}: {}", out.stdout);
        assert!(out.stderr.contains(says), "{disk}: {}", out.stderr);
        assert!(!out.stdout.contains("kvstore:"), "{disk}: the guest ran");
    }
    // Read-only, the same frozen image is fine.
    let out = run_app("kvstore", &["--disk", &disk_arg(&frozen, ",ro")]);
    chattr("-i");
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("read-only"), "{}", out.stdout);

    // The manifest: kvstore needs a disk, hello declares none.
    let out = run_app("kvstore", &[]);
    assert!(
        out.stderr
            .contains("needs a block device: run it with --disk path=FILE"),
        "{}",
        out.stderr
    );
    let out = run_app("hello", &["--disk", &disk_arg(&ok, "")]);
    assert!(
        out.stderr
            .contains("does not declare a block device; remove --disk"),
        "{}",
        out.stderr
    );
}

#[test]
fn two_vms_cannot_write_one_disk() {
    let s = Scratch::new("lock");
    let disk = disk_arg(&s.image("kv.img", 1 << 20), "");
    // The first holds the disk while it waits for input.
    let mut first = spawn_kvstore(&disk);
    let stdout = first.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(banner.starts_with("kvstore:"), "{banner}");
    for extra in ["", ",ro"] {
        let out = run_app("kvstore", &["--disk", &format!("{disk}{extra}")]);
        assert_ne!(out.code, Some(0));
        assert!(
            out.stderr.contains("is in use by another VM"),
            "{}",
            out.stderr
        );
    }
    let mut stdin = first.stdin.take().expect("piped stdin");
    writeln!(stdin, "put k v").expect("write");
    drop(stdin);
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ok"));
    assert_eq!(first.wait().expect("wait").code(), Some(0));
}

#[test]
fn each_hostile_request_ends_only_its_vm() {
    let s = Scratch::new("hostile");
    let img = s.image("d.img", 1 << 20);
    let disk = disk_arg(&img, "");
    for (case, says) in [
        ("ring-outside", "descriptor table at 0x1000"),
        (
            "buffer-outside",
            "buffer at 0x100000000 (+16 bytes) lies outside the app's memory",
        ),
        (
            "past-end",
            "reads or writes sectors 2048..2049, past the disk's 2048",
        ),
        (
            "huge-length",
            "descriptor chain of 4194320 bytes exceeds the 1048593-byte limit",
        ),
        ("unaligned", "moves 100 bytes, not a multiple of 512"),
        ("bad-layout", "has its buffers in the wrong layout"),
        ("no-status", "has no writable status byte"),
        (
            "avail-index",
            "available index 13 is 13 entries ahead, past the queue size 8",
        ),
        ("bad-next", "descriptor chain from 0 is broken"),
    ] {
        let out = run_app("hostileblk", &["--cmdline", case, "--disk", &disk]);
        assert!(
            out.stdout.contains(&format!("hostileblk: {case}")),
            "{case}: {}",
            out.stdout
        );
        assert_eq!(
            out.code,
            Some(i32::from(tandem::exit_code::PROTOCOL)),
            "{case}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains("guest broke the virtio protocol") && out.stderr.contains(says),
            "{case}: {}",
            out.stderr
        );
    }
    // The host and the disk are fine: the next VM uses it.
    let (code, out, err) = kvstore(&disk, "put after hostile\nget after\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(answers(&out), ["ok", "hostile"], "{out}");
}

/// Runs diskbench `args` on `disk`; returns (bytes, requests, guest
/// microseconds) and the VMM's stderr.
fn diskbench(disk: &str, args: &str) -> ((u64, u64, u64), String) {
    let out = run_app(
        "diskbench",
        &["--disk", disk, "--cmdline", args, "--timeout", "120s"],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("diskbench: "))
        .unwrap_or_else(|| panic!("no diskbench line: {}", out.stdout));
    let w: Vec<&str> = line.split(' ').collect();
    let num = |i: usize| -> u64 {
        w.get(i)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    ((num(1), num(3), num(5)), out.stderr)
}

#[test]
fn rate_limits_hold_over_a_window() {
    let s = Scratch::new("rate");
    let img = s.image("d.img", 64 << 20);
    // 4 MiB/s with the default burst (a tenth of a second): 12 MiB need at
    // least (12 - 0.4) / 4 s however fast the host is.
    let rate = 4u64 << 20;
    let burst = rate / 10;
    let ((bytes, _, us), err) = diskbench(&disk_arg(&img, ",rate=4M"), "seqwrite 12");
    assert_eq!(bytes, 12 << 20);
    let allowed = burst as f64 + rate as f64 * us as f64 / 1e6;
    assert!(
        bytes as f64 <= allowed,
        "{bytes} bytes in {us} us, past the {allowed:.0} a 4 MiB/s limit allows"
    );
    assert!(
        !err.contains(" 0 held"),
        "the limit never held a request: {err}"
    );

    // 500 requests a second (burst 50): 1000 writes and a flush need at
    // least (1001 - 50) / 500 s.
    let ((_, requests, us), err) = diskbench(&disk_arg(&img, ",iops=500"), "randwrite 1000");
    assert_eq!(requests, 1001);
    let allowed = 50.0 + 500.0 * us as f64 / 1e6;
    assert!(
        requests as f64 <= allowed,
        "{requests} requests in {us} us, past the {allowed:.0} a 500/s limit allows"
    );
    assert!(
        !err.contains(" 0 held"),
        "the limit never held a request: {err}"
    );
}

/// A kvstore VM driven one command at a time (each answer awaited before
/// the next command is sent, so nothing sits unread in the guest's input
/// at a snapshot).
struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(args: &[&str]) -> Self {
        require_kvm();
        let mut child = Command::new(tandem_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next answer (banners skipped).
    fn answer(&mut self) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with("kvstore:") => continue,
                Ok(l) => return l,
                Err(_) => {
                    let _ = self.child.kill();
                    let out = self.child.wait_with_output_now();
                    panic!("no answer from kvstore in 60 s; stderr: {out}");
                }
            }
        }
    }

    fn ask(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to kvstore");
        self.answer()
    }

    /// Ends the input and waits; returns the exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

trait WaitNow {
    fn wait_with_output_now(&mut self) -> String;
}

impl WaitNow for Child {
    fn wait_with_output_now(&mut self) -> String {
        let _ = self.wait();
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    }
}

#[test]
fn a_snapshot_keeps_memory_and_disk_consistent_and_clones_write_apart() {
    let s = Scratch::new("snap");
    let img = s.image("kv.img", 8 << 20);
    let snap = s.0.join("snap");
    let disk = disk_arg(&img, "");
    let image = image_path("kvstore");
    let mut vm = Session::start(&[
        "run",
        "--timeout",
        "120s",
        "--disk",
        &disk,
        "--snapshot-dir",
        snap.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(vm.ask("put before 1"), "ok");
    assert_eq!(vm.ask("snapshot"), "snapshot taken");
    assert_eq!(vm.ask("put after 2"), "ok");
    let (code, err) = vm.finish();
    assert_eq!(code, Some(0), "{err}");

    let restore = |path: &Path| {
        Session::start(&[
            "restore",
            "--timeout",
            "120s",
            snap.to_str().unwrap(),
            "--disk",
            &disk_arg(path, ""),
        ])
    };
    // A restore is the VM at the snapshot: the key written before it is
    // there (in memory and on its disk), the one written after is not.
    let first = s.0.join("first.img");
    let mut r = restore(&first);
    assert_eq!(r.answer(), "restored");
    assert_eq!(r.ask("get before"), "1");
    assert_eq!(r.ask("get after"), "missing");
    assert_eq!(r.ask("put mine first"), "ok");
    let (code, err) = r.finish();
    assert_eq!(code, Some(0), "{err}");
    // Its disk is its own file: replayed cold, it has the same keys.
    let (code, out, err) = kvstore(&disk_arg(&first, ""), "get before\nget after\nget mine\n");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(answers(&out), ["1", "missing", "first"], "{out}");

    // A second restore does not see the first one's write.
    let second = s.0.join("second.img");
    let mut r = restore(&second);
    assert_eq!(r.answer(), "restored");
    assert_eq!(r.ask("get mine"), "missing");
    assert_eq!(r.ask("put mine second"), "ok");
    let (code, err) = r.finish();
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = kvstore(&disk_arg(&first, ""), "get mine\n");
    assert_eq!(answers(&out), ["first"], "{out}");
    // And the original disk went on from the snapshot on its own.
    let (_, out, _) = kvstore(&disk, "get after\nget mine\n");
    assert_eq!(answers(&out), ["2", "missing"], "{out}");

    // Clones get a file each, from a {i} template; never one shared.
    let out = tandem_tests::tandem(&[
        "restore",
        "--timeout",
        "60s",
        snap.to_str().unwrap(),
        "--clones",
        "2",
        "--disk",
        &disk_arg(&s.0.join("clone{i}.img"), ""),
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(s.0.join("clone0.img").is_file() && s.0.join("clone1.img").is_file());
    let out = tandem_tests::tandem(&[
        "restore",
        snap.to_str().unwrap(),
        "--clones",
        "2",
        "--disk",
        &disk_arg(&s.0.join("shared.img"), ""),
    ]);
    assert!(
        out.stderr.contains("clones need one disk file each"),
        "{}",
        out.stderr
    );
    // A restore needs a new file for each disk.
    let out = tandem_tests::tandem(&["restore", snap.to_str().unwrap()]);
    assert!(
        out.stderr
            .contains("the snapshot's VM has 1 disk(s) and 0 --disk were given"),
        "{}",
        out.stderr
    );
    let out = tandem_tests::tandem(&[
        "restore",
        snap.to_str().unwrap(),
        "--disk",
        &disk_arg(&first, ""),
    ]);
    assert!(
        out.stderr.contains("the destination exists"),
        "{}",
        out.stderr
    );
}

/// Runs diskbench `args` under QEMU microvm + KVM with `img` as a
/// virtio-blk-device; returns QEMU's status and the console.
fn diskbench_qemu(img: &Path, args: &str) -> (Option<i32>, String) {
    tandem_tests::require_qemu();
    require_kvm();
    let image = image_path("diskbench");
    let out = Command::new("timeout")
        .args(["120", "qemu-system-x86_64", "-machine"])
        .arg(tandem_abi::platform::QEMU_NET_MACHINE)
        .args(["-accel", "kvm", "-m", "128M"])
        .args(tandem_abi::platform::QEMU_ARGS)
        .arg("-kernel")
        .arg(&image)
        .args(["-append", args, "-drive"])
        .arg(format!("file={},if=none,id=d0,format=raw", img.display()))
        .args(["-device", "virtio-blk-device,drive=d0"])
        .output()
        .expect("cannot start qemu");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn one_disk_image_works_under_qemu_microvm_and_the_tandem_vmm() {
    let s = Scratch::new("qemu");
    let img = s.image("d.img", 16 << 20);
    // QEMU's virtio-blk (its legacy virtio-mmio transport) writes...
    let (code, out) = diskbench_qemu(&img, "seqwrite 2");
    let ok = Some(tandem_abi::platform::qemu_status(0));
    assert_eq!(code, ok, "{out}");
    assert!(out.contains("diskbench: seqwrite 2097152 bytes"), "{out}");
    let bytes = std::fs::read(&img).expect("read image");
    assert!(
        bytes[..2 << 20]
            .iter()
            .enumerate()
            .all(|(i, &b)| usize::from(b) == i % (1 << 20) % 251),
        "QEMU's writes are not the pattern"
    );
    assert!(bytes[2 << 20..].iter().all(|&b| b == 0));
    // ...and reads back; the Tandem VMM reads the same image alike.
    let (code, out) = diskbench_qemu(&img, "seqverify 2");
    assert_eq!(code, ok, "{out}");
    let ((bytes, _, _), _) = diskbench(&disk_arg(&img, ""), "seqverify 2");
    assert_eq!(bytes, 2 << 20);
}
