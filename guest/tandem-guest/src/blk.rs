//! Disks: the virtio-blk devices of the boot-info block, read, written and
//! flushed by sector. The Tandem VMM gives one per `--disk` (in order);
//! QEMU one per `-device virtio-blk-device`.
//!
//! ```ignore
//! let mut disk = tandem_guest::blk::Disk::open(0)?;
//! let mut sector = [0u8; 512];
//! disk.read(0, &mut sector)?;
//! disk.write(1, &sector)?;
//! disk.flush()?; // durable on the host's disk once this returns
//! ```
//!
//! Each call is one batch: up to 16 requests of 64 KiB made available
//! together, one notify (one VM exit on the Tandem VMM, which serves them
//! on that exit), then the used ring is polled.

use crate::virtio::blk::{Op, Status, VirtioBlk, CHUNK};
use crate::virtio::DeviceError;

pub use crate::virtio::blk::SECTOR_SIZE;

/// Why a disk call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No such disk.
    NoDevice,
    /// The device broke the virtio rules and was dropped.
    Device(DeviceError),
    /// A buffer that is not a whole number of sectors.
    Unaligned,
    /// Sectors past the end of the disk.
    OutOfRange,
    /// The disk is read-only: the device refused the write.
    ReadOnly,
    /// The device reported an I/O error.
    Io,
    /// The device does not do this (a flush on a device without one).
    Unsupported,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoDevice => write!(f, "no such disk"),
            Self::Device(e) => write!(f, "disk device failed: {e}"),
            Self::Unaligned => write!(f, "buffer is not a whole number of 512-byte sectors"),
            Self::OutOfRange => write!(f, "sectors past the end of the disk"),
            Self::ReadOnly => write!(f, "the disk is read-only"),
            Self::Io => write!(f, "I/O error"),
            Self::Unsupported => write!(f, "not supported by the disk"),
        }
    }
}

/// `Result` with a disk [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// One disk. Opening a disk (re)starts its device, so one `Disk` per
/// device at a time.
pub struct Disk {
    dev: VirtioBlk,
}

impl Disk {
    /// The `index`-th disk (0 first).
    pub fn open(index: usize) -> Result<Self> {
        match VirtioBlk::find(&crate::env::get().boot_info().devices, index) {
            Ok(Some(dev)) => Ok(Self { dev }),
            Ok(None) => Err(Error::NoDevice),
            Err(e) => Err(Error::Device(e)),
        }
    }

    /// Its size in sectors.
    pub fn capacity(&self) -> u64 {
        self.dev.capacity()
    }

    /// Whether the device says it refuses writes.
    pub fn read_only(&self) -> bool {
        self.dev.read_only()
    }

    fn check(&self, sector: u64, len: usize) -> Result<()> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::Unaligned);
        }
        let end = sector.checked_add((len / SECTOR_SIZE) as u64);
        if end.is_none_or(|e| e > self.capacity()) {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }

    fn status(&self, s: Status) -> Result<()> {
        match s {
            Status::Ok => Ok(()),
            Status::IoError if self.dev.read_only() => Err(Error::ReadOnly),
            Status::IoError | Status::Other(_) => Err(Error::Io),
            Status::Unsupported => Err(Error::Unsupported),
        }
    }

    /// Reads `buf.len()` bytes (whole sectors) from `sector` on.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.check(sector, buf.len())?;
        let batch = self.dev.slots() * CHUNK;
        for (b, big) in buf.chunks_mut(batch).enumerate() {
            let first = sector + (b * batch / SECTOR_SIZE) as u64;
            let mut ops = [Op::Flush; crate::virtio::blk::SLOTS];
            let mut status = [Status::Other(0xff); crate::virtio::blk::SLOTS];
            let pieces = big.chunks(CHUNK).count();
            for (i, piece) in big.chunks(CHUNK).enumerate() {
                ops[i] = Op::Read {
                    sector: first + (i * CHUNK / SECTOR_SIZE) as u64,
                    len: piece.len(),
                };
            }
            self.dev
                .run(&ops[..pieces], &mut status)
                .map_err(Error::Device)?;
            for (i, piece) in big.chunks_mut(CHUNK).enumerate() {
                self.status(status[i])?;
                if !self.dev.drain(i, piece) {
                    return Err(Error::Io);
                }
            }
        }
        Ok(())
    }

    /// Writes `buf` (whole sectors) from `sector` on. Durable only after
    /// [`flush`](Self::flush).
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<()> {
        self.check(sector, buf.len())?;
        let batch = self.dev.slots() * CHUNK;
        for (b, big) in buf.chunks(batch).enumerate() {
            let first = sector + (b * batch / SECTOR_SIZE) as u64;
            let mut ops = [Op::Flush; crate::virtio::blk::SLOTS];
            let mut status = [Status::Other(0xff); crate::virtio::blk::SLOTS];
            let mut pieces = 0;
            for (i, piece) in big.chunks(CHUNK).enumerate() {
                if !self.dev.fill(i, piece) {
                    return Err(Error::Io);
                }
                ops[i] = Op::Write {
                    sector: first + (i * CHUNK / SECTOR_SIZE) as u64,
                    len: piece.len(),
                };
                pieces += 1;
            }
            self.dev
                .run(&ops[..pieces], &mut status)
                .map_err(Error::Device)?;
            for s in &status[..pieces] {
                self.status(*s)?;
            }
        }
        Ok(())
    }

    /// Makes every completed write durable (the host's `fdatasync`).
    pub fn flush(&mut self) -> Result<()> {
        if !self.dev.has_flush() {
            return Err(Error::Unsupported);
        }
        let mut status = [Status::Other(0xff)];
        self.dev
            .run(&[Op::Flush], &mut status)
            .map_err(Error::Device)?;
        self.status(status[0])
    }
}
