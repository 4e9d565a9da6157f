//! HTTP/1.1 on the API socket: reading one request (head parsed with
//! `httparse`, head and body bounded by [`MAX_HEAD`] and [`MAX_BODY`], a
//! body only by `Content-Length`) and writing one answer. Keep-alive as
//! HTTP/1.1 has it: the connection stays until the client says `close`.
//! Every malformed request is an [`ApiError`], never a panic.

use std::io::{Read, Write};

use tandem::api::{ApiError, ErrorKind, MAX_BODY, MAX_HEAD};

/// Most headers a request may have.
const MAX_HEADERS: usize = 64;

/// A request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without its query.
    pub path: String,
    /// The query (after `?`), if any.
    pub query: Option<String>,
    /// The body's length.
    pub content_length: usize,
    /// The client keeps the connection.
    pub keep_alive: bool,
}

/// A whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its head.
    pub head: Head,
    /// Its body.
    pub body: Vec<u8>,
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection between requests.
    Closed,
    /// The connection broke.
    Io(std::io::Error),
    /// The request is refused (answered, then the connection is closed).
    Refused(ApiError),
}

/// Parses a request head from the start of `buf`: `None` while it is
/// incomplete, else the head and its length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(head_too_large());
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::new(
                ErrorKind::HeadTooLarge,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(ApiError::bad_request(format!("malformed request: {e}"))),
    };
    if n > MAX_HEAD {
        return Err(head_too_large());
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let http10 = req.version == Some(0);
    let mut content_length = None;
    let mut keep_alive = !http10;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| ApiError::bad_request(format!("Content-Length '{value}'")))?;
            if content_length.is_some_and(|l| l != len) {
                return Err(ApiError::bad_request("two different Content-Lengths"));
            }
            content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::new(
                ErrorKind::LengthRequired,
                "a body must be sent with Content-Length, not Transfer-Encoding",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect")
            && value.eq_ignore_ascii_case("100-continue")
        {
            // curl sends it for large bodies; it is answered by reading on.
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("a body of {content_length} bytes is over the limit of {MAX_BODY}"),
        ));
    }
    Ok(Some((
        Head {
            method,
            path,
            query,
            content_length,
            keep_alive,
        },
        n,
    )))
}

fn head_too_large() -> ApiError {
    ApiError::new(
        ErrorKind::HeadTooLarge,
        format!("the request head is over the limit of {MAX_HEAD} bytes"),
    )
}

/// Reads the next request from `conn`; `buf` carries bytes read past one
/// request over to the next.
pub fn read_request(conn: &mut impl Read, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    let mut chunk = [0u8; 8192];
    let (head, n) = loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse_head(buf).map_err(ReadError::Refused)? {
                break parsed;
            }
        }
        let got = conn.read(&mut chunk).map_err(ReadError::Io)?;
        if got == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Refused(ApiError::bad_request("the request ends in its head"))
            });
        }
        buf.extend_from_slice(&chunk[..got]);
    };
    buf.drain(..n);
    while buf.len() < head.content_length {
        let got = conn.read(&mut chunk).map_err(ReadError::Io)?;
        if got == 0 {
            return Err(ReadError::Refused(ApiError::bad_request(format!(
                "the body ends after {} of its {} bytes",
                buf.len(),
                head.content_length
            ))));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    let body: Vec<u8> = buf.drain(..head.content_length).collect();
    Ok(Request { head, body })
}

/// The reason phrase of a status.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// Its content type.
    pub content_type: &'static str,
    /// Its body.
    pub body: Vec<u8>,
    /// For a 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Self {
                    status,
                    content_type: "application/json",
                    body,
                    allow: None,
                }
            }
            Err(e) => Self::error(&ApiError::internal(format!("encoding the answer: {e}"))),
        }
    }

    /// An error answer.
    pub fn error(e: &ApiError) -> Self {
        let mut body = serde_json::to_vec(e).unwrap_or_default();
        body.push(b'\n');
        Self {
            status: e.status(),
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    /// A plain text answer.
    pub fn text(status: u16, body: Vec<u8>, content_type: &'static str) -> Self {
        Self {
            status,
            content_type,
            body,
            allow: None,
        }
    }
}

/// Writes `a`.
pub fn write_answer(conn: &mut impl Write, a: &Answer, keep_alive: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        a.status,
        reason(a.status),
        a.content_type,
        a.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if let Some(allow) = a.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&a.body);
    conn.write_all(&bytes)?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, ReadError> {
        let mut buf = Vec::new();
        read_request(&mut &bytes[..], &mut buf)
    }

    fn refused(bytes: &[u8]) -> ApiError {
        match read(bytes) {
            Err(ReadError::Refused(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_are_read() {
        let r =
            read(b"POST /v1/vms?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(r.head.method, "POST");
        assert_eq!(r.head.path, "/v1/vms");
        assert_eq!(r.head.query.as_deref(), Some("x=1"));
        assert_eq!(r.body, b"{}");
        assert!(r.head.keep_alive);
        let r = read(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.head.keep_alive);
        let r = read(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!r.head.keep_alive);
    }

    #[test]
    fn two_requests_on_one_connection() {
        let bytes = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
        let mut conn = &bytes[..];
        let mut buf = Vec::new();
        assert_eq!(read_request(&mut conn, &mut buf).unwrap().head.path, "/a");
        let b = read_request(&mut conn, &mut buf).unwrap();
        assert_eq!((b.head.path.as_str(), b.body.as_slice()), ("/b", &b"x"[..]));
        assert!(matches!(
            read_request(&mut conn, &mut buf),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        assert_eq!(refused(b"\x00\x01 / HTTP/1.1\r\n\r\n").status(), 400);
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").status(),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").status(),
            400
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").status(),
            411
        );
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(refused(big.as_bytes()).status(), 413);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 10));
        assert_eq!(refused(long.as_bytes()).status(), 431);
        let many: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).status(),
            431
        );
        assert!(refused(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .error
            .contains("3 of its 10"));
        assert!(refused(b"GET / HTTP/1.1\r\nHost")
            .error
            .contains("ends in its head"));
    }

    /// Random and mutated requests never panic the reader.
    #[test]
    #[allow(clippy::cast_possible_truncation)]
    fn garbage_never_panics() {
        let seed = b"POST /v1/vms/a/start?since=3 HTTP/1.1\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut m = seed.to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % m.len();
                match next() % 3 {
                    0 => m[at] = next() as u8,
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, next() as u8),
                }
            }
            let cut = (next() as usize) % (m.len() + 1);
            let _ = read(&m[..cut]);
            let _ = read(&m);
        }
    }
}
