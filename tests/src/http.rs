//! A minimal HTTP/1.1 client for the network tests: one request at a time
//! on a kept-alive connection, responses sized by Content-Length.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// A response: status code, headers (lower-case names), body.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (sized by Content-Length) from `reader`.
pub fn read_response(reader: &mut BufReader<TcpStream>) -> Response {
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .expect("read the status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    response.body = vec![0; len];
    reader
        .read_exact(&mut response.body)
        .expect("read the body");
    response
}

/// Sends `request` and reads its response.
pub fn exchange(reader: &mut BufReader<TcpStream>, request: &[u8]) -> Response {
    // Shown with a failure: which request went unanswered.
    eprintln!(
        "request: {:?}",
        String::from_utf8_lossy(&request[..request.len().min(60)])
    );
    reader
        .get_mut()
        .write_all(request)
        .expect("send the request");
    read_response(reader)
}
