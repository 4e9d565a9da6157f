//! Virtio devices over the virtio-mmio transport, driven by polling at
//! CPL3: no interrupt is ever taken (the driver asks the device for none),
//! the used rings are read when the app polls, and the device is notified
//! at most once per queue per batch ([`net::VirtioNet::flush`]).
//!
//! A device is less hostile than a guest is to its VMM, but it is not
//! trusted blindly either: every index and length it writes (used-ring
//! index, descriptor id, written length, queue size, config) is checked
//! before use, and a device that breaks the rules is dropped with a typed
//! [`DeviceError`], never a panic. Frames are copied out of and into the
//! shared buffers, so no Rust reference is ever made into memory the
//! device may write.
//!
//! Both layouts QEMU offers are spoken: the modern one (version 2, with
//! `VIRTIO_F_VERSION_1`), and the legacy one (version 1, one contiguous
//! queue area named by its page frame), which QEMU's virtio-mmio
//! transport defaults to (`force-legacy=true`).

pub mod blk;
mod dma;
mod mmio;
pub mod net;
mod queue;

pub use mmio::DeviceError;
