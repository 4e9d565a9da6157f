//! The network apps under QEMU microvm with a virtio-net device on QEMU's
//! user network, under TCG and KVM: `httpd` (HTTP/1.1 with keep-alive,
//! echo, 400 on garbage) and `echo` (TCP and UDP), reached through host
//! port forwards on 127.0.0.1, as `cargo xtask run --qemu httpd` wires them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_abi::platform::{QEMU_ARGS, QEMU_NETDEV_ID, QEMU_NET_DEVICE, QEMU_NET_MACHINE};
use tandem_tests::http::exchange;
use tandem_tests::image_path;

/// How long a guest may take to print that it serves.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// One QEMU at a time: a polling guest keeps a host core busy.
static SERIAL: Mutex<()> = Mutex::new(());

/// A port of 127.0.0.1 free for TCP and UDP right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A booted guest; killed (and reaped) when dropped.
struct Guest {
    child: Child,
    console: Arc<Mutex<String>>,
    port: u16,
}

impl Guest {
    /// Boots `app` with host `port` forwarded to each of `guest_ports`
    /// (TCP and, where asked, UDP), and waits for `ready_line` on its console.
    fn boot(app: &str, accel: &str, guest_ports: &[(&str, u16)], ready_line: &str) -> Self {
        tandem_tests::require_qemu();
        if accel == "kvm" {
            tandem_tests::require_kvm();
        }
        let image = image_path(app);
        let port = free_port();
        let mut netdev = format!("user,id={QEMU_NETDEV_ID}");
        for (proto, guest) in guest_ports {
            netdev.push_str(&format!(",hostfwd={proto}:127.0.0.1:{port}-:{guest}"));
        }
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-machine", QEMU_NET_MACHINE, "-accel", accel, "-m", "128M"])
            .args(QEMU_ARGS)
            .args(["-netdev", &netdev, "-device", QEMU_NET_DEVICE])
            .arg("-kernel")
            .arg(&image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start qemu-system-x86_64");
        let console = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&console);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut c = sink.lock().unwrap();
                c.push_str(&line);
                c.push('\n');
            }
        });
        let mut guest = Self {
            child,
            console,
            port,
        };
        let start = Instant::now();
        loop {
            if guest.console().contains(ready_line) {
                return guest;
            }
            if let Ok(Some(status)) = guest.child.try_wait() {
                panic!(
                    "{app} under {accel} ended ({status}) before printing {ready_line:?}; console:\n{}",
                    guest.console()
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "{app} under {accel} did not print {ready_line:?} within {READY_TIMEOUT:?}; console:\n{}",
                guest.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    fn connect(&self) -> TcpStream {
        let s =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the forwarded port");
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

fn httpd(accel: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guest = Guest::boot("httpd", accel, &[("tcp", 80)], "httpd: ");
    assert!(
        guest.console().contains("serving http://10.0.2.15:80/"),
        "{}",
        guest.console()
    );

    // GET / and a second request on the same kept-alive connection.
    let mut conn = BufReader::new(guest.connect());
    let get = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let first = exchange(&mut conn, get);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    assert_eq!(first.header("content-type"), Some("text/html"));
    assert!(String::from_utf8_lossy(&first.body).contains("Hello from Tandem!"));
    let second = exchange(&mut conn, get);
    assert_eq!((second.status, &second.body), (200, &first.body));

    // POST /echo round-trips its body, small and over many segments.
    for len in [5, 100_000] {
        let body = pattern(len);
        let mut request = format!(
            "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-test\r\nContent-Length: {len}\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let echoed = exchange(&mut conn, &request);
        assert_eq!(echoed.status, 200);
        assert_eq!(echoed.header("content-type"), Some("application/x-test"));
        assert!(
            echoed.body == body,
            "POST /echo of {len} bytes came back changed"
        );
    }

    // Unknown path: 404, the connection stays usable.
    assert_eq!(
        exchange(&mut conn, b"GET /nope HTTP/1.1\r\n\r\n").status,
        404
    );
    assert_eq!(exchange(&mut conn, get).status, 200);

    // A malformed request: 400, and the server closes the connection.
    let mut bad = BufReader::new(guest.connect());
    let refused = exchange(&mut bad, b"GARBAGE\r\n\r\n");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(String::from_utf8_lossy(&refused.body), "400 Bad Request\n");
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest)
        .expect("the server closes after a 400");
    assert!(rest.is_empty());

    // Connection: close is honoured.
    let mut last = BufReader::new(guest.connect());
    let closing = exchange(&mut last, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(
        (closing.status, closing.header("connection")),
        (200, Some("close"))
    );
}

fn echo(accel: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guest = Guest::boot("echo", accel, &[("tcp", 7), ("udp", 7)], "echo: ");

    // TCP: two connections at once, each gets its own bytes back.
    let mut a = guest.connect();
    let mut b = guest.connect();
    for (conn, data) in [
        (&mut a, pattern(50_000)),
        (&mut b, b"second connection".to_vec()),
    ] {
        conn.write_all(&data).unwrap();
        let mut back = vec![0; data.len()];
        conn.read_exact(&mut back).expect("read the echo");
        assert!(
            back == data,
            "TCP echo of {} bytes came back changed",
            data.len()
        );
    }

    // UDP: datagrams come back whole (retried: the first may meet an
    // ARP lookup in the guest).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for data in [b"udp hello".to_vec(), pattern(1400)] {
        let mut got = None;
        for _ in 0..10 {
            udp.send_to(&data, ("127.0.0.1", guest.port)).unwrap();
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

#[test]
fn httpd_under_tcg() {
    httpd("tcg");
}

#[test]
fn httpd_under_kvm() {
    httpd("kvm");
}

#[test]
fn echo_under_tcg() {
    echo("tcg");
}

#[test]
fn echo_under_kvm() {
    echo("kvm");
}
