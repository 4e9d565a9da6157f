//! Networking: the first virtio-net device of the boot-info block, a
//! [`smoltcp`] interface configured by the block's static settings for it
//! (`Device::NetConfig`, which the Tandem VMM's `--net ...,ip=A/P` gives)
//! or else by DHCP, and blocking sockets that feel like std's
//! ([`TcpListener`], [`TcpStream`] with `connect`, [`UdpSocket`]).
//!
//! The stack comes up on first use. A restored or cloned VM renews it
//! (`Stack::renew_if_restored`): open connections are reset, the MAC and
//! settings read again from the device and the rewritten boot-info block. Every blocking call polls the
//! interface (and so the device's rings) until it can make progress. When
//! a round changed nothing it waits in the host until the stack's next
//! timer (the Idle hypercall, which a frame for the guest ends early): on
//! the Tandem VMM a waiting app sleeps. Elsewhere (QEMU) the Idle call
//! returns at once, so the wait is a busy poll. Each call may also be made
//! non-blocking (`set_nonblocking`), returning [`Error::WouldBlock`], so
//! one app can serve several sockets from its own loop with [`poll`] and
//! [`wait`].

mod tcp;
mod udp;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

pub use smoltcp::wire::{IpAddress, IpEndpoint as SocketAddr, Ipv4Address};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

use crate::time::Instant;
use crate::virtio::net::VirtioNet;
use crate::virtio::DeviceError;

/// Why a network call failed, in the spirit of `std::io::ErrorKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The machine offers no virtio-net device.
    NoDevice,
    /// The device broke the virtio rules and was dropped.
    Device(DeviceError),
    /// No address yet: DHCP has not answered in time.
    NotConfigured,
    /// The port is already bound.
    AddrInUse,
    /// An argument is out of range (port 0 to listen on, a datagram
    /// larger than one frame).
    InvalidInput,
    /// The peer reset the connection (or it timed out in the stack).
    ConnectionReset,
    /// The peer refused a connection (reset its handshake).
    ConnectionRefused,
    /// The connection is closed for writing.
    BrokenPipe,
    /// The call's timeout passed.
    TimedOut,
    /// A non-blocking call could not make progress now.
    WouldBlock,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoDevice => write!(f, "no network device"),
            Self::Device(e) => write!(f, "network device failed: {e}"),
            Self::NotConfigured => write!(f, "no network address (DHCP did not answer)"),
            Self::AddrInUse => write!(f, "address in use"),
            Self::InvalidInput => write!(f, "invalid argument"),
            Self::ConnectionReset => write!(f, "connection reset by peer"),
            Self::ConnectionRefused => write!(f, "connection refused"),
            Self::BrokenPipe => write!(f, "broken pipe"),
            Self::TimedOut => write!(f, "timed out"),
            Self::WouldBlock => write!(f, "operation would block"),
        }
    }
}

/// `Result` with a network [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// The interface's configuration (static or from DHCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The interface's address.
    pub address: Ipv4Address,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway, if one was given.
    pub gateway: Option<Ipv4Address>,
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// The virtio-mmio transport version (1 legacy, 2 modern).
    pub transport_version: u32,
}

/// Bytes of each TCP socket's receive and transmit buffer.
const TCP_BUFFER: usize = 64 * 1024;
/// Bytes of each UDP socket's receive and transmit buffer.
const UDP_BUFFER: usize = 64 * 1024;
/// Datagrams each UDP socket buffers in each direction.
const UDP_PACKETS: usize = 32;
/// The largest UDP payload one Ethernet frame carries (no fragmentation).
pub const MAX_DATAGRAM: usize = 1500 - 20 - 8;
/// First port of the range handed out for port 0.
const EPHEMERAL_FIRST: u16 = 49152;

pub(crate) struct Stack {
    device: VirtioNet,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// The DHCP client, unless the VMM gave static settings.
    dhcp: Option<SocketHandle>,
    config: Option<Config>,
    /// TCP sockets closed by their owner, kept until the close completes.
    closing: Vec<SocketHandle>,
    tcp_ports: Vec<u16>,
    udp_ports: Vec<u16>,
    next_ephemeral: u16,
    /// The VM generation the interface was built for.
    generation: u64,
}

enum State {
    Down,
    Up(alloc::boxed::Box<Stack>),
    Failed(Error),
}

struct Global(RefCell<State>);

// SAFETY: the guest runs one vCPU with interrupts off, so the stack is
// never reached from two contexts at once; the RefCell catches reentry.
unsafe impl Sync for Global {}

static STACK: Global = Global(RefCell::new(State::Down));

fn smol_now() -> smoltcp::time::Instant {
    let micros = crate::time::ticks_to_duration(crate::time::now_ticks()).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

impl Stack {
    fn start() -> Result<Self> {
        let env = crate::env::get();
        let generation = env.generation();
        let entropy = env.entropy();
        let fallback_mac = [
            0x02, entropy[0], entropy[1], entropy[2], entropy[3], entropy[4],
        ];
        let devices = current_devices();
        let mut device = match VirtioNet::find(&devices, fallback_mac) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Error::NoDevice),
            Err(e) => return Err(Error::Device(e)),
        };
        let fixed = static_config(&devices, &device);
        let iface = interface(&mut device, fixed, &entropy);
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = fixed.is_none().then(|| sockets.add(dhcpv4::Socket::new()));
        Ok(Self {
            device,
            iface,
            sockets,
            dhcp,
            config: fixed,
            closing: Vec::new(),
            tcp_ports: Vec::new(),
            udp_ports: Vec::new(),
            next_ephemeral: EPHEMERAL_FIRST,
            generation,
        })
    }

    /// After a restore or clone (the live area's generation changed, which
    /// costs one load to see): every TCP connection is aborted (its peer
    /// gets a reset when the address is kept; with another address smoltcp
    /// drops it, as the peer cannot be reached from it), the MAC and the
    /// settings are read again and the interface is rebuilt on them, with
    /// a fresh neighbour cache (the host side may be another tap).
    /// Listeners and UDP sockets stay as they are.
    fn renew_if_restored(&mut self) {
        let env = crate::env::get();
        let generation = env.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        for (_, socket) in self.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(tcp) = socket {
                if tcp.state() != smoltcp::socket::tcp::State::Listen {
                    tcp.abort();
                }
            }
        }
        let mac = self.device.reread_mac();
        let fixed = static_config(&current_devices(), &self.device);
        match (fixed, self.dhcp) {
            (Some(_), Some(h)) => {
                self.sockets.remove(h);
                self.dhcp = None;
            }
            (None, Some(h)) => self.sockets.get_mut::<dhcpv4::Socket>(h).reset(),
            (None, None) => self.dhcp = Some(self.sockets.add(dhcpv4::Socket::new())),
            (Some(_), None) => {}
        }
        self.iface = interface(&mut self.device, fixed, &env.entropy());
        self.config = fixed;
        let m = mac;
        match fixed {
            Some(c) => crate::println!(
                "tandem: network renewed for generation {generation:#x}: {}/{}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                c.address, c.prefix_len, m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            None => crate::println!(
                "tandem: network renewed for generation {generation:#x}: DHCP, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }

    /// One round: frames in and out, one notification per queue, DHCP
    /// events, finished closes reaped. Says whether any socket changed.
    fn poll(&mut self) -> Result<bool> {
        let changed = self
            .iface
            .poll(smol_now(), &mut self.device, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged;
        self.device.flush();
        if let Some(e) = self.device.broken() {
            return Err(Error::Device(e));
        }
        self.dhcp_event();
        self.reap();
        Ok(changed)
    }

    /// How long the stack has nothing to do: until its next timer, at most
    /// `max`. With every transmit buffer held by the device (a rate limit
    /// on the Tandem VMM) the stack wants to send now but cannot: it waits
    /// the whole `max`, which the device ends when a buffer comes back.
    fn quiet_for(&mut self, max: Duration) -> Duration {
        if self.device.tx_starved() {
            return max;
        }
        self.iface
            .poll_delay(smol_now(), &self.sockets)
            .map_or(max, |d| Duration::from_micros(d.total_micros()).min(max))
    }

    fn dhcp_event(&mut self) {
        let Some(dhcp) = self.dhcp else {
            return;
        };
        let event = match self.sockets.get_mut::<dhcpv4::Socket>(dhcp).poll() {
            None => return,
            Some(dhcpv4::Event::Configured(c)) => Some((c.address, c.router)),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some((cidr, _)) = event {
                let _ = addrs.push(IpCidr::Ipv4(cidr));
            }
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some((_, Some(router))) = event {
            let _ = routes.add_default_ipv4_route(router);
        }
        self.config = event.map(|(cidr, gateway)| Config {
            address: cidr.address(),
            prefix_len: cidr.prefix_len(),
            gateway,
            mac: self.device.mac(),
            transport_version: self.device.transport_version(),
        });
    }

    fn reap(&mut self) {
        use smoltcp::socket::tcp::{Socket, State};
        let sockets = &mut self.sockets;
        self.closing.retain(|&h| {
            let socket = sockets.get::<Socket>(h);
            // An aborted socket keeps its peer until its reset is out.
            let done = match socket.state() {
                State::Closed => socket.remote_endpoint().is_none(),
                State::TimeWait => true,
                _ => false,
            };
            if done {
                sockets.remove(h);
            }
            !done
        });
    }

    /// A free port for port 0.
    fn ephemeral(&mut self, taken: impl Fn(&Self, u16) -> bool) -> u16 {
        loop {
            let port = self.next_ephemeral;
            self.next_ephemeral = self
                .next_ephemeral
                .checked_add(1)
                .unwrap_or(EPHEMERAL_FIRST);
            if !taken(self, port) {
                return port;
            }
        }
    }

    fn tcp_socket() -> smoltcp::socket::tcp::Socket<'static> {
        smoltcp::socket::tcp::Socket::new(
            smoltcp::socket::tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
            smoltcp::socket::tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
        )
    }

    fn udp_socket() -> smoltcp::socket::udp::Socket<'static> {
        use smoltcp::socket::udp::{PacketBuffer, PacketMetadata, Socket};
        let buffer = || {
            PacketBuffer::new(
                vec![PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0u8; UDP_BUFFER],
            )
        };
        Socket::new(buffer(), buffer())
    }
}

/// An interface on `device` with its MAC and, if given, static settings.
fn interface(device: &mut VirtioNet, fixed: Option<Config>, entropy: &[u8; 32]) -> Interface {
    let mac = EthernetAddress(device.mac());
    let mut config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&entropy[8..16]);
    config.random_seed = u64::from_le_bytes(seed) ^ crate::time::rdtsc();
    let mut iface = Interface::new(config, device, smol_now());
    if let Some(c) = fixed {
        let cidr = smoltcp::wire::Ipv4Cidr::new(c.address, c.prefix_len);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv4(cidr));
        });
        if let Some(gw) = c.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
    }
    iface
}

/// The devices the machine has now. A restored VM's host rewrote the
/// boot-info block (its generation the live area's): then it is read
/// again, else the block the VM booted with serves.
fn current_devices() -> Vec<tandem_abi::bootinfo::Device> {
    let env = crate::env::get();
    let booted = || env.boot_info().devices.iter().copied().collect();
    if env.generation() == env.boot_info().generation {
        return booted();
    }
    match tandem_abi::bootinfo::BootInfo::decode(crate::pages::boot_info_block()) {
        Ok(info) => info.devices.iter().copied().collect(),
        Err(e) => {
            crate::println!(
                "tandem: the restored boot-info block is refused ({e}); keeping the boot's devices"
            );
            booted()
        }
    }
}

/// The static settings the boot-info block gives for `device`, if any.
fn static_config(devices: &[tandem_abi::bootinfo::Device], device: &VirtioNet) -> Option<Config> {
    devices.iter().find_map(|d| match *d {
        tandem_abi::bootinfo::Device::NetConfig {
            base,
            address,
            prefix_len,
            gateway,
            ..
        } if base == device.base() && prefix_len <= 32 => Some(Config {
            address: Ipv4Address::from_octets(address),
            prefix_len,
            gateway: gateway.map(Ipv4Address::from_octets),
            mac: device.mac(),
            transport_version: device.transport_version(),
        }),
        _ => None,
    })
}

/// Longest wait in the host between two rounds of a blocking call.
const MAX_NAP: Duration = Duration::from_millis(100);

/// Runs `f` on the stack, bringing it up first if needed.
fn with_stack<R>(f: impl FnOnce(&mut Stack) -> R) -> Result<R> {
    let mut state = STACK.0.borrow_mut();
    if matches!(*state, State::Down) {
        *state = match Stack::start() {
            Ok(stack) => State::Up(alloc::boxed::Box::new(stack)),
            Err(e) => State::Failed(e),
        };
    }
    match &mut *state {
        State::Up(stack) => {
            stack.renew_if_restored();
            Ok(f(stack))
        }
        State::Failed(e) => Err(*e),
        State::Down => Err(Error::NoDevice),
    }
}

/// How a call waits: until `deadline` (forever when `None`), or not at
/// all when non-blocking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    pub nonblocking: bool,
    pub timeout: Option<Duration>,
}

/// Polls until `step` makes progress (`Some`), the wait's time is up, or
/// the device fails.
pub(crate) fn block_on<R>(
    wait: Wait,
    mut step: impl FnMut(&mut Stack) -> Option<Result<R>>,
) -> Result<R> {
    let start = Instant::now();
    loop {
        let (done, nap) = with_stack(|s| {
            s.poll().map(|changed| {
                let done = step(s);
                let nap = (!changed && done.is_none()).then(|| s.quiet_for(MAX_NAP));
                (done, nap)
            })
        })??;
        if let Some(r) = done {
            return r;
        }
        if wait.nonblocking {
            return Err(Error::WouldBlock);
        }
        let left = wait.timeout.map(|t| t.saturating_sub(start.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::TimedOut);
        }
        match nap {
            Some(n) => nap_for(left.map_or(n, |l| n.min(l))),
            None => core::hint::spin_loop(),
        }
    }
}

/// Waits in the host (returns at once off the Tandem VMM).
fn nap_for(d: Duration) {
    if !d.is_zero() {
        crate::idle::idle(d);
    }
}

/// Brings the network up and waits up to `timeout` for an address (at
/// once with static settings, else from DHCP).
pub fn up(timeout: Duration) -> Result<Config> {
    let wait = Wait {
        nonblocking: false,
        timeout: Some(timeout),
    };
    block_on(wait, |s| s.config.map(Ok)).map_err(|e| match e {
        Error::TimedOut => Error::NotConfigured,
        e => e,
    })
}

/// The interface's configuration, once it has one.
pub fn config() -> Option<Config> {
    with_stack(|s| s.config).ok().flatten()
}

/// One round of the stack: frames in and out, timers. For apps that run
/// their own loop over non-blocking sockets.
pub fn poll() -> Result<()> {
    with_stack(|s| s.poll().map(|_| ()))?
}

/// One round of the stack, and if it changed nothing, a wait in the host
/// until the stack's next timer, a frame for the guest, or `max`. For apps
/// whose own loop over non-blocking sockets found nothing to do.
pub fn wait(max: Duration) -> Result<()> {
    let nap = with_stack(|s| s.poll().map(|changed| (!changed).then(|| s.quiet_for(max))))??;
    if let Some(n) = nap {
        nap_for(n);
    }
    Ok(())
}
