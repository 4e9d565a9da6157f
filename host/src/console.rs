//! Where a guest's console text goes, with a cap on how much a guest may
//! write (a flooding guest cannot fill the host's disk or memory).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Default cap on console bytes per VM.
pub const DEFAULT_CONSOLE_LIMIT: u64 = 64 << 20;

/// The destination of a VM's console.
#[derive(Debug, Clone)]
pub enum ConsoleSink {
    /// The VMM's stdout, with terminal control bytes escaped.
    Stdout,
    /// Kept in memory (tests, benchmarks, embedding).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// Thrown away.
    Discard,
}

/// Default rate of console output passed on, in bytes per second (with a
/// burst of one second's worth).
pub const DEFAULT_CONSOLE_RATE: u64 = 4 << 20;

/// A VM's console: its sink, how much it has written, and its rate budget.
#[derive(Debug)]
pub struct Console {
    sink: ConsoleSink,
    written: u64,
    limit: u64,
    cut_off: bool,
    /// Bytes past the limit, dropped.
    dropped_for_limit: u64,
    /// Bytes per second passed on (0: no rate limit).
    rate: u64,
    /// Bytes the token bucket holds now.
    tokens: f64,
    refilled: Option<std::time::Instant>,
    dropped_for_rate: u64,
}

impl Console {
    /// A console writing to `sink`, at most `limit` bytes.
    pub fn new(sink: ConsoleSink, limit: u64) -> Self {
        Self {
            sink,
            written: 0,
            limit,
            cut_off: false,
            dropped_for_limit: 0,
            rate: 0,
            tokens: 0.0,
            refilled: None,
            dropped_for_rate: 0,
        }
    }

    /// Passes on at most `bytes_per_second` (a burst of one second's worth),
    /// dropping the rest: a guest printing as fast as it can costs the host a
    /// bounded amount of terminal, pipe or log.
    pub fn with_rate(mut self, bytes_per_second: u64) -> Self {
        self.rate = bytes_per_second;
        self.tokens = bytes_per_second as f64;
        self
    }

    /// How many of `len` bytes the rate limit lets through now.
    fn admit(&mut self, len: usize) -> usize {
        if self.rate == 0 {
            return len;
        }
        let now = std::time::Instant::now();
        let last = self.refilled.replace(now).unwrap_or(now);
        let burst = self.rate as f64;
        self.tokens = (self.tokens + now.duration_since(last).as_secs_f64() * burst).min(burst);
        // The bucket holds at most one second's worth, a small whole number.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let take = (self.tokens.max(0.0).floor() as usize).min(len);
        self.tokens -= take as f64;
        if take < len {
            if self.dropped_for_rate == 0 {
                log::warn!(
                    "the guest's console exceeds {} bytes per second; output past that is dropped",
                    self.rate
                );
            }
            self.dropped_for_rate += (len - take) as u64;
        }
        take
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes the guest wrote that were dropped: over the rate, or past the
    /// limit.
    pub fn dropped(&self) -> u64 {
        self.dropped_for_rate + self.dropped_for_limit
    }

    /// Whether output was cut off at the limit.
    #[cfg(test)]
    pub fn cut_off(&self) -> bool {
        self.cut_off
    }

    /// Writes guest bytes (already copied out of guest memory).
    pub fn write(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..self.admit(bytes.len())];
        let room = self.limit.saturating_sub(self.written);
        let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take < bytes.len() && !self.cut_off {
            self.cut_off = true;
            // Said once, on the VMM's side: the guest cannot fill the
            // host's disk or memory through its console.
            log::warn!(
                "the guest's console reached its limit of {} bytes; the rest of its output is dropped",
                self.limit
            );
        }
        self.dropped_for_limit += (bytes.len() - take) as u64;
        let bytes = &bytes[..take];
        self.written += take as u64;
        match &self.sink {
            ConsoleSink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&escape(bytes));
                let _ = out.flush();
            }
            ConsoleSink::Capture(buf) => {
                if let Ok(mut b) = buf.lock() {
                    b.extend_from_slice(bytes);
                }
            }
            ConsoleSink::Discard => {}
        }
    }
}

/// Escapes control bytes other than newline, tab and carriage return, so a
/// guest cannot drive the user's terminal.
fn escape(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bad = |b: u8| (b < 0x20 && !matches!(b, b'\n' | b'\t' | b'\r')) || b == 0x7F;
    if !bytes.iter().any(|&b| bad(b)) {
        return bytes.into();
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for &b in bytes {
        if bad(b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(&*escape(b"hi\n"), b"hi\n");
        assert_eq!(&*escape(b"\x1b[2J"), b"\\x1b[2J");
    }

    #[test]
    fn cuts_off_at_limit() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut c = Console::new(ConsoleSink::Capture(buf.clone()), 5);
        c.write(b"abc");
        c.write(b"defg");
        assert_eq!(&*buf.lock().unwrap(), b"abcde");
        assert!(c.cut_off());
        c.write(b"x");
        assert_eq!(c.written(), 5);
        assert_eq!(c.dropped(), 3, "\"fg\" and \"x\" went past the limit");
    }

    #[test]
    fn counts_what_the_rate_drops() {
        let mut c = Console::new(ConsoleSink::Discard, 1 << 20).with_rate(4);
        c.write(b"abcdefgh");
        // A burst of one second's worth (4 bytes) passes at once.
        assert_eq!(c.written(), 4);
        assert_eq!(c.dropped(), 4);
    }
}
