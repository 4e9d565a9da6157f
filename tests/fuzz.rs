//! Replays every saved fuzz input on stable Rust: the seed corpus and every
//! crash a fuzzing run found (`fuzz/corpus/<target>/seed-*`,
//! `fuzz/regressions/<target>/*`), through the same bodies the cargo-fuzz
//! targets run (`tandem::fuzzing`). A decoder that panics on one fails here.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_target_has_a_fuzz_target_file_and_seeds() {
    let root = fuzz_dir();
    for (name, _) in tandem::fuzzing::TARGETS {
        let target = root.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(
            target.is_file(),
            "no cargo-fuzz target {}",
            target.display()
        );
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(
            !seeds.is_empty(),
            "no seed inputs for {name} in fuzz/corpus/{name}"
        );
    }
    // And no target file without a body.
    for file in inputs(&root.join("fuzz_targets")) {
        let name = file.file_stem().unwrap().to_str().unwrap();
        assert!(
            tandem::fuzzing::target(name).is_some(),
            "fuzz target {name} has no body in tandem::fuzzing"
        );
    }
}

#[test]
fn saved_inputs_replay_without_panics() {
    let root = fuzz_dir();
    let mut replayed = 0;
    for (name, body) in tandem::fuzzing::TARGETS {
        for dir in [
            root.join("corpus").join(name),
            root.join("regressions").join(name),
        ] {
            for file in inputs(&dir) {
                let bytes = std::fs::read(&file).unwrap();
                body(&bytes);
                replayed += 1;
            }
        }
    }
    assert!(replayed >= tandem::fuzzing::TARGETS.len());
}
