//! The boot trace: `--trace FILE` writes Chrome trace-event JSON with every
//! phase, in boot order, on one clock.

use tandem_abi::trace::Phase;
use tandem_tests::run_app;

#[test]
fn trace_file_is_valid_json_with_phases_in_order() {
    let dir = std::env::temp_dir().join(format!("tandem-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("boot.json");
    let run = run_app("hello", &["--trace", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text = std::fs::read_to_string(&path).expect("trace file written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("trace is valid JSON");
    let events: Vec<_> = v["traceEvents"]
        .as_array()
        .expect("traceEvents array")
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    let names: Vec<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let expected: Vec<&str> = Phase::ALL
        .iter()
        .filter(|p| **p != Phase::AppReady) // hello never calls ready()
        .map(|p| p.name())
        .collect();
    assert_eq!(names, expected, "phases missing or out of order");
    let mut last_end = 0.0;
    for e in &events {
        let ts = e["ts"].as_f64().unwrap();
        let dur = e["dur"].as_f64().unwrap();
        assert!(
            dur >= 0.0 && ts + 1e-6 >= last_end,
            "event {e} goes back in time"
        );
        last_end = ts + dur;
    }
    assert!(events.iter().any(|e| e["cat"] == "guest"));
    std::fs::remove_dir_all(&dir).ok();
}
