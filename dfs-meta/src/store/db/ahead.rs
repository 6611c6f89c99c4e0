//! A PostgreSQL transaction begun ahead of the call that will use it, so
//! that call does not wait for its BEGIN: one round trip fewer on every
//! write (a small file's close was BEGIN, a read, a write and COMMIT).
//!
//! Sound because a SERIALIZABLE (or REPEATABLE READ) transaction takes its
//! snapshot at its first statement, not at BEGIN: until then it holds no
//! snapshot, no locks and no transaction id, so one begun a moment ago is
//! the same as one begun now.
//!
//! One not used within `FRESH_FOR` is rolled back: an idle transaction
//! would hold a connection for nothing, a server that ends idle
//! transactions (`idle_in_transaction_session_timeout`) may have closed it,
//! and a backend reports its activity statistics (what autovacuum and
//! `statistics.rs` go by) only when idle outside a transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, Postgres};

/// How long a transaction begun ahead may wait for its call.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// The statement that begins every transaction of the store.
const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

type Tx = sqlx::Transaction<'static, Postgres>;

/// At most one transaction begun ahead, and the task that begins the next.
#[derive(Default)]
pub(super) struct Ahead {
    ready: Mutex<Option<(Tx, Instant)>>,
    /// A task is beginning one now.
    beginning: AtomicBool,
    /// The pool is closing: begin no more, keep none.
    closed: AtomicBool,
}

impl Ahead {
    /// A transaction of `pool`: the one begun ahead if fresh, else a new one.
    pub(super) async fn begin(&self, pool: &PgPool) -> Result<Tx, sqlx::Error> {
        let ready = lock(&self.ready).take();
        match ready {
            Some((tx, since)) if since.elapsed() < FRESH_FOR => Ok(tx),
            stale => {
                if let Some((tx, _)) = stale {
                    tokio::spawn(rollback(tx));
                }
                pool.begin_with(BEGIN).await
            }
        }
    }

    /// Begins the next transaction, unless one is waiting or beginning.
    pub(super) fn begin_next(self: &Arc<Self>, pool: &PgPool) {
        if self.closed.load(Ordering::Acquire) || lock(&self.ready).is_some() {
            return;
        }
        if self.beginning.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ahead, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            let begun = pool.begin_with(BEGIN).await;
            ahead.beginning.store(false, Ordering::Release);
            // A failure is left to the call that would have used it: it
            // begins its own and meets the error itself.
            let Ok(tx) = begun else { return };
            let since = Instant::now();
            let spare = {
                // Checked under the lock `close` takes after setting it.
                let mut ready = lock(&ahead.ready);
                if ready.is_none() && !ahead.closed.load(Ordering::Acquire) {
                    *ready = Some((tx, since));
                    None
                } else {
                    Some(tx)
                }
            };
            if let Some(tx) = spare {
                return rollback(tx).await;
            }
            tokio::time::sleep(FRESH_FOR).await;
            let stale = {
                let mut ready = lock(&ahead.ready);
                match &*ready {
                    Some((_, s)) if *s == since => ready.take(),
                    _ => None,
                }
            };
            if let Some((tx, _)) = stale {
                rollback(tx).await;
            }
        });
    }

    /// Whether a transaction begun ahead is waiting.
    #[cfg(test)]
    pub(super) fn is_ready(&self) -> bool {
        lock(&self.ready).is_some()
    }

    /// Drops the transaction waiting (its connection goes back to the pool,
    /// which can then close) and begins no more.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.ready).take();
    }
}

/// Ends `tx` now (a dropped one is rolled back only when its connection is
/// next used, and stays open on the server until then).
async fn rollback(tx: Tx) {
    if let Err(e) = tx.rollback().await {
        tracing::debug!(error = %e, "rolling back a transaction begun ahead");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
