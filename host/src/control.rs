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

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
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
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| {
            // A no-op handler: its only job is to make KVM_RUN return EINTR.
            let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
        });
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let flags = Arc::new(Flags::default());
        let (stop, rx) = mpsc::channel::<()>();
        let f = flags.clone();
        let thread = std::thread::spawn(move || {
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
                    unsafe { libc::pthread_kill(target, kick_signal()) };
                }
            }
        });
        Self {
            flags,
            stop: Some(stop),
            thread: Some(thread),
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
