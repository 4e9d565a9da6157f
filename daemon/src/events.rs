//! The daemon's event log: the last [`KEEP`] events of its life, in
//! memory, numbered from 1.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use tandem::api::{Event, EventKind};

/// Events kept.
pub const KEEP: usize = 4096;

/// The log.
#[derive(Debug, Default)]
pub struct Events {
    next: u64,
    kept: VecDeque<Event>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Events {
    /// Records an event (and logs it).
    pub fn push(&mut self, vm: &str, kind: EventKind, detail: impl Into<String>) {
        self.next += 1;
        let detail = detail.into();
        log::info!("{vm}: {kind:?} {detail}");
        if self.kept.len() == KEEP {
            self.kept.pop_front();
        }
        self.kept.push_back(Event {
            seq: self.next,
            at_ms: now_ms(),
            vm: vm.to_string(),
            kind,
            detail,
        });
    }

    /// Events after `since`, of `vm` only when given.
    pub fn since(&self, since: u64, vm: Option<&str>) -> Vec<Event> {
        self.kept
            .iter()
            .filter(|e| e.seq > since && vm.is_none_or(|v| e.vm == v))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_and_filters() {
        let mut e = Events::default();
        for i in 0..KEEP + 5 {
            e.push(if i % 2 == 0 { "a" } else { "b" }, EventKind::Created, "");
        }
        let all = e.since(0, None);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].seq, 6);
        assert!(e.since(0, Some("a")).iter().all(|x| x.vm == "a"));
        assert_eq!(e.since(KEEP as u64 + 4, None).len(), 1);
    }
}
