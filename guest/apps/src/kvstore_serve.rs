//! What `kvstore` and `kvstore-net` share: the store on the first disk and
//! the answer to one line of the protocol (`tandem_kvlog::protocol`).
//! Included by both apps with `#[path]` (the apps crate has no library).

use tandem_guest::blk::{self, Disk};
use tandem_guest::env::SnapshotOutcome;
use tandem_guest::prelude::*;
use tandem_kvlog::protocol::{Command, USAGE};
use tandem_kvlog::Store;

/// The guest's disk as the log sees it.
pub struct LogDisk(Disk);

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

/// Opens the store on disk 0 and replays its log, printing what it found;
/// `Err` is the app's exit code (2: no disk, 3: the log cannot be read).
pub fn open() -> Result<Store<LogDisk>, u8> {
    let disk = match Disk::open(0) {
        Ok(d) => d,
        Err(e) => {
            println!("kvstore: no disk: {e}");
            return Err(2);
        }
    };
    let (capacity, ro) = (disk.capacity(), disk.read_only());
    let store = match Store::open(LogDisk(disk)) {
        Ok(s) => s,
        Err(e) => {
            println!("kvstore: cannot replay the log: {e}");
            return Err(3);
        }
    };
    println!(
        "kvstore: {} keys from {} records ({} of {capacity} sectors){}",
        store.len(),
        store.records(),
        store.log_sectors(),
        if ro { ", read-only" } else { "" }
    );
    Ok(store)
}

/// The answer line to `line` (without its newline); `None` for an empty
/// line. A put or delete is answered `ok` only once it is on the disk.
pub fn answer(store: &mut Store<LogDisk>, line: &[u8]) -> Option<String> {
    let result = match Command::parse(line) {
        Command::Put { key, value } => store.put(key, value).map(|()| "ok".to_string()),
        Command::Get(key) => Ok(store.get(key).map_or_else(
            || "missing".to_string(),
            |v| String::from_utf8_lossy(v).into_owned(),
        )),
        Command::Del(key) => store.del(key).map(|()| "ok".to_string()),
        Command::Snapshot => Ok(match tandem_guest::env::snapshot() {
            SnapshotOutcome::Taken => "snapshot taken",
            SnapshotOutcome::Restored => "restored",
            SnapshotOutcome::NotTaken => "snapshot not taken",
        }
        .to_string()),
        Command::Empty => return None,
        Command::Bad => return Some(USAGE.to_string()),
    };
    Some(result.unwrap_or_else(|e| format!("error: {e}")))
}
