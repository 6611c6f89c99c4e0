//! Group commit of unlinks. A mount answers unlinks in a directory granted
//! to it early and sends up to 64 at once (`rm -rf`, mass deletes); run one
//! transaction each, they queue for SQLite's one writer, and on PostgreSQL
//! they conflict at SERIALIZABLE (on a directory's row, and on the index
//! pages neighbouring names share) and rerun. Here the unlinks that arrive
//! while a batch commits wait for it, and then commit together, in one
//! transaction, whichever directories they are in: each name is removed
//! exactly as alone (`unlink_in`) and its request recorded for replay, and
//! the batch commits or rolls back as one.
//!
//! An unlink refused (the name is gone, a directory, pinned) is refused
//! before it writes anything, so it fails alone and the batch goes on; a
//! database error rolls the whole batch back, and its unlinks then run one by
//! one, each in a transaction of its own. So every caller gets the answer it
//! would have got alone. The batch runs on a task
//! of its own: a caller that goes away (its client cancelled) does not take
//! the other callers' unlinks with it.

use tokio::sync::oneshot;

use super::namespace::NameChange;
use super::tables::{self, Origin};
use super::{Backend, Result, Store, StoreError};

/// Unlinks committed in one transaction, at most.
const MAX_BATCH: usize = 64;

/// One unlink as the caller asked for it.
pub(super) struct UnlinkCall {
    pub parent: u64,
    pub name: Vec<u8>,
    pub expect: Option<u64>,
    pub keep_open: Option<u64>,
    pub origin: Origin,
}

pub(super) struct Waiting {
    call: UnlinkCall,
    answer: oneshot::Sender<Result<NameChange<u64>>>,
}

/// The unlinks waiting for the batch committing now.
pub(super) type UnlinkQueue = dfs_common::batches::Batches<Waiting>;

impl Store {
    /// Removes a name (see `unlink_if`) in the next batch.
    pub(super) async fn unlink_batched(&self, call: UnlinkCall) -> Result<NameChange<u64>> {
        let (answer, answered) = oneshot::channel();
        if self.unlink_queue.push(Waiting { call, answer }) {
            let store = self.clone();
            tokio::spawn(async move { store.run_unlinks().await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Interrupted(
                "unlink batch ended unanswered".into(),
            ))
        })
    }

    async fn run_unlinks(&self) {
        loop {
            let batch = self.unlink_queue.next(MAX_BATCH);
            if batch.is_empty() {
                return;
            }
            let (calls, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.call, w.answer)).unzip();
            let results = self.unlink_together(&calls).await;
            for (answer, result) in answers.into_iter().zip(results) {
                // A caller gone meanwhile needs no answer.
                let _ = answer.send(result);
            }
        }
    }

    /// `calls` in one transaction; each alone if that transaction fails.
    async fn unlink_together(&self, calls: &[UnlinkCall]) -> Vec<Result<NameChange<u64>>> {
        if calls.len() > 1 {
            let mut runs: u32 = 0;
            let together: Result<Vec<Result<NameChange<u64>>>> = async {
                super::in_tx!(self, |tx| {
                    runs += 1;
                    // As `in_tx_once`: on PostgreSQL a first run looks for a
                    // request's record only when the request fails.
                    let looked = runs > 1 || self.backend == Backend::Sqlite;
                    let mut answers = Vec::with_capacity(calls.len());
                    for c in calls {
                        answers.push(self.unlink_one(&mut tx, c, looked).await?);
                    }
                    Ok(answers)
                })
            }
            .await;
            match together {
                Ok(answers) => {
                    self.metrics.unlink_batches.observe(calls.len() as f64);
                    return answers;
                }
                Err(e) => tracing::warn!(error = %e, "unlink batch failed; unlinks run alone"),
            }
        }
        let mut answers = Vec::with_capacity(calls.len());
        for c in calls {
            self.metrics.unlink_batches.observe(1.0);
            answers.push(self.unlink_alone(c).await);
        }
        answers
    }

    /// One unlink of a batch: `Ok` with its own answer (a refused unlink
    /// wrote nothing, see `unlink_in`, so the others go on), `Err` when the
    /// database failed and the whole batch must not commit.
    async fn unlink_one(
        &self,
        tx: &mut super::DbConn,
        c: &UnlinkCall,
        looked: bool,
    ) -> Result<Result<NameChange<u64>>> {
        if looked {
            if let Some(prev) = tables::replayed(tx, c.origin).await? {
                return Ok(Ok(replayed(prev)));
            }
        }
        let keep = self.keep_open(c.keep_open, c.origin);
        match super::namespace::unlink_in(tx, c.parent, &c.name, c.expect, keep).await {
            Ok(unlinked) => {
                tables::record(tx, c.origin, unlinked.done as i64).await?;
                Ok(Ok(unlinked))
            }
            Err(e @ StoreError::Db(_)) => Err(e),
            Err(refused) => {
                if !looked {
                    if let Some(prev) = tables::replayed(tx, c.origin).await? {
                        return Ok(Ok(replayed(prev)));
                    }
                }
                Ok(Err(refused))
            }
        }
    }
}

/// The answer of an unlink's earlier run (a retried request): its directory unread.
fn replayed(prev: i64) -> NameChange<u64> {
    NameChange {
        done: prev as u64,
        dir: None,
    }
}
