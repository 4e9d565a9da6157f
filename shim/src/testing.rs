//! Helpers for the unit tests: temporary directories, FIFOs, a stand-in
//! for the `tandem` binary.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

/// A fresh, empty directory for one test.
pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-shim-unit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Makes a FIFO `name` in `dir`.
pub fn mkfifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path
}

/// Runs `f` on a thread and fails the test if it has not returned within
/// five seconds (a FIFO open that waits for its other end never returns).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what}: did not return within 5 s"))
}

/// A shell script standing in for `tandem`: it does what its `--cmdline`
/// says, `exit=N` or `sleep` (until killed), and prints its arguments.
///
/// Every test that starts a process calls this first: the script is
/// written once, before any of them forks, so no child can inherit the
/// descriptor it is written through (exec would then fail with ETXTBSY).
pub fn fake_tandem() -> &'static Path {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        let dir = tmp_dir("fake-tandem");
        let path = dir.join("tandem");
        std::fs::write(
            &path,
            "#!/bin/sh\n\
             echo \"$@\"\n\
             for a; do case $a in --cmdline=*) c=${a#--cmdline=};; esac; done\n\
             case $c in\n\
             exit=*) exit ${c#exit=};;\n\
             sleep) exec sleep 60;;\n\
             esac\n\
             exit 99\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    })
}
