//! UDP sockets.

use core::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp::{SendError, Socket};

use super::{block_on, with_stack, Error, Result, SocketAddr, Wait, MAX_DATAGRAM};

/// A UDP socket bound to a port, like `std::net::UdpSocket`.
pub struct UdpSocket {
    handle: SocketHandle,
    port: u16,
    read_timeout: Option<Duration>,
    nonblocking: bool,
}

impl UdpSocket {
    /// Binds `port` of the interface; port 0 picks a free one.
    pub fn bind(port: u16) -> Result<Self> {
        with_stack(|s| {
            let port = match port {
                0 => s.ephemeral(|s, p| s.udp_ports.contains(&p)),
                p if s.udp_ports.contains(&p) => return Err(Error::AddrInUse),
                p => p,
            };
            let mut socket = super::Stack::udp_socket();
            socket.bind(port).map_err(|_| Error::InvalidInput)?;
            let handle = s.sockets.add(socket);
            s.udp_ports.push(port);
            Ok(Self {
                handle,
                port,
                read_timeout: None,
                nonblocking: false,
            })
        })?
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long [`recv_from`](Self::recv_from) waits before [`Error::TimedOut`].
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Makes sends and receives return [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Sends `buf` as one datagram to `to` (at most [`MAX_DATAGRAM`]
    /// bytes), waiting for an address and for room.
    pub fn send_to(&mut self, buf: &[u8], to: SocketAddr) -> Result<usize> {
        if buf.len() > MAX_DATAGRAM || to.port == 0 {
            return Err(Error::InvalidInput);
        }
        let h = self.handle;
        let wait = Wait {
            nonblocking: self.nonblocking,
            timeout: None,
        };
        block_on(wait, |s| {
            s.config?;
            match s.sockets.get_mut::<Socket>(h).send_slice(buf, to) {
                Ok(()) => Some(Ok(buf.len())),
                Err(SendError::BufferFull) => None,
                Err(SendError::Unaddressable) => Some(Err(Error::InvalidInput)),
            }
        })
    }

    /// Waits for a datagram and copies it into `buf` (cut to its length,
    /// as std does); returns its length as copied and its sender.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SocketAddr)> {
        let h = self.handle;
        let wait = Wait {
            nonblocking: self.nonblocking,
            timeout: self.read_timeout,
        };
        block_on(wait, |s| {
            let (data, meta) = s.sockets.get_mut::<Socket>(h).recv().ok()?;
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            Some(Ok((n, meta.endpoint)))
        })
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let (h, port) = (self.handle, self.port);
        let _ = with_stack(|s| {
            s.sockets.remove(h);
            s.udp_ports.retain(|&p| p != port);
        });
    }
}
