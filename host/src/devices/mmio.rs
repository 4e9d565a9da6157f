//! The virtio-mmio transport, modern layout (version 2), as a pure register
//! file: reads answer from its state, writes change it and say what the
//! device must do ([`Effect`]). No guest memory, no I/O, so every register
//! can be driven from a test. Registers are 32 bits wide; an access of
//! another width to one reads 0 and writes nothing (as a spec-conforming
//! driver never makes it). The configuration space after
//! [`VIRTIO_MMIO_CONFIG`] is read at any width.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;

use serde::{Deserialize, Serialize};

/// `"virt"` little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern layout.
pub const VERSION: u32 = 2;
/// The vendor id the device reports (`"TNDM"`).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"TNDM");

/// One queue's registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegs {
    /// Entries the driver chose (`QueueNum`).
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ("driver") ring address.
    pub avail: u64,
    /// Used ("device") ring address.
    pub used: u64,
}

/// What a register write asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register's new value.
    None,
    /// The driver kicked this queue.
    Notify(u16),
    /// The driver made this queue ready (its registers are in [`Transport::queue`]).
    QueueReady(u16),
    /// The driver reset the device (status 0).
    Reset,
    /// The driver set `DRIVER_OK`: the device is live.
    DriverOk,
}

/// What the driver wrote into a [`Transport`]'s registers: its part of a
/// snapshot. The device's own facts (type, features offered, queue
/// maximum, configuration space) are not in it: the device that restores
/// it supplies them. Hostile input when read back: the device's state
/// checks it (`NetState::check`) before [`Transport::set_state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// The device status register.
    pub status: u32,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// Every queue's registers, in queue order.
    pub queues: Vec<QueueRegs>,
}

/// The register file of one virtio-mmio device.
#[derive(Debug, Clone)]
pub struct Transport {
    device_id: u32,
    device_features: u64,
    queue_max: u16,
    config: Vec<u8>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
}

impl Transport {
    /// A device of type `device_id` offering `device_features` (the
    /// transport adds `VIRTIO_F_VERSION_1`), with `queues` queues of at
    /// most `queue_max` entries, and `config` as its configuration space.
    pub fn new(
        device_id: u32,
        device_features: u64,
        queues: usize,
        queue_max: u16,
        config: Vec<u8>,
    ) -> Self {
        Self {
            device_id,
            device_features: device_features | 1 << VIRTIO_F_VERSION_1,
            queue_max,
            config,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            queue_sel: 0,
            queues: vec![QueueRegs::default(); queues],
        }
    }

    /// The device features offered (with `VIRTIO_F_VERSION_1`).
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// What the driver has written, for a snapshot.
    pub fn state(&self) -> TransportState {
        TransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            queue_sel: self.queue_sel,
            queues: self.queues.clone(),
        }
    }

    /// Takes back what the driver had written (a checked
    /// [`TransportState`] with one entry per queue; the queue registers
    /// are left alone otherwise).
    pub fn set_state(&mut self, state: &TransportState) {
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.queue_sel = state.queue_sel;
        if state.queues.len() == self.queues.len() {
            self.queues.clone_from(&state.queues);
        }
    }

    /// The registers of queue `index`.
    pub fn queue(&self, index: u16) -> Option<&QueueRegs> {
        self.queues.get(usize::from(index))
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver has set `DRIVER_OK` (and not failed or reset).
    pub fn live(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_FAILED == 0
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Marks the device as needing a reset after a fatal error.
    pub fn fail(&mut self) {
        self.status |= VIRTIO_CONFIG_S_FAILED;
    }

    fn selected(&mut self) -> Option<&mut QueueRegs> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    /// Reads `data.len()` bytes at `offset` into the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(at) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            let Ok(at) = usize::try_from(at) else { return };
            for (i, b) in data.iter_mut().enumerate() {
                *b = at
                    .checked_add(i)
                    .and_then(|j| self.config.get(j))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 {
            return;
        }
        let Ok(reg) = u32::try_from(offset) else {
            return;
        };
        let sel = usize::try_from(self.queue_sel).ok();
        let queue = sel.and_then(|i| self.queues.get(i));
        let value = match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_id,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => low32(self.device_features),
                1 => low32(self.device_features >> 32),
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |_| u32::from(self.queue_max)),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => 0,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Writes `data` at `offset` into the window; says what the device
    /// must do about it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return Effect::None;
        };
        let value = u32::from_le_bytes(bytes);
        let Ok(reg) = u32::try_from(offset) else {
            return Effect::None;
        };
        let set_low = |a: &mut u64| *a = (*a & !0xffff_ffff) | u64::from(value);
        let set_high = |a: &mut u64| *a = (*a & 0xffff_ffff) | u64::from(value) << 32;
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => match self.driver_features_sel {
                0 => set_low(&mut self.driver_features),
                1 => set_high(&mut self.driver_features),
                _ => {}
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected() {
                    q.size = u16::try_from(value).unwrap_or(u16::MAX);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                let sel = self.queue_sel;
                if let Some(q) = self.selected() {
                    let was = q.ready;
                    q.ready = value & 1 != 0;
                    if q.ready && !was {
                        return Effect::QueueReady(u16::try_from(sel).unwrap_or(u16::MAX));
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Ok(q) = u16::try_from(value) {
                    if usize::from(q) < self.queues.len() {
                        return Effect::Notify(q);
                    }
                }
            }
            VIRTIO_MMIO_STATUS => return self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.selected().map_or((), |q| set_low(&mut q.desc)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.selected().map_or((), |q| set_high(&mut q.desc)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.selected().map_or((), |q| set_low(&mut q.avail)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.selected().map_or((), |q| set_high(&mut q.avail)),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.selected().map_or((), |q| set_low(&mut q.used)),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.selected().map_or((), |q| set_high(&mut q.used)),
            _ => {}
        }
        Effect::None
    }

    fn write_status(&mut self, value: u32) -> Effect {
        if value == 0 {
            self.queues.fill(QueueRegs::default());
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.driver_features = 0;
            self.status = 0;
            self.queue_sel = 0;
            return Effect::Reset;
        }
        let mut value = value;
        if value & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
        {
            // Accepted only if the driver took nothing the device did not
            // offer, and took the modern layout.
            let version_1 = 1u64 << VIRTIO_F_VERSION_1;
            if self.driver_features & !self.device_features != 0
                || self.driver_features & version_1 == 0
            {
                value &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        let became_live =
            value & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        self.status = value;
        if became_live {
            Effect::DriverOk
        } else {
            Effect::None
        }
    }
}

/// The low 32 bits of `v`.
pub(crate) fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(t: &Transport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut Transport, offset: u32, value: u32) -> Effect {
        t.write(u64::from(offset), &value.to_le_bytes())
    }

    fn net() -> Transport {
        Transport::new(1, 1 << 5, 2, 256, vec![2, 0, 0, 0, 0, 7])
    }

    #[test]
    fn identifies_a_modern_device() {
        let t = net();
        assert_eq!(read(&t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&t, VIRTIO_MMIO_DEVICE_ID), 1);
        assert_eq!(read(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        let mut t = t;
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        // The configuration space at any width; past its end, zeros.
        let mut b = [0u8; 1];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 5, &mut b);
        assert_eq!(b, [7]);
        let mut b = [9u8; 4];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 4, &mut b);
        assert_eq!(b, [0, 7, 0, 0]);
        t.read(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        // A register read of the wrong width reads zero.
        let mut b = [9u8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0; 2]);
    }

    #[test]
    fn negotiates_features_and_refuses_what_was_not_offered() {
        let mut t = net();
        write(&mut t, VIRTIO_MMIO_STATUS, 3);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5 | 1 << 6);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(
            read(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        write(&mut t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_ne!(
            read(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        assert_eq!(t.driver_features(), 1 << 32 | 1 << 5);
        assert_eq!(write(&mut t, VIRTIO_MMIO_STATUS, 0xf), Effect::DriverOk);
        assert!(t.live());
        assert_eq!(write(&mut t, VIRTIO_MMIO_STATUS, 0), Effect::Reset);
        assert!(!t.live());
        assert_eq!(t.driver_features(), 0);
    }

    #[test]
    fn state_round_trips_what_the_driver_wrote() {
        let mut t = net();
        write(&mut t, VIRTIO_MMIO_STATUS, 3);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 64);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5000);
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        let state = t.state();
        let mut back = net();
        back.set_state(&state);
        assert_eq!(back.state(), state);
        assert_eq!(read(&back, VIRTIO_MMIO_STATUS), 3);
        assert_eq!(read(&back, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(back.queue(1).map(|q| (q.size, q.desc)), Some((64, 0x5000)));
        // A state with another number of queues leaves the queues alone.
        let mut short = state.clone();
        short.queues.pop();
        let mut other = net();
        other.set_state(&short);
        assert_eq!(other.queue(1), Some(&QueueRegs::default()));
    }

    #[test]
    fn sets_up_queues_and_passes_on_kicks() {
        let mut t = net();
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 128);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        assert_eq!(
            write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1),
            Effect::QueueReady(1)
        );
        assert_eq!(
            t.queue(1),
            Some(&QueueRegs {
                size: 128,
                ready: true,
                desc: 0x1_0000_1000,
                avail: 0x2000,
                used: 0x3000
            })
        );
        assert_eq!(read(&t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(
            write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1),
            Effect::Notify(1)
        );
        assert_eq!(write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 2), Effect::None);
        // A queue that does not exist has no maximum and takes no writes.
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 9);
        assert_eq!(read(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1), Effect::None);
        // Writes of another width change nothing.
        assert_eq!(
            t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &[1]),
            Effect::None
        );
    }
}
