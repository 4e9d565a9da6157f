//! An HTTP client: `fetch ADDR:PORT` (as its command line) connects to
//! that IPv4 address and port, sends `GET /`, prints the response's status
//! line and body, and exits 0 on a 200, 1 on any other status or a
//! network error (printed), 2 on a bad command line. A fleet
//! names its server's address with `cmdline = "${web.ip}:80"`. It calls
//! `ready()` once its network is up, so a fleet sees a job that started,
//! and then its exit code.
#![no_std]
#![no_main]

use core::time::Duration;

use tandem_guest::net::{self, Error, Ipv4Address, SocketAddr, TcpStream};
use tandem_guest::prelude::*;

tandem_guest::entry!(main, devices = [net]);

/// How long to wait for an address, the handshake and each read.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a response kept.
const MAX_RESPONSE: usize = 1 << 20;

fn main(env: &Env) -> u8 {
    match fetch(env) {
        Ok(code) => code,
        Err(e) => {
            println!("fetch: {e}");
            1
        }
    }
}

fn fetch(env: &Env) -> Result<u8, Error> {
    let Some(to) = env.args().next().and_then(parse_target) else {
        println!(
            "fetch: usage: fetch ADDR:PORT (an IPv4 address and a port), not {:?}",
            env.cmdline()
        );
        return Ok(2);
    };
    net::up(TIMEOUT)?;
    // Up: a fleet counts the VM as started (ready) rather than failed
    // when it then exits.
    tandem_guest::ready();
    let mut stream = TcpStream::connect(to, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT));
    stream.write_all(b"GET / HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 || response.len() + n > MAX_RESPONSE {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let text = core::str::from_utf8(&response).unwrap_or("(not UTF-8)");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head.lines().next().unwrap_or("");
    println!("fetch: {status}");
    print!("{body}");
    let ok = status.split_whitespace().nth(1) == Some("200");
    Ok(if ok { 0 } else { 1 })
}

/// `A.B.C.D:PORT`.
fn parse_target(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.rsplit_once(':')?;
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for o in &mut octets {
        *o = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    Some(SocketAddr::new(
        Ipv4Address::from_octets(octets).into(),
        port,
    ))
}
