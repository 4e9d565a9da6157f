//! The virtio-mmio transport: one register window per device, legacy
//! (version 1) or modern (version 2) layout.

use tandem_abi::bootinfo::Device;

use super::queue::{QueueLayout, Virtqueue};

/// Register offsets (virtio 1.2, 4.2.2; legacy 4.2.4).
mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const GUEST_PAGE_SIZE: usize = 0x028;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_ALIGN: usize = 0x03c;
    pub const QUEUE_PFN: usize = 0x040;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

/// `"virt"` little-endian.
const MAGIC: u32 = 0x7472_6976;
/// Device status bits.
mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const FAILED: u32 = 128;
}
/// The page size the legacy layout is told, and its queue alignment.
pub(crate) const LEGACY_PAGE: u32 = 4096;

/// Why a device was refused or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The window is too small for the registers and the config.
    WindowTooSmall(u64),
    /// No virtio magic at the window.
    BadMagic(u32),
    /// A transport version other than 1 (legacy) or 2 (modern).
    BadVersion(u32),
    /// Another kind of device than the driver's.
    WrongDevice(u32),
    /// The device does not offer a feature the driver needs (bit number).
    MissingFeature(u32),
    /// The device refused the features the driver accepted.
    FeaturesRefused,
    /// A queue is absent, already live, or has no room.
    BadQueue(u16),
    /// The heap could not give the shared memory.
    OutOfMemory,
    /// The used ring's index ran ahead of what was made available.
    BadUsedIndex {
        /// Queue.
        queue: u16,
        /// Entries the device claims to have used since the last look.
        ahead: u16,
    },
    /// A used entry names a descriptor that is not the device's.
    BadDescriptor {
        /// Queue.
        queue: u16,
        /// The descriptor id it gave.
        id: u32,
    },
    /// A used entry claims more bytes than the buffer holds.
    BadLength {
        /// Queue.
        queue: u16,
        /// The length it gave.
        len: u32,
    },
    /// The device set its NEEDS_RESET or another status the driver did not.
    DeviceFailed(u32),
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::WindowTooSmall(n) => write!(f, "register window of {n:#x} bytes is too small"),
            Self::BadMagic(m) => write!(f, "no virtio-mmio device (magic {m:#010x})"),
            Self::BadVersion(v) => write!(f, "virtio-mmio version {v} (1 or 2 expected)"),
            Self::WrongDevice(d) => write!(f, "device type {d} is not the one expected"),
            Self::MissingFeature(b) => write!(f, "device lacks feature bit {b}"),
            Self::FeaturesRefused => write!(f, "device refused the accepted features"),
            Self::BadQueue(q) => write!(f, "queue {q} is unavailable"),
            Self::OutOfMemory => write!(f, "no heap for the queues and buffers"),
            Self::BadUsedIndex { queue, ahead } => {
                write!(
                    f,
                    "queue {queue}: used index {ahead} entries ahead of the ring"
                )
            }
            Self::BadDescriptor { queue, id } => {
                write!(
                    f,
                    "queue {queue}: used entry names descriptor {id}, not in flight"
                )
            }
            Self::BadLength { queue, len } => {
                write!(f, "queue {queue}: used length {len} exceeds the buffer")
            }
            Self::DeviceFailed(s) => write!(f, "device status {s:#x}: it needs a reset"),
        }
    }
}

/// Registers and config of one device's window.
pub(crate) struct Transport {
    base: u64,
    size: u64,
    version: u32,
}

impl Transport {
    /// The device described by `device`, checked to be a virtio-mmio
    /// device of type `device_id`, reset, acknowledged and driven.
    ///
    /// The boot path maps every [`Device::VirtioMmio`] window of the
    /// boot-info block user read-write and uncached (on the PVH and
    /// Multiboot2 paths from the same list, with the same builder the VMM
    /// uses), which is what makes the register accesses below sound.
    pub(crate) fn probe(device: &Device, device_id: u32) -> Result<Option<Self>, DeviceError> {
        let Device::VirtioMmio { base, size, .. } = *device else {
            return Ok(None);
        };
        // Registers up to the config space, and a little config.
        if size < reg::CONFIG as u64 + 0x10 {
            return Err(DeviceError::WindowTooSmall(size));
        }
        let mut t = Self {
            base,
            size,
            version: 0,
        };
        let magic = t.read(reg::MAGIC);
        if magic != MAGIC {
            return Err(DeviceError::BadMagic(magic));
        }
        t.version = t.read(reg::VERSION);
        if !(1..=2).contains(&t.version) {
            return Err(DeviceError::BadVersion(t.version));
        }
        match t.read(reg::DEVICE_ID) {
            // An empty transport (no device behind it).
            0 => Ok(None),
            id if id != device_id => Ok(None),
            _ => {
                t.write(reg::STATUS, 0);
                t.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
                Ok(Some(t))
            }
        }
    }

    /// Whether the device speaks the legacy layout.
    pub(crate) fn is_legacy(&self) -> bool {
        self.version == 1
    }

    /// The window's version register, for messages.
    /// The register window's guest-physical address.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    fn reg_ptr(&self, offset: usize) -> Option<*mut u32> {
        (offset.is_multiple_of(4) && (offset as u64) + 4 <= self.size)
            .then_some((self.base + offset as u64) as *mut u32)
    }

    fn read(&self, offset: usize) -> u32 {
        match self.reg_ptr(offset) {
            // SAFETY: the window is mapped for CPL3, uncached (see `probe`);
            // the offset lies in it and is 4-aligned.
            Some(p) => unsafe { p.read_volatile() },
            None => 0,
        }
    }

    fn write(&self, offset: usize, value: u32) {
        if let Some(p) = self.reg_ptr(offset) {
            // SAFETY: as in `read`; a register write only drives the device.
            unsafe { p.write_volatile(value) }
        }
    }

    /// Byte `offset` of the device's config space (0 past the window).
    pub(crate) fn config_u8(&self, offset: usize) -> u8 {
        let at = reg::CONFIG as u64 + offset as u64;
        if at >= self.size {
            return 0;
        }
        // SAFETY: as in `read`; byte access to the config space is allowed
        // in both layouts.
        unsafe { ((self.base + at) as *const u8).read_volatile() }
    }

    /// Reads config bytes `offset..offset + out.len()` consistently: the
    /// modern layout's generation counter must not change across the read.
    pub(crate) fn config_bytes(&self, offset: usize, out: &mut [u8]) {
        for _ in 0..8 {
            let before = (!self.is_legacy()).then(|| self.read(reg::CONFIG_GENERATION));
            for (i, b) in out.iter_mut().enumerate() {
                *b = self.config_u8(offset + i);
            }
            if before == (!self.is_legacy()).then(|| self.read(reg::CONFIG_GENERATION)) {
                return;
            }
        }
    }

    /// Offered features (the legacy layout has only the low 32).
    pub(crate) fn device_features(&self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(reg::DEVICE_FEATURES));
        if self.is_legacy() {
            return low;
        }
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        low | u64::from(self.read(reg::DEVICE_FEATURES)) << 32
    }

    /// Accepts `features`; the modern layout then needs FEATURES_OK to stick.
    pub(crate) fn accept_features(&self, features: u64) -> Result<(), DeviceError> {
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        if self.is_legacy() {
            return Ok(());
        }
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = self.read(reg::STATUS);
        self.write(reg::STATUS, s | status::FEATURES_OK);
        if self.read(reg::STATUS) & status::FEATURES_OK == 0 {
            self.fail();
            return Err(DeviceError::FeaturesRefused);
        }
        Ok(())
    }

    /// Sets up queue `index` with at most `want` entries (a power of two).
    pub(crate) fn setup_queue(&self, index: u16, want: u16) -> Result<Virtqueue, DeviceError> {
        self.write(reg::QUEUE_SEL, u32::from(index));
        if !self.is_legacy() && self.read(reg::QUEUE_READY) != 0 {
            return Err(DeviceError::BadQueue(index));
        }
        let max = self.read(reg::QUEUE_NUM_MAX);
        if max == 0 {
            return Err(DeviceError::BadQueue(index));
        }
        // The largest power of two no more than what both sides take.
        let limit = max.min(u32::from(want));
        let size = 1u16 << (31 - limit.leading_zeros());
        let queue = Virtqueue::new(index, QueueLayout::new(size))?;
        self.write(reg::QUEUE_NUM, u32::from(size));
        if self.is_legacy() {
            self.write(reg::GUEST_PAGE_SIZE, LEGACY_PAGE);
            self.write(reg::QUEUE_ALIGN, LEGACY_PAGE);
            // Guest memory lies below 4 GiB, so the frame number fits.
            self.write(
                reg::QUEUE_PFN,
                (queue.desc_addr() / u64::from(LEGACY_PAGE)) as u32,
            );
        } else {
            let pairs = [
                (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, queue.desc_addr()),
                (
                    reg::QUEUE_DRIVER_LOW,
                    reg::QUEUE_DRIVER_HIGH,
                    queue.avail_addr(),
                ),
                (
                    reg::QUEUE_DEVICE_LOW,
                    reg::QUEUE_DEVICE_HIGH,
                    queue.used_addr(),
                ),
            ];
            for (low, high, addr) in pairs {
                self.write(low, addr as u32);
                self.write(high, (addr >> 32) as u32);
            }
            self.write(reg::QUEUE_READY, 1);
        }
        Ok(queue)
    }

    /// Tells the device the driver is ready.
    pub(crate) fn driver_ok(&self) {
        let s = self.read(reg::STATUS);
        self.write(reg::STATUS, s | status::DRIVER_OK);
    }

    /// Whether the device has asked for a reset (or failed).
    pub(crate) fn check_status(&self) -> Result<(), DeviceError> {
        // NEEDS_RESET (64) is modern only; a legacy device never sets it.
        let s = self.read(reg::STATUS);
        if s & (64 | status::FAILED) != 0 {
            return Err(DeviceError::DeviceFailed(s));
        }
        Ok(())
    }

    /// Tells the device queue `index` has new buffers (one VM exit).
    pub(crate) fn notify(&self, index: u16) {
        self.write(reg::QUEUE_NOTIFY, u32::from(index));
    }

    /// Marks the driver as given up.
    pub(crate) fn fail(&self) {
        let s = self.read(reg::STATUS);
        self.write(reg::STATUS, s | status::FAILED);
    }

    /// Resets the device: it stops using every queue and buffer.
    pub(crate) fn reset(&self) {
        self.write(reg::STATUS, 0);
    }
}
