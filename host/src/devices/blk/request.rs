//! What a virtio-blk request asks, decided without touching memory or the
//! disk: the shape of its descriptor chain ([`shape`]) and, from the
//! 16-byte header and that shape, the one thing to do ([`parse`]). Pure
//! functions over copies, so each rule has a unit test and the whole is a
//! fuzz target (`blk_request`).
//!
//! A chain is any layout (virtio 1.2, 2.6.4): the device-readable bytes
//! (the header, then a write's data) come first, the device-writable ones
//! (a read's data, then the status byte) after. Breaking that, or asking
//! past the disk's end or past [`MAX_REQUEST_BYTES`], is a violation that
//! ends the VM; a request the device merely declines (a write to a
//! read-only disk, a type it does not offer) gets a status byte.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

use super::BlkError;

/// Bytes of a sector: every offset and length the protocol uses.
pub const SECTOR_SIZE: u64 = 512;
/// The request header (`virtio_blk_outhdr`: type, ioprio, sector).
pub type Header = [u8; 16];
/// Bytes of the request header.
pub const HEADER_LEN: u64 = core::mem::size_of::<Header>() as u64;
/// Most data bytes one request may move (the `size_max` and `seg_max` the
/// device offers keep a conforming driver under it).
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Most descriptors one chain may have (header, data segments, status).
pub const MAX_CHAIN: usize = 130;
/// The `seg_max` the device offers: data descriptors per request.
pub const SEG_MAX: u32 = 128;
/// The device id a `GET_ID` request answers (`VIRTIO_BLK_ID_BYTES`).
pub type DeviceId = [u8; VIRTIO_BLK_ID_BYTES as usize];
/// Bytes of the device id.
pub const ID_BYTES: u64 = core::mem::size_of::<DeviceId>() as u64;

/// One descriptor of a chain, as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// Whether the device writes it (else reads it).
    pub write_only: bool,
}

/// The totals of a checked chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes the device reads (header, then a write's data).
    pub readable: u64,
    /// Bytes the device writes (a read's data, then the status byte).
    pub writable: u64,
}

/// The disk a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Its size in sectors.
    pub sectors: u64,
    /// Whether writes are refused (with `VIRTIO_BLK_S_IOERR`).
    pub read_only: bool,
}

/// What a request comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read `len` bytes from sector `sector` into the writable data.
    Read {
        /// First sector.
        sector: u64,
        /// Bytes, a multiple of [`SECTOR_SIZE`].
        len: u64,
    },
    /// Write the readable data (`len` bytes) at sector `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Bytes, a multiple of [`SECTOR_SIZE`].
        len: u64,
    },
    /// Make every completed write durable (fdatasync).
    Flush,
    /// Write the device's id string (up to `len` bytes).
    GetId {
        /// Bytes of room (at most [`ID_BYTES`]).
        len: u64,
    },
    /// Answer with this status and do nothing.
    Decline {
        /// `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`.
        status: u8,
    },
}

/// Checks a chain's layout: at most [`MAX_CHAIN`] descriptors, each inside
/// the app's memory `app` (`[start, end)`), every readable one before every
/// writable one, and in all no more than a header, the largest request and
/// a status byte.
pub fn shape(queue: u16, head: u16, descs: &[Desc], app: (u64, u64)) -> Result<Shape, BlkError> {
    if descs.len() > MAX_CHAIN {
        return Err(BlkError::Chain {
            queue,
            head,
            max: MAX_CHAIN,
        });
    }
    let limit = HEADER_LEN + MAX_REQUEST_BYTES + 1;
    let (mut readable, mut writable) = (0u64, 0u64);
    for d in descs {
        if !in_app(app, d.addr, u64::from(d.len)) {
            return Err(BlkError::BufferOutside {
                queue,
                addr: d.addr,
                len: d.len,
            });
        }
        if d.write_only {
            writable += u64::from(d.len);
        } else if writable > 0 {
            return Err(BlkError::Layout { queue, head });
        } else {
            readable += u64::from(d.len);
        }
        if readable + writable > limit {
            return Err(BlkError::ChainTooLong {
                queue,
                len: readable + writable,
                max: limit,
            });
        }
    }
    Ok(Shape { readable, writable })
}

/// Decides what the request with `header` (its first 16 readable bytes)
/// over a chain of `shape` asks of a disk of `disk`.
pub fn parse(
    queue: u16,
    head: u16,
    header: &Header,
    shape: Shape,
    disk: Geometry,
) -> Result<Action, BlkError> {
    if shape.readable < HEADER_LEN {
        return Err(BlkError::NoHeader {
            queue,
            head,
            len: shape.readable,
        });
    }
    if shape.writable == 0 {
        return Err(BlkError::NoStatus { queue, head });
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(s);
    let data_out = shape.readable - HEADER_LEN;
    let data_in = shape.writable - 1;
    let data = |len: u64, stray: u64| -> Result<u64, BlkError> {
        if stray != 0 {
            return Err(BlkError::Layout { queue, head });
        }
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlkError::Unaligned { queue, head, len });
        }
        if len > MAX_REQUEST_BYTES {
            return Err(BlkError::TooLarge {
                queue,
                head,
                len,
                max: MAX_REQUEST_BYTES,
            });
        }
        let end = sector.checked_add(len / SECTOR_SIZE);
        if end.is_none_or(|e| e > disk.sectors) {
            return Err(BlkError::PastEnd {
                queue,
                head,
                sector,
                count: len / SECTOR_SIZE,
                capacity: disk.sectors,
            });
        }
        Ok(len)
    };
    // The spec's status values fit a byte.
    let status = |s: u32| u8::try_from(s).unwrap_or(u8::MAX);
    Ok(match kind {
        VIRTIO_BLK_T_IN => Action::Read {
            sector,
            len: data(data_in, data_out)?,
        },
        VIRTIO_BLK_T_OUT => {
            let len = data(data_out, data_in)?;
            if disk.read_only {
                Action::Decline {
                    status: status(VIRTIO_BLK_S_IOERR),
                }
            } else {
                Action::Write { sector, len }
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if data_in != 0 || data_out != 0 {
                return Err(BlkError::Layout { queue, head });
            }
            Action::Flush
        }
        VIRTIO_BLK_T_GET_ID => Action::GetId {
            len: data_in.min(ID_BYTES),
        },
        _ => Action::Decline {
            status: status(VIRTIO_BLK_S_UNSUPP),
        },
    })
}

/// Whether `[addr, addr + len)` lies in `[app.0, app.1)`.
pub(crate) fn in_app(app: (u64, u64), addr: u64, len: u64) -> bool {
    addr >= app.0 && addr.checked_add(len).is_some_and(|end| end <= app.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: (u64, u64) = (0x10_0000, 0x100_0000);
    const DISK: Geometry = Geometry {
        sectors: 2048,
        read_only: false,
    };

    fn hdr(kind: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        h
    }

    fn d(addr: u64, len: u32, write_only: bool) -> Desc {
        Desc {
            addr,
            len,
            write_only,
        }
    }

    fn sh(readable: u64, writable: u64) -> Shape {
        Shape { readable, writable }
    }

    #[test]
    fn reads_writes_and_flushes_are_decided() {
        let read = parse(0, 0, &hdr(VIRTIO_BLK_T_IN, 8), sh(16, 4097), DISK);
        assert_eq!(
            read,
            Ok(Action::Read {
                sector: 8,
                len: 4096
            })
        );
        let write = parse(0, 0, &hdr(VIRTIO_BLK_T_OUT, 2040), sh(16 + 4096, 1), DISK);
        assert_eq!(
            write,
            Ok(Action::Write {
                sector: 2040,
                len: 4096
            })
        );
        let flush = parse(0, 0, &hdr(VIRTIO_BLK_T_FLUSH, 0), sh(16, 1), DISK);
        assert_eq!(flush, Ok(Action::Flush));
        let id = parse(0, 0, &hdr(VIRTIO_BLK_T_GET_ID, 0), sh(16, 64), DISK);
        assert_eq!(id, Ok(Action::GetId { len: 20 }));
    }

    #[test]
    fn a_read_only_disk_and_unknown_types_answer_with_a_status() {
        let ro = Geometry {
            read_only: true,
            ..DISK
        };
        let write = parse(0, 0, &hdr(VIRTIO_BLK_T_OUT, 0), sh(16 + 512, 1), ro);
        assert_eq!(write, Ok(Action::Decline { status: 1 }));
        // Reads still work.
        let read = parse(0, 0, &hdr(VIRTIO_BLK_T_IN, 0), sh(16, 513), ro);
        assert_eq!(
            read,
            Ok(Action::Read {
                sector: 0,
                len: 512
            })
        );
        let discard = parse(0, 0, &hdr(11, 0), sh(32, 1), DISK);
        assert_eq!(discard, Ok(Action::Decline { status: 2 }));
    }

    #[test]
    fn requests_past_the_end_or_the_limits_are_violations() {
        let past = parse(0, 3, &hdr(VIRTIO_BLK_T_IN, 2047), sh(16, 1025), DISK).unwrap_err();
        assert_eq!(
            past.to_string(),
            "virtio-blk queue 0: request from 3 reads or writes sectors 2047..2049, past the disk's 2048"
        );
        let wrap = parse(
            0,
            0,
            &hdr(VIRTIO_BLK_T_OUT, u64::MAX),
            sh(16 + 512, 1),
            DISK,
        );
        assert!(matches!(wrap, Err(BlkError::PastEnd { .. })));
        let odd = parse(0, 0, &hdr(VIRTIO_BLK_T_IN, 0), sh(16, 101), DISK);
        assert!(matches!(odd, Err(BlkError::Unaligned { len: 100, .. })));
        let big = Geometry {
            sectors: u64::MAX,
            read_only: false,
        };
        let huge = parse(0, 0, &hdr(VIRTIO_BLK_T_IN, 0), sh(16, (2 << 20) + 1), big);
        assert!(matches!(huge, Err(BlkError::TooLarge { .. })));
        let short = parse(0, 0, &hdr(VIRTIO_BLK_T_IN, 0), sh(8, 513), DISK);
        assert!(matches!(short, Err(BlkError::NoHeader { len: 8, .. })));
        let no_status = parse(0, 0, &hdr(VIRTIO_BLK_T_OUT, 0), sh(16 + 512, 0), DISK);
        assert!(matches!(no_status, Err(BlkError::NoStatus { .. })));
        // A read with readable data, a write with writable data: wrong layout.
        let read = parse(0, 0, &hdr(VIRTIO_BLK_T_IN, 0), sh(16 + 512, 513), DISK);
        assert!(matches!(read, Err(BlkError::Layout { .. })));
        let write = parse(0, 0, &hdr(VIRTIO_BLK_T_OUT, 0), sh(16 + 512, 513), DISK);
        assert!(matches!(write, Err(BlkError::Layout { .. })));
        let flush = parse(0, 0, &hdr(VIRTIO_BLK_T_FLUSH, 0), sh(16, 513), DISK);
        assert!(matches!(flush, Err(BlkError::Layout { .. })));
    }

    #[test]
    fn chains_are_checked_for_bounds_order_and_length() {
        let ok = [
            d(APP.0, 16, false),
            d(APP.0 + 512, 512, true),
            d(APP.0 + 4096, 1, true),
        ];
        assert_eq!(shape(0, 0, &ok, APP), Ok(sh(16, 513)));
        let outside = [d(APP.1 - 8, 16, false)];
        assert!(matches!(
            shape(0, 0, &outside, APP),
            Err(BlkError::BufferOutside { .. })
        ));
        let wrapping = [d(u64::MAX - 4, 16, false)];
        assert!(matches!(
            shape(0, 0, &wrapping, APP),
            Err(BlkError::BufferOutside { .. })
        ));
        let kernel = [d(0x1000, 16, false)];
        assert!(matches!(
            shape(0, 0, &kernel, APP),
            Err(BlkError::BufferOutside { .. })
        ));
        let backwards = [d(APP.0, 16, false), d(APP.0, 1, true), d(APP.0, 16, false)];
        assert_eq!(
            shape(0, 5, &backwards, APP),
            Err(BlkError::Layout { queue: 0, head: 5 })
        );
        let long = [
            d(APP.0, 16, false),
            d(APP.0, 1 << 20, false),
            d(APP.0, 2, true),
        ];
        assert!(matches!(
            shape(0, 0, &long, APP),
            Err(BlkError::ChainTooLong { .. })
        ));
        let many = vec![d(APP.0, 1, false); MAX_CHAIN + 1];
        assert!(matches!(
            shape(0, 0, &many, APP),
            Err(BlkError::Chain { .. })
        ));
    }
}
