//! What the daemon does about what it sees: pure decisions, fed the VM's
//! record and what its worker reported, with their tests beside them (as
//! `tandem::fleet::scheduler`). The daemon's loop carries them out.

use std::time::Duration;

use tandem::api::{Desired, ExitInfo, RestartPolicy, VmState};

use crate::proto::Phase;

/// The first restart waits this long; each further one twice as long, up
/// to [`MAX_BACKOFF`], so a VM that crashes at once does not spin a core.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What became of a VM's current run, as the daemon learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Its worker reports it in this phase.
    Phase(Phase),
    /// Its worker reports it ended.
    Ended(ExitInfo),
    /// Its worker is gone (killed, crashed) or does not know the run.
    Lost(String),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing changes.
    None,
    /// The run moved on: record the new state.
    State(VmState),
    /// The run ended: record it (state and exit) and leave the VM down.
    Rest(VmState, ExitInfo),
    /// The run ended: record it, then start a new run after the delay.
    Restart(VmState, ExitInfo, Duration),
}

/// The state a worker's phase stands for (a stop asked keeps `stopping`).
fn state_of(phase: Phase, current: VmState) -> VmState {
    match phase {
        Phase::Booting if current == VmState::Stopping => VmState::Stopping,
        Phase::Booting => VmState::Starting,
        Phase::Running | Phase::Ready if current == VmState::Stopping => VmState::Stopping,
        Phase::Running => VmState::Running,
        Phase::Ready => VmState::Ready,
        // Ended runs come as `Seen::Ended`.
        Phase::Ended => current,
    }
}

/// Whether an ended run is restarted, by the VM's policy (a VM asked to
/// stop never is).
pub fn restarts(policy: RestartPolicy, desired: Desired, exit: &ExitInfo) -> bool {
    desired == Desired::Running
        && match policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit.failed,
            RestartPolicy::Always => true,
        }
}

/// The wait before restart number `n` (counting from 0).
pub fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF
        .checked_mul(1u32 << n.min(16))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// Decides about one active run of a VM.
pub fn decide(
    current: VmState,
    desired: Desired,
    policy: RestartPolicy,
    restarts_so_far: u32,
    seen: Seen,
) -> Action {
    let exit = match seen {
        Seen::Phase(p) => {
            let s = state_of(p, current);
            return if s == current {
                Action::None
            } else {
                Action::State(s)
            };
        }
        Seen::Ended(exit) => exit,
        Seen::Lost(why) => ExitInfo {
            code: None,
            failed: true,
            reason: why,
        },
    };
    let state = if exit.failed {
        VmState::Failed
    } else {
        VmState::Exited
    };
    if restarts(policy, desired, &exit) {
        Action::Restart(state, exit, backoff(restarts_so_far))
    } else {
        Action::Rest(state, exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(failed: bool) -> ExitInfo {
        ExitInfo {
            code: Some(u8::from(failed)),
            failed,
            reason: String::new(),
        }
    }

    #[test]
    fn phases_become_states() {
        use VmState::*;
        let d = |cur, p| {
            decide(
                cur,
                Desired::Running,
                RestartPolicy::Never,
                0,
                Seen::Phase(p),
            )
        };
        assert_eq!(d(Starting, Phase::Booting), Action::None);
        assert_eq!(d(Starting, Phase::Running), Action::State(Running));
        assert_eq!(d(Running, Phase::Ready), Action::State(Ready));
        assert_eq!(d(Stopping, Phase::Ready), Action::None);
    }

    #[test]
    fn policies_decide_restarts() {
        use RestartPolicy::*;
        let d = |desired, policy, failed| {
            decide(
                VmState::Running,
                desired,
                policy,
                0,
                Seen::Ended(exit(failed)),
            )
        };
        assert_eq!(
            d(Desired::Running, Never, true),
            Action::Rest(VmState::Failed, exit(true))
        );
        assert_eq!(
            d(Desired::Running, OnFailure, false),
            Action::Rest(VmState::Exited, exit(false))
        );
        assert!(matches!(
            d(Desired::Running, OnFailure, true),
            Action::Restart(VmState::Failed, _, _)
        ));
        assert!(matches!(
            d(Desired::Running, Always, false),
            Action::Restart(VmState::Exited, _, _)
        ));
        // Asked to stop: never restarted.
        assert!(matches!(
            d(Desired::Stopped, Always, true),
            Action::Rest(VmState::Failed, _)
        ));
    }

    #[test]
    fn a_lost_run_is_a_failure() {
        let a = decide(
            VmState::Running,
            Desired::Running,
            RestartPolicy::OnFailure,
            0,
            Seen::Lost("worker 1 is gone".into()),
        );
        match a {
            Action::Restart(VmState::Failed, e, _) => {
                assert!(e.failed && e.code.is_none() && e.reason.contains("gone"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), FIRST_BACKOFF);
        assert_eq!(backoff(1), FIRST_BACKOFF * 2);
        assert_eq!(backoff(30), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
