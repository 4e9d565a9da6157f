//! The shim's ttrpc socket files, which containerd-shim 0.11 leaves behind:
//! removed when the shim ends, and after a dead shim unless another shim
//! still answers on them.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The file of a socket address (`unix:///run/x.sock` or a bare path);
/// `None` for no address.
pub fn socket_path(address: &str) -> Option<&Path> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    (!path.is_empty()).then(|| Path::new(path))
}

/// Removes the socket file of `address`, if it is a socket (never another
/// kind of file). Returns whether it removed one.
pub fn remove_socket(address: &str) -> bool {
    let Some(path) = socket_path(address) else {
        return false;
    };
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && fs::remove_file(path).is_ok()
}

/// Removes the socket of `address` only if no shim answers on it: the
/// containers of a pod share one shim, which outlives any one of them.
/// Returns whether it removed it.
pub fn remove_stale_socket(address: &str) -> bool {
    let Some(path) = socket_path(address) else {
        return false;
    };
    UnixStream::connect(path).is_err() && remove_socket(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tmp_dir;
    use std::os::unix::net::UnixListener;

    #[test]
    fn addresses() {
        assert_eq!(
            socket_path("unix:///run/s.sock"),
            Some(Path::new("/run/s.sock"))
        );
        assert_eq!(socket_path("/run/s.sock"), Some(Path::new("/run/s.sock")));
        assert_eq!(socket_path(""), None);
        assert_eq!(socket_path("unix://"), None);
        assert!(!remove_socket(""));
        assert!(!remove_stale_socket("unix://"));
    }

    #[test]
    fn only_sockets_are_removed() {
        let dir = tmp_dir("socket-kinds");
        let file = dir.join("file");
        fs::write(&file, b"").unwrap();
        assert!(!remove_socket(file.to_str().unwrap()));
        assert!(file.exists());
        assert!(!remove_socket(dir.join("missing").to_str().unwrap()));
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        assert!(remove_socket(&format!("unix://{}", sock.display())));
        assert!(!sock.exists());
        drop(listener);
    }

    #[test]
    fn a_socket_a_shim_answers_on_is_kept() {
        let dir = tmp_dir("socket-live");
        let sock = dir.join("s.sock");
        let address = format!("unix://{}", sock.display());
        let listener = UnixListener::bind(&sock).unwrap();
        assert!(!remove_stale_socket(&address));
        assert!(sock.exists());
        // The shim died: its socket file is left, and nothing answers.
        drop(listener);
        assert!(sock.exists());
        assert!(remove_stale_socket(&address));
        assert!(!sock.exists());
    }

    #[test]
    fn a_stale_regular_file_is_not_removed() {
        let dir = tmp_dir("socket-file");
        let file = dir.join("s.sock");
        fs::write(&file, b"").unwrap();
        assert!(!remove_stale_socket(file.to_str().unwrap()));
        assert!(file.exists());
    }
}
