//! Handing memory a burst freed back to the operating system.
//!
//! The allocator (mimalloc, chosen by the binary) returns freed pages only
//! when the thread that freed them calls into it again after its purge
//! delay; a proxy thread that goes quiet after a burst of thousands of
//! connections would keep them, and RSS would stay well above its idle
//! baseline. So each proxy thread asks the allocator to collect once every
//! [`EVERY`]: a few microseconds a second under load, and the pages of a
//! burst go back within seconds of it. The library cannot call the
//! allocator itself (it has no unsafe code, and an embedder may use
//! another allocator), so the binary registers the call with
//! [`on_collect`]; without one nothing runs.

use std::sync::OnceLock;
use std::time::Duration;

/// How often each proxy thread collects: longer than mimalloc's purge
/// delay (1 s), so each collection finds the previous second's frees
/// ready to purge.
pub const EVERY: Duration = Duration::from_secs(2);

static COLLECT: OnceLock<fn()> = OnceLock::new();

/// Registers what collects the calling thread's freed memory (for
/// mimalloc, `mi_collect(false)`). The first registration stays.
pub fn on_collect(collect: fn()) {
    let _ = COLLECT.set(collect);
}

/// Collects the calling thread's freed memory every [`EVERY`], forever;
/// returns at once if nothing was registered. Spawned on each proxy
/// thread's runtime.
pub(crate) async fn collect_periodically() {
    let Some(collect) = COLLECT.get().copied() else {
        return;
    };
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        collect();
    }
}
