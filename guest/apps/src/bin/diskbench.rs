//! Moves data on the first disk and says how long it took, for `cargo
//! xtask bench disk` and the rate-limit test: `diskbench MODE N` with MODE
//! `seqwrite` or `seqread` (N MiB in 1 MiB calls, each a batch of 16
//! requests) or `randwrite` or `randread` (N 4 KiB requests at scattered
//! places, one a call). Writes end with a flush, counted in the time.
//! `seqverify N` reads N MiB as `seqread` does and checks them against the
//! pattern `seqwrite` writes (byte `i` of each MiB is `i % 251`).
//! Prints `diskbench: MODE BYTES bytes REQUESTS requests MICROS us`, then
//! calls `ready()` (in a fleet, its disk is written once it is ready).
#![no_std]
#![no_main]

use tandem_guest::blk::{Disk, SECTOR_SIZE};
use tandem_guest::prelude::*;

tandem_guest::entry!(main, devices = [block]);

const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;

fn main(env: &Env) -> Result<(), String> {
    let mut args = env.args();
    let mode = args.next().unwrap_or_default();
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: diskbench seqwrite|seqread|randwrite|randread N")?;
    let mut disk = Disk::open(0).map_err(|e| format!("no disk: {e}"))?;
    let sectors = disk.capacity();
    let per_block = (BLOCK / SECTOR_SIZE) as u64;
    let blocks = sectors / per_block;
    let seq = mode.starts_with("seq");
    let unit = if seq { MIB } else { BLOCK };
    if seq && (n * MIB / SECTOR_SIZE) as u64 > sectors || blocks == 0 {
        return Err(format!("the disk's {sectors} sectors are too few"));
    }
    let mut buf = vec![0u8; unit];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    // A fixed scatter (an LCG), so runs are alike.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut place = |i: usize| {
        if seq {
            (i * unit / SECTOR_SIZE) as u64
        } else {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % blocks * per_block
        }
    };
    let start = Instant::now();
    let requests_per_call = if seq { unit / (64 * 1024) } else { 1 };
    for i in 0..n {
        let at = place(i);
        let r = match mode {
            "seqwrite" | "randwrite" => disk.write(at, &buf),
            "seqread" | "randread" => disk.read(at, &mut buf),
            "seqverify" => {
                buf.fill(0);
                disk.read(at, &mut buf)
            }
            .and_then(|()| {
                match buf
                    .iter()
                    .enumerate()
                    .position(|(j, &b)| b != (j % 251) as u8)
                {
                    Some(j) => {
                        println!("diskbench: byte {} of MiB {i} differs", j);
                        Err(tandem_guest::blk::Error::Io)
                    }
                    None => Ok(()),
                }
            }),
            _ => return Err(format!("unknown mode {mode}")),
        };
        r.map_err(|e| format!("{mode} at sector {at}: {e}"))?;
    }
    let mut requests = n * requests_per_call;
    if mode.ends_with("write") {
        disk.flush().map_err(|e| format!("flush: {e}"))?;
        requests += 1;
    }
    let us = start.elapsed().as_micros();
    println!(
        "diskbench: {mode} {} bytes {requests} requests {us} us",
        n * unit
    );
    // Done (and flushed): a fleet member is ready once its disk is written.
    tandem_guest::ready();
    Ok(())
}
