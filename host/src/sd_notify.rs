//! Telling systemd how a `Type=notify` service is doing: `READY=1` once it
//! serves, `STATUS=...` as it goes, `STOPPING=1` when it shuts down. One
//! datagram per message to the socket named by `$NOTIFY_SOCKET`, a path or
//! (with a leading `@`) a Linux abstract socket name. Without the variable
//! (not started by systemd) every call does nothing.
//!
//! ```
//! use tandem::sd_notify::{Notifier, State};
//!
//! // Outside systemd there is no socket, and nothing to do.
//! let notifier = Notifier::from_var(None)?;
//! assert!(notifier.is_none());
//! assert_eq!(tandem::sd_notify::notify_with(notifier.as_ref(), &[State::Ready])?, false);
//! # Ok::<(), tandem::sd_notify::NotifyError>(())
//! ```

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// What can go wrong telling systemd.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("{NOTIFY_SOCKET}={0:?} is neither an absolute path nor an abstract socket (@name)")]
    BadAddress(String),
    /// The socket could not be made or addressed.
    #[error("cannot reach the notification socket {addr:?}: {source}")]
    Socket {
        /// `$NOTIFY_SOCKET`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The message was not sent whole.
    #[error("cannot send {message:?} to the notification socket {addr:?}: {source}")]
    Send {
        /// `$NOTIFY_SOCKET`.
        addr: String,
        /// What was being sent.
        message: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One assignment of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// `READY=1`: startup is done, the service serves.
    Ready,
    /// `STATUS=...`: a line for `systemctl status` (line feeds become spaces).
    Status(&'a str),
    /// `STOPPING=1`: the service is shutting down.
    Stopping,
    /// `RELOADING=1`: the service is reloading its configuration.
    Reloading,
    /// `WATCHDOG=1`: the service is alive (for `WatchdogSec=`).
    Watchdog,
    /// `MAINPID=...`: the service's main process.
    MainPid(u32),
}

impl State<'_> {
    fn line(&self) -> String {
        match self {
            Self::Ready => "READY=1".into(),
            Self::Status(s) => format!("STATUS={}", s.replace('\n', " ")),
            Self::Stopping => "STOPPING=1".into(),
            Self::Reloading => "RELOADING=1".into(),
            Self::Watchdog => "WATCHDOG=1".into(),
            Self::MainPid(pid) => format!("MAINPID={pid}"),
        }
    }
}

/// The message for `states`: one `KEY=VALUE` line each.
pub fn message(states: &[State<'_>]) -> String {
    let mut s = String::new();
    for state in states {
        s.push_str(&state.line());
        s.push('\n');
    }
    s
}

/// A socket to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when it is not set (or empty).
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        Self::from_var(std::env::var_os(NOTIFY_SOCKET).as_deref())
    }

    /// From a value of `$NOTIFY_SOCKET` (`None` or empty: no notifier).
    pub fn from_var(value: Option<&OsStr>) -> Result<Option<Self>, NotifyError> {
        match value {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Self::connect(v).map(Some),
        }
    }

    /// A notifier for the socket at `addr` (`/path` or `@abstract`).
    pub fn connect(addr: &OsStr) -> Result<Self, NotifyError> {
        let name = addr.to_string_lossy().into_owned();
        let bytes = addr.as_bytes();
        let socket_err = |source| NotifyError::Socket {
            addr: name.clone(),
            source,
        };
        let target = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(addr).map_err(socket_err)?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(socket_err)?,
            _ => return Err(NotifyError::BadAddress(name)),
        };
        let socket = UnixDatagram::unbound().map_err(socket_err)?;
        Ok(Self {
            socket,
            addr: target,
            name,
        })
    }

    /// Sends `states` in one datagram.
    pub fn notify(&self, states: &[State<'_>]) -> Result<(), NotifyError> {
        let message = message(states);
        let send_err = |source| NotifyError::Send {
            addr: self.name.clone(),
            message: message.clone(),
            source,
        };
        let sent = self
            .socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map_err(send_err)?;
        if sent != message.len() {
            return Err(send_err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("{sent} of {} bytes sent", message.len()),
            )));
        }
        Ok(())
    }
}

/// Sends `states` through `notifier` if there is one; whether it sent.
pub fn notify_with(notifier: Option<&Notifier>, states: &[State<'_>]) -> Result<bool, NotifyError> {
    match notifier {
        Some(n) => n.notify(states).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `states` to `$NOTIFY_SOCKET`, or does nothing when it is unset;
/// whether it sent.
pub fn notify(states: &[State<'_>]) -> Result<bool, NotifyError> {
    notify_with(Notifier::from_env()?.as_ref(), states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("tandem-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_var(Some(path.as_os_str())).unwrap().unwrap();
        n.notify(&[State::Ready, State::Status("serving\n2 VMs")])
            .unwrap();
        assert_eq!(receive(&server), "READY=1\nSTATUS=serving 2 VMs\n");
        n.notify(&[State::Stopping]).unwrap();
        assert_eq!(receive(&server), "STOPPING=1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("tandem-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let var = format!("@{name}");
        let n = Notifier::from_var(Some(OsStr::new(&var))).unwrap().unwrap();
        assert!(notify_with(Some(&n), &[State::MainPid(42), State::Ready]).unwrap());
        assert_eq!(receive(&server), "MAINPID=42\nREADY=1\n");
    }

    #[test]
    fn unset_is_a_no_op_and_bad_values_are_named() {
        assert!(Notifier::from_var(None).unwrap().is_none());
        assert!(Notifier::from_var(Some(OsStr::new(""))).unwrap().is_none());
        assert!(!notify_with(None, &[State::Ready]).unwrap());
        let err = Notifier::from_var(Some(OsStr::new("vsock:2:1234"))).unwrap_err();
        assert!(matches!(err, NotifyError::BadAddress(_)), "{err}");
        assert!(err.to_string().contains("vsock:2:1234"));
        // A socket nobody listens on is a clear error, not a panic.
        let gone = std::env::temp_dir().join("tandem-notify-nobody-listens.sock");
        let n = Notifier::connect(gone.as_os_str()).unwrap();
        let err = n.notify(&[State::Ready]).unwrap_err();
        assert!(err.to_string().contains("READY=1"), "{err}");
    }
}
