//! A task's life, pure: no processes, no threads, no clock. The service
//! feeds it what happened (start asked, VMM spawned, VMM exited, a signal
//! asked for) with the time, and it answers with what to do; the service
//! does it.
//!
//! Rules:
//! - a task is created, then started once: a second start is refused;
//! - while `start` boots the VMM the task is still CREATED for containerd;
//!   a signal asked for then is kept and sent as soon as the VMM exists;
//! - a task killed before it was started ends at once, as if the signal
//!   had killed it (128 + its number), as does a pod placeholder, which
//!   "runs" as the shim itself and has no process to signal;
//! - a running task is not deleted: it must be killed first.

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::vmm::Signal;

/// What a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Tandem VM, in a `tandem` child process.
    Vm,
    /// A pod's placeholder (the CRI pause container): it boots nothing.
    Placeholder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    /// `start` is booting the VM; a signal `kill` asked for meanwhile.
    Starting {
        pending: Option<Signal>,
    },
    Running,
    Stopped,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Its exit status: the guest's exit code, or 128 + the signal.
    pub status: u32,
    /// When.
    pub at: Timestamp,
}

/// A request the task's state refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `start` after a start (or after it ended).
    AlreadyStarted,
    /// `kill` after it ended.
    Finished,
    /// `delete` while it runs.
    Running,
}

/// What `start` must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Spawn the VMM, then report [`TaskState::started`] (or
    /// [`TaskState::start_failed`]).
    Spawn,
    /// Nothing: a placeholder, running now as the shim with this pid.
    Running(u32),
}

/// What `kill` must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Send the signal to the VMM, with the task's lock still held (so
    /// the VMM cannot be reaped meanwhile).
    Signal(u32, Signal),
    /// Nothing now: the VMM is booting and gets the signal once it exists.
    Deferred,
    /// The task ended now: wake its waiters, and publish its exit event if
    /// `publish` (a started placeholder; an unstarted task has none).
    Ended {
        /// Whether containerd hears of the exit.
        publish: bool,
    },
}

/// Where one task stands.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    kind: Kind,
    phase: Phase,
    /// The VMM's pid once it runs (the shim's for a placeholder), kept
    /// after it ended; 0 before.
    pid: u32,
    exit: Option<Exit>,
}

impl TaskState {
    /// A task just created.
    pub fn new(kind: Kind) -> Self {
        TaskState {
            kind,
            phase: Phase::Created,
            pid: 0,
            exit: None,
        }
    }

    /// The status containerd sees.
    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Created | Phase::Starting { .. } => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped => Status::STOPPED,
        }
    }

    /// The task's pid, 0 before it runs.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, once it has.
    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    /// `start`: `shim_pid` is the pid a placeholder runs as.
    pub fn start(&mut self, shim_pid: u32) -> Result<Start, Refusal> {
        if self.phase != Phase::Created {
            return Err(Refusal::AlreadyStarted);
        }
        Ok(match self.kind {
            Kind::Vm => {
                self.phase = Phase::Starting { pending: None };
                Start::Spawn
            }
            Kind::Placeholder => {
                self.run(shim_pid);
                Start::Running(shim_pid)
            }
        })
    }

    /// The VMM `start` spawned exists: returns the signal to send it now,
    /// if `kill` asked for one while it booted.
    pub fn started(&mut self, pid: u32) -> Option<Signal> {
        let pending = match self.phase {
            Phase::Starting { pending } => pending,
            _ => None,
        };
        self.run(pid);
        pending
    }

    /// `start` could not spawn the VMM. The task can be started again,
    /// unless a `kill` came meanwhile: then it ends as that signal's, and
    /// this returns true (wake its waiters).
    pub fn start_failed(&mut self, at: Timestamp) -> bool {
        match self.phase {
            Phase::Starting { pending: Some(sig) } => {
                self.stop(sig.exit_status(), at);
                true
            }
            Phase::Starting { pending: None } => {
                self.phase = Phase::Created;
                false
            }
            _ => false,
        }
    }

    /// The VMM ended with `status`.
    pub fn exited(&mut self, status: u32, at: Timestamp) {
        self.stop(status, at);
    }

    /// `kill` with `sig`.
    pub fn kill(&mut self, sig: Signal, at: Timestamp) -> Result<Kill, Refusal> {
        match (self.phase, self.kind) {
            (Phase::Running, Kind::Vm) => Ok(Kill::Signal(self.pid, sig)),
            (Phase::Running, Kind::Placeholder) => {
                self.stop(sig.exit_status(), at);
                Ok(Kill::Ended { publish: true })
            }
            (Phase::Starting { .. }, _) => {
                self.phase = Phase::Starting { pending: Some(sig) };
                Ok(Kill::Deferred)
            }
            (Phase::Created, _) => {
                self.stop(sig.exit_status(), at);
                Ok(Kill::Ended { publish: false })
            }
            (Phase::Stopped, _) => Err(Refusal::Finished),
        }
    }

    /// `delete`: refused while the task runs.
    pub fn check_delete(&self) -> Result<(), Refusal> {
        match self.phase {
            Phase::Running => Err(Refusal::Running),
            _ => Ok(()),
        }
    }

    fn run(&mut self, pid: u32) {
        self.phase = Phase::Running;
        self.pid = pid;
    }

    fn stop(&mut self, status: u32, at: Timestamp) {
        self.phase = Phase::Stopped;
        self.exit = Some(Exit { status, at });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp {
            seconds,
            ..Timestamp::default()
        }
    }

    fn sig(n: u32) -> Signal {
        Signal::new(n).unwrap()
    }

    #[test]
    fn created_running_stopped() {
        let mut t = TaskState::new(Kind::Vm);
        assert_eq!((t.status(), t.pid(), t.exit()), (Status::CREATED, 0, None));
        assert_eq!(t.start(1), Ok(Start::Spawn));
        assert_eq!(t.status(), Status::CREATED, "booting is still CREATED");
        assert_eq!(t.started(42), None);
        assert_eq!((t.status(), t.pid()), (Status::RUNNING, 42));
        assert_eq!(t.check_delete(), Err(Refusal::Running));
        t.exited(7, at(5));
        assert_eq!(t.status(), Status::STOPPED);
        assert_eq!(t.pid(), 42, "the pid is kept for delete");
        assert_eq!(
            t.exit(),
            Some(&Exit {
                status: 7,
                at: at(5)
            })
        );
        assert_eq!(t.check_delete(), Ok(()));
        assert_eq!(t.kill(sig(15), at(6)), Err(Refusal::Finished));
    }

    #[test]
    fn a_second_start_is_refused() {
        let mut t = TaskState::new(Kind::Vm);
        t.start(1).unwrap();
        assert_eq!(t.start(1), Err(Refusal::AlreadyStarted), "while booting");
        t.started(42);
        assert_eq!(t.start(1), Err(Refusal::AlreadyStarted), "while running");
        t.exited(0, at(1));
        assert_eq!(t.start(1), Err(Refusal::AlreadyStarted), "once ended");
    }

    #[test]
    fn running_vm_is_signalled() {
        let mut t = TaskState::new(Kind::Vm);
        t.start(1).unwrap();
        t.started(42);
        assert_eq!(t.kill(sig(15), at(1)), Ok(Kill::Signal(42, sig(15))));
        assert_eq!(t.status(), Status::RUNNING, "until the VMM is reaped");
        t.exited(143, at(2));
        assert_eq!(t.exit().map(|e| e.status), Some(143));
    }

    #[test]
    fn kill_while_booting_is_delivered_once_the_vmm_exists() {
        let mut t = TaskState::new(Kind::Vm);
        t.start(1).unwrap();
        assert_eq!(t.kill(sig(15), at(1)), Ok(Kill::Deferred));
        assert_eq!(t.kill(sig(9), at(1)), Ok(Kill::Deferred), "the last wins");
        assert_eq!(t.status(), Status::CREATED);
        assert_eq!(t.started(42), Some(sig(9)));
        assert_eq!(t.status(), Status::RUNNING);
        assert_eq!(t.started(42), None, "delivered once");
    }

    #[test]
    fn kill_before_start_ends_the_task_as_the_signal_would() {
        let mut t = TaskState::new(Kind::Vm);
        assert_eq!(t.kill(sig(15), at(3)), Ok(Kill::Ended { publish: false }));
        assert_eq!(t.status(), Status::STOPPED);
        assert_eq!(
            t.exit(),
            Some(&Exit {
                status: 143,
                at: at(3)
            })
        );
        assert_eq!(t.pid(), 0);
        assert_eq!(t.start(1), Err(Refusal::AlreadyStarted));
        assert_eq!(t.check_delete(), Ok(()));
    }

    #[test]
    fn failed_start_may_be_retried() {
        let mut t = TaskState::new(Kind::Vm);
        t.start(1).unwrap();
        assert!(!t.start_failed(at(1)));
        assert_eq!(t.status(), Status::CREATED);
        assert_eq!(t.start(1), Ok(Start::Spawn));
    }

    #[test]
    fn failed_start_after_a_kill_ends_as_killed() {
        let mut t = TaskState::new(Kind::Vm);
        t.start(1).unwrap();
        t.kill(sig(9), at(1)).unwrap();
        assert!(t.start_failed(at(2)));
        assert_eq!(t.status(), Status::STOPPED);
        assert_eq!(t.exit().map(|e| e.status), Some(137));
    }

    #[test]
    fn placeholder_runs_as_the_shim_and_ends_at_the_first_signal() {
        let mut t = TaskState::new(Kind::Placeholder);
        assert_eq!(t.start(77), Ok(Start::Running(77)));
        assert_eq!((t.status(), t.pid()), (Status::RUNNING, 77));
        assert_eq!(t.check_delete(), Err(Refusal::Running));
        assert_eq!(t.kill(sig(15), at(4)), Ok(Kill::Ended { publish: true }));
        assert_eq!(t.status(), Status::STOPPED);
        assert_eq!(t.exit().map(|e| e.status), Some(143));
        assert_eq!(t.kill(sig(15), at(5)), Err(Refusal::Finished));
        assert_eq!(t.check_delete(), Ok(()));
    }
}
