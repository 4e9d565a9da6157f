//! The virtio-net device's part of a snapshot ([`NetState`]): what the
//! driver wrote into the transport's registers, where the device was in
//! each queue, the MAC and the static IPv4 settings the guest was given.
//! Frames in flight are not kept (a restored VM loses them, as a wire
//! would), nor is the tap: a restore names the one to attach.
//!
//! Read back from a state file, it is hostile input: [`NetState::check`]
//! refuses anything the device could not have been in (unknown status
//! bits, features never offered, a queue that is not a power of two or
//! whose rings leave the app's memory, positions more than a queue
//! apart, a multicast MAC, an address no `--net` accepts) before any of it
//! reaches a device, and [`NetDevice::restore`](super::NetDevice::restore)
//! checks each ready queue again against guest memory.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tandem_abi::layout;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

use super::mmio::TransportState;
use super::net::{check_queue, FEATURES};
use super::spec::StaticIpv4;
use super::DeviceError;

/// Queues of the device (receive and transmit).
pub const QUEUES: usize = 2;
/// Every status bit a driver may set.
const STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_NEEDS_RESET
    | VIRTIO_CONFIG_S_FAILED;

/// Where the device was in one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    /// The next available-ring entry it takes.
    pub next_avail: u16,
    /// The next used-ring entry it fills.
    pub next_used: u16,
}

/// Static IPv4 settings as a state file keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4State {
    /// The guest's address.
    pub address: [u8; 4],
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<[u8; 4]>,
    /// A DNS server.
    pub dns: Option<[u8; 4]>,
}

impl From<StaticIpv4> for Ipv4State {
    fn from(ip: StaticIpv4) -> Self {
        Self {
            address: ip.address.octets(),
            prefix_len: ip.prefix_len,
            gateway: ip.gateway.map(|g| g.octets()),
            dns: ip.dns.map(|d| d.octets()),
        }
    }
}

impl From<Ipv4State> for StaticIpv4 {
    fn from(ip: Ipv4State) -> Self {
        Self {
            address: Ipv4Addr::from(ip.address),
            prefix_len: ip.prefix_len,
            gateway: ip.gateway.map(Ipv4Addr::from),
            dns: ip.dns.map(Ipv4Addr::from),
        }
    }
}

/// The virtio-net device of a snapshotted VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The transport's registers.
    pub transport: TransportState,
    /// The device's position in each queue (receive, transmit).
    pub positions: Vec<QueuePosition>,
    /// The MAC address the guest had.
    pub mac: [u8; 6],
    /// The static IPv4 settings the guest had (none: it asked DHCP).
    pub ipv4: Option<Ipv4State>,
}

/// Why a snapshot's network device state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetStateError {
    /// A VM with a network device is at most this large.
    #[error("a VM with a network device has at most {max} MiB of memory, the snapshot's has {found} MiB", max = layout::VIRTIO_MMIO_BASE >> 20, found = .0 >> 20)]
    MemorySize(u64),
    /// Not one entry per queue.
    #[error("{what} for {found} queues, the device has {QUEUES}")]
    QueueCount {
        /// Registers or positions.
        what: &'static str,
        /// Entries found.
        found: usize,
    },
    /// A status bit no driver sets.
    #[error("device status {0:#x} has bits no driver sets")]
    Status(u32),
    /// Features the device never offered, or a modern driver without
    /// `VIRTIO_F_VERSION_1`.
    #[error(
        "driver features {found:#x} are not a subset of the offered {offered:#x} with VERSION_1"
    )]
    Features {
        /// Features in the state.
        found: u64,
        /// Features the device offers.
        offered: u64,
    },
    /// A ready queue the device would have refused.
    #[error(transparent)]
    Queue(#[from] DeviceError),
    /// A ready queue whose positions are further apart than it has entries.
    #[error("queue {queue}: positions avail {next_avail}, used {next_used} are impossible for a queue of {size} entries")]
    Position {
        /// The queue.
        queue: u16,
        /// Its next available entry.
        next_avail: u16,
        /// Its next used entry.
        next_used: u16,
        /// Its size.
        size: u16,
    },
    /// The used index in guest memory is not where the device was.
    #[error("queue {queue}: the used ring's index in guest memory is {memory}, the device's is {device}")]
    UsedIndex {
        /// The queue.
        queue: u16,
        /// The index in guest memory.
        memory: u16,
        /// The index in the state.
        device: u16,
    },
    /// A MAC address no device may have.
    #[error("MAC {0:02x?} is multicast or zero")]
    Mac([u8; 6]),
    /// IPv4 settings `--net` would refuse.
    #[error("IPv4 settings {0}")]
    Ipv4(String),
}

impl NetState {
    /// Checks every value against what the device of a VM of `mem_size`
    /// bytes may have been in.
    pub fn check(&self, mem_size: u64) -> Result<(), NetStateError> {
        if mem_size > layout::VIRTIO_MMIO_BASE {
            return Err(NetStateError::MemorySize(mem_size));
        }
        let t = &self.transport;
        for (what, found) in [
            ("registers", t.queues.len()),
            ("positions", self.positions.len()),
        ] {
            if found != QUEUES {
                return Err(NetStateError::QueueCount { what, found });
            }
        }
        if t.status & !STATUS_BITS != 0 {
            return Err(NetStateError::Status(t.status));
        }
        let offered = FEATURES | 1 << VIRTIO_F_VERSION_1;
        let needs_version = t.status & VIRTIO_CONFIG_S_FEATURES_OK != 0;
        if t.driver_features & !offered != 0
            || (needs_version && t.driver_features & 1 << VIRTIO_F_VERSION_1 == 0)
        {
            return Err(NetStateError::Features {
                found: t.driver_features,
                offered,
            });
        }
        let app = (layout::HEAP_ADDR, mem_size);
        // A queue the driver has not made ready (or took back with
        // QueueReady = 0) is not restored: its registers and positions are
        // checked when it is made ready again.
        for (q, (regs, pos)) in (0u16..).zip(t.queues.iter().zip(&self.positions)) {
            if !regs.ready {
                continue;
            }
            check_queue(q, regs, app)?;
            if pos.next_avail.wrapping_sub(pos.next_used) > regs.size {
                return Err(NetStateError::Position {
                    queue: q,
                    next_avail: pos.next_avail,
                    next_used: pos.next_used,
                    size: regs.size,
                });
            }
        }
        if self.mac[0] & 1 != 0 || self.mac == [0; 6] {
            return Err(NetStateError::Mac(self.mac));
        }
        if let Some(ip) = self.ipv4 {
            check_ipv4(ip)?;
        }
        Ok(())
    }
}

/// What `--net`'s parser accepts of an address, prefix and gateway.
fn check_ipv4(ip: Ipv4State) -> Result<(), NetStateError> {
    let address = Ipv4Addr::from(ip.address);
    let bad = |what: String| NetStateError::Ipv4(what);
    if !(1..=32).contains(&ip.prefix_len) {
        return Err(bad(format!("have prefix length {}", ip.prefix_len)));
    }
    if address.is_unspecified() || address.is_multicast() {
        return Err(bad(format!("have address {address}")));
    }
    if let Some(g) = ip.gateway {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(ip.prefix_len))
            .unwrap_or(0);
        if u32::from_be_bytes(g) & mask != u32::from(address) & mask {
            return Err(bad(format!(
                "have gateway {} outside {address}/{}",
                Ipv4Addr::from(g),
                ip.prefix_len
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::mmio::QueueRegs;

    /// The state of a live device of a 64 MiB VM, both queues in use.
    pub(crate) fn sample() -> NetState {
        let queue = |base: u64| QueueRegs {
            size: 128,
            ready: true,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        };
        NetState {
            transport: TransportState {
                device_features_sel: 1,
                driver_features_sel: 1,
                driver_features: FEATURES | 1 << VIRTIO_F_VERSION_1,
                status: 0xf,
                queue_sel: 1,
                queues: vec![queue(0x80_0000), queue(0x81_0000)],
            },
            positions: vec![
                QueuePosition {
                    next_avail: 300,
                    next_used: 300,
                },
                QueuePosition {
                    next_avail: 7,
                    next_used: 7,
                },
            ],
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: Some(Ipv4State {
                address: [10, 0, 0, 2],
                prefix_len: 24,
                gateway: Some([10, 0, 0, 1]),
                dns: None,
            }),
        }
    }

    const MEM: u64 = 64 << 20;

    fn refused(f: impl FnOnce(&mut NetState)) -> NetStateError {
        let mut s = sample();
        f(&mut s);
        s.check(MEM).expect_err("a hostile state was accepted")
    }

    #[test]
    fn a_live_device_and_a_fresh_one_are_accepted() {
        assert_eq!(sample().check(MEM), Ok(()));
        let fresh = NetState {
            transport: TransportState {
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                status: 0,
                queue_sel: 0,
                queues: vec![QueueRegs::default(); QUEUES],
            },
            positions: vec![QueuePosition::default(); QUEUES],
            mac: [2, 1, 2, 3, 4, 5],
            ipv4: None,
        };
        assert_eq!(fresh.check(MEM), Ok(()));
        // Positions a wrap apart are still a queue apart.
        let mut s = sample();
        s.positions[0] = QueuePosition {
            next_avail: 5,
            next_used: 65535,
        };
        assert_eq!(s.check(MEM), Ok(()));
    }

    #[test]
    fn memory_past_the_device_window_is_refused() {
        let e = sample().check(layout::VIRTIO_MMIO_BASE * 2).unwrap_err();
        assert!(matches!(e, NetStateError::MemorySize(_)), "{e}");
    }

    #[test]
    fn queue_counts_status_and_features_are_checked() {
        let e = refused(|s| {
            s.transport.queues.pop();
        });
        assert_eq!(e.to_string(), "registers for 1 queues, the device has 2");
        let e = refused(|s| s.positions.push(QueuePosition::default()));
        assert!(matches!(
            e,
            NetStateError::QueueCount {
                what: "positions",
                found: 3
            }
        ));
        assert_eq!(
            refused(|s| s.transport.status |= 0x10),
            NetStateError::Status(0x1f)
        );
        let e = refused(|s| s.transport.driver_features |= 1 << 6);
        assert!(matches!(e, NetStateError::Features { .. }), "{e}");
        let e = refused(|s| s.transport.driver_features = FEATURES);
        assert!(matches!(e, NetStateError::Features { .. }), "{e}");
    }

    #[test]
    fn bad_queues_are_refused_with_the_device_s_own_errors() {
        let e = refused(|s| s.transport.queues[0].size = 100);
        assert!(
            matches!(e, NetStateError::Queue(DeviceError::QueueSize { .. })),
            "{e}"
        );
        let e = refused(|s| s.transport.queues[1].desc = 0x1000);
        assert!(e.to_string().contains("descriptor table at 0x1000"), "{e}");
        let e = refused(|s| s.transport.queues[1].used = MEM - 8);
        assert!(e.to_string().contains("used ring"), "{e}");
        let e = refused(|s| s.transport.queues[0].avail = u64::MAX - 1);
        assert!(e.to_string().contains("available ring"), "{e}");
        let e = refused(|s| s.transport.queues[0].desc += 8);
        assert!(e.to_string().contains("descriptor table"), "{e}");
    }

    #[test]
    fn impossible_positions_are_refused() {
        let e = refused(|s| s.positions[1].next_avail = 7 + 129);
        assert!(
            matches!(
                e,
                NetStateError::Position {
                    queue: 1,
                    size: 128,
                    ..
                }
            ),
            "{e}"
        );
        // A queue that is not ready is not restored: nothing of it is used.
        let mut s = sample();
        s.transport.queues[0].ready = false;
        s.transport.queues[0].size = 100;
        s.positions[0].next_avail = 1000;
        assert_eq!(s.check(MEM), Ok(()));
    }

    #[test]
    fn bad_macs_and_addresses_are_refused() {
        assert!(matches!(refused(|s| s.mac[0] = 1), NetStateError::Mac(_)));
        assert!(matches!(refused(|s| s.mac = [0; 6]), NetStateError::Mac(_)));
        for f in [
            |ip: &mut Ipv4State| ip.prefix_len = 0,
            |ip: &mut Ipv4State| ip.prefix_len = 33,
            |ip: &mut Ipv4State| ip.address = [0; 4],
            |ip: &mut Ipv4State| ip.address = [224, 0, 0, 1],
            |ip: &mut Ipv4State| ip.gateway = Some([10, 0, 1, 1]),
        ] {
            let e = refused(|s| {
                if let Some(ip) = s.ipv4.as_mut() {
                    f(ip);
                }
            });
            assert!(matches!(e, NetStateError::Ipv4(_)), "{e}");
        }
    }

    #[test]
    fn static_settings_convert_both_ways() {
        let ip = sample().ipv4.unwrap();
        assert_eq!(Ipv4State::from(StaticIpv4::from(ip)), ip);
    }
}
