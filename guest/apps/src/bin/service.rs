//! A fleet member: does `init-ms` of work, calls `ready()`, then waits in
//! the host (no host core burnt) until the VMM asks it to stop, and exits 0.
//!
//! Options (command line): `init-ms=N` work before `ready()`;
//! `no-ready` never becomes ready (waits to be stopped); `crash-after-ms=N`
//! panics N ms after `ready()`; `crash-once` only crashes when the VM was
//! cold-booted (a VM restored from a snapshot carries on); `exit=N` exits
//! with code N right after `ready()`.
#![no_std]
#![no_main]

use core::time::Duration;

use tandem_guest::prelude::*;
use tandem_guest::{idle, Wake};

tandem_guest::entry!(main);

#[derive(Default)]
struct Options {
    init_ms: u64,
    no_ready: bool,
    crash_after_ms: Option<u64>,
    crash_once: bool,
    exit: Option<u8>,
}

fn options(env: &Env) -> Result<Options, String> {
    let mut o = Options::default();
    for word in env.args() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("`{word}`: expected a number"))
        };
        match key {
            "init-ms" => o.init_ms = num()?,
            "no-ready" => o.no_ready = true,
            "crash-after-ms" => o.crash_after_ms = Some(num()?),
            "crash-once" => o.crash_once = true,
            "exit" => {
                o.exit = Some(u8::try_from(num()?).map_err(|_| format!("`{word}`: 0 to 255"))?)
            }
            _ => return Err(format!("unknown option `{word}`")),
        }
    }
    Ok(o)
}

/// Stands for the app's own initialisation: `ms` of native work at CPL3.
fn work(ms: u64) {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < Duration::from_millis(ms) {
        for _ in 0..1000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        core::hint::black_box(x);
    }
}

fn main(env: &Env) -> Result<(), String> {
    let o = options(env)?;
    work(o.init_ms);
    if o.no_ready {
        tandem_guest::idle::until_stopped();
        return Ok(());
    }
    ready();
    if let Some(code) = o.exit {
        exit(code);
    }
    if let Some(ms) = o.crash_after_ms {
        let cold = env.restores() == 0;
        if cold || !o.crash_once {
            if idle(Duration::from_millis(ms)) == Wake::Stop {
                return Ok(());
            }
            panic!("service crashes {ms} ms after ready, as asked");
        }
    }
    tandem_guest::idle::until_stopped();
    Ok(())
}
