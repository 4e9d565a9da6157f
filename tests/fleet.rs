//! `tandem fleet`: ordering, priorities, admission limits, restarts and
//! recovery, config errors, shutdown, and a fleet of 50 VMs, checked from
//! the JSON report the real binary writes (recorded times, never speed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tandem_tests::{image_path, require_kvm, tandem, tandem_bin, CliRun};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `body` as a fleet file in `dir`, with the service image as the default.
fn write_fleet(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fleet.toml");
    let service = image_path("service");
    let text = format!(
        "[defaults]\nimage = \"{}\"\nmemory = \"8M\"\nboot_timeout = \"20s\"\n\n{body}",
        service.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `tandem fleet` on `body`; returns the process and its JSON report.
fn fleet(name: &str, body: &str, args: &[&str]) -> (CliRun, Value) {
    let dir = scratch(name);
    let config = write_fleet(&dir, body);
    let json = dir.join("report.json");
    let mut all = vec![
        "fleet",
        config.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "-q",
    ];
    all.extend_from_slice(args);
    let run = tandem(&all);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); exit {:?}, stderr:\n{}",
            run.code, run.stderr
        )
    });
    (run, serde_json::from_str(&text).unwrap())
}

fn vm<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in the report"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn dependencies_gate_on_ready_and_priorities_order_admission() {
    require_kvm();
    let (run, report) = fleet(
        "order",
        r#"
        [[vm]]
        name = "db"
        priority = 1
        cmdline = "init-ms=5"
        [[vm]]
        name = "cache"
        priority = 1
        after = ["db"]
        [[vm]]
        name = "api"
        count = 3
        priority = 50
        after = ["db", "cache"]
        [[vm]]
        name = "low"
        count = 4
        priority = 0
        [[vm]]
        name = "high"
        count = 4
        priority = 100
        "#,
        &["--stop-when-ready", "--max-concurrent-boots", "1"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(f(&report["summary"]["ready"]), vms.len() as f64);
    // No VM reaches main (or is even admitted) before its dependencies are ready.
    for v in vms {
        for dep in v["after"].as_array().unwrap() {
            let dep_ready = f(&vm(&report, dep.as_str().unwrap())["ready_ms"]);
            let a = &v["attempts"][0];
            assert!(
                f(&a["admitted_ms"]) >= dep_ready,
                "{} admitted before {dep} was ready",
                v["name"]
            );
            assert!(
                f(&a["main_ms"]) >= dep_ready,
                "{} reached main before {dep} was ready",
                v["name"]
            );
        }
    }
    // With one boot at a time, VMs eligible together are admitted highest priority first.
    let admitted = |v: &Value| f(&v["attempts"][0]["admitted_ms"]);
    let eligible = |v: &Value| f(&v["attempts"][0]["eligible_ms"]);
    for a in vms {
        for b in vms {
            let (pa, pb) = (
                a["priority"].as_i64().unwrap(),
                b["priority"].as_i64().unwrap(),
            );
            if pa > pb && eligible(a) <= eligible(b) {
                assert!(
                    admitted(a) <= admitted(b),
                    "{} (priority {pa}) admitted after {} (priority {pb})",
                    a["name"],
                    b["name"]
                );
            }
        }
    }
    // The cap is never exceeded.
    for s in report["timeline"].as_array().unwrap() {
        assert!(f(&s["booting"]) <= 1.0, "{s}");
    }
}

#[test]
fn memory_budget_and_concurrency_cap_hold() {
    require_kvm();
    // Each VM exits once ready, so memory comes back and the queue drains.
    let (run, report) = fleet(
        "budget",
        r#"
        [[vm]]
        name = "job"
        count = 16
        cmdline = "init-ms=2 exit=0"
        "#,
        &[
            "--stop-when-ready",
            "--max-concurrent-boots",
            "2",
            "--memory-budget",
            "24M",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(f(&report["summary"]["ready"]), 16.0);
    let timeline = report["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    for s in timeline {
        assert!(f(&s["booting"]) <= 2.0, "{s}");
        assert!(f(&s["memory"]) <= (24u64 << 20) as f64, "{s}");
        assert!(f(&s["live"]) <= 3.0, "{s}");
    }
    assert!(f(&report["summary"]["peak_memory"]) <= (24u64 << 20) as f64);
}

#[test]
fn crashing_vm_is_restarted_per_policy_then_given_up() {
    require_kvm();
    let (run, report) = fleet(
        "restart",
        r#"
        [[vm]]
        name = "crasher"
        cmdline = "crash-after-ms=10"
        restart = "on-failure"
        max_restarts = 2
        backoff = "5ms"
        [[vm]]
        name = "once"
        cmdline = "exit=3"
        restart = "never"
        [[vm]]
        name = "fine"
        "#,
        &["--stop-after", "3s"],
    );
    assert_eq!(
        run.code,
        Some(1),
        "a failed VM makes the fleet fail: {}",
        run.stderr
    );
    let c = vm(&report, "crasher");
    assert_eq!(c["state"], "failed", "{c}");
    assert_eq!(c["restarts"], 2);
    assert_eq!(c["exit_codes"], serde_json::json!([101, 101, 101]));
    assert_eq!(c["recoveries_ms"].as_array().unwrap().len(), 2);
    assert!(c["reason"].as_str().unwrap().contains("given up"), "{c}");
    let o = vm(&report, "once");
    assert_eq!(o["restarts"], 0);
    assert_eq!(o["exit_codes"], serde_json::json!([3]));
    // One VM's failures end only itself.
    assert_eq!(vm(&report, "fine")["state"], "finished");
}

#[test]
fn crashed_vm_recovers_from_its_checkpoint_and_from_its_snapshot() {
    require_kvm();
    let dir = scratch("recover");
    // A snapshot taken at ready() of a service that crashes 10 ms later.
    let snap = dir.join("snap");
    let made = tandem(&[
        "run",
        image_path("service").to_str().unwrap(),
        "--mem",
        "8M",
        "--cmdline",
        "crash-after-ms=10",
        "--snapshot-at-ready",
        snap.to_str().unwrap(),
        "--exit-after-snapshot",
        "-q",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let ck = dir.join("ck");
    let body = format!(
        r#"
        [[vm]]
        name = "worker"
        cmdline = "crash-after-ms=10 crash-once"
        restart = "on-failure"
        backoff = "5ms"
        checkpoint = "{}"
        [[vm]]
        name = "warm"
        snapshot = "{}"
        restart = "on-failure"
        max_restarts = 2
        backoff = "5ms"
        "#,
        ck.display(),
        snap.display()
    );
    let (_, report) = fleet("recover-run", &body, &["--stop-after", "2s"]);
    // The worker crashed once, cold, and came back from its checkpoint,
    // where (restored) it no longer crashes.
    let w = vm(&report, "worker");
    let attempts = w["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["source"], "cold", "{w}");
    assert_eq!(attempts[0]["exit_code"], 101, "{w}");
    assert_eq!(attempts[1]["source"], "checkpoint", "{w}");
    assert_eq!(w["restarts"], 1, "{w}");
    assert_eq!(w["state"], "finished", "{w}");
    assert_eq!(w["recoveries_ms"].as_array().unwrap().len(), 1);
    // The warm VM starts from its snapshot and every restart does too.
    let warm = vm(&report, "warm");
    let attempts = warm["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{warm}");
    assert!(attempts.iter().all(|a| a["source"] == "snapshot"), "{warm}");
    assert!(attempts.iter().all(|a| a["exit_code"] == 101), "{warm}");
    assert_eq!(warm["state"], "failed");
}

#[test]
fn boot_timeout_fails_the_vm_and_blocks_its_dependents() {
    require_kvm();
    let (run, report) = fleet(
        "timeout",
        r#"
        [[vm]]
        name = "stuck"
        cmdline = "no-ready"
        boot_timeout = "100ms"
        [[vm]]
        name = "needs-stuck"
        after = ["stuck"]
        [[vm]]
        name = "indirect"
        after = ["needs-stuck"]
        "#,
        &["--stop-when-ready"],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let s = vm(&report, "stuck");
    assert_eq!(s["state"], "failed");
    assert!(
        s["reason"].as_str().unwrap().contains("boot_timeout"),
        "{s}"
    );
    for name in ["needs-stuck", "indirect"] {
        let d = vm(&report, name);
        assert_eq!(d["state"], "blocked", "{d}");
        assert!(d["reason"].as_str().unwrap().contains("dependency"), "{d}");
        assert!(d["attempts"].as_array().unwrap().is_empty());
    }
    assert!(run.stderr.contains("needs-stuck blocked"), "{}", run.stderr);
}

#[test]
fn every_config_error_is_reported_together() {
    require_kvm();
    let dir = scratch("errors");
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        r#"
        [[vm]]
        name = "a"
        image = "no-such-image.elf"
        after = ["b", "ghost"]
        [[vm]]
        name = "b"
        image = "no-such-image.elf"
        after = ["a"]
        [[vm]]
        name = "a"
        image = "no-such-image.elf"
        memory = "1G"
        [[vm]]
        name = "c"
        image = "no-such-image.elf"
        restart = "sometimes"
        boot_timeout = "soon"
        "#,
    )
    .unwrap();
    let run = tandem(&["fleet", path.to_str().unwrap(), "--memory-budget", "512M"]);
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    // Each problem at its line and column (the text starts with a newline).
    for needle in [
        "11:16: duplicate VM name `a`",
        "5:23: vm `a`: `after` names `ghost`, which is not a VM",
        "9:18: dependency cycle: a -> b -> a",
        "no-such-image.elf",
        "13:18: vm `a` needs 1024 MiB, more than the whole memory budget",
        "17:19: vm `c`: `restart`: \"sometimes\"",
        "18:24: vm `c`: `boot_timeout`",
    ] {
        assert!(
            run.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            run.stderr
        );
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[vm]\nname=").unwrap();
    let run = tandem(&["fleet", bad.to_str().unwrap()]);
    assert_eq!(run.code, Some(125));
    assert!(
        run.stderr.contains("not valid TOML: 1:6: "),
        "{}",
        run.stderr
    );
}

#[test]
fn fifty_vms_boot_to_ready() {
    require_kvm();
    let (run, report) = fleet(
        "fifty",
        r#"
        [[vm]]
        name = "core"
        priority = 10
        [[vm]]
        name = "svc"
        count = 49
        after = ["core"]
        "#,
        &["--stop-when-ready"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(f(&report["summary"]["ready"]), 50.0);
    assert!(report["summary"]["all_ready_ms"].is_number());
    assert!(report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["state"] == "finished" && v["exit_codes"] == serde_json::json!([0])));
}

#[test]
fn sigterm_stops_in_reverse_dependency_order() {
    require_kvm();
    let dir = scratch("sigterm");
    let config = write_fleet(
        &dir,
        r#"
        [[vm]]
        name = "db"
        [[vm]]
        name = "app"
        after = ["db"]
        [[vm]]
        name = "web"
        after = ["app"]
        "#,
    );
    let json = dir.join("report.json");
    let svg = dir.join("timeline.svg");
    let mut child = Command::new(tandem_bin())
        .args(["fleet", config.to_str().unwrap(), "--json"])
        .arg(&json)
        .arg("--timeline")
        .arg(&svg)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("web: ready") {
            break;
        }
    }
    assert!(seen.contains("web: ready"), "{seen}");
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen}{}", rest.join("\n"));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ended = |n: &str| f(&vm(&report, n)["attempts"][0]["ended_ms"]);
    assert!(
        ended("web") <= ended("app") && ended("app") <= ended("db"),
        "{report}"
    );
    assert_eq!(
        report["summary"]["running_at_stop"],
        serde_json::json!(["db", "app", "web"])
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("web (0)"));
}

#[test]
fn hostile_vm_is_stopped_without_disturbing_its_neighbours() {
    require_kvm();
    let hostile = image_path("hostile");
    let fuzzer = image_path("hfuzz");
    let body = format!(
        r#"
        [[vm]]
        name = "left"
        [[vm]]
        name = "bad-request"
        image = "{}"
        cmdline = "huge-length"
        restart = "never"
        [[vm]]
        name = "fuzzer"
        image = "{}"
        cmdline = "7 5000"
        restart = "never"
        [[vm]]
        name = "right"
        after = ["left"]
        "#,
        hostile.display(),
        fuzzer.display()
    );
    let (run, report) = fleet("hostile", &body, &["--stop-after", "2s"]);
    assert_eq!(
        run.code,
        Some(1),
        "a failed VM makes the fleet fail: {}",
        run.stderr
    );
    let bad = vm(&report, "bad-request");
    assert_eq!(bad["state"], "failed", "{bad}");
    let reason = bad["reason"].as_str().unwrap_or("");
    assert!(reason.contains("request length 4294967295"), "{bad}");
    // The neighbours came up and ran until the fleet was stopped.
    for name in ["left", "right"] {
        let v = vm(&report, name);
        assert_eq!(v["state"], "finished", "{v}");
        assert!(v["ready_ms"].is_number(), "{v}");
        assert_eq!(v["restarts"], 0, "{v}");
    }
}

#[test]
fn fleet_drops_to_user_before_booting() {
    require_kvm();
    // The report is written by the dropped user: let it write the folder.
    let dir = scratch("user");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let config = write_fleet(
        &dir,
        "[[vm]]\nname = \"a\"\n[[vm]]\nname = \"b\"\nafter = [\"a\"]\n",
    );
    let json = dir.join("report.json");
    let run = tandem(&[
        "fleet",
        config.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--stop-when-ready",
        "--user",
        "nobody",
        "-q",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(vm(&report, "b")["state"], "finished", "{report}");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&json).unwrap());
    assert_eq!(owner, 65534, "the report was written by the dropped user");
}

#[test]
fn replicas_write_their_own_disks() {
    require_kvm();
    let dir = scratch("disks");
    for i in 0..2 {
        let f = std::fs::File::create(dir.join(format!("d{i}.img"))).unwrap();
        f.set_len(4 << 20).unwrap();
    }
    let body = format!(
        r#"
        [[vm]]
        name = "w"
        image = "{}"
        count = 2
        cmdline = "seqwrite 2"
        disk = ["path=d{{i}}.img"]
        io_rate = "64M"
        "#,
        image_path("diskbench").display()
    );
    let config = write_fleet(&dir, &body);
    let check = tandem(&["fleet", config.to_str().unwrap(), "--check"]);
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    for i in 0..2 {
        let line = format!(
            "disk {} (rw, {} B/s)",
            dir.join(format!("d{i}.img")).display(),
            64 << 20
        );
        assert!(
            check.stdout.contains(&line),
            "no `{line}` in:\n{}",
            check.stdout
        );
    }
    let json = dir.join("report.json");
    let run = tandem(&[
        "fleet",
        config.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}); exit {:?}:\n{}", run.code, run.stderr));
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(run.code, Some(0), "{}\n{report}", run.stderr);
    // diskbench's pattern: byte i of each MiB is i % 251, over 2 MiB.
    let pattern: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for i in 0..2 {
        let name = format!("w-{i}");
        assert_eq!(vm(&report, &name)["state"], "finished", "{report}");
        let disk = std::fs::read(dir.join(format!("d{i}.img"))).unwrap();
        assert_eq!(disk.len(), 4 << 20, "{name}'s disk changed size");
        for mib in 0..2 {
            assert!(
                disk[mib << 20..(mib + 1) << 20] == pattern[..],
                "{name} did not write MiB {mib} of its own disk"
            );
        }
        assert!(
            disk[2 << 20..].iter().all(|&b| b == 0),
            "{name}'s disk has writes past what it wrote"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes per second over `[from, to]` milliseconds.
fn rate(bytes: f64, from: f64, to: f64) -> f64 {
    assert!(to > from, "an empty window [{from}, {to}] ms");
    bytes / ((to - from) / 1e3)
}

#[test]
fn io_budget_holds_batch_vms_and_serves_the_critical_vm_first() {
    require_kvm();
    const MIB: u64 = 1 << 20;
    // 16 MiB/s for the fleet; three batch VMs write 16 MiB each flat out,
    // a critical VM 8 MiB. Without the budget the host takes them far
    // faster; without precedence the critical VM would get a quarter.
    let (budget, batch_mib, critical_mib) = (16 * MIB, 16u64, 8u64);
    let dir = scratch("iobudget");
    for (name, mib) in [
        ("b0", batch_mib),
        ("b1", batch_mib),
        ("b2", batch_mib),
        ("c", critical_mib),
    ] {
        let f = std::fs::File::create(dir.join(format!("{name}.img"))).unwrap();
        f.set_len(mib * MIB).unwrap();
    }
    let body = format!(
        r#"
        [fleet]
        io_budget = {{ rate = "16M", iops = 100000 }}

        [[vm]]
        name = "c"
        image = "{image}"
        priority = 10
        io_class = "critical"
        cmdline = "seqwrite {critical_mib}"
        disk = ["path=c.img"]

        [[vm]]
        name = "b"
        image = "{image}"
        count = 3
        io_class = "batch"
        cmdline = "seqwrite {batch_mib}"
        disk = ["path=b{{i}}.img"]
        "#,
        image = image_path("diskbench").display()
    );
    let config = write_fleet(&dir, &body);
    let json = dir.join("report.json");
    let run = tandem(&[
        "fleet",
        config.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--max-concurrent-boots",
        "8",
        "-q",
    ]);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}); exit {:?}:\n{}", run.code, run.stderr));
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(run.code, Some(0), "{}\n{report}", run.stderr);
    // (main, ready) of each VM's attempt, on the fleet's clock.
    let window = |name: &str| {
        let v = vm(&report, name);
        assert_eq!(v["state"], "finished", "{name}: {v}");
        let a = &v["attempts"][0];
        (f(&a["main_ms"]), f(&a["ready_ms"]))
    };
    let batch: Vec<(f64, f64)> = ["b-0", "b-1", "b-2"].iter().map(|n| window(n)).collect();
    for name in ["b-0", "b-1", "b-2"] {
        let io = &vm(&report, name)["io"];
        assert_eq!(io["bytes"].as_u64(), Some(batch_mib * MIB), "{name}: {io}");
        assert!(
            f(&io["held"]) > 0.0,
            "{name} was never held by the budget: {io}"
        );
    }
    let from = batch.iter().map(|w| w.0).fold(f64::MAX, f64::min);
    let to = batch.iter().map(|w| w.1).fold(0.0, f64::max);
    let combined = rate((3 * batch_mib * MIB) as f64, from, to);
    // Generous: half as much again as the budget (the host alone moves
    // these writes many times faster).
    assert!(
        combined <= budget as f64 * 1.5,
        "the batch VMs wrote {:.1} MiB/s together over [{from:.0}, {to:.0}] ms, past the 16 MiB/s budget",
        combined / MIB as f64
    );
    let (c_from, c_to) = window("c");
    let critical = rate((critical_mib * MIB) as f64, c_from, c_to);
    let fastest_batch = batch
        .iter()
        .map(|&(a, b)| rate((batch_mib * MIB) as f64, a, b))
        .fold(0.0, f64::max);
    // Strictly first, it has the budget nearly to itself while it writes
    // (sharing equally it would be about as slow as a batch VM).
    assert!(
        critical > 1.5 * fastest_batch,
        "the critical VM wrote at {:.1} MiB/s, the fastest batch VM at {:.1} MiB/s: it did not come first",
        critical / MIB as f64,
        fastest_batch / MIB as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
