//! An HTTP/1.1 server on port 80: `GET /` answers a fixed page, `POST
//! /echo` echoes the request body, connections are kept alive, and a
//! malformed request gets `400 Bad Request` (the parser is `tandem-http`,
//! tested on the host). Needs a virtio-net device and DHCP (QEMU's user
//! network: `cargo xtask run --qemu httpd`). Serves one connection at a
//! time; a connection idle for 30 s is closed.
#![no_std]
#![no_main]

use core::time::Duration;

use tandem_guest::net::{self, TcpListener, TcpStream};
use tandem_guest::prelude::*;
use tandem_http::{Head, Parsed};

tandem_guest::entry!(main);

const PORT: u16 = 80;
/// How long a kept-alive connection may stay silent.
const IDLE: Duration = Duration::from_secs(30);
/// How long to wait for an address.
const DHCP_TIMEOUT: Duration = Duration::from_secs(30);
const PAGE: &str = "<!doctype html>\n<html><head><title>Tandem</title></head>\n\
<body><h1>Hello from Tandem!</h1><p>Served by httpd, a Tandem unikernel app, \
over virtio-net and smoltcp.</p></body></html>\n";

fn main(_env: &Env) -> Result<(), net::Error> {
    let config = net::up(DHCP_TIMEOUT)?;
    let mut listener = TcpListener::bind(PORT)?;
    println!(
        "httpd: {}/{} via {:?}, virtio-mmio v{}; serving http://{}:{PORT}/",
        config.address, config.prefix_len, config.gateway, config.transport_version, config.address
    );
    tandem_guest::ready();
    loop {
        let (stream, _peer) = listener.accept()?;
        // A connection's failure (reset, timeout) ends that connection only.
        let _ = serve(stream);
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

fn serve(mut stream: TcpStream) -> Result<(), net::Error> {
    stream.set_read_timeout(Some(IDLE));
    stream.set_write_timeout(Some(IDLE));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (reply, used, keep_alive) = match tandem_http::parse(&buf) {
            Ok(Parsed::Complete(head)) if buf.len() >= head.total_len() => {
                let body = &buf[head.head_len..head.total_len()];
                let (reply, keep_alive) = respond(&head, body);
                (Some(reply), head.total_len(), keep_alive)
            }
            Ok(_) => (None, 0, true),
            Err(e) => (Some(error_response(e)), buf.len(), false),
        };
        match reply {
            Some(reply) => {
                stream.write_all(&reply)?;
                buf.drain(..used);
                if !keep_alive {
                    return Ok(());
                }
            }
            None => {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}
