//! The HTTP/1.1 pieces of `cargo xtask bench net`: a client that sends
//! `GET /` on a kept-alive connection and reads exactly one response (by
//! its `Content-Length`), and the host baseline, a responder thread on
//! 127.0.0.1 that answers every request with the same bytes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The request every client loop sends.
pub const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n";

/// How long one read or write may take before the run fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One kept-alive connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects within `timeout`; reads and writes may take [`IO_TIMEOUT`].
    pub fn connect(to: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        Client::connect_with(to, timeout, IO_TIMEOUT)
    }

    /// Connects within `timeout`; reads and writes may take `io`.
    pub fn connect_with(
        to: SocketAddr,
        timeout: Duration,
        io: Duration,
    ) -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(io))?;
        s.set_write_timeout(Some(io))?;
        s.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(s),
        })
    }

    /// Sends `GET /` and reads the response: its status and its bytes
    /// (head and body, exactly as received).
    pub fn get(&mut self) -> Result<(u16, Vec<u8>)> {
        self.reader.get_mut().write_all(GET)?;
        read_response(&mut self.reader)
    }
}

/// Reads one response sized by `Content-Length`: the status and all bytes.
pub fn read_response(reader: &mut impl BufRead) -> Result<(u16, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut line = String::new();
    let mut status = None;
    let mut len = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed before a whole response head");
        }
        raw.extend(line.as_bytes());
        let text = line.trim_end();
        if status.is_none() {
            status = Some(
                text.split(' ')
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok())
                    .with_context(|| format!("not a status line: {text:?}"))?,
            );
        } else if text.is_empty() {
            break;
        } else if let Some((name, value)) = text.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = Some(value.trim().parse::<usize>()?);
            }
        }
    }
    let len = len.context("a response without Content-Length")?;
    let head = raw.len();
    raw.resize(head + len, 0);
    reader.read_exact(&mut raw[head..])?;
    Ok((status.context("no status line")?, raw))
}

/// `GET /` to `to` until it answers 200 or `limit` passes; each attempt
/// connects, and then reads, within `attempt` (QEMU's user network accepts
/// at once and holds the request until the guest listens, so an attempt
/// must give up on the read too). Returns the time of the first 200 and the
/// response's bytes.
pub fn first_200(
    to: SocketAddr,
    attempt: Duration,
    limit: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<(Instant, Vec<u8>)> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = Client::connect_with(to, attempt, attempt) {
            if let Ok((200, bytes)) = c.get() {
                return Ok((Instant::now(), bytes));
            }
        }
        alive()?;
        if start.elapsed() > limit {
            bail!("{to} did not answer 200 within {limit:?}");
        }
        // A refused or reset connection returns at once; do not spin.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Latencies (seconds) of `n` requests over one connection, and the whole time.
pub fn request_loop(client: &mut Client, n: usize) -> Result<(Vec<f64>, Duration)> {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let (status, _) = client.get().with_context(|| format!("request {i}"))?;
        lat.push(t.elapsed().as_secs_f64());
        if status != 200 {
            bail!("request {i} answered {status}");
        }
    }
    Ok((lat, start.elapsed()))
}

/// The host baseline: a thread on 127.0.0.1 that answers every request of
/// every connection, one connection at a time, with `response`.
pub fn host_responder(response: Vec<u8>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_nodelay(true);
            let _ = serve(conn, &response);
        }
    });
    Ok(addr)
}

/// Answers each request head (up to its blank line) with `response` until
/// the client closes.
fn serve(conn: TcpStream, response: &[u8]) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            writer.write_all(response)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn reads_exactly_one_response() {
        let two = [PAGE, PAGE].concat();
        let mut r = &two[..];
        assert_eq!(read_response(&mut r).unwrap(), (200, PAGE.to_vec()));
        assert_eq!(r, PAGE);
        assert!(read_response(&mut &b"HTTP/1.1 200 OK\r\n\r\n"[..]).is_err());
        assert!(read_response(&mut &PAGE[..20]).is_err());
    }

    #[test]
    fn host_responder_keeps_the_connection() {
        let addr = host_responder(PAGE.to_vec()).unwrap();
        let (_, bytes) = first_200(addr, Duration::from_secs(1), Duration::from_secs(5), || {
            Ok(())
        })
        .unwrap();
        assert_eq!(bytes, PAGE);
        let mut c = Client::connect(addr, Duration::from_secs(1)).unwrap();
        let (lat, _) = request_loop(&mut c, 50).unwrap();
        assert_eq!(lat.len(), 50);
    }
}
