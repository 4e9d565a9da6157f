//! Snapshots, restores and clones of a VM with a network device, on taps
//! made here (root, as CI is; `ip` from iproute2): `httpd` snapshotted at
//! `ready()` answers on a new tap after `tandem restore --net`, a
//! connection open at the snapshot is reset (not left hanging), clones of
//! `--clones N` answer on their own addresses with their own MACs (read
//! from the host's neighbour table), a backup point taken while it served
//! restores (with what the device wrote), and what must be refused is: clones
//! sharing a tap or an address, a restore without `--net` (or with one for
//! a VM that had none), a forged device state.

use std::io::{BufReader, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tandem::snapshot::Snapshot;
use tandem_tests::http::exchange;
use tandem_tests::{image_path, require_kvm, tandem, tandem_bin};

/// How long a guest may take until its port answers, or a run to end.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2 is needed for these tests): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed (these tests need root): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The third octet of a fresh 10.98.N.0/24 for this test process
/// (net_tandem.rs uses 10.99.0.0/16), `count` of them in a row.
fn fresh_nets(count: u32) -> u8 {
    let n = NEXT.fetch_add(count, Ordering::SeqCst);
    u8::try_from((std::process::id() % 20) * 12 + 2 + n).expect("a third octet")
}

/// A tap with the host end at 10.98.N.1/24; deleted when dropped (also
/// when a test fails).
struct TestTap {
    name: String,
    net: u8,
}

impl TestTap {
    fn new(name: String, net: u8) -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "the tap tests need root (to make a tap device)");
        ip(&["tuntap", "add", &name, "mode", "tap"]);
        let tap = Self { name, net };
        ip(&[
            "addr",
            "add",
            &format!("10.98.{net}.1/24"),
            "dev",
            &tap.name,
        ]);
        ip(&["link", "set", &tap.name, "up"]);
        tap
    }

    /// A tap of a new name on network `net`.
    fn on(net: u8) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        Self::new(format!("tdn{}x{n}", std::process::id() % 100_000), net)
    }

    fn guest_ip(&self) -> String {
        format!("10.98.{}.2", self.net)
    }

    fn net_arg(&self) -> String {
        format!(
            "tap={},ip={}/24,gw=10.98.{}.1",
            self.name,
            self.guest_ip(),
            self.net
        )
    }

    /// The MAC the host's neighbour table has for the guest, if any.
    fn guest_mac(&self) -> Option<String> {
        let out = ip(&["neigh", "show", &self.guest_ip(), "dev", &self.name]);
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_owned)
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-netsnap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A `tandem` process serving HTTP; killed (and reaped) when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        require_kvm();
        let child = Command::new(tandem_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        Self { child }
    }

    /// Waits until `addr:80` accepts a connection.
    fn wait_for(&mut self, addr: &str) {
        let to: SocketAddr = format!("{addr}:80").parse().unwrap();
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tandem ended ({status}) before {to} answered: {}",
                    self.output()
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = self.child.kill();
                panic!(
                    "{to} did not answer within {READY_TIMEOUT:?}: {}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to end by itself; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = self.child.kill();
                panic!(
                    "tandem did not end within {READY_TIMEOUT:?}: {}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect((addr, 80)).expect("connect to the guest");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// One GET / on a fresh connection: the page came back.
fn assert_serves(addr: &str) {
    let mut conn = BufReader::new(connect(addr));
    let reply = exchange(&mut conn, GET);
    assert_eq!(reply.status, 200, "GET / on {addr}");
    assert!(
        String::from_utf8_lossy(&reply.body).contains("Hello from Tandem!"),
        "GET / on {addr}: the page"
    );
}

/// `httpd` on `tap`, snapshotted into a new directory when it is ready.
fn snapshot_at_ready(tap: &TestTap, name: &str) -> PathBuf {
    let dir = scratch(name).join("snap");
    let image = image_path("httpd");
    let mut run = Server::start(&[
        "run",
        s(&image),
        "--timeout",
        "60s",
        "--net",
        &tap.net_arg(),
        "--snapshot-at-ready",
        s(&dir),
        "--exit-after-snapshot",
    ]);
    let code = run.wait_exit();
    assert_eq!(code, Some(0), "snapshot at ready: {}", run.output());
    dir
}

#[test]
fn a_restored_httpd_answers_on_a_new_tap() {
    let first = fresh_nets(2);
    let old = TestTap::on(first);
    let dir = snapshot_at_ready(&old, "new-tap");
    let state = Snapshot::load(&dir).expect("the snapshot loads").state;
    let net = state.net.expect("the snapshot keeps the network device");
    assert_eq!(net.ipv4.map(|ip| ip.address), Some([10, 98, first, 2]));

    let info = tandem(&["snapshot", "info", s(&dir)]);
    assert!(
        info.stdout.contains("network:     virtio-net, MAC ")
            && info.stdout.contains(&format!("10.98.{first}.2/24")),
        "{}",
        info.stdout
    );

    // The device needs a tap; a VM without one takes none.
    let out = tandem(&["restore", s(&dir), "--timeout", "10s"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("the snapshot's VM has a network device: give --net tap=NAME"),
        "{}",
        out.stderr
    );

    // Another tap, another network: the guest takes the new address.
    let new = TestTap::on(first + 1);
    let mut restored = Server::start(&[
        "restore",
        s(&dir),
        "--timeout",
        "120s",
        "--net",
        &new.net_arg(),
    ]);
    restored.wait_for(&new.guest_ip());
    assert_serves(&new.guest_ip());
    // The same MAC as before (only the address was given).
    let mac = new.guest_mac().expect("a neighbour entry for the guest");
    let want: Vec<String> = net.mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(mac, want.join(":"));
    let text = restored.output();
    assert!(
        text.contains("network renewed for generation")
            && text.contains(&format!("10.98.{}.2/24", first + 1)),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn a_connection_open_at_the_snapshot_is_reset_after_restore() {
    let net = fresh_nets(1);
    let dir = scratch("reset").join("snap");
    let old = TestTap::on(net);
    let image = image_path("httpd");
    let mut run = Server::start(&[
        "run",
        s(&image),
        "--timeout",
        "120s",
        "--net",
        &old.net_arg(),
        "--snapshot-dir",
        s(&dir),
        "--exit-after-snapshot",
    ]);
    run.wait_for(&old.guest_ip());
    // A kept-alive connection, open when the snapshot is taken.
    let mut open = BufReader::new(connect(&old.guest_ip()));
    assert_eq!(exchange(&mut open, GET).status, 200);
    let pid = run.child.id().to_string();
    let sent = Command::new("kill").args(["-USR1", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -USR1 {pid}");
    let code = run.wait_exit();
    assert_eq!(code, Some(0), "snapshot on SIGUSR1: {}", run.output());

    // The same network on a new tap (the old one gone): the restored VM
    // keeps its address, so its reset reaches the client.
    drop(old);
    let new = TestTap::on(net);
    let mut restored = Server::start(&[
        "restore",
        s(&dir),
        "--timeout",
        "120s",
        "--net",
        &format!("tap={}", new.name),
    ]);
    let mut conn = open.into_inner();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let got = conn.read(&mut buf);
    let waited = start.elapsed();
    eprintln!("after restore the open connection read {got:?} after {waited:?}");
    match got {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(0) => {}
        other => panic!(
            "the connection open at the snapshot was not reset after {waited:?}: {other:?}; {}",
            restored.output()
        ),
    }
    // New connections are served.
    restored.wait_for(&new.guest_ip());
    assert_serves(&new.guest_ip());
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn two_clones_answer_on_distinct_addresses() {
    let first = fresh_nets(3);
    let origin = TestTap::on(first);
    let dir = snapshot_at_ready(&origin, "clones");
    let prefix = format!("tdc{}c", std::process::id() % 10_000);
    let k = first + 1;
    let taps = [
        TestTap::new(format!("{prefix}0"), k),
        TestTap::new(format!("{prefix}1"), k + 1),
    ];
    let template = format!("tap={prefix}{{i}},ip=10.98.{{i+{k}}}.2/24,gw=10.98.{{i+{k}}}.1");

    // Clones that would share a tap or an address are refused before any starts.
    for (nets, says) in [
        (
            vec![format!("tap={},ip=10.98.{k}.2/24", taps[0].name)],
            "would share tap",
        ),
        (vec![format!("tap={prefix}{{i}}")], "would share address"),
        (
            vec![
                format!("tap={},ip=10.98.{k}.2/24", taps[0].name),
                format!("tap={},ip=10.98.{k}.2/24", taps[1].name),
            ],
            "clones 0 and 1 would share address",
        ),
    ] {
        let mut args = vec!["restore", s(&dir), "--clones", "2", "--timeout", "10s"];
        for n in &nets {
            args.extend(["--net", n.as_str()]);
        }
        let out = tandem(&args);
        assert_ne!(out.code, Some(0), "{nets:?}");
        assert!(out.stderr.contains(says), "{nets:?}: {}", out.stderr);
        assert!(
            !out.stdout.contains("[clone"),
            "a clone started: {}",
            out.stdout
        );
    }

    let mut clones = Server::start(&[
        "restore",
        s(&dir),
        "--clones",
        "2",
        "--timeout",
        "120s",
        "--net",
        &template,
    ]);
    let mut macs = Vec::new();
    for tap in &taps {
        clones.wait_for(&tap.guest_ip());
        assert_serves(&tap.guest_ip());
        let mac = tap.guest_mac().expect("a neighbour entry for the clone");
        // Derived from the clone's address: 02:00 and its four bytes.
        assert_eq!(mac, format!("02:00:0a:62:{:02x}:02", tap.net));
        macs.push(mac);
    }
    assert_ne!(macs[0], macs[1]);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn a_backup_point_of_httpd_restores_on_a_tap() {
    let first = fresh_nets(2);
    let work = scratch("backup");
    let chain = work.join("chain");
    let old = TestTap::on(first);
    let image = image_path("httpd");
    let mut run = Server::start(&[
        "run",
        s(&image),
        "--timeout",
        "120s",
        "--net",
        &old.net_arg(),
        "--backup-dir",
        s(&chain),
        "--backup-every",
        "200ms",
    ]);
    run.wait_for(&old.guest_ip());
    // Points taken while it serves, with frames in between: the device's
    // writes (receive buffers, used rings) must be in them, though KVM's
    // dirty log does not see them.
    let points = || {
        tandem::backup::Chain::open(&chain)
            .map(|c| c.points().values().filter(|m| m.is_ok()).count())
            .unwrap_or(0)
    };
    let start = Instant::now();
    let wait_points = |n: usize, run: &mut Server| {
        while points() < n {
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "no backup points: {}",
                run.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_points(2, &mut run);
    for _ in 0..3 {
        assert_serves(&old.guest_ip());
    }
    let after = points();
    wait_points(after + 2, &mut run);
    let last = tandem::backup::Chain::open(&chain).unwrap().last() - 1;
    drop(run);
    let snap = work.join("point");
    let out = tandem(&[
        "backup",
        "restore",
        s(&chain),
        "--point",
        &last.to_string(),
        "--out",
        s(&snap),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(Snapshot::load(&snap).unwrap().state.net.is_some());
    let new = TestTap::on(first + 1);
    let mut restored = Server::start(&[
        "restore",
        s(&snap),
        "--timeout",
        "120s",
        "--net",
        &new.net_arg(),
    ]);
    restored.wait_for(&new.guest_ip());
    assert_serves(&new.guest_ip());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_forged_device_state_is_refused() {
    let first = fresh_nets(2);
    let origin = TestTap::on(first);
    let dir = snapshot_at_ready(&origin, "forged");
    let other = TestTap::on(first + 1);
    let good = Snapshot::load(&dir).expect("the snapshot loads");
    let forge = |name: &str, edit: &dyn Fn(&mut tandem::devices::NetState)| -> String {
        let forged = dir.parent().unwrap().join(name);
        std::fs::create_dir_all(&forged).unwrap();
        let mut state = good.state.clone();
        edit(state.net.as_mut().expect("a device"));
        std::fs::write(forged.join("state"), state.encode().expect("encodes")).unwrap();
        // Hard-link the memory file rather than copy it.
        std::fs::hard_link(good.memory_path(), forged.join(&state.memory.file)).unwrap();
        let out = tandem(&[
            "restore",
            s(&forged),
            "--timeout",
            "10s",
            "--net",
            &format!("tap={}", other.name),
        ]);
        assert_eq!(
            out.code,
            Some(i32::from(tandem::exit_code::VMM_ERROR)),
            "{name}: {}{}",
            out.stdout,
            out.stderr
        );
        out.stderr
    };
    let e = forge("ring", &|n| n.transport.queues[0].desc = 0x1000);
    assert!(
        e.contains("network device: virtio-net queue 0: descriptor table at 0x1000"),
        "{e}"
    );
    let e = forge("position", &|n| {
        n.positions[1].next_avail = n.positions[1].next_avail.wrapping_add(1);
        n.positions[1].next_used = n.positions[1].next_used.wrapping_add(1);
    });
    assert!(
        e.contains("queue 1: the used ring's index in guest memory is"),
        "{e}"
    );
    let e = forge("mac", &|n| n.mac = [0xff; 6]);
    assert!(e.contains("network device: MAC"), "{e}");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn a_vm_without_a_network_device_refuses_net_on_restore() {
    let dir = scratch("no-net").join("snap");
    let image = image_path("counter");
    let out = tandem(&[
        "run",
        s(&image),
        "--timeout",
        "30s",
        "--cmdline",
        "ready exit-at=100",
        "--snapshot-at-ready",
        s(&dir),
        "--exit-after-snapshot",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let info = tandem(&["snapshot", "info", s(&dir)]);
    assert!(info.stdout.contains("network:     none"), "{}", info.stdout);
    for clones in ["1", "2"] {
        let out = tandem(&[
            "restore",
            s(&dir),
            "--clones",
            clones,
            "--timeout",
            "10s",
            "--net",
            "tap=tdn-none0",
        ]);
        assert_eq!(
            out.code,
            Some(i32::from(tandem::exit_code::VMM_ERROR)),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("the snapshot's VM has no network device: remove --net"),
            "{}",
            out.stderr
        );
    }
    // Without --net it resumes as ever.
    let out = tandem(&["restore", s(&dir), "--timeout", "30s"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// A transmit chain a rate limit holds when the snapshot is taken goes
/// back to the ring: the state's transmit positions are equal again, so the
/// restored device takes and sends it, and the guest loses no buffer. The
/// device is driven here as a driver would, through its registers, over
/// guest memory made by the test.
#[test]
fn a_chain_held_by_a_rate_limit_goes_back_to_the_ring_in_a_snapshot() {
    use tandem::devices::rate_limiter::{Bucket, RateLimit};
    use tandem::devices::tap::Tap;
    use tandem::devices::NetDevice;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const MEM: u64 = 64 << 20;
    let heap = tandem_abi::layout::HEAP_ADDR;
    let (desc, avail, used, bufs) = (heap, heap + 0x1000, heap + 0x2000, heap + 0x3000);
    let net = fresh_nets(1);
    let tap = TestTap::on(net);
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), usize::try_from(MEM).unwrap())])
            .unwrap();
    // A tap takes one descriptor at a time, and a child another test forks
    // holds a copy of ours until it execs: a busy tap is tried again.
    let open = |name: &str| {
        let start = std::time::Instant::now();
        loop {
            match Tap::open(name) {
                Ok(t) => break t,
                Err(e) if start.elapsed() > Duration::from_secs(5) => {
                    panic!("cannot attach {name}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    };
    let mut dev = NetDevice::new(open(&tap.name), [2, 0, 0, 0, 0, 7], MEM);
    dev.set_rate_limit(RateLimit {
        bytes: None,
        ops: Some(Bucket::new(1, 1).unwrap()),
    });
    let mut reg = |offset: u64, value: u32| {
        dev.write(&mem, offset, &value.to_le_bytes())
            .expect("a valid register write")
    };
    // virtio-mmio v2 registers: status, features, the transmit queue (1).
    reg(0x70, 1 | 2);
    reg(0x24, 1);
    reg(0x20, 1); // VIRTIO_F_VERSION_1
    reg(0x70, 1 | 2 | 8);
    reg(0x30, 1);
    reg(0x38, 8);
    reg(0x80, u32::try_from(desc).unwrap());
    reg(0x90, u32::try_from(avail).unwrap());
    reg(0xa0, u32::try_from(used).unwrap());
    reg(0x44, 1);
    reg(0x70, 1 | 2 | 8 | 4);
    // Three frames of 60 bytes behind the 12-byte header, one descriptor each.
    for i in 0..3u64 {
        let buf = bufs + i * 0x100;
        let mut frame = vec![0u8; 12 + 60];
        frame[12..18].copy_from_slice(&[0xff; 6]);
        mem.write_slice(&frame, GuestAddress(buf)).unwrap();
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&buf.to_le_bytes());
        d[8..12].copy_from_slice(&72u32.to_le_bytes());
        mem.write_slice(&d, GuestAddress(desc + i * 16)).unwrap();
        mem.write_obj(u16::try_from(i).unwrap(), GuestAddress(avail + 4 + i * 2))
            .unwrap();
    }
    mem.write_obj(3u16, GuestAddress(avail + 2)).unwrap();
    dev.write(&mem, 0x50, &1u32.to_le_bytes()).unwrap();
    // One frame passed (the burst), the next is held, the third waits.
    let used_idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(used_idx, 1, "the rate limit let one frame through");
    let state = dev.state(None);
    assert_eq!(state.positions[1].next_used, 1);
    assert_eq!(
        state.positions[1].next_avail, 1,
        "the held chain is handed back to the ring"
    );
    assert_eq!(state.check(MEM), Ok(()));
    // The state restores on another device, which sends the rest.
    drop(dev);
    let mut back = NetDevice::restore(open(&tap.name), &state, state.mac, &mem, MEM)
        .expect("the state restores");
    back.write(&mem, 0x50, &1u32.to_le_bytes()).unwrap();
    let used_idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(
        used_idx, 3,
        "the restored device sent the held and the waiting frame"
    );
}
