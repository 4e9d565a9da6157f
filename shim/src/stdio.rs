//! A task's standard streams: the FIFOs (or files) containerd names in
//! `create`, opened for the VMM without waiting for the other end.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

/// Why a stream cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The stdin FIFO.
    #[error("cannot open stdin {path}: {source}")]
    Stdin {
        /// The path containerd gave.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stdout or stderr FIFO.
    #[error("cannot open {path}: {source}")]
    Output {
        /// The path containerd gave.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The paths of a task's streams as `create` names them; an empty path is
/// no stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIo {
    /// The stdin FIFO.
    pub stdin: String,
    /// The stdout FIFO.
    pub stdout: String,
    /// The stderr FIFO.
    pub stderr: String,
}

/// The three streams, open, for the VMM child.
#[derive(Debug)]
pub struct Streams {
    /// The child's stdin.
    pub stdin: Stdio,
    /// The child's stdout.
    pub stdout: Stdio,
    /// The child's stderr.
    pub stderr: Stdio,
}

impl TaskIo {
    /// Opens the three streams (`/dev/null` for those with no path).
    pub fn open(&self) -> Result<Streams, StdioError> {
        let or_null = |f: Option<File>| f.map_or_else(Stdio::null, Stdio::from);
        Ok(Streams {
            stdin: or_null(open_input(&self.stdin)?),
            stdout: or_null(open_output(&self.stdout)?),
            stderr: or_null(open_output(&self.stderr)?),
        })
    }
}

/// Opens a container I/O FIFO (or file) for writing; `None` for no path.
/// `O_RDWR` on a FIFO does not wait for the reader (ctr opens it when it
/// attaches).
pub fn open_output(path: &str) -> Result<Option<File>, StdioError> {
    if path.is_empty() {
        return Ok(None);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(Some)
        .map_err(|source| StdioError::Output {
            path: path.into(),
            source,
        })
}

/// Opens the container's stdin FIFO for the VMM to read, without waiting
/// for a writer (`O_NONBLOCK`, cleared once open); `None` for no path. The
/// VMM polls it: a FIFO no writer has opened yet is not at its end, so the
/// guest waits for the client to attach, and reads end of input once every
/// writer has closed.
pub fn open_input(path: &str) -> Result<Option<File>, StdioError> {
    if path.is_empty() {
        return Ok(None);
    }
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| StdioError::Stdin {
            path: path.into(),
            source,
        })?;
    let fd = reader.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(Some(reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mkfifo, tmp_dir, within};
    use std::io::{Read, Write};

    fn flags(f: &File) -> i32 {
        // SAFETY: F_GETFL on a descriptor the test owns; no pointers.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) }
    }

    #[test]
    fn no_path_is_no_stream() {
        assert!(open_input("").unwrap().is_none());
        assert!(open_output("").unwrap().is_none());
        TaskIo::default().open().unwrap();
    }

    #[test]
    fn output_fifo_opens_before_its_reader_and_keeps_what_is_written() {
        let dir = tmp_dir("stdio-out");
        let fifo = mkfifo(&dir, "stdout");
        let path = fifo.to_str().unwrap().to_string();
        let mut out = within("open_output on a FIFO without a reader", move || {
            open_output(&path).unwrap().unwrap()
        });
        out.write_all(b"hello\n").unwrap();
        // The reader attaches later and still reads it.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut got = [0u8; 6];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
    }

    #[test]
    fn output_may_be_a_plain_file() {
        let dir = tmp_dir("stdio-file");
        let path = dir.join("log");
        std::fs::write(&path, b"").unwrap();
        let mut out = open_output(path.to_str().unwrap()).unwrap().unwrap();
        out.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn input_fifo_opens_before_its_writer_and_blocks_afterwards() {
        let dir = tmp_dir("stdio-in");
        let fifo = mkfifo(&dir, "stdin");
        let path = fifo.to_str().unwrap().to_string();
        let mut input = within("open_input on a FIFO without a writer", move || {
            open_input(&path).unwrap().unwrap()
        });
        assert_eq!(
            flags(&input) & libc::O_NONBLOCK,
            0,
            "the VMM reads it blocking"
        );
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(b"in").unwrap();
        drop(writer);
        let mut got = Vec::new();
        input.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"in");
    }

    #[test]
    fn missing_streams_are_named() {
        let dir = tmp_dir("stdio-missing");
        let path = dir.join("nope");
        let path = path.to_str().unwrap();
        let err = open_input(path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot open stdin {path}: ")),
            "{err}"
        );
        let err = open_output(path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot open {path}: ")), "{err}");
        let io = TaskIo {
            stdout: path.into(),
            ..TaskIo::default()
        };
        assert!(matches!(io.open(), Err(StdioError::Output { .. })));
    }
}
