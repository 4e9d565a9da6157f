//! Real guests booted under KVM: what each app prints and how it exits.

use tandem::ExitStatus;
use tandem_tests::{boot_in_process, hypervisor, run_app};

#[test]
fn hello_greets_shows_cmdline_and_exits_0() {
    let run = run_app("hello", &["--cmdline", "alpha beta=2"]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains("Hello from Tandem!"),
        "stdout: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains(r#"command line: "alpha beta=2""#),
        "stdout: {}",
        run.stdout
    );
    assert!(run.stdout.contains("booted in "), "stdout: {}", run.stdout);
    // The summary line on stderr.
    assert!(run.stderr.contains("main at"), "stderr: {}", run.stderr);
}

#[test]
fn hello_in_process_reaches_main_without_cpl0_or_exits() {
    let hv = hypervisor();
    let (report, console) = boot_in_process(&hv, "hello", "x");
    assert_eq!(report.status, ExitStatus::Exited(0));
    assert!(console.starts_with("Hello from Tandem!\n"), "{console}");
    assert_eq!(report.stats.exits_before_main, 0, "{:?}", report.stats);
    assert_eq!(
        report.stats.cpl0_entries_before_main, 0,
        "{:?}",
        report.stats
    );
    assert_eq!(report.stats.cpl0_entries, 0, "{:?}", report.stats);
    assert!(report.stats.exits <= 2, "{:?}", report.stats);
}

#[test]
fn many_vms_in_one_process() {
    let hv = hypervisor();
    for i in 0..5 {
        let (report, console) = boot_in_process(&hv, "hello", &format!("run-{i}"));
        assert_eq!(report.status, ExitStatus::Exited(0));
        assert!(console.contains(&format!("\"run-{i}\"")), "{console}");
    }
}

#[test]
fn panic_reports_message_and_location_and_exits_101() {
    let run = run_app("panic", &[]);
    assert_eq!(run.code, Some(101), "stderr: {}", run.stderr);
    assert!(run.stdout.contains("about to panic"), "{}", run.stdout);
    assert!(
        run.stdout.contains("panicked at apps/src/bin/panic.rs:"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("deliberate panic: the answer is 42"),
        "{}",
        run.stdout
    );
}

#[test]
fn page_fault_reports_address_and_exits_102() {
    let run = run_app("pagefault", &["--cmdline", "unmapped"]);
    assert_eq!(run.code, Some(102), "stderr: {}", run.stderr);
    assert!(
        run.stdout
            .contains("CPU exception: page fault (#PF, vector 14)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("faulting address 0xdead0000 (read, not-present page)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("at rip 0x2"), "{}", run.stdout);
}

#[test]
fn null_read_faults() {
    let run = run_app("pagefault", &["--cmdline", "null"]);
    assert_eq!(run.code, Some(102));
    assert!(
        run.stdout
            .contains("faulting address 0x0 (read, not-present page)"),
        "{}",
        run.stdout
    );
}

#[test]
fn app_cannot_write_kernel_structures() {
    let run = run_app("pagefault", &["--cmdline", "kernel-write"]);
    assert_eq!(run.code, Some(102));
    assert!(
        run.stdout
            .contains("faulting address 0x1000 (write, protection violation)"),
        "{}",
        run.stdout
    );
}

#[test]
fn invalid_opcode_and_forbidden_port_are_reported() {
    let run = run_app("pagefault", &["--cmdline", "ud"]);
    assert_eq!(run.code, Some(102));
    assert!(
        run.stdout.contains("invalid opcode (#UD, vector 6)"),
        "{}",
        run.stdout
    );
    let run = run_app("pagefault", &["--cmdline", "forbidden-port"]);
    assert_eq!(run.code, Some(102));
    assert!(
        run.stdout
            .contains("general protection fault (#GP, vector 13)"),
        "{}",
        run.stdout
    );
}

#[test]
fn exception_costs_one_cpl0_entry() {
    let hv = hypervisor();
    let (report, console) = boot_in_process(&hv, "pagefault", "unmapped");
    assert_eq!(report.status, ExitStatus::Exited(102), "{console}");
    assert_eq!(report.stats.cpl0_entries, 1);
    assert_eq!(report.stats.cpl0_entries_before_main, 0);
}

#[test]
fn heap_serves_vec_string_btreemap_and_large_blocks() {
    let run = run_app("heap", &[]);
    assert_eq!(
        run.code,
        Some(0),
        "stdout: {} stderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("heap ok:"), "{}", run.stdout);
    assert!(run.stdout.contains("map total 37492500"), "{}", run.stdout);
}

#[test]
fn out_of_memory_panics_cleanly() {
    let run = run_app("heap", &["--cmdline", "oom", "--mem", "16M"]);
    assert_eq!(run.code, Some(101), "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains("memory allocation of"),
        "{}",
        run.stdout
    );
}

#[test]
fn timeout_stops_a_spinning_guest() {
    let run = run_app("spin", &["--timeout", "300ms"]);
    assert_eq!(run.code, Some(124), "stderr: {}", run.stderr);
    assert!(run.stdout.contains("spinning forever"), "{}", run.stdout);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
}

#[test]
fn json_report_is_machine_readable() {
    let run = run_app("hello", &["--json"]);
    assert_eq!(run.code, Some(0));
    let line = run.stderr.lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["exits_before_main"], 0);
    assert!(v["phases_us"]["app_main"].as_f64().is_some(), "{v}");
}

#[test]
fn help_documents_run_options() {
    let out = tandem_tests::tandem(&["run", "--help"]);
    assert_eq!(out.code, Some(0));
    for opt in ["--mem", "--cmdline", "--trace", "--timeout", "--json"] {
        assert!(
            out.stdout.contains(opt),
            "--help lacks {opt}: {}",
            out.stdout
        );
    }
}
