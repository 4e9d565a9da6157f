//! Dirties a fixed set of pages over and over while timestamping its own
//! loop: the guest's view of what backup points cost it. Every loop turn
//! reads the TSC (raw: the guest TSC is the host's, and the guest clock's
//! adjustment would hide a pause), and a turn longer than `gap-us` is a
//! gap the guest was not running for, recorded with its start.
//!
//! Words of the command line (any order):
//! - `pages=N`: pages of heap dirtied per burst (default 1024);
//! - `every-us=N`: one burst (a word written into each page) every N µs (default 10000);
//! - `run-ms=N`: exit 0 after N ms (default 2000);
//! - `gap-us=N`: record gaps longer than N µs (default 200).
//!
//! At exit it prints `dirtier: bursts B gaps G max-gap-us M`, then
//! `dirtier: tsc-khz K`, one `gap START LEN` line per recorded gap (TSC
//! ticks), then `dirtier: done`.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;
use tandem_guest::time::{rdtsc, tsc_khz};

tandem_guest::entry!(main);

const PAGE: usize = 4096;
/// Most gaps kept (the longest are kept once full).
const MAX_GAPS: usize = 8192;

struct Options {
    pages: usize,
    every_us: u64,
    run_ms: u64,
    gap_us: u64,
}

fn options(env: &Env) -> Result<Options, String> {
    let mut o = Options {
        pages: 1024,
        every_us: 10_000,
        run_ms: 2000,
        gap_us: 200,
    };
    for word in env.args() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let num = value
            .parse::<u64>()
            .map_err(|_| format!("`{word}`: expected a number"))?;
        match key {
            "pages" => o.pages = usize::try_from(num.clamp(1, 1 << 18)).unwrap_or(1),
            "every-us" => o.every_us = num.max(1),
            "run-ms" => o.run_ms = num,
            "gap-us" => o.gap_us = num.max(1),
            _ => return Err(format!("unknown option `{word}`")),
        }
    }
    Ok(o)
}

/// The loop's clock and the gaps it saw.
struct Watch {
    last: u64,
    gap: u64,
    max: u64,
    gaps: Vec<(u64, u64)>,
}

impl Watch {
    /// One turn: a gap since the last one is recorded.
    #[inline(always)]
    fn tick(&mut self) -> u64 {
        let now = rdtsc();
        let d = now.wrapping_sub(self.last);
        if d > self.gap {
            self.max = self.max.max(d);
            if self.gaps.len() < MAX_GAPS {
                self.gaps.push((self.last, d));
            }
        }
        self.last = now;
        now
    }
}

fn main(env: &Env) -> Result<(), String> {
    let o = options(env)?;
    let khz = tsc_khz().max(1);
    let ticks_in_micros = |us: u64| us.saturating_mul(khz) / 1000;
    let mut table = vec![0u8; o.pages * PAGE];
    // Touch every page once before the clock starts.
    for p in table.chunks_mut(PAGE) {
        p[0] = 1;
    }
    let every = ticks_in_micros(o.every_us);
    let mut w = Watch {
        last: rdtsc(),
        gap: ticks_in_micros(o.gap_us),
        max: 0,
        gaps: Vec::with_capacity(MAX_GAPS),
    };
    let start = w.last;
    let end = start.saturating_add(o.run_ms.saturating_mul(khz));
    let mut next = start;
    let mut bursts: u64 = 0;
    loop {
        let now = w.tick();
        if now >= end {
            break;
        }
        if now >= next {
            bursts += 1;
            for p in table.chunks_mut(PAGE) {
                p[8..16].copy_from_slice(&bursts.to_le_bytes());
                w.tick();
            }
            next = next.saturating_add(every).max(w.last);
        }
        core::hint::spin_loop();
    }
    println!(
        "dirtier: bursts {bursts} gaps {} max-gap-us {}",
        w.gaps.len(),
        w.max.saturating_mul(1000) / khz
    );
    println!("dirtier: tsc-khz {khz}");
    for (at, len) in &w.gaps {
        println!("gap {at} {len}");
    }
    println!("dirtier: done");
    Ok(())
}
