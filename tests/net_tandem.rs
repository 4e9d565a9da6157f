//! The network apps on the Tandem VMM's own virtio-net device, on a tap
//! made here (as an operator would: `ip tuntap add NAME mode tap`, an
//! address, `ip link set up`), with static addresses from `--net ...,ip=`:
//! `httpd` (GET, keep-alive, POST /echo, 400 on garbage) and `echo` (UDP),
//! rate limits, and the tap tandem makes itself when it may (and refuses
//! to, under `setpriv` without CAP_NET_ADMIN). Needs root, `ip` and
//! `setpriv` (CI is root): without them the tests fail, naming what is
//! missing.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tandem_tests::http::exchange;
use tandem_tests::{image_path, require_kvm, tandem_bin};

/// How long a guest may take until its port answers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A tap with the host end's address; deleted when dropped (also when a
/// test fails).
struct TestTap {
    name: String,
    /// The third octet of the test's 10.99.N.0/24.
    net: u8,
}

fn ip(args: &[&str]) {
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
}

impl TestTap {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "the tap tests need root (to make a tap device)");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let net = u8::try_from(std::process::id() % 200 + 20 + n % 30).unwrap();
        let name = format!("tdm{}x{n}", std::process::id() % 100_000);
        ip(&["tuntap", "add", &name, "mode", "tap"]);
        let tap = Self { name, net };
        ip(&[
            "addr",
            "add",
            &format!("10.99.{net}.1/24"),
            "dev",
            &tap.name,
        ]);
        ip(&["link", "set", &tap.name, "up"]);
        tap
    }

    fn guest_ip(&self) -> String {
        format!("10.99.{}.2", self.net)
    }

    fn net_arg(&self) -> String {
        format!(
            "tap={},ip={}/24,gw=10.99.{}.1",
            self.name,
            self.guest_ip(),
            self.net
        )
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A `tandem run` of a network app; killed (and reaped) when dropped.
struct Guest {
    child: Child,
    addr: String,
}

impl Guest {
    fn boot(app: &str, tap: &TestTap, port: u16) -> Self {
        Self::boot_with(app, tap, port, "")
    }

    /// `boot` with more `--net` items (`extra` starts with a comma).
    fn boot_with(app: &str, tap: &TestTap, port: u16, extra: &str) -> Self {
        let net = format!("{}{extra}", tap.net_arg());
        Self::start(app, &net, tap.guest_ip(), port)
    }

    /// `tandem run APP --net NET`, answering at `addr:port`.
    fn start(app: &str, net: &str, addr: String, port: u16) -> Self {
        Self::spawn(app, net, addr).answering(app, port)
    }

    /// `tandem run APP --net NET` for a guest at `addr`, not waited for.
    fn spawn(app: &str, net: &str, addr: String) -> Self {
        require_kvm();
        let child = Command::new(tandem_bin())
            .arg("run")
            .arg(image_path(app))
            .args(["--timeout", "120s", "--net", net])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tandem");
        Self { child, addr }
    }

    /// Waits until the guest answers on `port`.
    fn answering(self, app: &str, port: u16) -> Self {
        let mut guest = self;
        let to: SocketAddr = format!("{}:{port}", guest.addr).parse().unwrap();
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok() {
                return guest;
            }
            if let Ok(Some(status)) = guest.child.try_wait() {
                panic!(
                    "{app} ended ({status}) before {to} answered: {}",
                    guest.output()
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = guest.child.kill();
                panic!(
                    "{app} did not answer on {to} within {READY_TIMEOUT:?}: {}",
                    guest.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output(&mut self) -> String {
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

    fn connect(&self, port: u16) -> TcpStream {
        let s = TcpStream::connect((self.addr.as_str(), port)).expect("connect to the guest");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A body of `len` bytes of every value, so a byte lost or reordered shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
        .collect()
}

#[test]
fn httpd_serves_on_a_tap() {
    let tap = TestTap::new();
    let guest = Guest::boot("httpd", &tap, 80);
    let mut conn = BufReader::new(guest.connect(80));
    let get = b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n";
    let first = exchange(&mut conn, get);
    let (status, body) = (first.status, &first.body);
    assert_eq!(status, 200);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    assert!(String::from_utf8_lossy(body).contains("Hello from Tandem!"));
    // Kept alive: a second request on the same connection.
    let again = exchange(&mut conn, get);
    assert_eq!((again.status, &again.body), (200, body));

    for len in [5, 100_000] {
        let sent = pattern(len);
        let mut request =
            format!("POST /echo HTTP/1.1\r\nHost: tandem\r\nContent-Length: {len}\r\n\r\n")
                .into_bytes();
        request.extend_from_slice(&sent);
        let reply = exchange(&mut conn, &request);
        let (status, echoed) = (reply.status, reply.body);
        assert_eq!(status, 200);
        assert!(
            echoed == sent,
            "POST /echo of {len} bytes came back changed"
        );
    }

    let mut bad = BufReader::new(guest.connect(80));
    let refused = exchange(&mut bad, b"GARBAGE\r\n\r\n");
    let status = refused.status;
    assert_eq!(status, 400);
    assert_eq!(refused.header("connection"), Some("close"));

    // Requests per second over one kept-alive connection (shown with
    // --nocapture; not a pass mark: this is a test, not a benchmark).
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(exchange(&mut conn, get).status, 200);
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    eprintln!("httpd on a tap: {rate:.0} requests/s over one kept-alive connection");
}

#[test]
fn echo_answers_udp_on_a_tap() {
    let tap = TestTap::new();
    let guest = Guest::boot("echo", &tap, 7);
    let mut tcp = guest.connect(7);
    tcp.write_all(b"tcp hello").unwrap();
    let mut back = [0u8; 9];
    tcp.read_exact(&mut back).expect("read the TCP echo");
    assert_eq!(&back, b"tcp hello");

    let udp = UdpSocket::bind(format!("10.99.{}.1:0", tap.net)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for data in [b"udp hello".to_vec(), pattern(1400)] {
        let mut got = None;
        for _ in 0..10 {
            udp.send_to(&data, (guest.addr.as_str(), 7)).unwrap();
            let mut buf = [0u8; 2048];
            if let Ok((n, _)) = udp.recv_from(&mut buf) {
                got = Some(buf[..n].to_vec());
                break;
            }
        }
        assert_eq!(
            got.as_deref(),
            Some(&data[..]),
            "UDP echo of {} bytes",
            data.len()
        );
    }
}

/// How long a rate-limited transfer may take at most (it must take at
/// least what the limit implies; the rest is a loaded machine's slack).
const LIMITED_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn the_byte_rate_limit_holds_on_a_tap() {
    // 100 KiB/s each way with a 16 KiB burst; 400 KiB through TCP echo.
    const RATE: u64 = 100 << 10;
    const BURST: u64 = 16 << 10;
    const LEN: usize = 400 << 10;
    let tap = TestTap::new();
    // The device's buckets start full after this instant.
    let spawned = Instant::now();
    let guest = Guest::boot_with("echo", &tap, 7, ",rate=100K,rate_burst=16K");
    let stream = guest.connect(7);
    let sent = pattern(LEN);
    let mut writer = stream.try_clone().unwrap();
    let to_send = sent.clone();
    let writing = std::thread::spawn(move || writer.write_all(&to_send));
    let mut reader = stream;
    let mut back = vec![0u8; LEN];
    let mut got = 0;
    while got < LEN {
        assert!(
            spawned.elapsed() < LIMITED_TIMEOUT,
            "only {got} of {LEN} bytes came back within {LIMITED_TIMEOUT:?}"
        );
        match reader.read(&mut back[got..]) {
            Ok(0) => panic!("echo closed the connection after {got} of {LEN} bytes"),
            Ok(n) => got += n,
            Err(e) => panic!("reading the echo after {got} of {LEN} bytes: {e}"),
        }
    }
    let elapsed = spawned.elapsed().as_secs_f64();
    writing.join().unwrap().expect("send the bytes to echo");
    assert!(back == sent, "the echoed bytes came back changed");
    // Every byte went into the guest and out again, each way inside
    // frames (payload plus headers) that the limit counts: over the
    // whole run at most a burst plus the rate times its length.
    let bound = BURST as f64 + RATE as f64 * elapsed;
    eprintln!("{LEN} bytes echoed in {elapsed:.2} s under a limit of {RATE} B/s: bound {bound:.0}");
    assert!(
        LEN as f64 <= bound,
        "{LEN} bytes came back in {elapsed:.2} s: more than {bound:.0} ({RATE} B/s and a {BURST}-byte burst allow)"
    );
}

#[test]
fn the_frame_rate_limit_holds_on_a_tap() {
    // 20 frames a second each way with a burst of 5; 40 UDP echoes.
    const PPS: u64 = 20;
    const BURST: u64 = 5;
    const DATAGRAMS: usize = 40;
    let tap = TestTap::new();
    let spawned = Instant::now();
    let guest = Guest::boot_with("echo", &tap, 7, ",pps=20,pps_burst=5");
    let udp = UdpSocket::bind(format!("10.99.{}.1:0", tap.net)).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // All at once: the device holds what the limit does not let through
    // yet, and the tap's queue holds the rest (nothing is lost).
    for i in 0..DATAGRAMS {
        udp.send_to(format!("datagram {i}").as_bytes(), (guest.addr.as_str(), 7))
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < DATAGRAMS {
        assert!(
            spawned.elapsed() < LIMITED_TIMEOUT,
            "only {} of {DATAGRAMS} echoes within {LIMITED_TIMEOUT:?}",
            seen.len()
        );
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = udp.recv_from(&mut buf) {
            seen.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let elapsed = spawned.elapsed().as_secs_f64();
    // Each echo is one frame in and one out (the SYNs of Guest::boot and
    // ARP only add frames): at most a burst plus the rate times the run.
    let bound = BURST as f64 + PPS as f64 * elapsed;
    eprintln!("{DATAGRAMS} UDP echoes in {elapsed:.2} s under {PPS} frames/s: bound {bound:.1}");
    assert!(
        DATAGRAMS as f64 <= bound,
        "{DATAGRAMS} echoes in {elapsed:.2} s: more than {bound:.1} ({PPS} frames/s and a burst of {BURST} allow)"
    );
}

/// The IPv4 addresses (`A/P`) of interface `name`, as `ip` shows them.
fn addresses(name: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", name])
        .output()
        .expect("run `ip addr show`");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn a_missing_tap_is_made_as_root_and_removed_at_exit() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_NET_ADMIN) for tandem to make a tap"
    );
    let pid = std::process::id();
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let name = format!("tdm{}m{n}", pid % 100_000);
    let net = format!("10.96.{}", pid % 250);
    assert!(!interface_exists(&name), "{name} exists before the test");
    let guest = Guest::spawn(
        "httpd",
        &format!("tap={name},ip={net}.2/24,gw={net}.1"),
        format!("{net}.2"),
    );
    // Made, up, with the gateway's address on the host side: so the host
    // reaches the guest with no `ip` command of its own. (Connecting
    // before the route exists would go out of the default route.)
    let start = Instant::now();
    while !addresses(&name).contains(&format!("{net}.1/24")) {
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "{name} did not appear with {net}.1/24 within {READY_TIMEOUT:?}: {:?}",
            addresses(&name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut guest = guest.answering("httpd", 80);
    let mut conn = BufReader::new(guest.connect(80));
    let page = exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("Hello from Tandem!"));
    drop(conn);
    // However tandem ends (here: killed), the tap goes with it.
    guest.child.kill().unwrap();
    let text = guest.output();
    assert!(text.contains(&format!("made tap {name}")), "{text}");
    let start = Instant::now();
    while interface_exists(&name) {
        assert!(
            start.elapsed() < IO_TIMEOUT,
            "{name} is still there {IO_TIMEOUT:?} after tandem ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_operators_tap_is_attached_and_left_alone() {
    let tap = TestTap::new();
    let out = tandem_tests::tandem(&[
        "run",
        image_path("httpd").to_str().unwrap(),
        "--timeout",
        "3s",
        "--net",
        &tap.net_arg(),
    ]);
    assert!(
        out.stdout.contains("serving http://"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stderr.contains("made tap"), "{}", out.stderr);
    // Still there, with the one address the operator gave it.
    assert!(interface_exists(&tap.name));
    let addrs = addresses(&tap.name);
    assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
    assert!(
        addrs.contains(&format!("10.99.{}.1/24", tap.net)),
        "{addrs}"
    );
}

#[test]
fn a_missing_tap_is_refused_by_name_without_net_admin() {
    tandem_tests::require_tool("setpriv", "util-linux");
    require_kvm();
    let image = image_path("httpd");
    // Root without CAP_NET_ADMIN (as an unprivileged operator would be).
    let out = Command::new("setpriv")
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin"])
        .arg(tandem_bin())
        .args([
            "run",
            image.to_str().unwrap(),
            "--net",
            "tap=tdm-none0,ip=10.99.9.2/24",
        ])
        .env("USER", "alice")
        .output()
        .expect("run tandem under setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(tandem::exit_code::VMM_ERROR)),
        "{stderr}"
    );
    assert!(
        stderr.contains("no tap device tdm-none0")
            && stderr.contains("lacks CAP_NET_ADMIN")
            && stderr.contains("`ip tuntap add tdm-none0 mode tap user alice`"),
        "{stderr}"
    );
    assert!(!interface_exists("tdm-none0"));
    let out = tandem_tests::tandem(&["run", image.to_str().unwrap(), "--net", "tap=x,ip=10.0.0.2"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("is not an IPv4 address with a prefix"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_hostile_ring_ends_that_vm_only() {
    let tap = TestTap::new();
    let image = image_path("hostilenet");
    let net = tap.net_arg();
    for (case, says) in [
        ("ring-outside", "descriptor table at 0x1000"),
        (
            "buffer-outside",
            "buffer at 0x100000000 (+64 bytes) lies outside the app's memory",
        ),
        (
            "huge-length",
            "(+1073741824 bytes) lies outside the app's memory",
        ),
        (
            "avail-index",
            "available index 13 is 13 entries ahead, past the queue size 8",
        ),
        ("bad-next", "descriptor chain from 0 is broken"),
    ] {
        let out = tandem_tests::tandem(&[
            "run",
            image.to_str().unwrap(),
            "--timeout",
            "30s",
            "--cmdline",
            case,
            "--net",
            &net,
        ]);
        assert!(
            out.stdout.contains(&format!("hostilenet: {case}")),
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
}

/// A network namespace of the test's own; deleted when dropped.
struct TestNetns(String);

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_tap_in_the_namespace_tandem_runs_in_is_found_under_a_plain_nsenter() {
    tandem_tests::require_tool("nsenter", "util-linux");
    let ns = TestNetns(format!("tdmns{}", std::process::id() % 100_000));
    ip(&["netns", "add", &ns.0]);
    // nsenter switches only the network namespace: /sys still shows the
    // host's interfaces, where this tap is not.
    let tap = "tdmnstap0";
    ip(&[
        "netns", "exec", &ns.0, "ip", "tuntap", "add", tap, "mode", "tap",
    ]);
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.0))
        .arg(tandem_bin())
        .args([
            "run",
            image_path("httpd").to_str().unwrap(),
            "--timeout",
            "3s",
            "--net",
            &format!("tap={tap},ip=10.98.0.2/24,gw=10.98.0.1"),
        ])
        .output()
        .expect("cannot run nsenter");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("serving http://"), "{stdout}{stderr}");
    assert!(!stderr.contains("made tap"), "{stderr}");
}
