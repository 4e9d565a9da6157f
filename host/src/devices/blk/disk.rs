//! The host side of a disk: a raw image file, checked before boot and
//! locked for as long as a VM holds it, read and written at sector
//! offsets, flushed with `fdatasync`. Holes stay holes: nothing is
//! written that the guest did not write.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::request::SECTOR_SIZE;

/// The smallest disk accepted: one 4 KiB block.
pub const MIN_DISK_BYTES: u64 = 4096;

/// Why a disk image was refused (before the VM boots) or failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No such file.
    #[error("disk image {path} does not exist (create one with `truncate -s 64M {path}`)")]
    Missing {
        /// The image.
        path: PathBuf,
    },
    /// A directory, device or other non-regular file.
    #[error("disk image {path} is not a regular file")]
    NotAFile {
        /// The image.
        path: PathBuf,
    },
    /// Smaller than [`MIN_DISK_BYTES`].
    #[error("disk image {path} is too small: {len} bytes, at least {MIN_DISK_BYTES} needed")]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// A size that is not whole sectors.
    #[error("disk image {path} is {len} bytes, not a multiple of the 512-byte sector")]
    NotSectors {
        /// The image.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// Opening for writing failed (and `ro` was not asked for).
    #[error("disk image {path} is not writable ({source}); add ,ro to use it read-only")]
    NotWritable {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another VM (or process) holds it.
    #[error("disk image {path} is in use by another VM (it is locked)")]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// Another I/O failure.
    #[error("disk image {path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An open, checked, locked disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
}

impl DiskFile {
    /// Opens `path` (read-write unless `read_only`), checks its size and
    /// takes its lock: exclusive for a writer, shared for readers, so two
    /// VMs never write one disk and none reads a disk another writes.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let path_buf = path.to_path_buf();
        let io = |source| DiskError::Io {
            path: path_buf.clone(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DiskError::Missing { path: path_buf })
            }
            Err(e) => return Err(io(e)),
        };
        if !meta.is_file() {
            return Err(DiskError::NotAFile { path: path_buf });
        }
        let len = meta.len();
        if len < MIN_DISK_BYTES {
            return Err(DiskError::TooSmall {
                path: path_buf,
                len,
            });
        }
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::NotSectors {
                path: path_buf,
                len,
            });
        }
        let file = match OpenOptions::new().read(true).write(!read_only).open(path) {
            Ok(f) => f,
            Err(source) if !read_only && source.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(DiskError::NotWritable {
                    path: path_buf,
                    source,
                })
            }
            Err(source) if !read_only && source.raw_os_error() == Some(libc::EROFS) => {
                return Err(DiskError::NotWritable {
                    path: path_buf,
                    source,
                })
            }
            Err(e) => return Err(io(e)),
        };
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DiskError::Locked { path: path_buf });
            }
            return Err(io(e));
        }
        Ok(Self {
            file,
            path: path_buf,
            sectors: len / SECTOR_SIZE,
            read_only,
        })
    }

    /// A second handle on the same open image (same lock), for a thread
    /// that reads it.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            sectors: self.sectors,
            read_only: self.read_only,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether it was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads `buf.len()` bytes at `offset` (a range [`parse`](super::request::parse)
    /// checked against the size).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The open file (for a snapshot's copy of the disk).
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tandem-disk-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn image(name: &str, len: u64) -> PathBuf {
        let p = dir().join(name);
        File::create(&p).unwrap().set_len(len).unwrap();
        p
    }

    #[test]
    fn bad_images_are_refused_by_name() {
        let d = dir();
        let e = DiskFile::open(&d.join("nope"), false).unwrap_err();
        assert!(matches!(e, DiskError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("nope"));
        let e = DiskFile::open(&d, false).unwrap_err();
        assert!(matches!(e, DiskError::NotAFile { .. }), "{e}");
        let e = DiskFile::open(&image("small", 512), false).unwrap_err();
        assert!(matches!(e, DiskError::TooSmall { len: 512, .. }), "{e}");
        let e = DiskFile::open(&image("odd", 8192 + 100), true).unwrap_err();
        assert!(matches!(e, DiskError::NotSectors { .. }), "{e}");
    }

    #[test]
    fn a_writer_locks_the_disk() {
        let p = image("locked", 1 << 20);
        let a = DiskFile::open(&p, false).unwrap();
        assert_eq!(a.sectors(), 2048);
        assert!(matches!(
            DiskFile::open(&p, false),
            Err(DiskError::Locked { .. })
        ));
        assert!(matches!(
            DiskFile::open(&p, true),
            Err(DiskError::Locked { .. })
        ));
        drop(a);
        let r1 = DiskFile::open(&p, true).unwrap();
        let r2 = DiskFile::open(&p, true).unwrap();
        assert!(r1.read_only() && r2.read_only());
        assert!(matches!(
            DiskFile::open(&p, false),
            Err(DiskError::Locked { .. })
        ));
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let p = image("rw", 1 << 20);
        let disk = DiskFile::open(&p, false).unwrap();
        disk.write_at(&[7u8; 512], 4096).unwrap();
        disk.flush().unwrap();
        let mut b = [0u8; 1024];
        disk.read_at(&mut b, 3584).unwrap();
        assert!(b[..512].iter().all(|&x| x == 0));
        assert!(b[512..].iter().all(|&x| x == 7));
    }
}
