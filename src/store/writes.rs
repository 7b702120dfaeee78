//! Ordering this replica's own admin writes against what it applies from
//! reads of the shared client table.
//!
//! A reload (or a notified row) compares the table with what the registry
//! runs and applies the difference. A read taken just before a local admin
//! write commits still shows the old row; applied after the admin API
//! applied the new one, it would put the old limits back until the next
//! read. So each local write is counted from before it writes the table to
//! after it applied its change ([`LocalWrites::begin`]), and a read is
//! applied only if no local write was under way during it
//! ([`LocalWrites::read_then_apply`]); otherwise it is taken again. The
//! check and the application happen under the lock the local writes apply
//! under, so a write that starts after the check applies after the read
//! did: the newer value is the one that stays.
//!
//! Admin writes never wait for a read of the table, only for the short,
//! synchronous application of one.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

/// Reads taken again, at most, when local writes keep overlapping them;
/// past that the read is dropped and the next one (reload tick or
/// notification) tries again.
const ATTEMPTS: usize = 5;

/// Local admin writes under way and started, shared by the admin API and
/// the table sync of one replica.
#[derive(Debug, Default)]
pub struct LocalWrites {
    epoch: Mutex<Epoch>,
    quiet: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Epoch {
    /// Local writes started since the process started.
    started: u64,
    /// Local writes started and not yet applied or abandoned.
    in_flight: u64,
}

impl LocalWrites {
    /// A new, shareable counter.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn epoch(&self) -> MutexGuard<'_, Epoch> {
        // The counters stay consistent whatever panicked while holding
        // them: each update is a single statement.
        self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces a local write; call before writing the table, and apply
    /// the committed change through [`LocalWrite::apply`].
    pub fn begin(self: &Arc<Self>) -> LocalWrite {
        let mut epoch = self.epoch();
        epoch.started += 1;
        epoch.in_flight += 1;
        LocalWrite {
            writes: Some(self.clone()),
        }
    }

    /// The count of started writes once none is under way.
    async fn quiet(&self) -> u64 {
        loop {
            let woken = self.quiet.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let epoch = self.epoch();
                if epoch.in_flight == 0 {
                    return epoch.started;
                }
            }
            woken.await;
        }
    }

    /// Runs `read`, then `apply` on what it read, with no local write
    /// having run between the start of the read and the application.
    /// `Ok(None)`: writes kept overlapping the reads; nothing was applied.
    pub async fn read_then_apply<T, R, E, F>(
        &self,
        read: impl Fn() -> F,
        apply: impl FnOnce(T) -> R,
    ) -> Result<Option<R>, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut apply = Some(apply);
        for _ in 0..ATTEMPTS {
            let before = self.quiet().await;
            let value = read().await?;
            let epoch = self.epoch();
            if epoch.started == before {
                return Ok(apply.take().map(|f| f(value)));
            }
        }
        Ok(None)
    }
}

/// One local admin write under way (see [`LocalWrites::begin`]). Dropped
/// without [`LocalWrite::apply`] (the write failed or timed out), it
/// counts as over.
#[derive(Debug)]
pub struct LocalWrite {
    writes: Option<Arc<LocalWrites>>,
}

impl LocalWrite {
    /// Applies the committed change with `f`, ordered against the
    /// application of table reads.
    pub fn apply<R>(mut self, f: impl FnOnce() -> R) -> R {
        match self.writes.take() {
            Some(writes) => {
                let r = {
                    let mut epoch = writes.epoch();
                    let r = f();
                    epoch.in_flight -= 1;
                    r
                };
                writes.quiet.notify_waiters();
                r
            }
            None => f(),
        }
    }
}

impl Drop for LocalWrite {
    fn drop(&mut self) {
        if let Some(writes) = self.writes.take() {
            writes.epoch().in_flight -= 1;
            writes.quiet.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LocalWrites;

    #[tokio::test]
    async fn a_read_overlapped_by_a_local_write_is_taken_again() {
        let writes = LocalWrites::new();
        let reads = std::sync::atomic::AtomicU32::new(0);
        let applied = writes
            .read_then_apply(
                || async {
                    // The first read is overlapped by a whole local write.
                    if reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        writes.begin().apply(|| ());
                    }
                    Ok::<_, ()>(reads.load(std::sync::atomic::Ordering::Relaxed))
                },
                |read| read,
            )
            .await;
        assert_eq!(applied, Ok(Some(2)));
    }

    #[tokio::test]
    async fn a_read_waits_for_a_write_under_way() {
        let writes = LocalWrites::new();
        let write = writes.begin();
        let reader = {
            let writes = writes.clone();
            tokio::spawn(async move {
                writes
                    .read_then_apply(|| async { Ok::<_, ()>(()) }, |()| ())
                    .await
            })
        };
        // An abandoned write (failed, timed out) ends too.
        drop(write);
        assert_eq!(reader.await.expect("join"), Ok(Some(())));
    }
}
