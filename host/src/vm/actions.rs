//! Everything the run carries out between two runs of the vCPU, in one
//! place: what a served hypercall asks (ready, snapshot, exit, idle wait,
//! stdin read), what the control thread says is due (a `SIGUSR1` snapshot,
//! a backup point), and the base backup point before the first run. Each
//! returns `Break(status)` when the run must end.

use std::ops::ControlFlow::{self, Break, Continue};
use std::path::Path;
use std::time::{Duration, Instant};

use tandem_abi::hypercall::{GuestBuf, Reply};

use super::clock::wall_clock;
use super::run::Session;
use super::stdin::read_stdin;
use super::{ExitStatus, SnapshotRecord, SnapshotTrigger, Vm, VmError};
use crate::backup::live::LiveBackup;
use crate::backup::{BackupMode, BackupRecord};
use crate::console::Console;
use crate::control::{Kicker, VmEvent, VmHandle};
use crate::gdb::Interrupt;
use crate::hypercall::{self, Action, HypercallError};

/// Longest single wait of a `Request::Idle` (the app asks again if it wants more).
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// A hypercall error ends the run: the guest broke the protocol.
fn violation<T>(result: Result<T, HypercallError>) -> ControlFlow<ExitStatus, T> {
    match result {
        Ok(v) => Continue(v),
        Err(e) => Break(ExitStatus::ProtocolViolation(e)),
    }
}

impl Vm {
    /// With backups on, the base point: everything, before the guest runs on.
    pub(super) fn first_backup_point(&mut self, console: &Console) -> Result<(), VmError> {
        if let Some(cfg) = self.config.backup.clone() {
            let record = self.backup_point(&cfg, console)?;
            self.log_backup(&record);
            self.backup_records.push(record);
            if cfg.mode == BackupMode::Precopy {
                self.start_live_backup(&cfg);
            }
        }
        Ok(())
    }

    /// Takes the snapshot asked through the VM's handle, if any, and tells
    /// the asker how it went.
    pub(super) fn carry_out_asked(
        &mut self,
        handle: &VmHandle,
        session: &mut Session,
    ) -> ControlFlow<ExitStatus> {
        let Some((dir, tx)) = handle.take_snapshot_request() else {
            return Continue(());
        };
        violation(self.drain_console(&mut session.console))?;
        let written = self.snapshot_now(&dir, SnapshotTrigger::Request, session)?;
        let answer = if written {
            Ok(())
        } else {
            Err(session
                .snapshots
                .last()
                .and_then(|s| s.result.as_ref().err().cloned())
                .unwrap_or_else(|| "the snapshot was not written".into()))
        };
        let _ = tx.send(answer);
        Continue(())
    }

    /// Stops for the backup thread's point if it asks (pre-copy): the
    /// vCPU is out of `KVM_RUN` here, and runs on once the last set and
    /// its state are handed over.
    pub(super) fn carry_out_live_backup(
        &mut self,
        session: &mut Session,
    ) -> ControlFlow<ExitStatus> {
        if !self
            .live_backup
            .as_ref()
            .is_some_and(LiveBackup::stop_wanted)
        {
            return Continue(());
        }
        let stopped = Instant::now();
        violation(self.drain_console(&mut session.console))?;
        if let Err(e) = self.live_backup_stop(&session.console, stopped) {
            log::warn!("backup point failed: {e}");
        }
        Continue(())
    }

    /// Carries out what the control thread says is due: the snapshot
    /// `SIGUSR1` asked for, the next backup point.
    pub(super) fn carry_out_due(
        &mut self,
        kicker: &Kicker,
        session: &mut Session,
    ) -> ControlFlow<ExitStatus> {
        if kicker.take_snapshot_request() {
            violation(self.drain_console(&mut session.console))?;
            if let Some(dir) = self.config.snapshot_dir.clone() {
                self.snapshot_now(&dir, SnapshotTrigger::Signal, session)?;
            }
        }
        if kicker.take_backup_due() {
            violation(self.drain_console(&mut session.console))?;
            if let Some(cfg) = self.config.backup.clone() {
                match self.backup_point(&cfg, &session.console) {
                    Ok(record) => {
                        self.log_backup(&record);
                        self.backup_records.push(record);
                    }
                    Err(e) => log::warn!("backup point failed: {e}"),
                }
            }
        }
        Continue(())
    }

    /// Serves the hypercall the guest made by writing `data` to `port`, and
    /// carries out what it asks.
    pub(super) fn serve(
        &mut self,
        port: u16,
        data: &[u8],
        session: &mut Session,
    ) -> ControlFlow<ExitStatus> {
        let tsc_offset = self.tsc_offset;
        let wall = move || wall_clock(tsc_offset);
        let mut written = Vec::new();
        let served = hypercall::serve_tracked(
            &self.ram.mem,
            self.config.mem_size,
            port,
            data,
            wall,
            &mut written,
        );
        self.note_host_writes(&written);
        let action = violation(served)?;
        self.carry_out(action, session)
    }

    /// Carries out what a served hypercall asks.
    fn carry_out(&mut self, action: Action, session: &mut Session) -> ControlFlow<ExitStatus> {
        match action {
            Action::Continue => Continue(()),
            Action::Ready => {
                if let Some(h) = &session.handle {
                    h.event(VmEvent::Ready);
                }
                if let Some(dir) = self.config.snapshot_at_ready.take() {
                    self.snapshot_now(&dir, SnapshotTrigger::Ready, session)?;
                }
                Continue(())
            }
            Action::Snapshot(reply) => self.guest_snapshot(reply, session),
            Action::Exit(code) => Break(ExitStatus::Exited(code)),
            Action::Idle { nanos, reply } => {
                let mut until = Instant::now() + idle_limit(nanos, session.deadline);
                // A disk request a rate limit holds ends the wait when it may go.
                if let Some(at) = self.disks.iter().filter_map(|d| d.held_until()).min() {
                    until = until.min(at);
                }
                self.idle_until(PendingIdle { until, reply }, session)
            }
            Action::ReadStdin { buf, reply } => {
                let mut data = vec![0u8; buf.len as usize];
                let handle = session.handle.as_ref();
                let Some(n) = read_stdin(self.config.stdin, &mut data, handle, session.deadline)
                else {
                    return Break(ExitStatus::TimedOut(
                        self.config.timeout.unwrap_or_default(),
                    ));
                };
                violation(hypercall::write_input(&self.ram.mem, buf, &data[..n]))?;
                // `n` is at most MAX_STDIN_READ.
                let len = u32::try_from(n).unwrap_or(0);
                self.reply(reply, &Reply::ReadStdin { len })?;
                self.note_host_writes(&[(buf.addr, n as u64)]);
                Continue(())
            }
        }
    }

    /// Writes `answer` into the guest's `reply` buffer (checked there) and
    /// notes it for the next backup point.
    /// Serves an `Idle` wait until `wait.until`, a frame (with a network
    /// device) or a stop request. Under gdb a Ctrl-C breaks in: the wait is
    /// left in `session.pending_idle`, unanswered, for the run loop to go on
    /// with once the guest runs again (as a signal restarts a sleep).
    pub(super) fn idle_until(
        &mut self,
        wait: PendingIdle,
        session: &mut Session,
    ) -> ControlFlow<ExitStatus> {
        let debugger = session.debugger.clone();
        let broken_in = || debugger.as_ref().is_some_and(Interrupt::asked);
        let handle = session.handle.as_ref();
        let stop = match self.net.as_mut() {
            Some(net) => {
                // A frame may end the wait early anyway: the guest's network
                // loop asks again, so a Ctrl-C just ends it too.
                let asked = || handle.is_some_and(VmHandle::stop_asked);
                let snapshot = || handle.is_some_and(VmHandle::snapshot_pending);
                let limit = wait.until.saturating_duration_since(Instant::now());
                if let Err(e) = net.idle(&self.ram.mem, limit, &|| {
                    asked() || broken_in() || snapshot()
                }) {
                    return Break(ExitStatus::DeviceViolation(e));
                }
                asked()
            }
            None => loop {
                let now = Instant::now();
                let end = match debugger {
                    Some(_) => wait.until.min(now + DEBUGGED_IDLE_SLICE),
                    None => wait.until,
                };
                let stop = idle(handle, end.saturating_duration_since(now));
                // A snapshot asked ends the wait early (as a capped wait),
                // so the run loop takes it before the guest goes on.
                let snapshot = handle.is_some_and(VmHandle::snapshot_pending);
                if stop || snapshot || Instant::now() >= wait.until {
                    break stop;
                }
                if broken_in() {
                    session.pending_idle = Some(wait);
                    return Continue(());
                }
            },
        };
        self.reply(wait.reply, &Reply::Idle { stop })
    }

    fn reply(&mut self, reply: GuestBuf, answer: &Reply) -> ControlFlow<ExitStatus> {
        let mem_size = self.config.mem_size;
        violation(hypercall::write_reply(
            &self.ram.mem,
            mem_size,
            reply,
            answer,
        ))?;
        self.note_host_writes(&[(reply.addr, u64::from(reply.len))]);
        Continue(())
    }

    /// Serves the guest's snapshot request: the reply says "taken" before
    /// the snapshot is written (so restored copies read it too), and is
    /// corrected if the write fails. Every answer is noted for the next
    /// backup point, "not taken" too.
    fn guest_snapshot(
        &mut self,
        reply: GuestBuf,
        session: &mut Session,
    ) -> ControlFlow<ExitStatus> {
        let Some(dir) = self.config.snapshot_dir.clone() else {
            return self.reply(reply, &Reply::Snapshot { taken: false });
        };
        self.reply(reply, &Reply::Snapshot { taken: true })?;
        if !self.snapshot_now(&dir, SnapshotTrigger::Guest, session)? {
            self.reply(reply, &Reply::Snapshot { taken: false })?;
        }
        Continue(())
    }

    /// Takes a snapshot into `dir` and records it. Says whether it was
    /// written, or `Break(Snapshotted)` when the VM stops after it.
    fn snapshot_now(
        &mut self,
        dir: &Path,
        trigger: SnapshotTrigger,
        session: &mut Session,
    ) -> ControlFlow<ExitStatus, bool> {
        let total = session.console.written() + self.console_before;
        let result = self.take_snapshot(dir, total).map_err(|e| e.to_string());
        match &result {
            Ok(s) => log::info!(
                "snapshot ({trigger:?}) written to {}: {} pages in {:.1} ms",
                dir.display(),
                s.pages_written,
                s.elapsed.as_secs_f64() * 1e3
            ),
            Err(e) => log::warn!("snapshot ({trigger:?}) to {} failed: {e}", dir.display()),
        }
        let written = result.is_ok();
        session.snapshots.push(SnapshotRecord {
            trigger,
            dir: dir.to_path_buf(),
            result,
        });
        if written && self.config.exit_after_snapshot {
            return Break(ExitStatus::Snapshotted(dir.to_path_buf()));
        }
        Continue(written)
    }

    fn log_backup(&self, record: &BackupRecord) {
        log::info!(
            "backup point {} written: {} pages in {:.1} ms",
            record.point,
            record.pages,
            record.elapsed.as_secs_f64() * 1e3
        );
    }
}

/// An `Idle` wait: when it ends and where its answer goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingIdle {
    until: Instant,
    reply: GuestBuf,
}

/// Longest stretch of an `Idle` wait under gdb before the VMM looks whether
/// gdb wants in (how soon a Ctrl-C stops a waiting guest).
const DEBUGGED_IDLE_SLICE: Duration = Duration::from_millis(5);

/// Waits up to `limit` or until a stop is asked; returns whether one was.
fn idle(handle: Option<&VmHandle>, limit: Duration) -> bool {
    match handle {
        Some(h) => h.idle(limit),
        None => {
            std::thread::sleep(limit);
            false
        }
    }
}

/// How long an Idle wait of `nanos` may last: capped by [`MAX_IDLE`] and
/// the run's deadline. (With a network device a frame ends it earlier.)
fn idle_limit(nanos: u64, deadline: Option<Instant>) -> Duration {
    let limit = Duration::from_nanos(nanos).min(MAX_IDLE);
    match deadline {
        Some(d) => limit.min(d.saturating_duration_since(Instant::now())),
        None => limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_wait_ends_at_a_stop_request_or_the_deadline() {
        let h = VmHandle::new();
        h.request_stop();
        assert!(idle(Some(&h), MAX_IDLE));
        let t = Instant::now();
        assert!(!idle(None, idle_limit(u64::MAX, Some(t))));
        assert!(!idle(Some(&VmHandle::new()), Duration::from_micros(1)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_snapshot_asked_ends_an_idle_wait_without_a_stop() {
        let h = VmHandle::new();
        let answer = h.request_snapshot("/snap".into());
        let t = Instant::now();
        assert!(!idle(Some(&h), MAX_IDLE), "not a stop");
        assert!(t.elapsed() < Duration::from_secs(5));
        let (dir, tx) = h.take_snapshot_request().unwrap();
        assert_eq!(dir, std::path::Path::new("/snap"));
        tx.send(Ok(())).unwrap();
        assert_eq!(answer.recv().unwrap(), Ok(()));
        assert!(!h.snapshot_pending());
        // A newer request replaces an unanswered one, whose asker hears the end.
        let first = h.request_snapshot("/a".into());
        let _second = h.request_snapshot("/b".into());
        assert!(first.recv().is_err());
        assert_eq!(h.take_snapshot_request().map(|(d, _)| d), Some("/b".into()));
    }
}
