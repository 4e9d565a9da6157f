//! The guest library's contract with the VMM, checked on real boots:
//! readiness, hypercalls with replies, FPU state, a refused boot-info block,
//! and a guest that triple-faults.

use std::sync::{Arc, Mutex};

use tandem::{ConsoleSink, ExitStatus, Image, VmBuilder};
use tandem_abi::layout;
use tandem_abi::trace::Phase;
use tandem_tests::{boot_in_process, hypervisor, image_path};
use vm_memory::{Bytes, GuestAddress};

#[test]
fn ready_wall_clock_and_sse() {
    let hv = hypervisor();
    let (report, console) = boot_in_process(&hv, "clock", "");
    assert_eq!(report.status, ExitStatus::Exited(0), "{console}");
    assert!(console.contains("sse: ok"), "{console}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secs: u64 = console
        .lines()
        .find_map(|l| l.strip_prefix("wall clock: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wall clock in {console}"));
    assert!(
        secs.abs_diff(now) < 60,
        "guest wall clock {secs}, host {now}"
    );
    // ready() is stamped between main and exit.
    let main = report.trace.micros(Phase::AppMain).unwrap();
    let ready = report.trace.micros(Phase::AppReady).expect("ready stamped");
    let exit = report.trace.micros(Phase::Exit).unwrap();
    assert!(main <= ready && ready <= exit, "{}", report.trace.table());
    // ready, wall clock, exit: one exit each, the console riding along. A
    // newline also flushes when the last flush is over 1 ms old (DESIGN: the
    // console's latency bound), which a host that preempts the vCPU thread
    // can cause: at most once per line printed (three here).
    let exits = report.stats.exits;
    assert!((3..=6).contains(&exits), "{:?}", report.stats);
}

fn boot_tampered(
    app: &str,
    tamper: impl FnOnce(&vm_memory::GuestMemoryMmap),
) -> (ExitStatus, String) {
    let hv = hypervisor();
    let image = Image::from_file(&image_path(app)).unwrap();
    let console = Arc::new(Mutex::new(Vec::new()));
    let vm = VmBuilder::new(&hv, &image)
        .timeout(std::time::Duration::from_secs(30))
        .console(ConsoleSink::Capture(console.clone()))
        .build()
        .unwrap();
    tamper(vm.memory());
    let report = vm.run().unwrap();
    let text = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    (report.status, text)
}

#[test]
fn guest_refuses_a_boot_info_block_with_bad_magic() {
    let (status, console) = boot_tampered("hello", |mem| {
        mem.write_obj(0xBAD0_BAD0u32, GuestAddress(layout::BOOT_INFO_ADDR))
            .unwrap();
    });
    assert_eq!(
        status,
        ExitStatus::Exited(tandem_abi::hypercall::EXIT_BAD_BOOT_INFO)
    );
    assert!(
        console.contains("refusing boot-info block: boot-info block has bad magic 0xbad0bad0"),
        "{console}"
    );
    assert!(!console.contains("Hello"), "{console}");
}

#[test]
fn guest_refuses_a_boot_info_block_with_bad_checksum() {
    let (status, console) = boot_tampered("hello", |mem| {
        let at = GuestAddress(layout::BOOT_INFO_ADDR + 20);
        let b: u8 = mem.read_obj(at).unwrap();
        mem.write_obj(b ^ 0x55, at).unwrap();
    });
    assert_eq!(
        status,
        ExitStatus::Exited(tandem_abi::hypercall::EXIT_BAD_BOOT_INFO)
    );
    assert!(console.contains("checksum mismatch"), "{console}");
}

#[test]
fn triple_fault_is_reported_as_a_crash() {
    // With the IDT wiped, the app's page fault cannot be delivered: #PF,
    // then #DF, then shutdown.
    let (status, console) = boot_tampered("pagefault", |mem| {
        mem.write_slice(&[0u8; 4096], GuestAddress(layout::IDT_ADDR))
            .unwrap();
    });
    match &status {
        ExitStatus::Crashed(why) => assert!(why.contains("triple fault"), "{why}"),
        other => panic!("expected a crash, got {other:?}: {console}"),
    }
    assert_eq!(status.code(), tandem::exit_code::CRASHED);
    // The console written before the fault still came through.
    assert!(console.contains("faulting on purpose"), "{console}");
}
