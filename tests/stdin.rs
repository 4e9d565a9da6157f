//! The app's standard input (`Request::ReadStdin`): `tandem run` hands its
//! own stdin to the guest; end of input, and a run deadline while the guest
//! waits for input.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem_tests::{image_path, require_kvm, tandem_bin};

/// Runs `tandem run cat` with `input` on its stdin (`None`: /dev/null).
fn run_cat(input: Option<&[u8]>, extra: &[&str]) -> (Option<i32>, String, Duration) {
    require_kvm();
    let start = Instant::now();
    let mut child = Command::new(tandem_bin())
        .arg("run")
        .arg("-q")
        .args(extra)
        .arg(image_path("cat"))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start tandem");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = input.to_vec();
        // Written from a thread: the guest's output may fill the pipe first.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out = child.wait_with_output().expect("tandem run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn guest_reads_tandems_stdin_to_the_end() {
    let (code, out, _) = run_cat(Some(b"one\ntwo\nthree"), &["--timeout", "30s"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("> one\n> two\n> three\n"), "{out}");
    assert!(out.contains("stdin: 13 bytes, 3 lines"), "{out}");
}

#[test]
fn large_input_arrives_whole() {
    let line = "x".repeat(99) + "\n";
    let input = line.repeat(3000);
    let (code, out, _) = run_cat(Some(input.as_bytes()), &["--timeout", "30s"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("stdin: 300000 bytes, 3000 lines"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
}

#[test]
fn no_stdin_is_end_of_input() {
    let (code, out, _) = run_cat(None, &["--timeout", "30s"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("stdin: 0 bytes, 0 lines"), "{out}");
}

#[test]
fn deadline_ends_a_guest_waiting_for_input() {
    require_kvm();
    // stdin is a pipe nobody writes to or closes while tandem runs.
    let mut child = Command::new(tandem_bin())
        .args(["run", "-q", "--timeout", "300ms"])
        .arg(image_path("cat"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start tandem");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tandem run --timeout 300ms still waits for input after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(child.stdin.take());
    assert_eq!(status.code(), Some(124));
}
