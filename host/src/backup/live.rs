//! Backup points taken while the guest runs (`--backup-mode precopy`): a
//! backup thread that owns the chain's writer runs each point's pre-copy
//! rounds ([`Harvester`]) as the planner ([`super::precopy`]) decides, then
//! asks the vCPU thread to stop (a flag and the kick signal, repeated until
//! it is seen); the vCPU thread takes the last round, the VMM's own writes
//! and the vCPU state with the vCPU stopped ([`LiveBackup::freeze`]),
//! hands them over and runs on, while this thread writes and fsyncs the
//! point exactly as a stopped one is written (temp file, fsync, rename,
//! directory fsync; linked into the chain only once complete).
//!
//! The harvester is shared under a lock: a round and the last round never
//! overlap, so the staged pages are exactly guest memory at the stop. A
//! snapshot taken meanwhile stops the vCPU anyway and makes the point at
//! once (waiting for a round in progress).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_abi::layout;

use super::precopy::{Decision, Planner, Round, POLICY};
use super::staging::{Harvester, Staging};
use super::{note_pages, BackupError, BackupRecord, BackupWriter, CapturedBlocks, DiskSource};
use crate::devices::blk::DiskFile;
use crate::snapshot::SnapshotState;

/// How often the backup thread kicks the vCPU while it waits for the stop
/// (a kick that lands between two `KVM_RUN`s is lost).
const KICK_RETRY: Duration = Duration::from_micros(500);

/// What the vCPU thread hands over for a point.
pub(crate) struct Frozen {
    /// Every page of the point, as it was at the stop.
    pub staging: Staging,
    /// Distinct pages the dirty log named.
    pub logged: u64,
    /// The vCPU and VM state at the stop.
    pub state: SnapshotState,
    /// How long the vCPU was stopped.
    pub pause: Duration,
    /// The guest's TSC at the stop.
    pub stopped_tsc: u64,
    /// Each disk's part, harvested at the stop.
    pub disks: Vec<FrozenDisk>,
    /// Set when the vCPU waits for the write (a disk's blocks are read
    /// from the disk itself): told when the point is written.
    pub done: Option<mpsc::Sender<()>>,
}

/// One disk's part of a point handed to the backup thread.
pub(crate) enum FrozenDisk {
    /// Its dirty blocks, read at the stop: the guest runs on.
    Captured(CapturedBlocks),
    /// Too many dirty blocks to hold in memory: they are read from the
    /// disk while the vCPU stays stopped (a stopped point).
    Stopped(Vec<u64>),
}

enum ToWorker {
    Frozen(Box<Frozen>),
    /// The stop asked for could not be taken.
    Failed,
}

/// What both threads see.
struct Shared {
    /// The backup thread wants the vCPU stopped for a point.
    stop_wanted: AtomicBool,
    /// The vCPU thread, while the kick may reach it.
    vcpu: Mutex<Option<libc::pthread_t>>,
}

impl Shared {
    fn kick(&self) {
        let guard = self.vcpu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(thread) = *guard {
            // SAFETY: `thread` is the vCPU thread, which clears this slot
            // (under this lock) in `LiveBackup::finish` before it ends.
            unsafe { libc::pthread_kill(thread, crate::control::kick_signal()) };
        }
    }
}

fn lock(h: &Mutex<Harvester>) -> MutexGuard<'_, Harvester> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// The vCPU thread's side of live backups.
pub(crate) struct LiveBackup {
    harvester: Arc<Mutex<Harvester>>,
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<ToWorker>>,
    worker: Option<JoinHandle<Vec<BackupRecord>>>,
    host_written: BTreeSet<u64>,
}

impl std::fmt::Debug for LiveBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveBackup").finish_non_exhaustive()
    }
}

impl LiveBackup {
    /// Starts the backup thread with `writer` (its base written), a point
    /// every `every`. Call on the vCPU thread: it is the one kicked. The
    /// thread is started by the I/O thread (the vCPU thread may start
    /// none) and runs under its filter: files, the dirty log, the kick.
    /// Gives the writer back if the thread cannot start.
    pub fn start(
        writer: BackupWriter,
        harvester: Harvester,
        every: Duration,
        disks: Vec<DiskFile>,
    ) -> Result<Self, Option<BackupWriter>> {
        crate::control::register_kick_handler();
        no_heap_trim();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let shared = Arc::new(Shared {
            stop_wanted: AtomicBool::new(false),
            vcpu: Mutex::new(Some(me)),
        });
        let harvester = Arc::new(Mutex::new(harvester));
        let (tx, rx) = mpsc::channel();
        // The writer comes back through this slot if the thread never runs.
        let slot = Arc::new(Mutex::new(Some(writer)));
        let worker = {
            let (harvester, shared, slot) = (harvester.clone(), shared.clone(), slot.clone());
            crate::io_thread::spawn("tandem-backup", move || {
                let writer = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                match writer {
                    Some(w) => worker(w, &harvester, &shared, &rx, every, &disks),
                    None => Vec::new(),
                }
            })
        };
        match worker {
            Ok(worker) => Ok(Self {
                harvester,
                shared,
                tx: Some(tx),
                worker: Some(worker),
                host_written: BTreeSet::new(),
            }),
            Err(e) => {
                log::warn!("{e}");
                Err(slot.lock().unwrap_or_else(|p| p.into_inner()).take())
            }
        }
    }

    /// Notes guest ranges the VMM wrote (the dirty log cannot see them).
    pub fn note_host_writes(&mut self, ranges: &[(u64, u64)]) {
        note_pages(&mut self.host_written, ranges);
    }

    /// Whether the backup thread waits for the vCPU to stop.
    pub fn stop_wanted(&self) -> bool {
        self.shared.stop_wanted.load(Ordering::SeqCst)
    }

    /// With the vCPU stopped and `state` captured: the last round, the
    /// VMM's own writes and the console and live-area pages (their headers
    /// are the VMM's too) go to the staged pages, which are handed to the
    /// backup thread with `state`. `stopped` is when the vCPU stopped, in
    /// the host's and the guest's clocks. Returns the pages handed over.
    /// `disks` are each disk's part; a [`FrozenDisk::Stopped`] one keeps
    /// the vCPU stopped (this waits) until the point is written.
    pub fn freeze(
        &mut self,
        state: SnapshotState,
        stopped: (Instant, u64),
        disks: Vec<FrozenDisk>,
    ) -> Result<usize, BackupError> {
        self.shared.stop_wanted.store(false, Ordering::SeqCst);
        let mut pages = std::mem::take(&mut self.host_written);
        pages.insert(layout::CONSOLE_ADDR / layout::PAGE_SIZE);
        pages.insert(layout::LIVE_ADDR / layout::PAGE_SIZE);
        let taken = {
            let mut h = lock(&self.harvester);
            h.round()
                .and_then(|_| h.copy_pages(pages.iter().copied()))
                .map(|()| h.take())
        };
        if taken.is_err() {
            // Still to be copied into the next point.
            self.host_written.extend(pages);
        }
        let Some(tx) = &self.tx else {
            return Ok(0);
        };
        match taken {
            Ok((staging, logged)) => {
                let n = staging.len();
                let wait = disks.iter().any(|d| matches!(d, FrozenDisk::Stopped(_)));
                let (done, written) = if wait {
                    let (done, written) = mpsc::channel();
                    (Some(done), Some(written))
                } else {
                    (None, None)
                };
                let frozen = Frozen {
                    staging,
                    logged,
                    state,
                    pause: stopped.0.elapsed(),
                    stopped_tsc: stopped.1,
                    disks,
                    done,
                };
                let _ = tx.send(ToWorker::Frozen(Box::new(frozen)));
                if let Some(written) = written {
                    // A stopped point: the disk must not change until written.
                    let _ = written.recv();
                }
                Ok(n)
            }
            Err(e) => {
                let _ = tx.send(ToWorker::Failed);
                Err(e)
            }
        }
    }

    /// The stop asked for cannot be taken: the backup thread goes on
    /// (its staged pages stay for the next point).
    pub fn abandon(&mut self) {
        self.shared.stop_wanted.store(false, Ordering::SeqCst);
        if let Some(tx) = &self.tx {
            let _ = tx.send(ToWorker::Failed);
        }
    }

    /// Ends the backup thread (after the point it is writing, if any) and
    /// returns the points it wrote. Call on the vCPU thread.
    pub fn finish(&mut self) -> Vec<BackupRecord> {
        *self.shared.vcpu.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(self.tx.take());
        self.worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LiveBackup {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Keeps glibc's allocator from ever shrinking a thread's heap: the
/// first shrink reads `/proc/sys/vm/overcommit_memory`, and memory the
/// backup thread allocated (in its heap) that the vCPU thread frees would
/// shrink that heap there, where the filter allows no `openat` (the
/// process would die of SIGSYS). Freed memory stays with the process for
/// reuse instead of going back to the system. No system call.
fn no_heap_trim() {
    // SAFETY: mallopt only sets a tunable of the allocator.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
}

/// What a wait for the next message came to.
enum Wait {
    Due,
    Message(ToWorker),
    Quit,
}

fn wait(rx: &mpsc::Receiver<ToWorker>, limit: Duration) -> Wait {
    match rx.recv_timeout(limit) {
        Ok(m) => Wait::Message(m),
        Err(RecvTimeoutError::Timeout) => Wait::Due,
        Err(RecvTimeoutError::Disconnected) => Wait::Quit,
    }
}

/// The backup thread: a point every `every`, until the vCPU side hangs up.
fn worker(
    mut writer: BackupWriter,
    harvester: &Mutex<Harvester>,
    shared: &Shared,
    rx: &mpsc::Receiver<ToWorker>,
    every: Duration,
    disks: &[DiskFile],
) -> Vec<BackupRecord> {
    let records = run_points(&mut writer, harvester, shared, rx, every, disks);
    // The buffers are this thread's: freed here, not by the vCPU thread.
    lock(harvester).release();
    records
}

/// The points, until the vCPU side hangs up.
fn run_points(
    writer: &mut BackupWriter,
    harvester: &Mutex<Harvester>,
    shared: &Shared,
    rx: &mpsc::Receiver<ToWorker>,
    every: Duration,
    disks: &[DiskFile],
) -> Vec<BackupRecord> {
    let mut records = Vec::new();
    let mut next = Instant::now() + every;
    loop {
        // Until the next point is due; a snapshot may make one meanwhile.
        match wait(rx, next.saturating_duration_since(Instant::now())) {
            Wait::Quit => return records,
            Wait::Message(m) => {
                let out = (&mut *writer, harvester, disks);
                write(out, m, Instant::now(), 0, &mut records);
                continue;
            }
            Wait::Due => {}
        }
        let started = Instant::now();
        next = started + every;
        let mut planner = Planner::new(POLICY);
        let mut early = None;
        loop {
            if let Ok(m) = rx.try_recv() {
                early = Some(m);
                break;
            }
            let t = Instant::now();
            let pages = lock(harvester).round();
            let round = match pages {
                Ok(pages) => Round {
                    pages,
                    took: t.elapsed(),
                },
                Err(e) => {
                    log::warn!("backup pre-copy round failed: {e}");
                    break;
                }
            };
            log::trace!(
                "backup pre-copy round: {} pages in {:.3} ms",
                round.pages,
                round.took.as_secs_f64() * 1e3
            );
            if let Decision::StopNow(why) = planner.decide(round) {
                log::debug!(
                    "backup pre-copy: {} rounds, stopping ({why:?}) with {} pages staged",
                    planner.rounds(),
                    lock(harvester).staged()
                );
                break;
            }
        }
        let message = match early {
            Some(m) => m,
            None => {
                shared.stop_wanted.store(true, Ordering::SeqCst);
                shared.kick();
                loop {
                    match wait(rx, KICK_RETRY) {
                        Wait::Message(m) => break m,
                        Wait::Quit => return records,
                        Wait::Due => shared.kick(),
                    }
                }
            }
        };
        let out = (&mut *writer, harvester, disks);
        write(out, message, started, planner.rounds(), &mut records);
    }
}

/// Writes the point `message` brings (if it brings one).
fn write(
    (writer, harvester, disks): (&mut BackupWriter, &Mutex<Harvester>, &[DiskFile]),
    message: ToWorker,
    started: Instant,
    rounds: u32,
    records: &mut Vec<BackupRecord>,
) {
    let ToWorker::Frozen(frozen) = message else {
        return;
    };
    let Frozen {
        staging,
        logged,
        state,
        pause,
        stopped_tsc,
        disks: frozen_disks,
        done,
    } = *frozen;
    let pages = staging.pages();
    let t = Instant::now();
    let sources: Vec<DiskSource<'_>> = (disks.iter().zip(&frozen_disks))
        .map(|(disk, part)| match part {
            FrozenDisk::Captured(c) => DiskSource {
                disk,
                blocks: Some(c.blocks.clone()),
                captured: Some(c),
            },
            FrozenDisk::Stopped(blocks) => DiskSource {
                disk,
                blocks: Some(blocks.clone()),
                captured: None,
            },
        })
        .collect();
    let result = if sources.len() == frozen_disks.len() {
        writer.write_point(&staging, &state, &pages, logged, &sources)
    } else {
        Err(crate::snapshot::SnapshotError::Invalid(
            "a point names more disks than the backup thread has".into(),
        )
        .into())
    };
    // A stopped point's vCPU waits for this.
    let stopped_for = done.map(|d| {
        let _ = d.send(());
        t.elapsed()
    });
    match result {
        Ok(mut record) => {
            record.elapsed = started.elapsed();
            record.pause = pause + stopped_for.unwrap_or_default();
            // A stopped point is not a pre-copy one, whatever its rounds.
            record.rounds = if stopped_for.is_some() { 0 } else { rounds };
            record.live = stopped_for.is_none();
            record.stopped_tsc = stopped_tsc;
            log::info!(
                "backup point {} written: {} pages, {} rounds, guest paused {:.3} ms, {:.1} ms in all",
                record.point,
                record.pages,
                record.rounds,
                record.pause.as_secs_f64() * 1e3,
                record.elapsed.as_secs_f64() * 1e3
            );
            records.push(record);
        }
        Err(e) => {
            log::warn!("backup point failed: {e}");
            // Their dirty bits are gone: the next point holds them.
            lock(harvester).give_back(staging);
            return;
        }
    }
    lock(harvester).recycle(staging);
}
