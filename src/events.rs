//! The recent operational events an operator wants to see at a glance on
//! the status page: backend health transitions, ejections, drains and
//! config reloads.
//!
//! A bounded ring ([`CAPACITY`] entries, oldest dropped first) behind a
//! mutex: events are rare (a few per minute at worst), and each one is
//! also logged where it happens, so this list is a convenience, not the
//! record. A leaf module, so the pool and the reloader can write to it
//! without depending on the status page.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use utoipa::ToSchema;

/// Events kept; older ones are dropped.
pub const CAPACITY: usize = 50;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A backend failed `unhealthy_threshold` checks in a row (or its
    /// first one): out of the pool.
    Unhealthy,
    /// A backend passed `healthy_threshold` checks in a row: back.
    Healthy,
    /// A backend was ejected for consecutive 5xx answers.
    Ejected,
    /// An ejection ended.
    EjectionEnded,
    /// The operator drained a backend.
    Draining,
    /// The operator put a drained backend back in rotation.
    Enabled,
    /// The config was reloaded (SIGHUP, `POST /reload`).
    Reload,
    /// A reload failed; the running configuration stayed.
    ReloadFailed,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Event {
    /// When, in milliseconds since the Unix epoch.
    #[schema(format = Int64, minimum = 0)]
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The backend it concerns (its name), if any.
    #[schema(required = true)]
    pub backend: Option<String>,
    /// The details, in words.
    pub message: String,
}

/// The last [`CAPACITY`] events.
#[derive(Debug, Default)]
pub struct Events(Mutex<VecDeque<Event>>);

impl Events {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an event that happened now.
    pub fn push(&self, kind: EventKind, backend: Option<&str>, message: impl Into<String>) {
        let event = Event {
            at_ms: unix_ms(SystemTime::now()),
            kind,
            backend: backend.map(str::to_owned),
            message: message.into(),
        };
        // A panic while the lock was held leaves a valid deque behind.
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() == CAPACITY {
            list.pop_front();
        }
        list.push_back(event);
    }

    /// The events kept, newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        let list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().rev().cloned().collect()
    }
}

/// `t` in milliseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_capacity_events_newest_first() {
        let events = Events::new();
        for i in 0..CAPACITY + 5 {
            events.push(EventKind::Reload, None, format!("{i}"));
        }
        let list = events.newest_first();
        assert_eq!(list.len(), CAPACITY);
        assert_eq!(list[0].message, format!("{}", CAPACITY + 4));
        assert_eq!(list[CAPACITY - 1].message, "5");
    }
}
