//! Hypercalls: one `out` to a Tandem port, one VM exit.
//!
//! - [`HypercallPort::Request`]: the 32-bit value written is the guest-physical
//!   address of a request record: a little-endian `u32` length, then that many
//!   bytes of a postcard-encoded [`Request`]. A request that expects an answer
//!   names a reply buffer; the host writes a `u32` length and a postcard
//!   [`Reply`] there.
//! - [`HypercallPort::Exit`]: the value is the exit code. Needs no guest memory,
//!   so the guest's last-resort fault path can use it.
//!
//! Before handling any exit, the host drains the console buffer at
//! [`CONSOLE_ADDR`](crate::layout::CONSOLE_ADDR), so every hypercall is also a
//! console flush and `print!` costs no exit of its own.

use serde::{Deserialize, Serialize};

/// Largest request record the host accepts (length prefix excluded).
pub const MAX_REQUEST: u32 = 4096;
/// Largest reply buffer the host will write (length prefix included).
pub const MAX_REPLY: u32 = 4096;
/// Size of the length prefix of requests and replies.
pub const LEN_PREFIX: u32 = 4;
/// Most bytes the host copies into the guest for one [`Request::ReadStdin`].
pub const MAX_STDIN_READ: u32 = 4096;

// The guest library's exit codes, under the names the guest uses; the table
// of every exit code is `crate::exit`.
pub use crate::exit::{
    BAD_BOOT_INFO as EXIT_BAD_BOOT_INFO, EXCEPTION as EXIT_EXCEPTION, PANIC as EXIT_PANIC,
};

/// The I/O ports of the Tandem hypercall interface. Numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum HypercallPort {
    /// `out` a 32-bit guest-physical address of a request record.
    Request = 0x0E00,
    /// `out` a 32-bit exit code; the VM stops.
    Exit = 0x0E04,
    /// Written only by the guest's CPL0 exception entry while a debugger is
    /// attached ([`KernelStats::DEBUGGER`](crate::trace::KernelStats::DEBUGGER)):
    /// the guest stopped at an exception, its registers in the fault
    /// record. Outside the range the TSS opens to CPL3, so an app cannot
    /// write it. The value is ignored.
    DebugTrap = 0x0E08,
}

impl HypercallPort {
    /// First port of the range, for the TSS I/O bitmap.
    pub const FIRST: u16 = 0x0E00;
    /// Number of consecutive ports (bytes) the bitmap opens.
    pub const SPAN: u16 = 8;
}

impl TryFrom<u16> for HypercallPort {
    type Error = u16;
    fn try_from(port: u16) -> Result<Self, u16> {
        match port {
            0x0E00 => Ok(Self::Request),
            0x0E04 => Ok(Self::Exit),
            0x0E08 => Ok(Self::DebugTrap),
            other => Err(other),
        }
    }
}

/// A region of guest memory named in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestBuf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A hypercall request. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Flush the console buffer (the host drains it on every exit; this asks
    /// for nothing else).
    Flush,
    /// Stop the VM with this exit code.
    Exit {
        /// Exit code, 0 for success.
        code: u8,
    },
    /// The app is ready to serve (fleets gate dependants on it; snapshots may be taken here).
    Ready,
    /// Ask for the host's wall clock; the reply is [`Reply::WallClock`].
    WallClock {
        /// Where the reply goes.
        reply: GuestBuf,
    },
    /// Ask the host to snapshot this VM now; the reply is
    /// [`Reply::Snapshot`]. The reply is written before the snapshot is
    /// taken, so a VM restored from it sees the same reply, and tells the
    /// two apart by its generation (see [`LiveArea`](crate::layout::LiveArea)).
    Snapshot {
        /// Where the reply goes.
        reply: GuestBuf,
    },
    /// Block this vCPU for up to `nanos` nanoseconds, or until the VMM is
    /// asked to stop the VM, whichever comes first; the reply is
    /// [`Reply::Idle`]. Lets a ready service wait without burning a host core.
    Idle {
        /// Longest wait, in nanoseconds (the host may cap it).
        nanos: u64,
        /// Where the reply goes.
        reply: GuestBuf,
    },
    /// Read the app's standard input: the host copies up to
    /// `min(buf.len, MAX_STDIN_READ)` bytes into `buf` (blocking until some
    /// arrive, the input ends, or the VM is asked to stop); the reply is
    /// [`Reply::ReadStdin`].
    ReadStdin {
        /// Where the bytes go (app-writable memory).
        buf: GuestBuf,
        /// Where the reply goes.
        reply: GuestBuf,
    },
}

/// A reply written into the buffer a request named. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Nanoseconds since the Unix epoch, and the guest TSC when it was read.
    WallClock {
        /// Wall-clock time.
        unix_nanos: u64,
        /// Guest TSC at the same moment.
        tsc: u64,
    },
    /// Whether the snapshot asked for was taken (false when the VMM has no
    /// snapshot directory, or writing it failed).
    Snapshot {
        /// The snapshot was written.
        taken: bool,
    },
    /// The answer to [`Request::Idle`].
    Idle {
        /// The VMM asks the app to stop (exit) now.
        stop: bool,
    },
    /// The answer to [`Request::ReadStdin`].
    ReadStdin {
        /// Bytes written into the buffer; 0 at the end of the input (or
        /// when the VM has no standard input, or is asked to stop).
        len: u32,
    },
}

/// Why a request record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The record's length is 0 or above [`MAX_REQUEST`].
    BadLength(u32),
    /// Fewer bytes than the length prefix says.
    Truncated,
    /// The bytes are not a valid [`Request`].
    Malformed,
    /// A valid request followed by extra bytes.
    TrailingBytes(usize),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadLength(n) => {
                write!(f, "request length {n} is outside 1..={MAX_REQUEST}")
            }
            Self::Truncated => write!(f, "request is shorter than its length prefix"),
            Self::Malformed => write!(f, "request does not decode"),
            Self::TrailingBytes(n) => write!(f, "request has {n} trailing bytes"),
        }
    }
}

impl Request {
    /// Decodes the body of a request record (length prefix already removed).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        match postcard::take_from_bytes::<Request>(body) {
            Ok((req, [])) => Ok(req),
            Ok((_, rest)) => Err(DecodeError::TrailingBytes(rest.len())),
            Err(_) => Err(DecodeError::Malformed),
        }
    }

    /// Parses the length prefix of a record; returns the body length.
    pub fn body_len(prefix: [u8; 4]) -> Result<u32, DecodeError> {
        let len = u32::from_le_bytes(prefix);
        if len == 0 || len > MAX_REQUEST {
            return Err(DecodeError::BadLength(len));
        }
        Ok(len)
    }

    /// Encodes a whole record (length prefix and body) into `out`; returns its length.
    pub fn encode_record(&self, out: &mut [u8]) -> Option<usize> {
        let (prefix, body) = out.split_at_mut_checked(LEN_PREFIX as usize)?;
        let n = postcard::to_slice(self, body).ok()?.len();
        prefix.copy_from_slice(&u32::try_from(n).ok()?.to_le_bytes());
        Some(n + LEN_PREFIX as usize)
    }
}

impl Reply {
    /// Encodes a whole reply record (length prefix and body) into `out`.
    pub fn encode_record(&self, out: &mut [u8]) -> Option<usize> {
        let (prefix, body) = out.split_at_mut_checked(LEN_PREFIX as usize)?;
        let n = postcard::to_slice(self, body).ok()?.len();
        prefix.copy_from_slice(&u32::try_from(n).ok()?.to_le_bytes());
        Some(n + LEN_PREFIX as usize)
    }

    /// Decodes a reply record (length prefix and body).
    pub fn decode_record(record: &[u8]) -> Result<Self, DecodeError> {
        let prefix: [u8; 4] = record
            .get(..4)
            .and_then(|p| p.try_into().ok())
            .ok_or(DecodeError::Truncated)?;
        let len = u32::from_le_bytes(prefix);
        if len == 0 || len > MAX_REPLY {
            return Err(DecodeError::BadLength(len));
        }
        let body = record
            .get(4..4 + len as usize)
            .ok_or(DecodeError::Truncated)?;
        match postcard::take_from_bytes::<Reply>(body) {
            Ok((reply, [])) => Ok(reply),
            Ok((_, rest)) => Err(DecodeError::TrailingBytes(rest.len())),
            Err(_) => Err(DecodeError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(req: &Request) -> ([u8; 64], usize) {
        let mut buf = [0u8; 64];
        let n = req.encode_record(&mut buf).unwrap();
        (buf, n)
    }

    #[test]
    fn ports_round_trip() {
        for p in [HypercallPort::Request, HypercallPort::Exit] {
            assert_eq!(HypercallPort::try_from(p as u16), Ok(p));
            assert!(p as u16 >= HypercallPort::FIRST);
            assert!((p as u16) + 4 <= HypercallPort::FIRST + HypercallPort::SPAN);
        }
        assert_eq!(HypercallPort::try_from(0x3F8), Err(0x3F8));
        // The debugger's port is beyond what CPL3 may write.
        let debug = HypercallPort::DebugTrap as u16;
        assert_eq!(HypercallPort::try_from(debug), Ok(HypercallPort::DebugTrap));
        assert!(debug >= HypercallPort::FIRST + HypercallPort::SPAN);
    }

    #[test]
    fn golden_bytes() {
        // Pins the wire format of every request: appending variants is fine,
        // changing these bytes needs an ABI_VERSION bump.
        let cases: [(Request, &[u8]); 7] = [
            (Request::Flush, &[1, 0, 0, 0, 0]),
            (Request::Exit { code: 42 }, &[2, 0, 0, 0, 1, 42]),
            (Request::Ready, &[1, 0, 0, 0, 2]),
            (
                Request::WallClock {
                    reply: GuestBuf {
                        addr: 0x13000,
                        len: 64,
                    },
                },
                &[5, 0, 0, 0, 3, 0x80, 0xe0, 0x04, 64],
            ),
            (
                Request::Snapshot {
                    reply: GuestBuf {
                        addr: 0x14000,
                        len: 4096,
                    },
                },
                &[6, 0, 0, 0, 4, 0x80, 0x80, 0x05, 0x80, 0x20],
            ),
            (
                Request::Idle {
                    nanos: 1000,
                    reply: GuestBuf {
                        addr: 0x13000,
                        len: 64,
                    },
                },
                &[7, 0, 0, 0, 5, 0xe8, 0x07, 0x80, 0xe0, 0x04, 64],
            ),
            (
                Request::ReadStdin {
                    buf: GuestBuf {
                        addr: 0x20_0000,
                        len: 4096,
                    },
                    reply: GuestBuf {
                        addr: 0x13000,
                        len: 64,
                    },
                },
                &[
                    11, 0, 0, 0, 6, 0x80, 0x80, 0x80, 0x01, 0x80, 0x20, 0x80, 0xe0, 0x04, 64,
                ],
            ),
        ];
        for (req, bytes) in cases {
            let (buf, n) = record(&req);
            assert_eq!(&buf[..n], bytes, "{req:?}");
            let len = Request::body_len(buf[..4].try_into().unwrap()).unwrap();
            assert_eq!(Request::decode(&buf[4..4 + len as usize]), Ok(req));
        }
        let mut out = [0u8; 32];
        let n = Reply::WallClock {
            unix_nanos: 1,
            tsc: 2,
        }
        .encode_record(&mut out)
        .unwrap();
        assert_eq!(&out[..n], &[3, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            Reply::decode_record(&out[..n]),
            Ok(Reply::WallClock {
                unix_nanos: 1,
                tsc: 2
            })
        );
        let n = Reply::Snapshot { taken: true }
            .encode_record(&mut out)
            .unwrap();
        assert_eq!(&out[..n], &[2, 0, 0, 0, 1, 1]);
        assert_eq!(
            Reply::decode_record(&out[..n]),
            Ok(Reply::Snapshot { taken: true })
        );
        let n = Reply::Idle { stop: true }.encode_record(&mut out).unwrap();
        assert_eq!(&out[..n], &[2, 0, 0, 0, 2, 1]);
        assert_eq!(
            Reply::decode_record(&out[..n]),
            Ok(Reply::Idle { stop: true })
        );
        let n = Reply::ReadStdin { len: 300 }
            .encode_record(&mut out)
            .unwrap();
        assert_eq!(&out[..n], &[3, 0, 0, 0, 3, 0xac, 0x02]);
        assert_eq!(
            Reply::decode_record(&out[..n]),
            Ok(Reply::ReadStdin { len: 300 })
        );
    }

    #[test]
    fn refuses_bad_records() {
        assert_eq!(
            Request::body_len([0, 0, 0, 0]),
            Err(DecodeError::BadLength(0))
        );
        assert_eq!(
            Request::body_len((MAX_REQUEST + 1).to_le_bytes()),
            Err(DecodeError::BadLength(MAX_REQUEST + 1))
        );
        assert_eq!(Request::decode(&[]), Err(DecodeError::Malformed));
        assert_eq!(Request::decode(&[200]), Err(DecodeError::Malformed));
        assert_eq!(Request::decode(&[1]), Err(DecodeError::Malformed)); // Exit without code
        assert_eq!(
            Request::decode(&[0, 9, 9]),
            Err(DecodeError::TrailingBytes(2))
        );
        assert_eq!(
            Reply::decode_record(&[5, 0, 0, 0, 0]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Reply::decode_record(&[1, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut s: u64 = 0x2545_F491_4F6C_DD1D;
        let mut buf = [0u8; 40];
        for _ in 0..50_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 40) as usize;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = s.to_le_bytes()[i % 8] ^ u8::try_from(i).unwrap();
            }
            let _ = Request::decode(&buf[..len]);
            let _ = Reply::decode_record(&buf[..len]);
        }
    }
}
