//! TCP: a listener with a small backlog of listening sockets, and streams.

use alloc::vec::Vec;
use core::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, State};

use super::{block_on, with_stack, Error, Result, SocketAddr, Stack, Wait};

/// Listening sockets per listener: connections that may complete their
/// handshake while the app is busy with another.
const BACKLOG: usize = 4;
/// A connection with unacknowledged data and no progress for this long is
/// aborted by the stack (so a vanished peer does not pin a socket forever).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

fn listening(stack: &mut Stack, port: u16) -> Result<SocketHandle> {
    let mut socket = Stack::tcp_socket();
    socket.listen(port).map_err(|_| Error::InvalidInput)?;
    Ok(stack.sockets.add(socket))
}

/// A TCP socket listening on a port, like `std::net::TcpListener`.
pub struct TcpListener {
    port: u16,
    backlog: Vec<SocketHandle>,
    nonblocking: bool,
}

impl TcpListener {
    /// Listens on `port` of the interface (any address it gets).
    pub fn bind(port: u16) -> Result<Self> {
        if port == 0 {
            return Err(Error::InvalidInput);
        }
        with_stack(|s| {
            if s.tcp_ports.contains(&port) {
                return Err(Error::AddrInUse);
            }
            let mut backlog = Vec::with_capacity(BACKLOG);
            for _ in 0..BACKLOG {
                backlog.push(listening(s, port)?);
            }
            s.tcp_ports.push(port);
            Ok(Self {
                port,
                backlog,
                nonblocking: false,
            })
        })?
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes [`accept`](Self::accept) return [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Waits for a connection and returns it with its peer's address.
    pub fn accept(&mut self) -> Result<(TcpStream, SocketAddr)> {
        let wait = Wait {
            nonblocking: self.nonblocking,
            timeout: None,
        };
        let (port, backlog) = (self.port, &mut self.backlog);
        block_on(wait, |s| {
            for slot in backlog.iter_mut() {
                let h = *slot;
                let socket = s.sockets.get_mut::<Socket>(h);
                match socket.state() {
                    State::Listen | State::SynReceived => continue,
                    // Reset during its handshake: listen again.
                    State::Closed => {
                        if socket.listen(port).is_err() {
                            return Some(Err(Error::InvalidInput));
                        }
                        continue;
                    }
                    _ => {}
                }
                socket.set_timeout(Some(STALL_TIMEOUT.into()));
                let Some(peer) = socket.remote_endpoint() else {
                    continue;
                };
                match listening(s, port) {
                    Ok(fresh) => *slot = fresh,
                    Err(e) => return Some(Err(e)),
                }
                return Some(Ok((TcpStream::new(h, peer), peer)));
            }
            None
        })
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let (port, backlog) = (self.port, core::mem::take(&mut self.backlog));
        let _ = with_stack(|s| {
            for h in backlog {
                s.sockets.remove(h);
            }
            s.tcp_ports.retain(|&p| p != port);
        });
    }
}

/// A TCP connection, like `std::net::TcpStream`. Dropping it closes it
/// (the stack finishes the close in later polls).
pub struct TcpStream {
    handle: SocketHandle,
    peer: SocketAddr,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    nonblocking: bool,
}

impl TcpStream {
    fn new(handle: SocketHandle, peer: SocketAddr) -> Self {
        Self {
            handle,
            peer,
            read_timeout: None,
            write_timeout: None,
            nonblocking: false,
        }
    }

    /// Connects to `to` from a free local port, waiting up to `timeout` for
    /// the handshake, like `std::net::TcpStream::connect_timeout`. A peer
    /// that resets the handshake gives [`Error::ConnectionRefused`].
    pub fn connect(to: SocketAddr, timeout: Duration) -> Result<Self> {
        if to.port == 0 || to.addr.is_unspecified() {
            return Err(Error::InvalidInput);
        }
        let h = with_stack(|s| {
            let port = s.ephemeral(|s, p| s.tcp_ports.contains(&p));
            let mut socket = Stack::tcp_socket();
            socket
                .connect(s.iface.context(), to, port)
                .map_err(|_| Error::InvalidInput)?;
            socket.set_timeout(Some(STALL_TIMEOUT.into()));
            Ok(s.sockets.add(socket))
        })??;
        let wait = Wait {
            nonblocking: false,
            timeout: Some(timeout),
        };
        let done = block_on(wait, |s| match s.sockets.get::<Socket>(h).state() {
            State::SynSent | State::SynReceived => None,
            State::Established => Some(Ok(())),
            _ => Some(Err(Error::ConnectionRefused)),
        });
        match done {
            Ok(()) => Ok(Self::new(h, to)),
            Err(e) => {
                let _ = with_stack(|s| {
                    s.sockets.remove(h);
                });
                Err(e)
            }
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// How long [`read`](Self::read) waits before [`Error::TimedOut`] (`None`: forever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// How long [`write`](Self::write) waits for room before [`Error::TimedOut`].
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Makes reads and writes return [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Sends small writes at once instead of coalescing them (Nagle off).
    pub fn set_nodelay(&mut self, nodelay: bool) -> Result<()> {
        let h = self.handle;
        with_stack(|s| s.sockets.get_mut::<Socket>(h).set_nagle_enabled(!nodelay))
    }

    fn wait(&self, timeout: Option<Duration>) -> Wait {
        Wait {
            nonblocking: self.nonblocking,
            timeout,
        }
    }

    /// Reads what has arrived into `buf`, waiting for at least one byte;
    /// 0 once the peer has closed its side (or `buf` is empty).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.handle;
        block_on(self.wait(self.read_timeout), |s| {
            let socket = s.sockets.get_mut::<Socket>(h);
            if socket.can_recv() {
                return match socket.recv_slice(buf) {
                    Ok(0) => None,
                    Ok(n) => Some(Ok(n)),
                    Err(_) => Some(Ok(0)),
                };
            }
            if !socket.may_recv() {
                return Some(match socket.state() {
                    State::Closed => Err(Error::ConnectionReset),
                    _ => Ok(0),
                });
            }
            None
        })
    }

    /// Queues bytes of `buf` to send, waiting for room for at least one;
    /// returns how many were taken.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.handle;
        block_on(self.wait(self.write_timeout), |s| {
            let socket = s.sockets.get_mut::<Socket>(h);
            if !socket.may_send() {
                return Some(Err(match socket.state() {
                    State::Closed => Error::ConnectionReset,
                    _ => Error::BrokenPipe,
                }));
            }
            match socket.send_slice(buf) {
                Ok(0) => None,
                Ok(n) => Some(Ok(n)),
                Err(_) => Some(Err(Error::BrokenPipe)),
            }
        })
    }

    /// Queues all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Waits until the peer has acknowledged everything queued.
    pub fn flush(&mut self) -> Result<()> {
        let h = self.handle;
        block_on(self.wait(self.write_timeout), |s| {
            let socket = s.sockets.get_mut::<Socket>(h);
            if socket.send_queue() == 0 {
                Some(Ok(()))
            } else if !socket.may_send() && socket.state() == State::Closed {
                Some(Err(Error::ConnectionReset))
            } else {
                None
            }
        })
    }

    /// Closes the sending side: the peer reads the end of the stream once
    /// the queued bytes are through. Reading stays possible.
    pub fn shutdown_write(&mut self) -> Result<()> {
        let h = self.handle;
        with_stack(|s| s.sockets.get_mut::<Socket>(h).close())
    }

    /// Closes the connection (as dropping it does).
    pub fn close(self) {}
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let h = self.handle;
        let _ = with_stack(|s| {
            s.sockets.get_mut::<Socket>(h).close();
            s.closing.push(h);
            let _ = s.poll();
        });
    }
}
