//! `kvstore-net`: the kvstore's line protocol over TCP on a tap (made here,
//! as in tests/net_tandem.rs), from several connections at once; after a
//! SIGKILL of its VMM mid-stream and a restart on the same disk, every
//! write it acknowledged over TCP is read back over TCP. Needs root and
//! `ip` (CI is root): without them the test fails, naming what is missing.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tandem_tests::{image_path, require_kvm, tandem_bin};

/// The port kvstore-net serves.
const PORT: u16 = 7070;
/// How long a guest may take until its port answers.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Puts acknowledged on each connection before the kill.
const ACKS_PER_WRITER: u32 = 40;
/// Connections writing at once.
const WRITERS: u32 = 3;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2 is needed for this test): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed (this test needs root): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tap with the host end's address, and a scratch folder; both removed
/// when dropped.
struct Setup {
    tap: String,
    net: u8,
    dir: PathBuf,
}

impl Setup {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test needs root (to make a tap device)");
        let pid = std::process::id();
        // 10.98.N.0/24: apart from net_tandem's 10.99.
        let net = u8::try_from(pid % 200 + 20).unwrap();
        let tap = format!("tkv{}", pid % 100_000);
        let _ = Command::new("ip").args(["link", "del", &tap]).output();
        ip(&["tuntap", "add", &tap, "mode", "tap"]);
        let dir = std::env::temp_dir().join(format!("tandem-kvnet-{pid}"));
        let setup = Self { tap, net, dir };
        ip(&[
            "addr",
            "add",
            &format!("10.98.{net}.1/24"),
            "dev",
            &setup.tap,
        ]);
        ip(&["link", "set", &setup.tap, "up"]);
        let _ = std::fs::remove_dir_all(&setup.dir);
        std::fs::create_dir_all(&setup.dir).unwrap();
        setup
    }

    fn addr(&self) -> SocketAddr {
        format!("10.98.{}.2:{PORT}", self.net).parse().unwrap()
    }

    /// `tandem run kvstore-net` on the tap and `disk`, stdout piped.
    fn spawn(&self, disk: &std::path::Path) -> Child {
        require_kvm();
        let net = format!(
            "tap={},ip=10.98.{n}.2/24,gw=10.98.{n}.1",
            self.tap,
            n = self.net
        );
        Command::new(tandem_bin())
            .args(["run", "--timeout", "300s", "--net", &net, "--disk"])
            .arg(format!("path={}", disk.display()))
            .arg(image_path("kvstore-net"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tandem")
    }

    /// Waits until the guest accepts a connection; returns it.
    fn connect(&self, child: &mut Child) -> TcpStream {
        let start = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)) {
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                return s;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "kvstore-net ended ({status}) before {} answered: {}",
                    self.addr(),
                    output(child)
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                panic!(
                    "kvstore-net did not answer on {} within {READY_TIMEOUT:?}: {}",
                    self.addr(),
                    output(child)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.tap]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn output(child: &mut Child) -> String {
    use std::io::Read;
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}

/// One request and its answer line.
fn ask(reader: &mut BufReader<TcpStream>, line: &str) -> String {
    writeln!(reader.get_mut(), "{line}").unwrap_or_else(|e| panic!("send {line:?}: {e}"));
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .unwrap_or_else(|e| panic!("answer to {line:?}: {e}"));
    answer.trim_end().to_string()
}

fn value(writer: u32, i: u32) -> String {
    format!("v{writer}-{i}-{}", "y".repeat((i as usize * 13) % 200))
}

#[test]
fn kvstore_over_tcp_has_every_acknowledged_write_after_sigkill() {
    let setup = Setup::new();
    let disk = setup.dir.join("kv.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let mut child = setup.spawn(&disk);

    // The protocol, as on stdin.
    let mut c = BufReader::new(setup.connect(&mut child));
    assert_eq!(ask(&mut c, "put gone soon"), "ok");
    assert_eq!(ask(&mut c, "get gone"), "soon");
    assert_eq!(ask(&mut c, "del gone"), "ok");
    assert_eq!(ask(&mut c, "get gone"), "missing");
    assert_eq!(ask(&mut c, "put spaced a value with spaces"), "ok");
    assert!(ask(&mut c, "frobnicate").starts_with("error: usage"));

    // Writers on their own connections that never wait: puts stream in
    // while the acknowledgements come back, counted per writer.
    let (tx, rx) = mpsc::channel::<(u32, u32)>();
    for w in 0..WRITERS {
        let stream = setup.connect(&mut child);
        let tx = tx.clone();
        let mut send = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..100_000u32 {
                if writeln!(send, "put w{w}k{i} {}", value(w, i)).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut acked = 0;
            for line in BufReader::new(stream).lines() {
                match line.as_deref() {
                    Ok("ok") => {
                        acked += 1;
                        if tx.send((w, acked)).is_err() {
                            break;
                        }
                    }
                    Ok(other) => panic!("writer {w}: put answered {other:?}"),
                    Err(_) => break,
                }
            }
        });
    }
    drop(tx);
    let mut acked = vec![0u32; WRITERS as usize];
    let deadline = Instant::now() + Duration::from_secs(180);
    while acked.iter().any(|&a| a < ACKS_PER_WRITER) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((w, n)) => acked[w as usize] = n,
            Err(_) => panic!("acknowledged puts after 180 s: {acked:?}"),
        }
    }
    // Mid-stream, with more puts queued: SIGKILL, no chance to flush.
    child.kill().expect("kill -9 tandem");
    assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
    // Acknowledgements read before the VMM died count too.
    std::thread::sleep(Duration::from_millis(200));
    while let Ok((w, n)) = rx.try_recv() {
        acked[w as usize] = acked[w as usize].max(n);
    }

    // Again on the same disk and tap: every acknowledged write is there.
    let mut child = setup.spawn(&disk);
    let mut c = BufReader::new(setup.connect(&mut child));
    assert_eq!(ask(&mut c, "get gone"), "missing");
    assert_eq!(ask(&mut c, "get spaced"), "a value with spaces");
    for w in 0..WRITERS {
        for i in 0..acked[w as usize] {
            assert_eq!(
                ask(&mut c, &format!("get w{w}k{i}")),
                value(w, i),
                "acknowledged put w{w}k{i} was lost (writer {w} had {} acknowledged)",
                acked[w as usize]
            );
        }
    }
    drop(c);
    let text = output(&mut child);
    assert!(text.contains("kvstore: tcp on 10.98."), "{text}");
}
