//! The VMM's I/O thread: where a filtered vCPU thread's file work goes
//! (snapshot, backup point, core file, working set), and where its helper
//! threads (the control thread, gdb's watcher) are started. The vCPU
//! thread's seccomp list then has no `openat`, `rename`, `unlink`,
//! `mkdir`, `fsync`, ... and no `clone`: a guest that subverted the vCPU
//! thread can neither open a file nor start a thread
//! (`tandem::seccomp`, [`ThreadKind::Io`](crate::seccomp::ThreadKind::Io)).
//!
//! One thread per process, started by [`start`] (from
//! `seccomp::lock_down`, before the vCPU filter goes on, so starting it
//! needs no `clone` there, and after the jail, whose Landlock domain it
//! inherits); it installs its own filter first. [`call`] runs a closure
//! there and waits for it, so the vCPU thread's work keeps its order and
//! its borrows; before [`start`] (a library user that never locks down),
//! and on the I/O thread itself, it runs in place.

use std::any::Any;
use std::cell::Cell;
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::OnceLock;

/// Why the I/O thread could not do what it was given.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    /// The thread could not be started.
    #[error("cannot start the VMM's I/O thread: {0}")]
    Start(std::io::Error),
    /// The job was dropped without running (the thread is gone).
    #[error("the VMM's I/O thread dropped a job")]
    Lost,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

static THREAD: OnceLock<Option<Sender<Job>>> = OnceLock::new();

thread_local! {
    static ON_IO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Starts the I/O thread, once per process; its seccomp filter is
/// [`ThreadKind::Io`](crate::seccomp::ThreadKind::Io) unless filtering is
/// off.
pub fn start() -> Result<(), IoThreadError> {
    let mut error = None;
    let started = THREAD.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("tandem-io".into())
            .spawn(move || {
                ON_IO_THREAD.with(|c| c.set(true));
                if let Err(e) = crate::seccomp::lock_down_io() {
                    // Unfiltered, it would widen nothing (each job is the
                    // vCPU thread's own), but say so.
                    log::warn!("the I/O thread runs without its seccomp filter: {e}");
                }
                for job in rx {
                    job();
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                error = Some(e);
                None
            }
        }
    });
    match (started, error) {
        (Some(_), _) => {
            static SETTLED: std::sync::Once = std::sync::Once::new();
            SETTLED.call_once(|| {
                let _ = call(settle_allocator);
            });
            Ok(())
        }
        (None, Some(e)) => Err(IoThreadError::Start(e)),
        (None, None) => Err(IoThreadError::Start(std::io::Error::other(
            "an earlier start failed",
        ))),
    }
}

/// Makes glibc's allocator read `/proc/sys/vm/overcommit_memory` now, on
/// the I/O thread (which may open files), instead of the first time a
/// thread's heap shrinks, which could be on a filtered vCPU thread (no
/// `openat`: the process would be killed). glibc keeps the answer for the
/// process. Chunks of 64 KiB (below the mmap threshold) freed together
/// leave a top chunk past the trim threshold, so the I/O thread's heap
/// shrinks; they are never touched, so no page is faulted in.
fn settle_allocator() {
    let chunks: Vec<Vec<u8>> = (0..32).map(|_| Vec::with_capacity(64 << 10)).collect();
    drop(std::hint::black_box(chunks));
}

/// A job and where its outcome goes. Field order matters: a task dropped
/// unrun drops `f` (and what it borrows) before `done`, whose drop is what
/// [`call`] waits for.
struct Task<F, R> {
    f: F,
    done: SyncSender<std::thread::Result<R>>,
}

impl<F: FnOnce() -> R, R> Task<F, R> {
    fn run(self) {
        let Task { f, done } = self;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = done.send(outcome);
    }
}

/// Runs `f` on the I/O thread and returns what it returns, once it has;
/// a panic in `f` is resumed here. In place when there is no I/O thread
/// or this is it.
pub fn call<'a, F, R>(f: F) -> Result<R, IoThreadError>
where
    F: FnOnce() -> R + Send + 'a,
    R: Send + 'a,
{
    let sender = match THREAD.get() {
        Some(Some(tx)) if !ON_IO_THREAD.with(Cell::get) => tx,
        _ => return Ok(f()),
    };
    let (done, outcome) = mpsc::sync_channel(1);
    let job: Box<dyn FnOnce() + Send + 'a> = Box::new(move || Task { f, done }.run());
    // SAFETY: only the lifetime is changed. `job` borrows for 'a, and this
    // function does not return before the job is gone: `outcome.recv()`
    // returns once `done` was sent on (after `f` ran and was consumed) or
    // dropped (which `Task`'s field order puts after `f`'s drop), and
    // nothing between here and there can unwind.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
    if let Err(back) = sender.send(job) {
        // The thread is gone: run it here (the outcome arrives below).
        (back.0)();
    }
    match outcome.recv() {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => resume(panic),
        Err(_) => Err(IoThreadError::Lost),
    }
}

fn resume<R>(panic: Box<dyn Any + Send>) -> R {
    std::panic::resume_unwind(panic)
}

/// Starts a thread from the I/O thread (so the caller needs no `clone`):
/// it runs under the I/O thread's filter, which its own may narrow.
pub fn spawn<T, F>(name: &str, f: F) -> Result<std::thread::JoinHandle<T>, IoThreadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let builder = std::thread::Builder::new().name(name.into());
    call(move || builder.spawn(f))?.map_err(IoThreadError::Start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_run_on_the_io_thread_with_their_borrows_and_panics_come_back() {
        start().unwrap();
        let mut local = vec![1, 2, 3];
        let here = std::thread::current().id();
        let (sum, there) = call(|| {
            local.push(4);
            (local.iter().sum::<i32>(), std::thread::current().id())
        })
        .unwrap();
        assert_eq!(sum, 10);
        assert_eq!(local, [1, 2, 3, 4]);
        assert_ne!(here, there, "ran on the I/O thread");
        // A call from the I/O thread runs in place instead of waiting for itself.
        let nested = call(|| call(|| std::thread::current().id()).unwrap()).unwrap();
        assert_eq!(nested, there);
        let caught = std::panic::catch_unwind(|| call(|| panic!("boom")));
        assert!(caught.is_err());
        // The thread survives a job's panic.
        assert_eq!(call(|| 7).unwrap(), 7);
        let h = spawn("tandem-test", || 5).unwrap();
        assert_eq!(h.join().unwrap(), 5);
    }
}
