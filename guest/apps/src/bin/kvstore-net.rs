//! `kvstore` over TCP: the same store on the first disk and the same line
//! protocol (`put KEY VALUE`, `get KEY`, `del KEY`, `snapshot`; answers
//! `ok`, the value, `missing`, `error: ...`), served on port 7070 to any
//! number of connections at once (up to 16 served, more wait in the
//! backlog). A put is answered `ok` only once its record is on the disk and
//! flushed, so after a crash every acknowledged write is there. Needs a
//! disk and a network device (`--disk path=FILE --net tap=...,ip=...`, or
//! DHCP). Standard input is not read (it blocks; `kvstore` serves it).
#![no_std]
#![no_main]

use core::time::Duration;

use tandem_guest::net::{self, TcpListener, TcpStream};
use tandem_guest::prelude::*;
use tandem_kvlog::protocol::Lines;

#[path = "../kvstore_serve.rs"]
mod kvstore_serve;

tandem_guest::entry!(main, devices = [block, net]);

/// The port served.
const PORT: u16 = 7070;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// How long to wait for an address.
const NET_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait in the host when nothing happens.
const NAP: Duration = Duration::from_millis(100);
/// How long an answer may wait for room in a slow client's window.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One client and its unfinished line.
struct Client {
    stream: TcpStream,
    lines: Lines,
}

fn main(_env: &Env) -> u8 {
    let mut store = match kvstore_serve::open() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let config = match net::up(NET_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            println!("kvstore: no network: {e}");
            return 4;
        }
    };
    let mut listener = match TcpListener::bind(PORT) {
        Ok(l) => l,
        Err(e) => {
            println!("kvstore: cannot listen on {PORT}: {e}");
            return 4;
        }
    };
    listener.set_nonblocking(true);
    println!("kvstore: tcp on {}:{PORT}", config.address);
    tandem_guest::ready();
    let mut clients: Vec<Client> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut busy = false;
    loop {
        // A round that did nothing waits in the host for the next frame.
        let polled = if busy { net::poll() } else { net::wait(NAP) };
        if let Err(e) = polled {
            println!("kvstore: network: {e}");
            return 4;
        }
        busy = false;
        while clients.len() < MAX_CONNECTIONS {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    busy = true;
                    stream.set_nonblocking(true);
                    stream.set_write_timeout(Some(WRITE_TIMEOUT));
                    clients.push(Client {
                        stream,
                        lines: Lines::default(),
                    });
                }
                Err(net::Error::WouldBlock) => break,
                Err(e) => {
                    println!("kvstore: accept: {e}");
                    return 4;
                }
            }
        }
        // A client's failure (reset, timeout) ends that client only.
        clients.retain_mut(|c| match c.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                busy = true;
                let mut out = Vec::new();
                c.lines.push(&chunk[..n], |line| {
                    if let Some(a) = kvstore_serve::answer(&mut store, line) {
                        out.extend_from_slice(a.as_bytes());
                        out.push(b'\n');
                    }
                });
                if out.is_empty() {
                    return true;
                }
                c.stream.set_nonblocking(false);
                let ok = c.stream.write_all(&out).is_ok();
                c.stream.set_nonblocking(true);
                ok
            }
            Err(net::Error::WouldBlock) => true,
            Err(_) => false,
        });
    }
}
