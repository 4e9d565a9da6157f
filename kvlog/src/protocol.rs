//! The kvstore line protocol, the same on standard input and over TCP: one
//! command a line (`put KEY VALUE`, `get KEY`, `del KEY`, `snapshot`),
//! answered with one line (`ok`, the value, `missing`, or `error: ...`).
//! Parsing is here, apart from the apps, so it is tested on the host.

/// The usage line a malformed command gets.
pub const USAGE: &str = "error: usage: put KEY VALUE | get KEY | del KEY | snapshot";

/// One line, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `put KEY VALUE` (the value is the rest of the line, spaces and all).
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `get KEY`.
    Get(&'a [u8]),
    /// `del KEY`.
    Del(&'a [u8]),
    /// `snapshot`: ask the VMM for one.
    Snapshot,
    /// An empty line: no answer.
    Empty,
    /// Anything else: answered with [`USAGE`].
    Bad,
}

impl<'a> Command<'a> {
    /// Parses one line (without its `\n`; a trailing `\r` is dropped).
    pub fn parse(line: &'a [u8]) -> Self {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.splitn(3, |&b| b == b' ');
        let cmd = parts.next().unwrap_or_default();
        let key = parts.next().filter(|k| !k.is_empty());
        let rest = parts.next();
        match (cmd, key, rest) {
            (b"put", Some(key), Some(value)) => Command::Put { key, value },
            (b"get", Some(key), None) => Command::Get(key),
            (b"del", Some(key), None) => Command::Del(key),
            (b"snapshot", None, None) => Command::Snapshot,
            (b"", None, None) => Command::Empty,
            _ => Command::Bad,
        }
    }
}

/// Longest line a server keeps: a command word, the longest key and value
/// and their spaces. Bytes past it are dropped (the store then refuses the
/// command or the value is cut; either way the line is still answered).
pub const MAX_LINE: usize = crate::MAX_KEY + crate::MAX_VALUE + 8;

/// Splits a byte stream into lines: bytes are pushed as they arrive, and
/// each complete line is handed to a callback.
#[derive(Debug, Default)]
pub struct Lines {
    line: alloc::vec::Vec<u8>,
}

impl Lines {
    /// Feeds `bytes`, calling `on_line` for each complete line.
    pub fn push(&mut self, bytes: &[u8], mut on_line: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                on_line(&self.line);
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    /// The bytes of an unfinished last line, taken.
    pub fn take_rest(&mut self) -> alloc::vec::Vec<u8> {
        core::mem::take(&mut self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn commands_parse() {
        assert_eq!(
            Command::parse(b"put k a value with spaces"),
            Command::Put {
                key: b"k",
                value: b"a value with spaces"
            }
        );
        assert_eq!(
            Command::parse(b"put k "),
            Command::Put {
                key: b"k",
                value: b""
            }
        );
        assert_eq!(Command::parse(b"get k\r"), Command::Get(b"k"));
        assert_eq!(Command::parse(b"del k"), Command::Del(b"k"));
        assert_eq!(Command::parse(b"snapshot"), Command::Snapshot);
        assert_eq!(Command::parse(b""), Command::Empty);
        for bad in [
            &b"put k"[..],
            b"get",
            b"get a b",
            b"del",
            b"frobnicate",
            b"put  v",
            b"snapshot x",
        ] {
            assert_eq!(Command::parse(bad), Command::Bad, "{bad:?}");
        }
    }

    #[test]
    fn lines_split_across_pushes_and_long_lines_are_capped() {
        let mut lines = Lines::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        lines.push(b"get a\nput b ", |l| got.push(l.to_vec()));
        lines.push(b"x\n\nget", |l| got.push(l.to_vec()));
        assert_eq!(got, [&b"get a"[..], b"put b x", b""]);
        assert_eq!(lines.take_rest(), b"get");
        let long = alloc::vec![b'v'; MAX_LINE + 100];
        let mut len = 0;
        lines.push(&long, |_| unreachable!());
        lines.push(b"\n", |l| len = l.len());
        assert_eq!(len, MAX_LINE);
    }
}
