//! A persistent key-value store on the first disk: an append-only log of
//! checksummed records (`tandem_kvlog`), replayed on start. Commands on
//! standard input, one a line: `put KEY VALUE` answers `ok` once the
//! record is on the disk and flushed; `get KEY` the value or `missing`;
//! `del KEY` `ok`; `snapshot` asks the VMM for a snapshot (memory and
//! disk at one instant) and answers `snapshot taken` (or `not taken`), and
//! `restored` in a VM restored from it. Anything else, or a failed write,
//! answers `error: ...`. `kvstore-net` serves the same over TCP.
#![no_std]
#![no_main]

use tandem_guest::prelude::*;
use tandem_kvlog::protocol::Lines;

#[path = "../kvstore_serve.rs"]
mod kvstore_serve;

tandem_guest::entry!(main, devices = [block]);

fn main(_env: &Env) -> u8 {
    let mut store = match kvstore_serve::open() {
        Ok(s) => s,
        Err(code) => return code,
    };
    tandem_guest::ready();
    let mut buf = [0u8; 4096];
    let mut lines = Lines::default();
    loop {
        let n = tandem_guest::stdin::read(&mut buf);
        if n == 0 {
            break;
        }
        lines.push(&buf[..n], |line| {
            if let Some(a) = kvstore_serve::answer(&mut store, line) {
                println!("{a}");
            }
        });
    }
    let rest = lines.take_rest();
    if let Some(a) = kvstore_serve::answer(&mut store, &rest) {
        println!("{a}");
    }
    0
}
