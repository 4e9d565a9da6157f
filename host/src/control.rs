//! Getting a running vCPU's attention: a control thread that kicks the
//! vCPU thread out of `KVM_RUN` (with a no-op signal, so `KVM_RUN` returns
//! `EINTR`) when the run's timeout expires, when a backup point is due, or
//! when the process was asked for a snapshot with `SIGUSR1`.
//!
//! A kick that lands between two `KVM_RUN`s is lost, so the thread kicks
//! every 2 ms until the vCPU thread has taken what was asked (it clears
//! the flag); a guest that never exits is still reached.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

/// How often the control thread looks for a `SIGUSR1` it has not seen.
const SIGNAL_POLL: Duration = Duration::from_millis(5);
/// How often it kicks while a request is pending.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

/// Number of snapshot requests (`SIGUSR1`) this process has received.
static SNAPSHOT_SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

extern "C" fn snapshot_signal_handler(
    _: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    // Only an atomic add: async-signal-safe.
    SNAPSHOT_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// A thread to kick out of `KVM_RUN`: its `pthread_t` (an integer under
/// glibc, a pointer under musl, so it is wrapped to cross threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VcpuThread(libc::pthread_t);

// SAFETY: a pthread_t is an opaque thread name; it is only passed to
// pthread_kill, which may be called from any thread.
unsafe impl Send for VcpuThread {}
// SAFETY: as above; nothing is read through it.
unsafe impl Sync for VcpuThread {}

impl VcpuThread {
    /// The calling thread.
    pub(crate) fn current() -> Self {
        // SAFETY: pthread_self has no preconditions.
        Self(unsafe { libc::pthread_self() })
    }

    /// Sends it the kick signal.
    ///
    /// # Safety
    /// The thread must still be alive (callers keep it attached, or join
    /// the kicking thread before it ends).
    pub(crate) unsafe fn kick(self) {
        // SAFETY: the caller guarantees the thread is alive.
        unsafe { libc::pthread_kill(self.0, kick_signal()) };
    }
}

pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

pub(crate) fn register_kick_handler() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // A no-op handler: its only job is to make KVM_RUN return EINTR.
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
    });
}

/// Makes `SIGUSR1` a snapshot request for every VM of this process that
/// has `snapshot_on_signal` set (instead of killing the process).
pub fn install_snapshot_signal() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, snapshot_signal_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// What the control thread watches for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch {
    /// Stop the run after this long.
    pub timeout: Option<Duration>,
    /// Take a backup point this often.
    pub backup_every: Option<Duration>,
    /// Take a snapshot on `SIGUSR1`.
    pub snapshot_signal: bool,
}

impl Watch {
    /// Whether there is anything to watch.
    pub fn any(&self) -> bool {
        self.timeout.is_some() || self.backup_every.is_some() || self.snapshot_signal
    }
}

#[derive(Default)]
struct Flags {
    timed_out: AtomicBool,
    snapshot_due: AtomicBool,
    backup_due: AtomicBool,
}

/// The control thread of one run; stopped and joined on drop.
pub struct Kicker {
    flags: Arc<Flags>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kicker {
    /// Starts watching for the calling thread, which must be the vCPU thread.
    pub fn start(watch: Watch) -> Self {
        register_kick_handler();
        let target = VcpuThread::current();
        let flags = Arc::new(Flags::default());
        let (stop, rx) = mpsc::channel::<()>();
        let f = flags.clone();
        // Started by the I/O thread: the vCPU thread's filter has no clone.
        let thread = crate::io_thread::spawn("tandem-control", move || {
            // Narrower than the I/O filter it inherits (see tandem::seccomp).
            crate::seccomp::narrow_to_control();
            let start = Instant::now();
            let deadline = watch.timeout.map(|t| start + t);
            let mut next_backup = watch.backup_every.map(|every| start + every);
            let mut seen = SNAPSHOT_SIGNALS.load(Ordering::SeqCst);
            loop {
                let pending = f.timed_out.load(Ordering::SeqCst)
                    || f.snapshot_due.load(Ordering::SeqCst)
                    || f.backup_due.load(Ordering::SeqCst);
                let now = Instant::now();
                let mut wait = if pending {
                    KICK_INTERVAL
                } else if watch.snapshot_signal {
                    SIGNAL_POLL
                } else {
                    Duration::from_secs(3600)
                };
                if let Some(d) = deadline {
                    if !f.timed_out.load(Ordering::SeqCst) {
                        wait = wait.min(d.saturating_duration_since(now));
                    }
                }
                if let Some(b) = next_backup {
                    wait = wait.min(b.saturating_duration_since(now));
                }
                if rx.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    f.timed_out.store(true, Ordering::SeqCst);
                }
                if let (Some(b), Some(every)) = (next_backup, watch.backup_every) {
                    if now >= b {
                        f.backup_due.store(true, Ordering::SeqCst);
                        next_backup = Some(now + every);
                    }
                }
                if watch.snapshot_signal {
                    let n = SNAPSHOT_SIGNALS.load(Ordering::SeqCst);
                    if n != seen {
                        seen = n;
                        f.snapshot_due.store(true, Ordering::SeqCst);
                    }
                }
                if f.timed_out.load(Ordering::SeqCst)
                    || f.snapshot_due.load(Ordering::SeqCst)
                    || f.backup_due.load(Ordering::SeqCst)
                {
                    // SAFETY: `target` is the vCPU thread, alive until it
                    // drops this Kicker, which closes the channel and ends
                    // this loop first.
                    unsafe { target.kick() };
                }
            }
        });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("no control thread (timeouts, backup points, SIGUSR1 snapshots): {e}");
                None
            }
        };
        Self {
            flags,
            stop: Some(stop),
            thread,
        }
    }

    /// Whether the timeout has expired.
    pub fn timed_out(&self) -> bool {
        self.flags.timed_out.load(Ordering::SeqCst)
    }

    /// Takes a pending snapshot request.
    pub fn take_snapshot_request(&self) -> bool {
        self.flags.snapshot_due.swap(false, Ordering::SeqCst)
    }

    /// Takes a pending backup point.
    pub fn take_backup_due(&self) -> bool {
        self.flags.backup_due.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`VmHandle`] reports about its VM, from the vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// The vCPU is about to enter the guest for the first time in this run.
    Running,
    /// The app called `ready()`.
    Ready,
}

type EventFn = Box<dyn Fn(VmEvent) + Send + Sync>;

/// A snapshot asked through [`VmHandle::request_snapshot`]: where, and who
/// hears how it went.
pub(crate) type SnapshotAsk = (std::path::PathBuf, mpsc::Sender<Result<(), String>>);

#[derive(Default)]
struct HandleInner {
    /// The app was asked to stop: `Request::Idle` returns `stop: true`.
    stop_asked: AtomicBool,
    /// The VM must end now (status `Stopped`), whatever the guest does.
    killed: AtomicBool,
    /// A snapshot asked and not yet taken.
    snapshot: std::sync::Mutex<Option<SnapshotAsk>>,
    /// The vCPU thread while a run is attached.
    vcpu: std::sync::Mutex<Option<VcpuThread>>,
    wake: std::sync::Condvar,
    on_event: std::sync::OnceLock<EventFn>,
}

/// Lets other threads follow and stop a running VM: set it in
/// [`VmConfig::handle`](crate::VmConfig::handle), keep a clone.
///
/// - [`VmHandle::with_events`]: its callback is called from the vCPU thread when the run
///   starts and when the app calls `ready()` (the VM keeps running);
/// - [`VmHandle::request_stop`]: a polite request, seen by an app waiting in
///   `Request::Idle` (which returns at once with `stop: true`);
/// - [`VmHandle::kill`]: ends the run at the next VM exit, kicking the
///   vCPU out of `KVM_RUN` if it must (status [`ExitStatus::Stopped`](crate::ExitStatus::Stopped));
/// - [`VmHandle::request_snapshot`]: a snapshot into a directory between two
///   guest instructions, the VM running on after it (an app in an `Idle`
///   wait is woken for it, as a capped wait: `Elapsed`, not `Stop`).
#[derive(Clone, Default)]
pub struct VmHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("stop_asked", &self.stop_asked())
            .field("killed", &self.killed())
            .finish_non_exhaustive()
    }
}

impl VmHandle {
    /// A handle with no event callback.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that calls `f` on each [`VmEvent`] (from the vCPU thread:
    /// keep it short).
    pub fn with_events(f: impl Fn(VmEvent) + Send + Sync + 'static) -> Self {
        let h = Self::default();
        let _ = h.inner.on_event.set(Box::new(f));
        h
    }

    /// Asks the app to stop: an `Idle` request returns now with `stop: true`.
    pub fn request_stop(&self) {
        self.inner.stop_asked.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Ends the run at once (status `Stopped`).
    pub fn kill(&self) {
        self.inner.stop_asked.store(true, Ordering::SeqCst);
        self.inner.killed.store(true, Ordering::SeqCst);
        self.notify();
        register_kick_handler();
        if self.kick() {
            // A kick that lands between two KVM_RUNs is lost: keep kicking
            // until the run lets go of the handle.
            let h = self.clone();
            std::thread::spawn(move || {
                while h.kick() {
                    std::thread::sleep(KICK_INTERVAL);
                }
            });
        }
    }

    /// Asks for a snapshot into `dir`, taken at the vCPU's next stop between
    /// two guest instructions (it is kicked out of `KVM_RUN`, or woken from an
    /// `Idle` wait); the VM runs on. The receiver hears how it went; it sees
    /// the channel closed if the run ends first, or if a newer request
    /// replaced this one.
    pub fn request_snapshot(&self, dir: std::path::PathBuf) -> mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((dir, tx));
        self.notify();
        register_kick_handler();
        if self.kick() {
            let h = self.clone();
            std::thread::spawn(move || {
                while h.snapshot_pending() && h.kick() {
                    std::thread::sleep(KICK_INTERVAL);
                }
            });
        }
        rx
    }

    /// Whether a snapshot is asked and not yet taken.
    pub(crate) fn snapshot_pending(&self) -> bool {
        self.inner
            .snapshot
            .lock()
            .map(|s| s.is_some())
            .unwrap_or(false)
    }

    /// Takes the snapshot request, if any.
    pub(crate) fn take_snapshot_request(&self) -> Option<SnapshotAsk> {
        self.inner
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Whether the app was asked to stop.
    pub fn stop_asked(&self) -> bool {
        self.inner.stop_asked.load(Ordering::SeqCst)
    }

    /// Whether the run must end now.
    pub fn killed(&self) -> bool {
        self.inner.killed.load(Ordering::SeqCst)
    }

    fn notify(&self) {
        let _g = self.inner.vcpu.lock();
        self.inner.wake.notify_all();
    }

    /// Kicks the attached vCPU thread; false when no run is attached.
    fn kick(&self) -> bool {
        let guard = self.inner.vcpu.lock().unwrap_or_else(|p| p.into_inner());
        match *guard {
            Some(thread) => {
                // SAFETY: `thread` is attached, and the run detaches it
                // (under this lock) before the thread can end.
                unsafe { thread.kick() };
                true
            }
            None => false,
        }
    }

    pub(crate) fn event(&self, e: VmEvent) {
        if let Some(f) = self.inner.on_event.get() {
            f(e);
        }
    }

    /// Records the calling thread as the vCPU thread until the guard drops.
    pub(crate) fn attach(&self) -> Attached<'_> {
        register_kick_handler();
        let me = VcpuThread::current();
        *self.inner.vcpu.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
        Attached(self)
    }

    /// Blocks up to `limit`, or until a stop (or a snapshot) is asked;
    /// returns whether a stop was.
    pub(crate) fn idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut guard = self.inner.vcpu.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stop_asked() {
                return true;
            }
            if self.snapshot_pending() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = match self.inner.wake.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// A run attached to a [`VmHandle`]; detaches on drop.
pub(crate) struct Attached<'a>(&'a VmHandle);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        *self.0.inner.vcpu.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
