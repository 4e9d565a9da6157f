//! A finished run hands its VM to a teardown thread (`Vm::run` returns
//! before KVM and the kernel have let go of a large VM): every VM must
//! still be torn down soon after. One test in its own process, so no other
//! test's descriptors count.

use std::time::{Duration, Instant};

use tandem::{ConsoleSink, ExitStatus, Snapshot, Vm, VmConfig};
use tandem_tests::{hypervisor, run_app};

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn finished_vms_are_torn_down_after_their_run() {
    let dir = std::env::temp_dir().join(format!("tandem-test-teardown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let snap = dir.join("snap");
    let run = run_app(
        "counter",
        &[
            "--cmdline",
            "ready exit-at=2",
            "--snapshot-at-ready",
            snap.to_str().unwrap(),
            "--exit-after-snapshot",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let snap = Snapshot::load(&snap).unwrap();
    let hv = hypervisor();
    let before = open_fds();
    for _ in 0..12 {
        let config = VmConfig {
            console: ConsoleSink::Discard,
            timeout: Some(Duration::from_secs(60)),
            ..VmConfig::default()
        };
        let r = Vm::restore(&hv, &snap, config).unwrap().run().unwrap();
        assert_eq!(r.status, ExitStatus::Exited(0));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = open_fds();
    assert!(
        after <= before,
        "{after} descriptors open 30 s after 12 runs, {before} before: VMs are not torn down"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
