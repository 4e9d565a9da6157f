//! Serving hypercalls. Everything here handles bytes a hostile guest chose:
//! each request is copied out of guest memory once, checked with
//! overflow-safe arithmetic, and parsed from the copy; any violation ends the
//! VM with a typed error, never the host.

use tandem_abi::hypercall::{
    DecodeError, GuestBuf, HypercallPort, Reply, Request, LEN_PREFIX, MAX_REPLY, MAX_REQUEST,
    MAX_STDIN_READ,
};
use tandem_abi::layout;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A broken hypercall: the VM that made it is stopped.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HypercallError {
    /// Access to a port that is not a Tandem port.
    #[error("access to unknown I/O port {0:#x}")]
    UnknownPort(u16),
    /// A Tandem port written with the wrong width.
    #[error("hypercall port {port:#x} written with {size} bytes, expected 4")]
    BadWidth {
        /// The port.
        port: u16,
        /// Bytes written.
        size: usize,
    },
    /// A debugger stop (the guest's exception entry writes this port only
    /// while the host says a debugger is attached) with no debugger.
    #[error("debugger stop at port {0:#x} with no debugger attached")]
    NoDebugger(u16),
    /// A read (`in`) from a Tandem port.
    #[error("read from hypercall port {0:#x} (ports are write-only)")]
    PortRead(u16),
    /// A guest range outside guest memory.
    #[error("{what} at {addr:#x} (+{len} bytes) lies outside guest memory")]
    OutsideMemory {
        /// What the range was for.
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A reply buffer outside the memory the app may write.
    #[error("reply buffer at {addr:#x} (+{len} bytes) is not app-writable memory")]
    ReplyNotWritable {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A reply buffer too small or too large.
    #[error("reply buffer of {len} bytes is outside {min}..={MAX_REPLY}")]
    ReplyBufferSize {
        /// Buffer length.
        len: u32,
        /// Smallest length that holds the reply.
        min: u32,
    },
    /// The request record does not decode.
    #[error("malformed request: {0}")]
    Decode(DecodeError),
    /// The console fill level is beyond the buffer.
    #[error("console fill level {0} exceeds the {cap}-byte buffer", cap = layout::CONSOLE_CAPACITY)]
    ConsoleLevel(u32),
}

/// What a served request asks the VMM to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest.
    Continue,
    /// The app is ready.
    Ready,
    /// Stop with this exit code.
    Exit(u8),
    /// Take a snapshot; answer with a [`Reply::Snapshot`] in this buffer
    /// (through [`write_reply`], which checks it).
    Snapshot(GuestBuf),
    /// Block the vCPU for up to this many nanoseconds or until the VM is
    /// asked to stop; answer with a [`Reply::Idle`] in this buffer (through
    /// [`write_reply`], which checks it).
    Idle {
        /// Longest wait the guest asked for.
        nanos: u64,
        /// Where the reply goes.
        reply: GuestBuf,
    },
    /// Read standard input into `buf` (already checked: app-writable, at
    /// most [`MAX_STDIN_READ`] bytes) and answer with a [`Reply::ReadStdin`]
    /// in `reply` (through [`write_reply`], which checks it).
    ReadStdin {
        /// Where the bytes go.
        buf: GuestBuf,
        /// Where the reply goes.
        reply: GuestBuf,
    },
}

fn read_guest<'a>(
    mem: &GuestMemoryMmap,
    addr: u64,
    buf: &'a mut [u8],
    what: &'static str,
) -> Result<&'a [u8], HypercallError> {
    let len = buf.len() as u64;
    let outside = || HypercallError::OutsideMemory { what, addr, len };
    addr.checked_add(buf.len() as u64).ok_or_else(outside)?;
    mem.read_slice(buf, GuestAddress(addr))
        .map_err(|_| outside())?;
    Ok(buf)
}

/// Whether `[addr, addr + len)` lies in memory the app itself may write
/// (hypercall, trace and console buffers, stacks, heap), so a guest cannot
/// use the host to write its own supervisor-only structures.
pub fn app_writable(addr: u64, len: u64, mem_size: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let within = |start: u64, stop: u64| addr >= start && end <= stop;
    within(
        layout::TRACE_ADDR,
        layout::CONSOLE_ADDR + layout::CONSOLE_SIZE,
    ) || within(layout::FAULT_STACK_ADDR, layout::FAULT_STACK_TOP)
        || within(layout::STACK_ADDR, layout::STACK_TOP)
        || within(layout::HEAP_ADDR, mem_size)
}

/// Serves one `out` to a Tandem port. `data` is what the guest wrote.
#[cfg(any(test, feature = "fuzzing"))]
pub fn serve(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    port: u16,
    data: &[u8],
    wall_clock: impl FnOnce() -> (u64, u64),
) -> Result<Action, HypercallError> {
    serve_tracked(mem, mem_size, port, data, wall_clock, &mut Vec::new())
}

/// [`serve`], also recording in `written` every guest range the host wrote
/// (`(address, length)`): KVM's dirty log sees only the guest's own writes,
/// and incremental backups need the host's too.
pub fn serve_tracked(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    port: u16,
    data: &[u8],
    wall_clock: impl FnOnce() -> (u64, u64),
    written: &mut Vec<(u64, u64)>,
) -> Result<Action, HypercallError> {
    let port = HypercallPort::try_from(port).map_err(HypercallError::UnknownPort)?;
    let value: [u8; 4] = data.try_into().map_err(|_| HypercallError::BadWidth {
        port: port as u16,
        size: data.len(),
    })?;
    let value = u32::from_le_bytes(value);
    match port {
        HypercallPort::Exit => {
            // The exit code is the low byte of the value, as for a process exit status.
            let [code, ..] = value.to_le_bytes();
            Ok(Action::Exit(code))
        }
        HypercallPort::Request => {
            serve_request(mem, mem_size, u64::from(value), wall_clock, written)
        }
        // A debugger's run takes these before they reach the service.
        HypercallPort::DebugTrap => Err(HypercallError::NoDebugger(port as u16)),
    }
}

fn serve_request(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    addr: u64,
    wall_clock: impl FnOnce() -> (u64, u64),
    written: &mut Vec<(u64, u64)>,
) -> Result<Action, HypercallError> {
    let mut prefix = [0u8; LEN_PREFIX as usize];
    read_guest(mem, addr, &mut prefix, "request")?;
    let len = Request::body_len(prefix).map_err(HypercallError::Decode)?;
    let mut body = [0u8; MAX_REQUEST as usize];
    let body = &mut body[..len as usize];
    // Copied once; everything below parses the copy.
    read_guest(mem, addr + u64::from(LEN_PREFIX), body, "request body")?;
    match Request::decode(body).map_err(HypercallError::Decode)? {
        Request::Flush => Ok(Action::Continue),
        Request::Exit { code } => Ok(Action::Exit(code)),
        Request::Ready => Ok(Action::Ready),
        Request::WallClock { reply } => {
            let (unix_nanos, tsc) = wall_clock();
            write_reply(mem, mem_size, reply, &Reply::WallClock { unix_nanos, tsc })?;
            written.push((reply.addr, u64::from(reply.len)));
            Ok(Action::Continue)
        }
        Request::Snapshot { reply } => Ok(Action::Snapshot(reply)),
        Request::Idle { nanos, reply } => Ok(Action::Idle { nanos, reply }),
        Request::ReadStdin { buf, reply } => {
            let buf = GuestBuf {
                addr: buf.addr,
                len: buf.len.min(MAX_STDIN_READ),
            };
            if !app_writable(buf.addr, u64::from(buf.len), mem_size) {
                return Err(HypercallError::ReplyNotWritable {
                    addr: buf.addr,
                    len: u64::from(buf.len),
                });
            }
            Ok(Action::ReadStdin { buf, reply })
        }
    }
}

/// Writes `reply` into the guest buffer `buf` after checking that the app
/// may write there and that it is large enough.
pub fn write_reply(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    buf: GuestBuf,
    reply: &Reply,
) -> Result<(), HypercallError> {
    let mut out = [0u8; MAX_REPLY as usize];
    // Replies are small fixed-size messages; they always encode.
    let n = reply.encode_record(&mut out).unwrap_or(0);
    // `n` is at most MAX_REPLY; a reply too long for a u32 would fit no buffer.
    let min = u32::try_from(n).unwrap_or(u32::MAX);
    if buf.len < min || buf.len > MAX_REPLY {
        return Err(HypercallError::ReplyBufferSize { len: buf.len, min });
    }
    if !app_writable(buf.addr, u64::from(buf.len), mem_size) {
        return Err(HypercallError::ReplyNotWritable {
            addr: buf.addr,
            len: u64::from(buf.len),
        });
    }
    mem.write_slice(&out[..n], GuestAddress(buf.addr))
        .map_err(|_| HypercallError::OutsideMemory {
            what: "reply buffer",
            addr: buf.addr,
            len: u64::from(buf.len),
        })
}

/// Copies standard-input bytes into the guest buffer of a
/// [`Action::ReadStdin`] (checked when the request was served).
pub fn write_input(
    mem: &GuestMemoryMmap,
    buf: GuestBuf,
    data: &[u8],
) -> Result<(), HypercallError> {
    let outside = || HypercallError::OutsideMemory {
        what: "stdin buffer",
        addr: buf.addr,
        len: data.len() as u64,
    };
    if data.len() as u64 > u64::from(buf.len) {
        return Err(outside());
    }
    mem.write_slice(data, GuestAddress(buf.addr))
        .map_err(|_| outside())
}

/// Copies out and empties the console buffer; returns its text.
pub fn drain_console(mem: &GuestMemoryMmap) -> Result<Vec<u8>, HypercallError> {
    let level: u32 = mem
        .read_obj(GuestAddress(layout::CONSOLE_ADDR))
        .map_err(|_| HypercallError::OutsideMemory {
            what: "console",
            addr: layout::CONSOLE_ADDR,
            len: 4,
        })?;
    if level == 0 {
        return Ok(Vec::new());
    }
    if u64::from(level) > layout::CONSOLE_CAPACITY {
        return Err(HypercallError::ConsoleLevel(level));
    }
    let mut text = vec![0u8; level as usize];
    read_guest(
        mem,
        layout::CONSOLE_ADDR + layout::CONSOLE_DATA_OFFSET,
        &mut text,
        "console",
    )?;
    mem.write_obj(0u32, GuestAddress(layout::CONSOLE_ADDR))
        .map_err(|_| HypercallError::OutsideMemory {
            what: "console",
            addr: layout::CONSOLE_ADDR,
            len: 4,
        })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        let size = usize::try_from(layout::MIN_MEM_SIZE).unwrap();
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, addr: u64, req: &Request) {
        let mut buf = [0u8; 64];
        let n = req.encode_record(&mut buf).unwrap();
        mem.write_slice(&buf[..n], GuestAddress(addr)).unwrap();
    }

    const SIZE: u64 = layout::MIN_MEM_SIZE;
    fn clock() -> (u64, u64) {
        (5, 6)
    }

    #[test]
    fn serves_valid_requests() {
        let m = mem();
        put(&m, layout::HYPERCALL_ADDR, &Request::Exit { code: 7 });
        let a = u32::try_from(layout::HYPERCALL_ADDR).unwrap();
        assert_eq!(
            serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
            Ok(Action::Exit(7))
        );
        assert_eq!(
            serve(&m, SIZE, 0xE04, &3u32.to_le_bytes(), clock),
            Ok(Action::Exit(3))
        );
        let reply = GuestBuf {
            addr: layout::HYPERCALL_ADDR + 0x1000,
            len: 64,
        };
        put(&m, layout::HYPERCALL_ADDR, &Request::WallClock { reply });
        assert_eq!(
            serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
            Ok(Action::Continue)
        );
        let mut out = [0u8; 16];
        m.read_slice(&mut out, GuestAddress(reply.addr)).unwrap();
        assert_eq!(
            Reply::decode_record(&out),
            Ok(Reply::WallClock {
                unix_nanos: 5,
                tsc: 6
            })
        );
    }

    #[test]
    fn refuses_hostile_requests() {
        let m = mem();
        let a = u32::try_from(layout::HYPERCALL_ADDR).unwrap();
        assert_eq!(
            serve(&m, SIZE, 0x3F8, &[0], clock),
            Err(HypercallError::UnknownPort(0x3F8))
        );
        assert!(matches!(
            serve(&m, SIZE, 0xE00, &[0], clock),
            Err(HypercallError::BadWidth { .. })
        ));
        assert!(matches!(
            serve(&m, SIZE, 0xE00, &u32::MAX.to_le_bytes(), clock),
            Err(HypercallError::OutsideMemory { .. })
        ));
        // Length prefix too large.
        m.write_obj(MAX_REQUEST + 1, GuestAddress(layout::HYPERCALL_ADDR))
            .unwrap();
        assert!(matches!(
            serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
            Err(HypercallError::Decode(DecodeError::BadLength(_)))
        ));
        // Body running past the end of memory.
        let last = u32::try_from(SIZE - 8).unwrap();
        m.write_obj(64u32, GuestAddress(u64::from(last))).unwrap();
        assert!(matches!(
            serve(&m, SIZE, 0xE00, &last.to_le_bytes(), clock),
            Err(HypercallError::OutsideMemory { .. })
        ));
        // Reply aimed at the page tables.
        let reply = GuestBuf {
            addr: layout::PAGE_TABLES_ADDR,
            len: 64,
        };
        put(&m, layout::HYPERCALL_ADDR, &Request::WallClock { reply });
        assert!(matches!(
            serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
            Err(HypercallError::ReplyNotWritable { .. })
        ));
        // Reply buffer too small.
        let reply = GuestBuf {
            addr: layout::HEAP_ADDR,
            len: 2,
        };
        put(&m, layout::HYPERCALL_ADDR, &Request::WallClock { reply });
        assert!(matches!(
            serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
            Err(HypercallError::ReplyBufferSize { .. })
        ));
        // Console level beyond capacity.
        m.write_obj(u32::MAX, GuestAddress(layout::CONSOLE_ADDR))
            .unwrap();
        assert_eq!(
            drain_console(&m),
            Err(HypercallError::ConsoleLevel(u32::MAX))
        );
    }

    #[test]
    fn stdin_reads_go_only_to_app_memory_and_are_capped() {
        let m = mem();
        let a = u32::try_from(layout::HYPERCALL_ADDR).unwrap();
        let reply = GuestBuf {
            addr: layout::HYPERCALL_ADDR + 0x1000,
            len: 64,
        };
        let buf = GuestBuf {
            addr: layout::HEAP_ADDR,
            len: u32::MAX,
        };
        put(
            &m,
            layout::HYPERCALL_ADDR,
            &Request::ReadStdin { buf, reply },
        );
        assert_eq!(
            serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
            Ok(Action::ReadStdin {
                buf: GuestBuf {
                    addr: layout::HEAP_ADDR,
                    len: MAX_STDIN_READ
                },
                reply
            })
        );
        let capped = GuestBuf {
            addr: layout::HEAP_ADDR,
            len: 4,
        };
        write_input(&m, capped, b"abcd").unwrap();
        assert!(write_input(&m, capped, b"abcde").is_err());
        // Aimed at the page tables, or past the end of memory.
        for addr in [layout::PAGE_TABLES_ADDR, SIZE - 8] {
            let buf = GuestBuf { addr, len: 64 };
            put(
                &m,
                layout::HYPERCALL_ADDR,
                &Request::ReadStdin { buf, reply },
            );
            assert!(matches!(
                serve(&m, SIZE, 0xE00, &a.to_le_bytes(), clock),
                Err(HypercallError::ReplyNotWritable { .. })
            ));
        }
    }

    #[test]
    fn drains_console() {
        let m = mem();
        m.write_obj(3u32, GuestAddress(layout::CONSOLE_ADDR))
            .unwrap();
        m.write_slice(
            b"hi\n",
            GuestAddress(layout::CONSOLE_ADDR + layout::CONSOLE_DATA_OFFSET),
        )
        .unwrap();
        assert_eq!(drain_console(&m).unwrap(), b"hi\n");
        assert_eq!(drain_console(&m).unwrap(), b"");
    }

    #[test]
    fn writable_ranges() {
        assert!(app_writable(layout::HEAP_ADDR, 16, SIZE));
        assert!(!app_writable(layout::HEAP_ADDR, SIZE, SIZE));
        assert!(!app_writable(layout::GDT_ADDR, 8, SIZE));
        assert!(!app_writable(u64::MAX - 2, 8, SIZE));
    }
}
