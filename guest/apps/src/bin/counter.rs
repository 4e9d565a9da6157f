//! A stateful app that makes snapshot continuity visible: it counts, folds
//! every step into a running hash and a heap table, and prints both, so a VM
//! restored from a snapshot visibly carries on from exactly where it was.
//!
//! Words of the command line (any order):
//! - `ready`: call `ready()` before counting (for `--snapshot-at-ready`);
//! - `snapshot-at=N`: ask the host for a snapshot after step N (repeatable);
//! - `exit-at=N`: exit 0 after step N (default: count forever);
//! - `pages=N`: spread the state over N heap pages (default 16), one written per step;
//! - `every=N`: print only every Nth step (default 1);
//! - `pause-us=N`: busy-wait N microseconds between steps (default 0);
//! - `fill`: fill every table page with a pattern before `ready()` and check
//!   every byte of it at exit (so a restore that loses a page shows);
//! - `spare=N`: fill N more heap pages with another pattern before `ready()`
//!   and never read them again (memory a restored guest never touches).
#![no_std]
#![no_main]

use tandem_guest::env::{snapshot, SnapshotOutcome};
use tandem_guest::prelude::*;

tandem_guest::entry!(main);

const PAGE: usize = 4096;

struct Options {
    ready: bool,
    snapshots: Vec<u64>,
    exit_at: Option<u64>,
    pages: usize,
    every: u64,
    pause_us: u64,
    fill: bool,
    spare: usize,
}

fn options(env: &Env) -> Result<Options, String> {
    let mut o = Options {
        ready: false,
        snapshots: Vec::new(),
        exit_at: None,
        pages: 16,
        every: 1,
        pause_us: 0,
        fill: false,
        spare: 0,
    };
    for word in env.args() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("`{word}`: expected a number"))
        };
        match key {
            "ready" => o.ready = true,
            "snapshot-at" => o.snapshots.push(num()?),
            "exit-at" => o.exit_at = Some(num()?),
            "pages" => o.pages = usize::try_from(num()?.clamp(1, 1 << 16)).unwrap_or(1),
            "every" => o.every = num()?.max(1),
            "pause-us" => o.pause_us = num()?,
            "fill" => o.fill = true,
            "spare" => o.spare = usize::try_from(num()?.min(1 << 16)).unwrap_or(0),
            _ => return Err(format!("unknown option `{word}`")),
        }
    }
    Ok(o)
}

/// FNV-1a step: the hash of the whole history of the count.
fn fold(hash: u64, value: u64) -> u64 {
    let mut h = hash;
    for b in value.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The byte `fill` puts at table offset `i`.
fn pattern(i: usize) -> u8 {
    let low = |x: usize| u8::try_from(x % 256).unwrap_or(0);
    low(i) ^ low(i / PAGE).wrapping_mul(31) ^ 0x5A
}

fn main(env: &Env) -> Result<(), String> {
    let o = options(env)?;
    let mut table = vec![0u8; o.pages * PAGE];
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    let mut last = Instant::now();
    println!(
        "counter: generation {} restores {}",
        env.generation(),
        env.restores()
    );
    if o.fill {
        for (i, b) in table.iter_mut().enumerate() {
            *b = pattern(i);
        }
    }
    // Written once, kept, never read again.
    let spare: Vec<u8> = (0..o.spare * PAGE)
        .map(|i| u8::try_from(i % 251).unwrap_or(0) ^ 0xA5)
        .collect();
    let spare = core::hint::black_box(spare);
    if o.ready {
        ready();
    }
    let mut count: u64 = 0;
    loop {
        count += 1;
        hash = fold(hash, count);
        let page = usize::try_from(count).unwrap_or(0) % o.pages;
        table[page * PAGE..page * PAGE + 8].copy_from_slice(&hash.to_le_bytes());
        let now = Instant::now();
        if now < last {
            println!("counter: CLOCK WENT BACKWARDS at {count}");
        }
        last = now;
        if count.is_multiple_of(o.every) || o.exit_at == Some(count) {
            println!("count {count} hash {hash:016x}");
        }
        if o.snapshots.contains(&count) {
            let before = Instant::now();
            let outcome = snapshot();
            let gap = before.elapsed();
            match outcome {
                SnapshotOutcome::Taken => println!("snapshot at {count}: taken"),
                SnapshotOutcome::Restored => println!(
                    "snapshot at {count}: restored, generation {} restores {} clock gap {} us",
                    env.generation(),
                    env.restores(),
                    gap.as_micros()
                ),
                SnapshotOutcome::NotTaken => println!("snapshot at {count}: not taken"),
            }
        }
        if o.exit_at == Some(count) {
            let sum = table.chunks(PAGE).fold(0u64, |acc, p| {
                fold(acc, u64::from_le_bytes(p[..8].try_into().unwrap_or([0; 8])))
            });
            if o.fill {
                // Bytes 0..8 of each page hold the hash of a step.
                let bad = table
                    .iter()
                    .enumerate()
                    .find(|&(i, &b)| i % PAGE >= 8 && b != pattern(i));
                match bad {
                    None => println!("fill check: {} pages intact", o.pages),
                    Some((i, _)) => println!("fill check: byte {i} WRONG"),
                }
            }
            println!(
                "final count {count} hash {hash:016x} table {sum:016x} generation {}",
                env.generation()
            );
            core::mem::forget(spare);
            return Ok(());
        }
        if o.pause_us > 0 {
            let start = Instant::now();
            while start.elapsed().as_micros() < u128::from(o.pause_us) {
                core::hint::spin_loop();
            }
        }
    }
}
