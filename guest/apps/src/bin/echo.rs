//! Echo (RFC 862) on port 7, TCP and UDP at once: what arrives is sent
//! back. Needs a virtio-net device and DHCP (QEMU's user network). One
//! loop over non-blocking sockets serves every connection and datagram.
#![no_std]
#![no_main]

use core::time::Duration;

use tandem_guest::net::{self, Error, TcpListener, TcpStream, UdpSocket};
use tandem_guest::prelude::*;

tandem_guest::entry!(main, devices = [net]);

const PORT: u16 = 7;
/// Connections served at once; more wait in the listener's backlog.
const MAX_CONNECTIONS: usize = 16;

fn main(_env: &Env) -> Result<(), Error> {
    let config = net::up(Duration::from_secs(30))?;
    let mut listener = TcpListener::bind(PORT)?;
    listener.set_nonblocking(true);
    let mut udp = UdpSocket::bind(PORT)?;
    udp.set_nonblocking(true);
    println!("echo: tcp and udp on {}:{PORT}", config.address);
    tandem_guest::ready();

    let mut streams: Vec<TcpStream> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut busy = false;
    loop {
        // A round that did nothing waits in the host for the next frame.
        if busy {
            net::poll()?;
        } else {
            net::wait(Duration::from_millis(100))?;
        }
        busy = false;
        if streams.len() < MAX_CONNECTIONS {
            match listener.accept() {
                Ok((mut s, _)) => {
                    busy = true;
                    s.set_nonblocking(true);
                    streams.push(s);
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        streams.retain_mut(|s| match s.read(&mut buf) {
            // Echo it back; the write waits for room, so nothing is lost.
            Ok(0) => false,
            Ok(n) => {
                busy = true;
                s.set_nonblocking(false);
                let ok = s.write_all(&buf[..n]).is_ok();
                s.set_nonblocking(true);
                ok
            }
            Err(Error::WouldBlock) => true,
            Err(_) => false,
        });
        match udp.recv_from(&mut buf) {
            Ok((n, from)) => {
                busy = true;
                let _ = udp.send_to(&buf[..n], from);
            }
            Err(Error::WouldBlock) => {}
            Err(e) => return Err(e),
        }
    }
}
