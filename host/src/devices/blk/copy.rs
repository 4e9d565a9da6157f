//! The disk's state at a snapshot's instant, and a restored VM's own
//! disk: a copy-on-write clone of a file (`FICLONE`, a reflink, where the
//! file system offers it: btrfs, XFS, bcachefs...) or else a copy of its
//! data ranges only (holes stay holes, found with `SEEK_DATA`/`SEEK_HOLE`).
//! Either way the new file is written under a temporary name, fsynced and
//! renamed into place, so a crash leaves no half copy under the final name.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// A reflink: shared blocks, copied on write by the file system.
    Reflink,
    /// The data ranges copied.
    Copy,
}

/// Why a disk copy failed.
#[derive(Debug, thiserror::Error)]
#[error("copying disk {from} to {to}: {source}")]
pub struct CopyError {
    /// The source.
    pub from: PathBuf,
    /// The destination.
    pub to: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// `FICLONE` (`_IOW(0x94, 9, int)`), allowed to the vCPU thread by the
/// seccomp filter.
pub(crate) const FICLONE: u64 = 0x4004_9409;

/// Makes `to` (which must not exist) a copy of `from` (`len` bytes), by
/// reflink if possible, and fsyncs it and its directory.
pub fn clone_file(
    from: &File,
    from_path: &Path,
    len: u64,
    to: &Path,
) -> Result<CopyKind, CopyError> {
    let err = |source| CopyError {
        from: from_path.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("disk");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if to.exists() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the destination exists (a restored disk is a new file)",
        )));
    }
    let result = (|| {
        let out = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        // SAFETY: FICLONE takes the source descriptor as its argument; both
        // descriptors are open for the duration of the call.
        let rc = unsafe { libc::ioctl(out.as_raw_fd(), FICLONE as _, from.as_raw_fd()) };
        let kind = if rc == 0 {
            CopyKind::Reflink
        } else {
            out.set_len(len)?;
            copy_data(from, &out, len)?;
            CopyKind::Copy
        };
        out.sync_all()?;
        std::fs::rename(&tmp, to)?;
        File::open(dir)?.sync_all()?;
        Ok(kind)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Copies every data range of `from` into `out` at the same offsets.
fn copy_data(from: &File, out: &File, len: u64) -> std::io::Result<()> {
    let fd = from.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let Some(start) = seek(fd, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(fd, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        let mut pos = start;
        while pos < end {
            // At most 1 MiB.
            let n = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
            from.read_exact_at(&mut buf[..n], pos)?;
            out.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        at = end;
    }
    Ok(())
}

/// `lseek(fd, at, whence)`; `None` when there is no more data (`ENXIO`).
fn seek(fd: i32, at: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(at).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a descriptor the caller holds open; no memory passed.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(u64::try_from(r).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_has_the_same_bytes_and_keeps_holes() {
        let dir = std::env::temp_dir().join(format!("tandem-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src_path = dir.join("src");
        let src = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&src_path)
            .unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        let dst = dir.join("dst");
        clone_file(&src, &src_path, 64 << 20, &dst).unwrap();
        let out = File::open(&dst).unwrap();
        let mut b = [0u8; 4];
        out.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        out.read_exact_at(&mut b, (64 << 20) - 4).unwrap();
        assert_eq!(&b, b"tail");
        use std::os::unix::fs::MetadataExt;
        assert!(
            out.metadata().unwrap().blocks() * 512 < 8 << 20,
            "holes were filled"
        );
        // The copy is its own: writes to it leave the source alone.
        let w = OpenOptions::new().write(true).open(&dst).unwrap();
        w.write_all_at(b"XXXX", 0).unwrap();
        src.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        assert!(clone_file(&src, &src_path, 64 << 20, &dst).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
