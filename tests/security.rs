//! The VMM's own defences, seen from outside: the seccomp filter is active
//! while a guest runs, `--no-seccomp` says so loudly, and a console-flooding
//! guest is cut off at the limit with a clear message.

use std::process::{Command, Stdio};

use tandem_tests::{image_path, require_kvm, tandem, tandem_bin};

/// The `Seccomp:` and `Seccomp_filters:` lines of a running `tandem`, read
/// once its guest is running (it has printed its first line), and stderr.
fn seccomp_status(extra: &[&str]) -> (String, String) {
    use std::io::{BufRead, BufReader};
    require_kvm();
    let image = image_path("spin");
    let mut child = Command::new(tandem_bin())
        .args(["run", image.to_str().unwrap(), "--timeout", "20s", "-q"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    assert!(
        line.contains("spinning forever"),
        "the guest did not start: {line:?}"
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or("")
            .to_string()
    };
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let found = format!(
        "{} {}\n{}\n{}\n{}",
        field("Seccomp:"),
        field("Seccomp_filters:"),
        field("Uid:"),
        field("NoNewPrivs:"),
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or("")
    );
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    (found, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn seccomp_filter_is_active_while_the_guest_runs() {
    let (status, _) = seccomp_status(&[]);
    // 2 = SECCOMP_MODE_FILTER.
    assert!(status.starts_with("Seccomp:\t2"), "{status}");
    assert!(!status.contains("Seccomp_filters:\t0\n"), "{status}");
}

#[test]
fn no_seccomp_runs_unfiltered_and_says_so() {
    let (status, stderr) = seccomp_status(&["--no-seccomp"]);
    assert!(status.starts_with("Seccomp:\t0"), "{status}");
    assert!(stderr.contains("WARNING: --no-seccomp"), "{stderr}");
}

#[test]
fn console_flood_is_cut_off_at_the_limit() {
    let image = image_path("flood");
    let run = tandem(&[
        "run",
        image.to_str().unwrap(),
        "--console-limit",
        "64K",
        "--timeout",
        "1s",
    ]);
    assert_eq!(run.code, Some(124), "{}", run.stderr);
    assert_eq!(run.stdout.len(), 64 * 1024, "stdout must stop at the limit");
    assert!(
        run.stdout.starts_with("flood line 0:"),
        "{}",
        &run.stdout[..80]
    );
    assert!(
        run.stderr
            .contains("console reached its limit of 65536 bytes"),
        "{}",
        run.stderr
    );
}

#[test]
fn root_drops_to_user_with_limits_and_no_new_privs() {
    // These machines run the tests as root; a user of the tests who is not
    // root cannot change uid, so the check needs root.
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .unwrap();
    assert_eq!(uid, "0", "this test needs root (to drop to --user nobody)");
    let (status, stderr) = seccomp_status(&["--user", "nobody", "--max-open-files", "64"]);
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}\n{stderr}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(
        status.contains("Max open files            64                   64"),
        "{status}"
    );
    assert!(status.starts_with("Seccomp:\t2"), "{status}");
}

#[test]
fn unknown_user_is_refused_before_anything_runs() {
    let image = image_path("hello");
    let run = tandem(&[
        "run",
        image.to_str().unwrap(),
        "--user",
        "no-such-user-tandem",
    ]);
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(
        run.stderr.contains("no user named \"no-such-user-tandem\""),
        "{}",
        run.stderr
    );
}

#[test]
fn group_without_user_is_refused() {
    // Without --user the VMM would stay root: each command that takes
    // --group refuses it alone, before it reads its image, snapshot or
    // fleet file (none of these exist).
    for args in [
        &["run", "/nonexistent/image", "--group", "nogroup"][..],
        &["restore", "/nonexistent/snapshot", "--group", "nogroup"],
        &["fleet", "/nonexistent/fleet.toml", "--group", "nogroup"],
    ] {
        let run = tandem(args);
        assert_eq!(run.code, Some(125), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("--group \"nogroup\" needs --user: without a user to become, the VMM would stay root"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("/nonexistent"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn console_flood_is_rate_limited() {
    let image = image_path("flood");
    let start = std::time::Instant::now();
    let run = tandem(&[
        "run",
        image.to_str().unwrap(),
        "--console-rate",
        "50K",
        "--timeout",
        "1s",
    ]);
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(run.code, Some(124), "{}", run.stderr);
    // A burst of one second's worth, then the rate, for as long as it ran.
    let bound = 50.0 * 1024.0 * (1.0 + elapsed);
    assert!(
        (run.stdout.len() as f64) <= bound,
        "{} bytes in {elapsed:.2} s",
        run.stdout.len()
    );
    assert!(
        run.stdout.len() >= 50 * 1024,
        "the burst came through: {}",
        run.stdout.len()
    );
    assert!(
        run.stderr
            .contains("console exceeds 51200 bytes per second"),
        "{}",
        run.stderr
    );
}
