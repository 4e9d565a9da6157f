//! A persistent key-value store on the first disk: an append-only log of
//! checksummed records (`tandem_kvlog`), replayed on start. Commands on
//! standard input, one a line: `put KEY VALUE` answers `ok` once the
//! record is on the disk and flushed; `get KEY` the value or `missing`;
//! `del KEY` `ok`; `snapshot` asks the VMM for a snapshot (memory and
//! disk at one instant) and answers `snapshot taken` (or `not taken`), and
//! `restored` in a VM restored from it. Anything else, or a failed write,
//! answers `error: ...`.
#![no_std]
#![no_main]

use tandem_guest::blk::{self, Disk};
use tandem_guest::env::SnapshotOutcome;
use tandem_guest::prelude::*;
use tandem_kvlog::Store;

tandem_guest::entry!(main, devices = [block]);

/// The guest's disk as the log sees it.
struct LogDisk(Disk);

impl tandem_kvlog::Disk for LogDisk {
    type Error = blk::Error;
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), blk::Error> {
        self.0.read(sector, buf)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), blk::Error> {
        self.0.write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), blk::Error> {
        self.0.flush()
    }
}

fn main(_env: &Env) -> u8 {
    let disk = match Disk::open(0) {
        Ok(d) => d,
        Err(e) => {
            println!("kvstore: no disk: {e}");
            return 2;
        }
    };
    let (capacity, ro) = (disk.capacity(), disk.read_only());
    let mut store = match Store::open(LogDisk(disk)) {
        Ok(s) => s,
        Err(e) => {
            println!("kvstore: cannot replay the log: {e}");
            return 3;
        }
    };
    println!(
        "kvstore: {} keys from {} records ({} of {capacity} sectors){}",
        store.len(),
        store.records(),
        store.log_sectors(),
        if ro { ", read-only" } else { "" }
    );
    tandem_guest::ready();
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = tandem_guest::stdin::read(&mut buf);
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                serve(&mut store, &line);
                line.clear();
            } else if line.len() <= tandem_kvlog::MAX_VALUE + tandem_kvlog::MAX_KEY + 8 {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        serve(&mut store, &line);
    }
    0
}

fn serve(store: &mut Store<LogDisk>, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let cmd = parts.next().unwrap_or_default();
    let key = parts.next().filter(|k| !k.is_empty());
    let rest = parts.next();
    let answer = match (cmd, key, rest) {
        (b"put", Some(key), Some(value)) => store.put(key, value).map(|()| "ok".to_string()),
        (b"get", Some(key), None) => Ok(store.get(key).map_or_else(
            || "missing".to_string(),
            |v| String::from_utf8_lossy(v).into_owned(),
        )),
        (b"del", Some(key), None) => store.del(key).map(|()| "ok".to_string()),
        (b"snapshot", None, None) => Ok(match tandem_guest::env::snapshot() {
            SnapshotOutcome::Taken => "snapshot taken",
            SnapshotOutcome::Restored => "restored",
            SnapshotOutcome::NotTaken => "snapshot not taken",
        }
        .to_string()),
        (b"", None, None) => return,
        _ => {
            println!("error: usage: put KEY VALUE | get KEY | del KEY | snapshot");
            return;
        }
    };
    match answer {
        Ok(a) => println!("{a}"),
        Err(e) => println!("error: {e}"),
    }
}
