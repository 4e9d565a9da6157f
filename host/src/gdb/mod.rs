//! A gdb stub for a VM: `tandem run IMAGE --gdb PORT` (or `--gdb
//! unix:PATH`) waits for gdb before the guest's first instruction and
//! speaks the GDB remote protocol (through the `gdbstub` crate) on that one
//! connection, on localhost only. Off unless asked.
//!
//! How the guest stops, measured on the PVM KVM these machines have: KVM's
//! own guest debugging sees nothing at CPL3 (no `KVM_EXIT_DEBUG` for an
//! `int3` with `KVM_GUESTDBG_USE_SW_BP`, none for hardware breakpoints,
//! and `KVM_GUESTDBG_SINGLESTEP` only stops in emulated CPL0 code), and a
//! trap flag's #DB goes to the guest's IDT. So the guest's exception entry
//! stops for the debugger: while the host sets `KernelStats::DEBUGGER`,
//! every exception saves the trapping code's registers in the fault record
//! and writes the `DebugTrap` port; the VMM shows gdb those registers and
//! says how to go on (see `tandem_abi::trace::KernelStats`). Single steps
//! set the trap flag; software breakpoints are `int3` bytes patched into
//! guest memory (at CPL3 they arrive as #GP through the DPL0 gate).
//!
//! This folder holds what does not need the VM: the connection and the
//! thread that notices gdb's Ctrl-C while the guest runs ([`mod@self`]), the
//! page-table walk ([`pagewalk`]) and the register conversions ([`regs`]).
//! The stub's target (what gdb's packets do to the VM) and its loop are
//! `vm/debug`. Everything gdb sends is untrusted: gdbstub parses the
//! packets, and every address goes through the guest's page tables and
//! guest memory's bounds; a session that goes wrong ends, the VM does not.

pub(crate) mod pagewalk;
pub(crate) mod regs;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Why the stub could not start.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// Not a port or `unix:PATH`.
    #[error("--gdb {0:?}: expected a TCP port (1-65535) or unix:PATH")]
    BadAddress(String),
    /// Listening or accepting failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Where the stub listens for gdb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbListen {
    /// TCP on 127.0.0.1 only.
    Tcp(u16),
    /// A Unix socket at this path.
    Unix(PathBuf),
}

impl std::str::FromStr for GdbListen {
    type Err = GdbError;
    fn from_str(s: &str) -> Result<Self, GdbError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(GdbError::BadAddress(s.into()));
            }
            return Ok(Self::Unix(path.into()));
        }
        match s.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Self::Tcp(port)),
            _ => Err(GdbError::BadAddress(s.into())),
        }
    }
}

impl std::fmt::Display for GdbListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(port) => write!(f, "127.0.0.1:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GdbError {
    let what = what.into();
    move |source| GdbError::Io { what, source }
}

/// Listens where asked, waits for one gdb and takes its connection (the
/// listener is closed then: one debugger per VM). Call it before the
/// seccomp filter goes on: it binds and accepts.
pub fn wait_for_gdb(listen: &GdbListen) -> Result<GdbConnection, GdbError> {
    let fd: OwnedFd = match listen {
        GdbListen::Tcp(port) => {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, *port))
                .map_err(io(format!("listen on {listen}")))?;
            log::info!("waiting for gdb on {listen} (target remote :{port})");
            let (stream, peer) = l.accept().map_err(io("accept gdb's connection"))?;
            let _ = stream.set_nodelay(true);
            log::info!("gdb connected from {peer}");
            stream.into()
        }
        GdbListen::Unix(path) => {
            let l = UnixListener::bind(path).map_err(io(format!("listen on {listen}")))?;
            log::info!(
                "waiting for gdb on {listen} (target remote {})",
                path.display()
            );
            let accepted = l.accept();
            let _ = std::fs::remove_file(path);
            let (stream, _) = accepted.map_err(io("accept gdb's connection"))?;
            log::info!("gdb connected on {listen}");
            stream.into()
        }
    };
    Ok(GdbConnection::new(File::from(fd)))
}

/// Most bytes read from gdb at a time.
const READ_CHUNK: usize = 4096;
/// Most output bytes gathered before they are sent.
const MAX_GATHER: usize = 64 * 1024;

/// gdb's connection, as plain `read(2)` and `write(2)` on its socket (the
/// vCPU thread's seccomp filter allows those; no socket calls after the
/// accept). Output is gathered and sent at `flush`, one packet a write.
#[derive(Debug)]
pub struct GdbConnection {
    file: File,
    out: Vec<u8>,
    input: Vec<u8>,
    next: usize,
}

impl GdbConnection {
    fn new(file: File) -> Self {
        Self {
            file,
            out: Vec::new(),
            input: Vec::new(),
            next: 0,
        }
    }

    /// The next byte from gdb (waiting for it), `None` at the end of the
    /// connection.
    pub(crate) fn read_byte(&mut self) -> std::io::Result<Option<u8>> {
        if self.next == self.input.len() {
            self.input.resize(READ_CHUNK, 0);
            let n = loop {
                match self.file.read(&mut self.input) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.input.clear();
                    self.next = 0;
                    return Err(e);
                }
            };
            self.input.truncate(n);
            self.next = 0;
            if n == 0 {
                return Ok(None);
            }
        }
        let b = self.input[self.next];
        self.next += 1;
        Ok(Some(b))
    }

    /// Whether bytes gdb sent are already read and waiting here.
    pub(crate) fn has_buffered(&self) -> bool {
        self.next < self.input.len()
    }

    /// Sends what is gathered once it is large (a huge memory read is
    /// streamed, not held).
    fn spill(&mut self) -> std::io::Result<()> {
        if self.out.len() >= MAX_GATHER {
            self.file.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl gdbstub::conn::Connection for GdbConnection {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        self.spill()
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        self.spill()
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let r = self.file.write_all(&self.out);
        self.out.clear();
        r
    }
}

/// How often the watcher looks at the socket, and kicks while it has news.
const WATCH_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Default)]
struct WatchState {
    armed: Mutex<bool>,
    wake: Condvar,
    data: AtomicBool,
    stop: AtomicBool,
}

/// A thread that, while the guest runs, waits for gdb to send something
/// (a Ctrl-C) and kicks the vCPU thread out of `KVM_RUN` when it does. It
/// only polls the socket; the vCPU thread reads it.
pub(crate) struct Watcher {
    state: Arc<WatchState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `conn` for the calling thread (the vCPU thread).
    pub(crate) fn start(conn: &GdbConnection) -> Self {
        crate::control::register_kick_handler();
        let fd = conn.raw_fd();
        let target = crate::control::VcpuThread::current();
        let state = Arc::new(WatchState::default());
        let s = state.clone();
        // Started by the I/O thread: the vCPU thread's filter has no clone.
        let thread = crate::io_thread::spawn("tandem-gdb-watch", move || loop {
            {
                let mut armed = s.armed.lock().unwrap_or_else(|p| p.into_inner());
                while !*armed && !s.stop.load(Ordering::SeqCst) {
                    armed = s.wake.wait(armed).unwrap_or_else(|p| p.into_inner());
                }
            }
            if s.stop.load(Ordering::SeqCst) {
                return;
            }
            if !s.data.load(Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd for a descriptor the connection keeps
                // open until this thread is joined (Watcher is dropped
                // before the connection).
                let n = unsafe { libc::poll(&mut pfd, 1, 2) };
                if n > 0 {
                    s.data.store(true, Ordering::SeqCst);
                }
            }
            if s.data.load(Ordering::SeqCst) && *s.armed.lock().unwrap_or_else(|p| p.into_inner()) {
                // SAFETY: `target` is the vCPU thread, which joins this
                // thread (dropping the Watcher) before it ends.
                unsafe { target.kick() };
                std::thread::sleep(WATCH_INTERVAL);
            }
        });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("no Ctrl-C watcher for gdb: {e}");
                None
            }
        };
        Self { state, thread }
    }

    /// The guest is about to run: watch.
    pub(crate) fn arm(&self) {
        self.state.data.store(false, Ordering::SeqCst);
        *self.state.armed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.state.wake.notify_all();
    }

    /// The guest stopped: the stub reads the socket itself.
    pub(crate) fn disarm(&self) {
        *self.state.armed.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// Whether gdb sent something since [`Watcher::arm`].
    pub(crate) fn has_data(&self) -> bool {
        self.state.data.load(Ordering::SeqCst)
    }

    /// What a wait in the VMM on the guest's behalf (an `Idle` request)
    /// asks to see gdb break in.
    pub(crate) fn interrupt(&self) -> Interrupt {
        Interrupt(self.state.clone())
    }
}

/// Whether gdb has sent something (a Ctrl-C) while the guest runs: a wait
/// in the VMM for the guest ends early when it has, so gdb can stop the
/// guest.
#[derive(Clone)]
pub(crate) struct Interrupt(Arc<WatchState>);

impl Interrupt {
    /// Whether gdb wants in.
    pub(crate) fn asked(&self) -> bool {
        self.0.data.load(Ordering::SeqCst)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_a_port_or_a_unix_path() {
        assert_eq!("1234".parse::<GdbListen>().unwrap(), GdbListen::Tcp(1234));
        assert_eq!(
            "unix:/tmp/g.sock".parse::<GdbListen>().unwrap(),
            GdbListen::Unix("/tmp/g.sock".into())
        );
        for bad in ["0", "65536", "", "unix:", "host:1234", "-1"] {
            assert!(bad.parse::<GdbListen>().is_err(), "{bad}");
        }
        assert_eq!(GdbListen::Tcp(9).to_string(), "127.0.0.1:9");
    }

    #[test]
    fn a_connection_reads_bytes_and_sends_whole_packets() {
        use gdbstub::conn::Connection;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut conn = GdbConnection::new(File::from(OwnedFd::from(a)));
        let mut peer = b;
        Write::write_all(&mut peer, b"$g#67").unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(conn.read_byte().unwrap().unwrap());
        }
        assert_eq!(got, b"$g#67");
        assert!(!conn.has_buffered());
        conn.write_all(b"+$OK").unwrap();
        conn.write(b'#').unwrap();
        conn.flush().unwrap();
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+$OK#");
        drop(peer);
        assert_eq!(conn.read_byte().unwrap(), None);
    }
}
