//! Outlier ejection: a backend that answers `consecutive_5xx` 5xx in a row
//! is taken out of rotation for `ejection_time`
//! (`health_check.passive`).
//!
//! Only answers the backend sent count; tollgate's own 502 and 504 (no
//! connection, no answer in time) go to the health counters instead (see
//! `proxy`). At most `max_ejected_percent` of the pool is ejected at once,
//! rounded down: 1 of 2 backends at 50 %, none of a pool of one, whose 5xx
//! are still better than tollgate's own 503. An ejection ends by a timer
//! on the runtime that saw the last 5xx, with the active health check
//! rounds as a backstop; the backend then starts from zero 5xx.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Pool};
use crate::events::EventKind;

/// `health_check.passive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveSettings {
    /// 5xx answers in a row that eject a backend; 0: never.
    pub consecutive_5xx: u32,
    /// How long an ejection lasts.
    pub ejection_time: Duration,
    /// Most of the pool, in percent, ejected at once.
    pub max_ejected_percent: u8,
}

impl Default for PassiveSettings {
    fn default() -> Self {
        Self {
            consecutive_5xx: 0,
            ejection_time: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// [`PassiveSettings`] as atomics: read on every answer, replaced by a
/// reload.
#[derive(Debug)]
pub(super) struct Settings {
    consecutive_5xx: AtomicU32,
    ejection_ms: AtomicU64,
    max_ejected_percent: AtomicU32,
}

impl Default for Settings {
    fn default() -> Self {
        let s = Self {
            consecutive_5xx: AtomicU32::new(0),
            ejection_ms: AtomicU64::new(0),
            max_ejected_percent: AtomicU32::new(0),
        };
        s.set(PassiveSettings::default());
        s
    }
}

impl Settings {
    fn set(&self, p: PassiveSettings) {
        let ms = u64::try_from(p.ejection_time.as_millis()).unwrap_or(u64::MAX);
        self.ejection_ms.store(ms, Ordering::Relaxed);
        self.max_ejected_percent
            .store(u32::from(p.max_ejected_percent.min(100)), Ordering::Relaxed);
        self.consecutive_5xx
            .store(p.consecutive_5xx, Ordering::Relaxed);
    }

    fn get(&self) -> PassiveSettings {
        PassiveSettings {
            consecutive_5xx: self.consecutive_5xx.load(Ordering::Relaxed),
            ejection_time: Duration::from_millis(self.ejection_ms.load(Ordering::Relaxed)),
            max_ejected_percent: u8::try_from(self.max_ejected_percent.load(Ordering::Relaxed))
                .unwrap_or(100),
        }
    }
}

impl Pool {
    /// Milliseconds since the pool was made, plus one (0 means "not
    /// ejected"). Tokio's clock, so paused-time tests can move it.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The same pool with these ejection settings.
    pub fn with_passive(self, passive: PassiveSettings) -> Self {
        self.set_passive(passive);
        self
    }

    /// Uses these ejection settings from the next answer on; ejections
    /// under way keep their end.
    pub fn set_passive(&self, passive: PassiveSettings) {
        self.passive.set(passive);
    }

    /// The ejection settings in use.
    pub fn passive(&self) -> PassiveSettings {
        self.passive.get()
    }

    /// Records the status of an answer `backend` sent, and ejects it after
    /// `consecutive_5xx` 5xx in a row. Costs one load when ejection is off,
    /// and no write for a success after a success.
    pub fn record_answer(self: &Arc<Self>, backend: &Backend, status: http::StatusCode) {
        let needed = self.passive.consecutive_5xx.load(Ordering::Relaxed);
        if needed == 0 {
            return;
        }
        if !status.is_server_error() {
            if backend.answers_5xx.load(Ordering::Relaxed) != 0 {
                backend.answers_5xx.store(0, Ordering::Relaxed);
            }
            return;
        }
        let seen = backend
            .answers_5xx
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if seen >= needed && !backend.is_ejected() {
            self.eject(backend, seen);
        }
    }

    fn eject(self: &Arc<Self>, backend: &Backend, seen: u32) {
        let settings = self.passive.get();
        {
            let changes = self.lock();
            if backend.is_ejected() || backend.is_removed() {
                return;
            }
            let all = self.backends();
            let ejected = all.iter().filter(|b| b.is_ejected()).count();
            let allowed = all.len() * usize::from(settings.max_ejected_percent) / 100;
            if ejected >= allowed {
                tracing::debug!(
                    backend = %backend.name(),
                    ejected,
                    allowed,
                    "not ejected: health_check.passive.max_ejected_percent reached"
                );
                return;
            }
            let ms = u64::try_from(settings.ejection_time.as_millis()).unwrap_or(u64::MAX);
            backend
                .ejected_until
                .store(self.now_ms().saturating_add(ms).max(1), Ordering::Relaxed);
            self.republish(&changes);
        }
        let name = backend.name();
        self.events.push(
            EventKind::Ejected,
            Some(&name),
            format!(
                "ejected for {:?} after {seen} consecutive 5xx answers",
                settings.ejection_time
            ),
        );
        let labels: &[(&'static str, &str)] = match self.metric_label() {
            Some(pool) => &[("backend", &name), ("pool", pool)],
            None => &[("backend", &name)],
        };
        self.metrics
            .counter(crate::telemetry::BACKEND_EJECTIONS, labels)
            .increment(1);
        tracing::warn!(
            backend = %name,
            consecutive_5xx = seen,
            ejection_time = ?settings.ejection_time,
            "backend ejected after consecutive 5xx answers"
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(self);
            runtime.spawn(async move {
                tokio::time::sleep(settings.ejection_time).await;
                if let Some(pool) = pool.upgrade() {
                    pool.restore_expired();
                }
            });
        }
    }

    /// Ends every ejection whose time is up; the health checker calls it
    /// each round, the ejection's own timer when it is due.
    pub fn restore_expired(&self) {
        let now = self.now_ms();
        let due = |b: &Backend| {
            let until = b.ejected_until.load(Ordering::Relaxed);
            until != 0 && until <= now
        };
        if !self.backends().iter().any(|b| due(b)) {
            return;
        }
        let changes = self.lock();
        let mut ended = Vec::new();
        for b in self.backends().iter().filter(|b| due(b)) {
            b.ejected_until.store(0, Ordering::Relaxed);
            b.answers_5xx.store(0, Ordering::Relaxed);
            ended.push(b.clone());
        }
        self.republish(&changes);
        drop(changes);
        for b in ended {
            self.events.push(
                EventKind::EjectionEnded,
                Some(&b.name()),
                "ejection ended: back in rotation",
            );
            tracing::info!(backend = %b.name(), "backend ejection ended: back in rotation");
        }
    }
}
