//! An HTTP/1.1 server on port 80: `GET /` answers a fixed page, `POST
//! /echo` echoes the request body, connections are kept alive, and a
//! malformed request gets `400 Bad Request` (the parser is `tandem-http`,
//! tested on the host). Needs a virtio-net device and DHCP (QEMU's user
//! network: `cargo xtask run --qemu httpd`). One loop over non-blocking
//! sockets serves every connection; one idle for 30 s is closed.
#![no_std]
#![no_main]

use core::time::Duration;

use tandem_guest::net::{self, TcpListener, TcpStream};
use tandem_guest::prelude::*;
use tandem_guest::time::Instant;
use tandem_http::{Head, Parsed};

tandem_guest::entry!(main, devices = [net]);

const PORT: u16 = 80;
/// Connections served at once; more wait in the listener's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a kept-alive connection may stay silent.
const IDLE: Duration = Duration::from_secs(30);
/// How long to wait for an address.
const DHCP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait in the host when nothing happens.
const NAP: Duration = Duration::from_millis(100);
const PAGE: &str = "<!doctype html>\n<html><head><title>Tandem</title></head>\n\
<body><h1>Hello from Tandem!</h1><p>Served by httpd, a Tandem unikernel app, \
over virtio-net and smoltcp.</p></body></html>\n";

fn main(_env: &Env) -> Result<(), net::Error> {
    let config = net::up(DHCP_TIMEOUT)?;
    let mut listener = TcpListener::bind(PORT)?;
    listener.set_nonblocking(true);
    println!(
        "httpd: {}/{} via {:?}, virtio-mmio v{}; serving http://{}:{PORT}/",
        config.address, config.prefix_len, config.gateway, config.transport_version, config.address
    );
    tandem_guest::ready();
    let mut connections: Vec<Connection> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut busy = false;
    loop {
        // A round that did nothing waits in the host for the next frame.
        if busy {
            net::poll()?;
        } else {
            net::wait(NAP)?;
        }
        busy = false;
        while connections.len() < MAX_CONNECTIONS {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    busy = true;
                    connections.push(Connection::new(stream));
                }
                Err(net::Error::WouldBlock) => break,
                Err(e) => return Err(e),
            }
        }
        // A connection's failure (reset, timeout) ends that connection only.
        connections.retain_mut(|c| {
            let keep = c.step(&mut chunk).unwrap_or(false);
            busy |= c.active || !keep;
            keep
        });
    }
}

/// One client connection and the bytes of its requests not yet answered.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    last_active: Instant,
    /// Whether the last step read anything.
    active: bool,
}

impl Connection {
    fn new(mut stream: TcpStream) -> Self {
        stream.set_nonblocking(true);
        stream.set_write_timeout(Some(IDLE));
        Self {
            stream,
            buf: Vec::new(),
            last_active: Instant::now(),
            active: false,
        }
    }

    /// Reads what has arrived and answers every complete request; false
    /// once the connection is done.
    fn step(&mut self, chunk: &mut [u8]) -> Result<bool, net::Error> {
        self.active = false;
        match self.stream.read(chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                self.active = true;
                self.buf.extend_from_slice(&chunk[..n]);
                self.last_active = Instant::now();
            }
            Err(net::Error::WouldBlock) => return Ok(self.last_active.elapsed() < IDLE),
            Err(e) => return Err(e),
        }
        loop {
            let (reply, used, keep_alive) = match tandem_http::parse(&self.buf) {
                Ok(Parsed::Complete(head)) if self.buf.len() >= head.total_len() => {
                    let body = &self.buf[head.head_len..head.total_len()];
                    let (reply, keep_alive) = respond(&head, body);
                    (reply, head.total_len(), keep_alive)
                }
                // More to read first.
                Ok(_) => return Ok(true),
                Err(e) => (error_response(e), self.buf.len(), false),
            };
            // The reply is written whole; only this connection waits for room.
            self.stream.set_nonblocking(false);
            let written = self.stream.write_all(&reply);
            self.stream.set_nonblocking(true);
            written?;
            self.buf.drain(..used);
            if !keep_alive {
                return Ok(false);
            }
        }
    }
}

/// The response to one request and whether the connection stays open.
fn respond(head: &Head, body: &[u8]) -> (Vec<u8>, bool) {
    let keep_alive = head.keep_alive;
    let (status, content_type, payload): ((u16, &str), Option<&str>, &[u8]) =
        match (head.method, head.target) {
            ("GET" | "HEAD", "/") => ((200, "OK"), Some("text/html"), PAGE.as_bytes()),
            ("POST", "/echo") => (
                (200, "OK"),
                Some(
                    head.header("content-type")
                        .unwrap_or("application/octet-stream"),
                ),
                body,
            ),
            (_, "/" | "/echo") => (
                (405, "Method Not Allowed"),
                Some("text/plain"),
                b"method not allowed\n",
            ),
            _ => ((404, "Not Found"), Some("text/plain"), b"not found\n"),
        };
    let mut out = String::new();
    let _ =
        tandem_http::write_response_head(&mut out, status, content_type, payload.len(), keep_alive);
    let mut out = out.into_bytes();
    if head.method != "HEAD" {
        out.extend_from_slice(payload);
    }
    (out, keep_alive)
}

fn error_response(e: tandem_http::Error) -> Vec<u8> {
    let (code, reason) = e.status();
    let body = format!("{code} {reason}\n");
    let mut out = String::new();
    let _ = tandem_http::write_response_head(
        &mut out,
        (code, reason),
        Some("text/plain"),
        body.len(),
        false,
    );
    out.push_str(&body);
    out.into_bytes()
}
