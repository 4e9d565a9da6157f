//! A clean exit on VMMs without QEMU's `isa-debug-exit` device: the image
//! must stop the machine by itself (i8042 reset where there is one, else
//! ACPI soft-off, else a halt at CPL0), with its exit code on the console
//! and no CPU exception on the way, under KVM and under TCG.

use std::process::Command;
use std::time::{Duration, Instant};

use tandem_tests::image_path;

/// Longest a run may take before the test calls it hung (q35 with SeaBIOS
/// under this KVM takes a few seconds to reach the kernel).
const LIMIT_SECS: u64 = 90;

struct Run {
    /// QEMU's exit status; `None` when `timeout` had to kill it.
    code: Option<i32>,
    out: String,
    took: Duration,
}

/// Boots `app` by PVH on `machine` (which may carry options) with no exit
/// device, killing QEMU after `limit`.
fn boot(machine: &str, accel: &str, app: &str, limit: Duration) -> Run {
    tandem_tests::require_qemu();
    if accel == "kvm" {
        tandem_tests::require_kvm();
    }
    let image = image_path(app);
    let start = Instant::now();
    let out = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            &limit.as_secs().to_string(),
            "qemu-system-x86_64",
        ])
        .args(["-machine", machine, "-accel", accel, "-m", "128M"])
        .args(tandem_abi::platform::QEMU_BASE_ARGS)
        .arg("-kernel")
        .arg(&image)
        .output()
        .expect("cannot start timeout/qemu-system-x86_64");
    let took = start.elapsed();
    let code = out.status.code().filter(|&c| c != 124 && c != 137);
    Run {
        code,
        out: format!(
            "{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took,
    }
}

/// The machine stopped by itself, QEMU ended normally, and the console shows
/// the app's exit code and no CPU exception.
fn assert_clean_exit(machine: &str, accel: &str, app: &str, code: u8) {
    let run = boot(machine, accel, app, Duration::from_secs(LIMIT_SECS));
    assert!(
        run.code.is_some(),
        "{machine}/{accel}: the VM did not stop by itself within {LIMIT_SECS} s:\n{}",
        run.out
    );
    assert_eq!(
        run.code,
        Some(0),
        "{machine}/{accel}: QEMU should end normally on reset or power-off:\n{}",
        run.out
    );
    let line = format!("tandem: app exited with code {code}; powering off");
    assert!(
        run.out.contains(&line),
        "{machine}/{accel}: no `{line}`:\n{}",
        run.out
    );
    assert!(
        !run.out.contains("CPU exception"),
        "{machine}/{accel}: the exit took a CPU exception:\n{}",
        run.out
    );
    eprintln!("{machine}/{accel} {app}: stopped in {:?}", run.took);
}

#[test]
fn microvm_without_debug_exit_powers_off_through_acpi_under_kvm() {
    // microvm has no i8042: this is ACPI's hardware-reduced sleep register.
    assert_clean_exit("microvm", "kvm", "hello", 0);
    assert_clean_exit("microvm", "kvm", "panic", 101);
}

#[test]
fn microvm_without_debug_exit_powers_off_through_acpi_under_tcg() {
    assert_clean_exit("microvm", "tcg", "hello", 0);
    assert_clean_exit("microvm", "tcg", "panic", 101);
}

#[test]
fn q35_without_debug_exit_resets_through_i8042_under_kvm() {
    assert_clean_exit("q35", "kvm", "hello", 0);
}

#[test]
fn q35_without_debug_exit_resets_through_i8042_under_tcg() {
    assert_clean_exit("q35", "tcg", "hello", 0);
    assert_clean_exit("q35", "tcg", "panic", 101);
}

#[test]
fn q35_without_i8042_powers_off_through_acpi_pm1() {
    // No debug-exit device and no i8042: the PM1a control register.
    assert_clean_exit("q35,i8042=off", "tcg", "hello", 0);
    assert_clean_exit("q35,i8042=off", "kvm", "panic", 101);
}

#[test]
fn without_any_way_off_the_guest_halts_quietly() {
    // microvm without ACPI has neither: the last resort is a halt at CPL0,
    // so QEMU keeps running (the test stops it), having printed the code
    // and no exception.
    let run = boot("microvm,acpi=off", "tcg", "panic", Duration::from_secs(5));
    assert_eq!(
        run.code, None,
        "a halted guest should leave QEMU running:\n{}",
        run.out
    );
    assert!(
        run.out
            .contains("tandem: app exited with code 101; powering off"),
        "{}",
        run.out
    );
    assert!(!run.out.contains("CPU exception"), "{}", run.out);
}
