//! A small blocking HTTP/1.1 client over the daemon's Unix socket: one
//! connection per request (`Connection: close`), the answer read whole
//! and parsed with `httparse`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::types::*;

/// Largest answer the client reads.
const MAX_ANSWER: usize = 64 << 20;
/// Most headers an answer may have.
const MAX_HEADERS: usize = 32;

/// Why a request through [`Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the exchange broke.
    #[error("{}: {source}", socket.display())]
    Io {
        /// The daemon's socket.
        socket: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer is not HTTP the client understands.
    #[error("the daemon's answer is malformed: {0}")]
    Malformed(String),
    /// The daemon refused or failed (its status and error body).
    #[error("HTTP {status}: {error}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body.
        error: ApiError,
    },
    /// The body is not the JSON expected.
    #[error("the daemon's answer does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One answer: status, content type, body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
            timeout: Some(Duration::from_secs(60)),
        }
    }

    /// Gives up on an answer after `t` (default 60 s; none: waits forever).
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Sends one request (`body` as JSON when given) and reads the answer,
    /// whatever its status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| self.io(e))?;
        s.set_read_timeout(self.timeout).map_err(|e| self.io(e))?;
        s.set_write_timeout(self.timeout).map_err(|e| self.io(e))?;
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: tandemd\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        s.write_all(&out).map_err(|e| self.io(e))?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut answer)
            .map_err(|e| self.io(e))?;
        if answer.len() > MAX_ANSWER {
            return Err(ClientError::Malformed(format!(
                "longer than {MAX_ANSWER} bytes"
            )));
        }
        parse_response(&answer)
    }

    /// Sends a request and decodes a JSON answer of type `T`; an error
    /// status becomes [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let r = self.raw(method, path, body.as_deref())?;
        ok(&r)?;
        Ok(serde_json::from_slice(&r.body)?)
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.call("GET", "/healthz", None::<&()>)
    }

    /// `POST /v1/vms`.
    pub fn create(&self, vm: &CreateVm) -> Result<VmInfo, ClientError> {
        self.call("POST", "/v1/vms", Some(vm))
    }

    /// `GET /v1/vms`.
    pub fn list(&self) -> Result<VmList, ClientError> {
        self.call("GET", "/v1/vms", None::<&()>)
    }

    /// `GET /v1/vms/NAME`.
    pub fn get(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("GET", &format!("/v1/vms/{name}"), None::<&()>)
    }

    /// `POST /v1/vms/NAME/start`.
    pub fn start(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("POST", &format!("/v1/vms/{name}/start"), None::<&()>)
    }

    /// `POST /v1/vms/NAME/stop`.
    pub fn stop(&self, name: &str, how: &StopVm) -> Result<VmInfo, ClientError> {
        self.call("POST", &format!("/v1/vms/{name}/stop"), Some(how))
    }

    /// `POST /v1/vms/NAME/kill`.
    pub fn kill(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("POST", &format!("/v1/vms/{name}/kill"), None::<&()>)
    }

    /// `DELETE /v1/vms/NAME`.
    pub fn delete(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call("DELETE", &format!("/v1/vms/{name}"), None::<&()>)
    }

    /// `POST /v1/vms/NAME/snapshot`.
    pub fn snapshot(&self, name: &str, req: &SnapshotVm) -> Result<SnapshotInfo, ClientError> {
        self.call("POST", &format!("/v1/vms/{name}/snapshot"), Some(req))
    }

    /// `POST /v1/vms/NAME/restore`.
    pub fn restore(&self, name: &str, req: &RestoreVm) -> Result<VmInfo, ClientError> {
        self.call("POST", &format!("/v1/vms/{name}/restore"), Some(req))
    }

    /// `GET /v1/vms/NAME/console`: the end of its console log.
    pub fn console(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        let r = self.raw("GET", &format!("/v1/vms/{name}/console"), None)?;
        ok(&r)?;
        Ok(r.body)
    }

    /// `GET /v1/events?since=SEQ` (or one VM's, with `vm`).
    pub fn events(&self, vm: Option<&str>, since: u64) -> Result<EventList, ClientError> {
        let path = match vm {
            Some(n) => format!("/v1/vms/{n}/events?since={since}"),
            None => format!("/v1/events?since={since}"),
        };
        self.call("GET", &path, None::<&()>)
    }

    /// `POST /v1/fleets`.
    pub fn apply_fleet(&self, req: &ApplyFleet) -> Result<FleetInfo, ClientError> {
        self.call("POST", "/v1/fleets", Some(req))
    }

    /// `GET /v1/fleets`.
    pub fn fleets(&self) -> Result<FleetList, ClientError> {
        self.call("GET", "/v1/fleets", None::<&()>)
    }

    /// `GET /v1/fleets/ID`.
    pub fn fleet(&self, id: u64) -> Result<FleetInfo, ClientError> {
        self.call("GET", &format!("/v1/fleets/{id}"), None::<&()>)
    }
}

/// An error status as [`ClientError::Api`] (with the daemon's reason when
/// its body says one).
fn ok(r: &Response) -> Result<(), ClientError> {
    if (200..300).contains(&r.status) {
        return Ok(());
    }
    let error = serde_json::from_slice::<ApiError>(&r.body).unwrap_or_else(|_| {
        ApiError::internal(String::from_utf8_lossy(&r.body).trim().to_string())
    });
    Err(ClientError::Api {
        status: r.status,
        error,
    })
}

/// Parses a whole answer (head and body, the connection closed after it).
pub(super) fn parse_response(bytes: &[u8]) -> Result<Response, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::Malformed("the answer ends in its head".into()))
        }
        Err(e) => return Err(ClientError::Malformed(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| ClientError::Malformed("no status".into()))?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_type = header("content-type");
    let rest = &bytes[head..];
    let body = match header("content-length") {
        Some(l) => {
            let len: usize = l
                .parse()
                .map_err(|_| ClientError::Malformed(format!("Content-Length '{l}'")))?;
            rest.get(..len)
                .ok_or_else(|| ClientError::Malformed("the body is cut short".into()))?
                .to_vec()
        }
        None => rest.to_vec(),
    };
    Ok(Response {
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n{\"kind\":\"not-found\",\"error\":\"no VM named 'x'\"}",
        );
        // 44 is shorter than the body: the body is its first 44 bytes.
        let r = r.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body.len(), 44);
        let full = b"HTTP/1.1 404 Not Found\r\nContent-Length: 46\r\n\r\n{\"kind\":\"not-found\",\"error\":\"no VM named 'x'\"}";
        let r = parse_response(full).unwrap();
        match ok(&r) {
            Err(ClientError::Api { status: 404, error }) => {
                assert_eq!(error, ApiError::no_vm("x"))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
