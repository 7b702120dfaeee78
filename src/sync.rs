//! Synchronisation primitives used by the limiter, swapped for loom's
//! model-checked versions under `--cfg tollgate_loom`.
//!
//! Only the limiter's shared state goes through this shim: it is the part
//! whose interleavings the loom models explore. Everything else uses `std`
//! and `tokio` directly.

#[cfg(tollgate_loom)]
pub(crate) use loom::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(tollgate_loom))]
pub(crate) use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Atomic integers (loom's under `--cfg tollgate_loom`).
pub(crate) mod atomic {
    #[cfg(tollgate_loom)]
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
    #[cfg(not(tollgate_loom))]
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
}

/// Read-locks `lock`, ignoring poisoning.
///
/// The data behind the limiter's locks is an index of slot numbers that is
/// always left consistent between statements; a panic elsewhere while the
/// lock was held does not make it unsafe to read.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `lock`, ignoring poisoning (see [`read`]).
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
