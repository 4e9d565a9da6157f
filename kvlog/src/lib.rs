//! The `kvstore` app's log: an append-only sequence of records on a disk,
//! each starting at a sector boundary and padded to whole sectors, so an
//! append never rewrites a sector that holds an earlier record (a torn
//! write can only damage the record being written, which was never
//! acknowledged).
//!
//! A record is a 32-byte header, the key and the value:
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `KVL1` |
//! | 4 | 4 | CRC-32 of bytes 8.. of the header, the key and the value |
//! | 8 | 8 | sequence number (0, 1, 2, ...) |
//! | 16 | 1 | kind: 1 put, 2 delete |
//! | 17 | 1 | 0 |
//! | 18 | 2 | key length (1 to [`MAX_KEY`]) |
//! | 20 | 4 | value length (at most [`MAX_VALUE`]; 0 for a delete) |
//! | 24 | 8 | 0 |
//!
//! [`Store::open`] replays the log from sector 0 up to the first sector
//! that does not hold the next record (wrong magic, checksum or sequence
//! number, bad lengths, past the disk's end): that is where the next
//! append goes. [`Store::put`] and [`Store::del`] return only once the
//! record is written and flushed.
#![no_std]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use tandem_abi::checksum::crc32;

pub mod protocol;

/// Bytes of a sector.
pub const SECTOR: usize = 512;
/// Bytes of a record header.
pub const HEADER: usize = 32;
/// Longest key.
pub const MAX_KEY: usize = 1024;
/// Longest value.
pub const MAX_VALUE: usize = 60 * 1024;
/// The header's first bytes.
pub const MAGIC: [u8; 4] = *b"KVL1";
/// Sectors read at once while replaying.
const READ_AHEAD: usize = 128;

const PUT: u8 = 1;
const DEL: u8 = 2;

/// What the store needs of a disk: whole sectors read, written, flushed.
pub trait Disk {
    /// The disk's error.
    type Error;
    /// Its size in sectors.
    fn capacity(&self) -> u64;
    /// Reads `buf.len()` bytes (whole sectors) from `sector` on.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes `buf` (whole sectors) from `sector` on.
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Self::Error>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

/// Why a store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The disk failed.
    Disk(E),
    /// The log has reached the disk's end.
    Full,
    /// An empty key, or one longer than [`MAX_KEY`].
    BadKey,
    /// A value longer than [`MAX_VALUE`].
    ValueTooLong,
}

impl<E: core::fmt::Display> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "disk: {e}"),
            Self::Full => write!(f, "the disk is full"),
            Self::BadKey => write!(f, "keys are 1 to {MAX_KEY} bytes"),
            Self::ValueTooLong => write!(f, "values are at most {MAX_VALUE} bytes"),
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// `key` now holds `value`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `key` holds nothing.
    Del {
        /// The key.
        key: &'a [u8],
    },
}

/// Sectors a record of `key_len` and `value_len` bytes takes.
pub fn sectors_for(key_len: usize, value_len: usize) -> usize {
    (HEADER + key_len + value_len).div_ceil(SECTOR)
}

/// The record `rec` with sequence number `seq`, padded to whole sectors.
/// Lengths are the caller's to check ([`Store`] does).
pub fn encode(seq: u64, rec: &Record<'_>) -> Vec<u8> {
    let (kind, key, value): (u8, &[u8], &[u8]) = match *rec {
        Record::Put { key, value } => (PUT, key, value),
        Record::Del { key } => (DEL, key, &[]),
    };
    let mut out = vec![0u8; sectors_for(key.len(), value.len()) * SECTOR];
    out[0..4].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16] = kind;
    // Callers bound both by MAX_KEY and MAX_VALUE.
    out[18..20].copy_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes());
    out[20..24].copy_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    out[HEADER..HEADER + key.len()].copy_from_slice(key);
    out[HEADER + key.len()..HEADER + key.len() + value.len()].copy_from_slice(value);
    let crc = crc32(&out[8..HEADER + key.len() + value.len()]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What a header says: the record's total sectors, if it can be the
/// record `seq`.
pub fn header_sectors(seq: u64, header: &[u8]) -> Option<usize> {
    if header.len() < HEADER || header[0..4] != MAGIC {
        return None;
    }
    let got = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let kind = header[16];
    let key_len = usize::from(u16::from_le_bytes(header[18..20].try_into().ok()?));
    let value_len = usize::try_from(u32::from_le_bytes(header[20..24].try_into().ok()?)).ok()?;
    let ok = got == seq
        && header[17] == 0
        && header[24..32].iter().all(|&b| b == 0)
        && (1..=MAX_KEY).contains(&key_len)
        && match kind {
            PUT => value_len <= MAX_VALUE,
            DEL => value_len == 0,
            _ => false,
        };
    ok.then(|| sectors_for(key_len, value_len))
}

/// Decodes record `seq` from `bytes` (its whole sectors, as
/// [`header_sectors`] sized them): `None` if it is not that record.
pub fn decode(seq: u64, bytes: &[u8]) -> Option<Record<'_>> {
    let sectors = header_sectors(seq, bytes)?;
    if bytes.len() < sectors * SECTOR {
        return None;
    }
    let key_len = usize::from(u16::from_le_bytes([bytes[18], bytes[19]]));
    let value_len = usize::try_from(u32::from_le_bytes(bytes[20..24].try_into().ok()?)).ok()?;
    let end = HEADER + key_len + value_len;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if crc32(&bytes[8..end]) != crc {
        return None;
    }
    let key = &bytes[HEADER..HEADER + key_len];
    Some(if bytes[16] == PUT {
        Record::Put {
            key,
            value: &bytes[HEADER + key_len..end],
        }
    } else {
        Record::Del { key }
    })
}

/// A key-value store over a disk's log.
pub struct Store<D: Disk> {
    disk: D,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    next_sector: u64,
    next_seq: u64,
}

impl<D: Disk> Store<D> {
    /// Replays `disk`'s log and opens the store at its end.
    pub fn open(mut disk: D) -> Result<Self, Error<D::Error>> {
        let capacity = disk.capacity();
        let mut map = BTreeMap::new();
        let (mut sector, mut seq) = (0u64, 0u64);
        // Sectors [buf_start, buf_start + buf.len() / SECTOR) are in buf.
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = 0u64;
        // Byte offset in `buf` of sector `at`'s sector `n` later, if all there.
        let place = |buf: &[u8], buf_start: u64, at: u64, n: usize| {
            let off = usize::try_from(at.checked_sub(buf_start)?)
                .ok()?
                .checked_mul(SECTOR)?;
            (off.checked_add(n.checked_mul(SECTOR)?)? <= buf.len()).then_some(off)
        };
        loop {
            let left = usize::try_from(capacity.saturating_sub(sector)).unwrap_or(usize::MAX);
            if left == 0 {
                break;
            }
            let off = match place(&buf, buf_start, sector, 1) {
                Some(off) => off,
                None => {
                    buf.resize(left.min(READ_AHEAD) * SECTOR, 0);
                    disk.read(sector, &mut buf).map_err(Error::Disk)?;
                    buf_start = sector;
                    0
                }
            };
            let Some(n) = header_sectors(seq, &buf[off..]) else {
                break;
            };
            if n > left {
                break;
            }
            let off = match place(&buf, buf_start, sector, n) {
                Some(off) => off,
                None => {
                    buf.resize(n.max(left.min(READ_AHEAD)) * SECTOR, 0);
                    disk.read(sector, &mut buf).map_err(Error::Disk)?;
                    buf_start = sector;
                    0
                }
            };
            match decode(seq, &buf[off..off + n * SECTOR]) {
                Some(Record::Put { key, value }) => {
                    map.insert(key.to_vec(), value.to_vec());
                }
                Some(Record::Del { key }) => {
                    map.remove(key);
                }
                None => break,
            }
            sector += n as u64;
            seq += 1;
        }
        Ok(Self {
            disk,
            map,
            next_sector: sector,
            next_seq: seq,
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records in the log (replayed and appended).
    pub fn records(&self) -> u64 {
        self.next_seq
    }

    /// Sectors the log takes.
    pub fn log_sectors(&self) -> u64 {
        self.next_sector
    }

    /// Sets `key` to `value`, durably.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error<D::Error>> {
        if value.len() > MAX_VALUE {
            return Err(Error::ValueTooLong);
        }
        self.append(&Record::Put { key, value })?;
        self.map.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    /// Removes `key`, durably (a record is written even if it was absent).
    pub fn del(&mut self, key: &[u8]) -> Result<(), Error<D::Error>> {
        self.append(&Record::Del { key })?;
        self.map.remove(key);
        Ok(())
    }

    fn append(&mut self, rec: &Record<'_>) -> Result<(), Error<D::Error>> {
        let key = match *rec {
            Record::Put { key, .. } | Record::Del { key } => key,
        };
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Error::BadKey);
        }
        let bytes = encode(self.next_seq, rec);
        let sectors = (bytes.len() / SECTOR) as u64;
        if self.next_sector + sectors > self.disk.capacity() {
            return Err(Error::Full);
        }
        self.disk
            .write(self.next_sector, &bytes)
            .map_err(Error::Disk)?;
        self.disk.flush().map_err(Error::Disk)?;
        self.next_sector += sectors;
        self.next_seq += 1;
        Ok(())
    }

    /// The disk, back.
    pub fn into_disk(self) -> D {
        self.disk
    }
}

/// A disk in memory, for tests and the fuzz target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    /// Its bytes (whole sectors).
    pub bytes: Vec<u8>,
    /// Flushes so far.
    pub flushes: u64,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors.
    pub fn new(sectors: usize) -> Self {
        Self {
            bytes: vec![0u8; sectors * SECTOR],
            flushes: 0,
        }
    }

    fn range(&self, sector: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(sector).ok()?.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (len.is_multiple_of(SECTOR) && end <= self.bytes.len()).then_some(start..end)
    }
}

impl Disk for MemDisk {
    type Error = ();
    fn capacity(&self) -> u64 {
        (self.bytes.len() / SECTOR) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ()> {
        let r = self.range(sector, buf.len()).ok_or(())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), ()> {
        let r = self.range(sector, buf.len()).ok_or(())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ()> {
        self.flushes += 1;
        Ok(())
    }
}

/// Replays arbitrary disk bytes: the fuzz target's body. It must never
/// panic, and a record a store appends must be replayed after the ones it
/// replayed. (What follows the end of a log is not erased, so bytes there
/// that happen to form the next record are replayed too.)
pub fn fuzz_replay(data: &[u8]) {
    let sectors = data.len().div_ceil(SECTOR).clamp(1, 4096);
    let mut disk = MemDisk::new(sectors + 2);
    let n = data.len().min(disk.bytes.len());
    disk.bytes[..n].copy_from_slice(&data[..n]);
    let Ok(mut store) = Store::open(disk) else {
        return;
    };
    let before = store.records();
    if store.put(b"fuzz", b"value").is_ok() {
        let again = Store::open(store.into_disk()).ok();
        assert!(again.is_some_and(|s| s.records() > before));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_is_padded_to_sectors() {
        let rec = Record::Put {
            key: b"k",
            value: b"v1",
        };
        let bytes = encode(7, &rec);
        assert_eq!(bytes.len(), SECTOR);
        assert_eq!(decode(7, &bytes), Some(rec));
        // Another sequence number, a flipped bit: not the record.
        assert_eq!(decode(8, &bytes), None);
        for i in [0, 5, 9, 16, 33, 34] {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert_eq!(decode(7, &b), None, "bit flip at {i}");
        }
        let big = vec![b'x'; 1000];
        let rec = Record::Put {
            key: b"key",
            value: &big,
        };
        assert_eq!(encode(0, &rec).len(), 3 * SECTOR);
        let del = Record::Del { key: b"key" };
        assert_eq!(decode(1, &encode(1, &del)), Some(del));
    }

    #[test]
    fn the_store_is_rebuilt_from_its_log() {
        let mut s = Store::open(MemDisk::new(256)).unwrap();
        assert!(s.is_empty());
        s.put(b"a", b"1").unwrap();
        s.put(b"b", b"2").unwrap();
        s.put(b"a", b"3").unwrap();
        s.del(b"b").unwrap();
        s.put(b"c", &vec![b'z'; 5000]).unwrap();
        let disk = s.into_disk();
        assert_eq!(disk.flushes, 5);
        let s = Store::open(disk).unwrap();
        assert_eq!(s.get(b"a"), Some(&b"3"[..]));
        assert_eq!(s.get(b"b"), None);
        assert_eq!(s.get(b"c").map(<[u8]>::len), Some(5000));
        assert_eq!(s.records(), 5);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_overwritten() {
        let mut s = Store::open(MemDisk::new(256)).unwrap();
        s.put(b"a", b"1").unwrap();
        s.put(b"b", &vec![b'y'; 2000]).unwrap();
        let mut disk = s.into_disk();
        // The second record's last sector never made it.
        disk.bytes[4 * SECTOR..5 * SECTOR].fill(0);
        let mut s = Store::open(disk).unwrap();
        assert_eq!(s.get(b"a"), Some(&b"1"[..]));
        assert_eq!(s.get(b"b"), None);
        assert_eq!(s.log_sectors(), 1);
        s.put(b"c", b"3").unwrap();
        let s = Store::open(s.into_disk()).unwrap();
        assert_eq!(s.get(b"c"), Some(&b"3"[..]));
        assert_eq!(s.records(), 2);
    }

    #[test]
    fn records_span_read_ahead_boundaries() {
        let mut s = Store::open(MemDisk::new(1024)).unwrap();
        let v = vec![b'q'; MAX_VALUE];
        for i in 0..6u8 {
            s.put(&[b'k', i], &v).unwrap();
        }
        let s = Store::open(s.into_disk()).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s.get(b"k\x05").map(<[u8]>::len), Some(MAX_VALUE));
    }

    #[test]
    fn limits_and_a_full_disk_are_refused() {
        let mut s = Store::open(MemDisk::new(3)).unwrap();
        assert_eq!(s.put(b"", b"x"), Err(Error::BadKey));
        assert_eq!(s.put(&[b'k'; MAX_KEY + 1], b"x"), Err(Error::BadKey));
        assert_eq!(
            s.put(b"k", &vec![0; MAX_VALUE + 1]),
            Err(Error::ValueTooLong)
        );
        s.put(b"a", b"1").unwrap();
        assert_eq!(s.put(b"b", &[1u8; 1100]), Err(Error::Full));
        s.put(b"b", b"2").unwrap();
    }

    #[test]
    fn replay_survives_garbage() {
        fuzz_replay(b"");
        fuzz_replay(&[0xff; 3000]);
        let mut log = encode(
            0,
            &Record::Put {
                key: b"x",
                value: b"y",
            },
        );
        log.extend_from_slice(&encode(1, &Record::Del { key: b"x" }));
        log.extend_from_slice(&[7u8; 100]);
        fuzz_replay(&log);
        // A header claiming more sectors than the disk has.
        let mut h = encode(
            0,
            &Record::Put {
                key: b"x",
                value: b"y",
            },
        );
        h[20..24].copy_from_slice(&u32::try_from(MAX_VALUE).unwrap().to_le_bytes());
        fuzz_replay(&h);
    }
}
