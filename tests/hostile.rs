//! A hostile guest: every malformed hypercall is refused with a clear error
//! naming the problem, ends that VM only, and leaves the host healthy.

use tandem::ExitStatus;
use tandem::HypercallError;
use tandem_abi::hypercall::DecodeError;
use tandem_tests::{boot_in_process, hypervisor, run_app};

const CASES: &[(&str, &str)] = &[
    ("unknown-port", "access to unknown I/O port 0xe02"),
    ("bad-width", "written with 1 bytes, expected 4"),
    ("port-read", "read from hypercall port 0xe00"),
    (
        "outside-memory",
        "request at 0xfffffff0 (+4 bytes) lies outside guest memory",
    ),
    (
        "huge-length",
        "request length 4294967295 is outside 1..=4096",
    ),
    ("zero-length", "request length 0 is outside"),
    ("garbage", "request does not decode"),
    ("trailing", "request has 2 trailing bytes"),
    (
        "reply-kernel",
        "reply buffer at 0x6000 (+64 bytes) is not app-writable memory",
    ),
    (
        "reply-outside",
        "reply buffer at 0xffff0000 (+64 bytes) is not app-writable memory",
    ),
    ("reply-small", "reply buffer of 3 bytes"),
    ("console-level", "console fill level 4294967295 exceeds"),
];

#[test]
fn each_bad_request_is_refused_with_a_clear_error() {
    for (case, message) in CASES {
        let run = run_app("hostile", &["--cmdline", case]);
        assert_eq!(run.code, Some(123), "{case}: stderr {}", run.stderr);
        assert!(
            run.stderr.contains("guest broke the hypercall protocol")
                && run.stderr.contains(message),
            "{case}: expected {message:?} in stderr: {}",
            run.stderr
        );
        assert!(
            !run.stdout.contains("the host accepted a bad request"),
            "{case}: {}",
            run.stdout
        );
    }
}

#[test]
fn host_stays_healthy_after_hostile_vms() {
    let hv = hypervisor();
    let mut seen = Vec::new();
    for (case, _) in CASES {
        let (report, console) = boot_in_process(&hv, "hostile", case);
        match report.status {
            ExitStatus::ProtocolViolation(e) => seen.push(e),
            other => panic!("{case}: expected a protocol violation, got {other:?}: {console}"),
        }
        // The console written before the bad call still came through.
        assert!(
            console.contains(&format!("hostile: {case}")) || *case == "console-level",
            "{console}"
        );
    }
    assert!(seen.contains(&HypercallError::Decode(DecodeError::TrailingBytes(2))));
    assert!(seen.contains(&HypercallError::UnknownPort(0xE02)));
    // The same process still boots a good guest.
    let (report, console) = boot_in_process(&hv, "hello", "after");
    assert_eq!(report.status, ExitStatus::Exited(0), "{console}");
}

#[test]
fn guest_side_fuzzer_never_breaks_the_host() {
    // `hfuzz SEED COUNT` sends mostly valid, sometimes mutated hypercalls;
    // each VM must either be served to the end (exit 0) or be stopped with a
    // typed protocol error, and the process must carry on booting VMs.
    let hv = hypervisor();
    let mut served = 0u64;
    let mut refused = 0u32;
    for seed in 1..=40 {
        let (report, console) = boot_in_process(&hv, "hfuzz", &format!("{seed} 2000"));
        match report.status {
            ExitStatus::Exited(0) => {}
            ExitStatus::ProtocolViolation(_) => refused += 1,
            other => panic!("seed {seed}: the host answered {other:?}: {console}"),
        }
        served += report.stats.exits;
        assert!(
            report.stats.console_bytes < 1 << 20,
            "seed {seed}: console grew to {}",
            report.stats.console_bytes
        );
    }
    assert!(served >= 1000, "only {served} hypercalls were made");
    assert!(refused > 0, "no mutated request was refused");
    let (report, _) = boot_in_process(&hv, "hello", "after the fuzzer");
    assert_eq!(report.status, ExitStatus::Exited(0));
}
