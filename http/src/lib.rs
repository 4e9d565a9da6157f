//! A small HTTP/1.1 request parser for guest apps: `no_std`, no
//! allocation, no `unsafe`, every size bounded.
//!
//! It lives outside the guest so its tests run on the host (`cargo test`
//! in the root workspace), while the guest builds it for
//! `x86_64-unknown-none`. Requests come from the network, so they are
//! hostile input: the head is at most [`MAX_HEAD`] bytes with at most
//! [`MAX_HEADERS`] headers, lines end in CRLF, tokens are checked
//! character by character, a body is sized by one well-formed
//! `Content-Length` of at most [`MAX_BODY`] bytes, and what the parser does
//! not support (chunked bodies, header folding) is refused, never guessed.
//!
//! ```
//! use tandem_http::{parse, Parsed};
//! let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
//! let Parsed::Complete(head) = parse(req).unwrap() else { panic!() };
//! assert_eq!((head.method, head.target), ("GET", "/"));
//! assert!(head.keep_alive);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::fmt::{self, Write};

/// Most bytes of request line and headers together.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Largest body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// Why a request was refused, with the status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Malformed request line, header, or `Content-Length`.
    BadRequest,
    /// The head is larger than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] headers.
    HeadTooLarge,
    /// The body is larger than [`MAX_BODY`].
    BodyTooLarge,
    /// A `Transfer-Encoding` (chunked bodies are not supported).
    NotImplemented,
    /// Not HTTP/1.0 or HTTP/1.1.
    VersionNotSupported,
}

impl Error {
    /// The response status and reason phrase for this error.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Self::BadRequest => (400, "Bad Request"),
            Self::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Self::BodyTooLarge => (413, "Content Too Large"),
            Self::NotImplemented => (501, "Not Implemented"),
            Self::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, reason) = self.status();
        write!(f, "{code} {reason}")
    }
}

/// HTTP/1.0 or HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless asked.
    Http10,
    /// HTTP/1.1: the connection stays open unless asked.
    Http11,
}

impl Version {
    /// As written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
        }
    }
}

/// One header: name (as sent; compare case-insensitively) and value
/// (surrounding whitespace trimmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header<'a> {
    /// Field name.
    pub name: &'a str,
    /// Field value.
    pub value: &'a str,
}

/// A parsed request head, borrowing the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    /// The method token (`GET`, `POST`, ...).
    pub method: &'a str,
    /// The request target (`/echo`, ...).
    pub target: &'a str,
    /// The protocol version.
    pub version: Version,
    headers: [Header<'a>; MAX_HEADERS],
    header_count: usize,
    /// Bytes of the head, final CRLF included: the body starts here.
    pub head_len: usize,
    /// Bytes of body that follow the head.
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl<'a> Head<'a> {
    /// The headers, in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers[..self.header_count]
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Bytes of head and body together: what the request takes of the buffer.
    pub fn total_len(&self) -> usize {
        self.head_len + self.content_length
    }
}

/// What [`parse`] found.
// The head carries its header table inline (1 KiB): the parser allocates
// nothing, and a parse result lives on the stack for one request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The head is not complete yet: read more.
    Partial,
    /// A whole head (the body may still be arriving: see [`Head::total_len`]).
    Complete(Head<'a>),
}

/// `tchar` of RFC 9110: the characters of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token(s: &str) -> Result<&str, Error> {
    if !s.is_empty() && s.bytes().all(is_tchar) {
        Ok(s)
    } else {
        Err(Error::BadRequest)
    }
}

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, Error> {
    let Some(end) = find_head_end(buf) else {
        // No blank line within the first MAX_HEAD bytes: too large.
        return if buf.len() >= MAX_HEAD {
            Err(Error::HeadTooLarge)
        } else {
            // A first line that can already not be a request line fails early.
            check_partial(buf).map(|()| Parsed::Partial)
        };
    };
    let head = core::str::from_utf8(&buf[..end]).map_err(|_| Error::BadRequest)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(Error::BadRequest)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::BadRequest);
    };
    let method = token(method)?;
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadRequest);
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/") && v.len() == 8 => return Err(Error::VersionNotSupported),
        _ => return Err(Error::BadRequest),
    };

    let mut headers = [Header::default(); MAX_HEADERS];
    let mut header_count = 0;
    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(Error::BadRequest)?;
        // A name with whitespace (or an obsolete folded line) is refused.
        let name = token(name)?;
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if !value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic() || b >= 0x80)
        {
            return Err(Error::BadRequest);
        }
        let slot = headers.get_mut(header_count).ok_or(Error::HeadTooLarge)?;
        *slot = Header { name, value };
        header_count += 1;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(Error::BadRequest);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::NotImplemented);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                connection_close |= option.eq_ignore_ascii_case("close");
                connection_keep_alive |= option.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    Ok(Parsed::Complete(Head {
        method,
        target,
        version,
        headers,
        header_count,
        head_len: end + 4,
        content_length: content_length.unwrap_or(0),
        keep_alive,
    }))
}

/// Where the head's final CRLF CRLF starts, looked for in the first
/// [`MAX_HEAD`] bytes only.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    window.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Refuses, before the head is complete, a first line that cannot become
/// a request line (so garbage gets its 400 without waiting for more).
fn check_partial(buf: &[u8]) -> Result<(), Error> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let first = &buf[..line_end.unwrap_or(buf.len())];
    let method_len = first.iter().position(|&b| b == b' ').unwrap_or(first.len());
    let method_ok = first[..method_len].iter().all(|&b| is_tchar(b));
    let line_ok = line_end.is_none_or(|i| i > 0 && buf[i - 1] == b'\r');
    if method_ok && line_ok {
        Ok(())
    } else {
        Err(Error::BadRequest)
    }
}

/// A `Content-Length` value: digits only, at most [`MAX_BODY`].
fn parse_length(value: &str) -> Result<usize, Error> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadRequest);
    }
    // More than 7 digits is past MAX_BODY whatever they are (and cannot overflow).
    if value.len() > 7 {
        return Err(Error::BodyTooLarge);
    }
    let n: usize = value.parse().map_err(|_| Error::BadRequest)?;
    if n > MAX_BODY {
        return Err(Error::BodyTooLarge);
    }
    Ok(n)
}

/// Writes a response head: status line, `Content-Length`, `Content-Type`
/// (when given), `Connection`, blank line. The body follows it.
pub fn write_response_head(
    out: &mut impl Write,
    status: (u16, &str),
    content_type: Option<&str>,
    content_length: usize,
    keep_alive: bool,
) -> fmt::Result {
    write!(out, "HTTP/1.1 {} {}\r\n", status.0, status.1)?;
    if let Some(t) = content_type {
        write!(out, "Content-Type: {t}\r\n")?;
    }
    write!(out, "Content-Length: {content_length}\r\n")?;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(out, "Connection: {connection}\r\n\r\n")
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn complete(buf: &[u8]) -> Head<'_> {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn get_and_post() {
        let get = complete(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
        assert_eq!(get.method, "GET");
        assert_eq!(get.target, "/index.html");
        assert_eq!(get.version, Version::Http11);
        assert_eq!(get.header("host"), Some("localhost"));
        assert_eq!(get.headers().len(), 2);
        assert_eq!(get.content_length, 0);
        assert!(get.keep_alive);

        let raw = b"POST /echo HTTP/1.1\r\nContent-Length:  5 \r\n\r\nhello";
        let post = complete(raw);
        assert_eq!(post.content_length, 5);
        assert_eq!(&raw[post.head_len..post.total_len()], b"hello");
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nconnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn partial_until_the_blank_line() {
        let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(Parsed::Partial), "cut at {cut}");
        }
        // Pipelined requests: the first is parsed, the rest left in place.
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let first = complete(two);
        assert_eq!(first.target, "/a");
        assert_eq!(complete(&two[first.total_len()..]).target, "/b");
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
        ] {
            assert_eq!(
                parse(raw),
                Err(Error::BadRequest),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // Garbage is refused before a blank line arrives.
        assert_eq!(parse(b"\x16\x03\x01 tls hello"), Err(Error::BadRequest));
        assert_eq!(parse(b"GET / HTTP/1.1\n"), Err(Error::BadRequest));
        assert_eq!(Error::BadRequest.status(), (400, "Bad Request"));
    }

    #[test]
    fn bounds() {
        // A head without end past MAX_HEAD.
        let mut long = Vec::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&long), Err(Error::HeadTooLarge));
        // Too many headers.
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&std::format!("H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(many.as_bytes()), Err(Error::HeadTooLarge));
        // Bodies.
        let ok = std::format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        assert_eq!(complete(ok.as_bytes()).content_length, MAX_BODY);
        for len in [MAX_BODY + 1, 99_999_999_999_999_999] {
            let big = std::format!("POST / HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
            assert_eq!(parse(big.as_bytes()), Err(Error::BodyTooLarge));
        }
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Error::NotImplemented)
        );
        assert_eq!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(Error::VersionNotSupported)
        );
    }

    #[test]
    fn response_head() {
        let mut out = String::new();
        write_response_head(&mut out, (200, "OK"), Some("text/plain"), 5, true).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
        );
        out.clear();
        write_response_head(&mut out, Error::BadRequest.status(), None, 0, false).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut s: u64 = 0xDEAD_BEEF_1234_5678;
        let alphabet = b"GET POST/ HTTP/1.1\r\n:Content-Length 0123456789\x00\xff";
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            for i in 0..(s % 96) {
                let k = usize::try_from(
                    (s.rotate_left(u32::try_from(i).unwrap())) % alphabet.len() as u64,
                )
                .unwrap();
                buf.push(alphabet[k]);
            }
            if let Ok(Parsed::Complete(h)) = parse(&buf) {
                assert!(h.head_len <= buf.len() && h.content_length <= MAX_BODY);
            }
        }
    }
}
