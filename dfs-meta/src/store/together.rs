//! Group commit of unlinks and numbered creates. A mount answers unlinks
//! and creates in a directory granted to it early and sends up to 64 at once
//! (`rm -rf`, mass deletes, runs of new files); run one transaction each,
//! they queue for SQLite's one writer (each commit writing the same pages of
//! the directory, entry and inode tables again), and on PostgreSQL they
//! conflict at SERIALIZABLE (on a directory's row, and on the index pages
//! neighbouring names share) and rerun. Here the calls that arrive while a
//! batch commits wait for it, and then commit together, in one transaction,
//! whichever directories they are in: each is done exactly as alone
//! (`unlink_in`, `create_numbered_in`) and its request recorded for replay,
//! and the batch commits or rolls back as one.
//!
//! A call refused (the name is gone or taken, a directory, pinned) is
//! refused before it writes anything, so it fails alone and the batch goes
//! on; a database error rolls the whole batch back, and its calls then run
//! one by one, each in a transaction of its own. So every caller gets the
//! answer it would have got alone. The batch runs on a task of its own: a
//! caller that goes away (its client cancelled) does not take the other
//! callers' calls with it.

use tokio::sync::oneshot;

use super::namespace::{CreateArgs, NameChange};
use super::tables::{self, Origin};
use super::unlink_run::{unlink_run, RunCall};
use super::{Backend, Inode, Result, Store, StoreError, Timespec};

/// Calls committed in one transaction, at most.
const MAX_BATCH: usize = 64;

/// One unlink as the caller asked for it.
pub(super) struct UnlinkCall {
    pub parent: u64,
    pub name: Vec<u8>,
    pub expect: Option<u64>,
    pub keep_open: Option<u64>,
    pub origin: Origin,
}

/// One create under a number of the client's, as the caller asked for it.
pub(super) struct CreateCall {
    pub args: CreateArgs,
    pub ino: u64,
    pub time: Timespec,
    pub origin: Origin,
}

/// A call of a batch, and where its answer goes.
pub(super) enum Waiting {
    Unlink(UnlinkCall, oneshot::Sender<Result<NameChange<u64>>>),
    Create(CreateCall, oneshot::Sender<Result<NameChange<Inode>>>),
}

/// What a call of a batch did.
enum Done {
    Unlinked(NameChange<u64>),
    Created(NameChange<Inode>),
}

/// The calls waiting for the batch committing now.
pub(super) type Queue = dfs_common::batches::Batches<Waiting>;

impl Waiting {
    fn origin(&self) -> Origin {
        match self {
            Waiting::Unlink(c, _) => c.origin,
            Waiting::Create(c, _) => c.origin,
        }
    }

    /// Hands `done` to the caller (one gone meanwhile needs no answer).
    fn answer(self, done: Result<Done>) {
        let mismatch = || StoreError::Interrupted("a batch answered a call of another kind".into());
        match self {
            Waiting::Unlink(_, to) => {
                let _ = to.send(done.and_then(|d| match d {
                    Done::Unlinked(u) => Ok(u),
                    Done::Created(_) => Err(mismatch()),
                }));
            }
            Waiting::Create(_, to) => {
                let _ = to.send(done.and_then(|d| match d {
                    Done::Created(c) => Ok(c),
                    Done::Unlinked(_) => Err(mismatch()),
                }));
            }
        }
    }
}

impl Done {
    /// What the call's request record keeps (its replay answer).
    fn record(&self) -> i64 {
        match self {
            Done::Unlinked(u) => u.done as i64,
            Done::Created(c) => c.done.ino as i64,
        }
    }
}

impl Store {
    /// Removes a name (see `unlink_if`) in the next batch.
    pub(super) async fn unlink_batched(&self, call: UnlinkCall) -> Result<NameChange<u64>> {
        let (answer, answered) = oneshot::channel();
        self.enqueue(Waiting::Unlink(call, answer));
        answered.await.unwrap_or_else(|_| Err(unanswered()))
    }

    /// Creates a file under the client's number (see `create_numbered`) in
    /// the next batch.
    pub(super) async fn create_batched(&self, call: CreateCall) -> Result<NameChange<Inode>> {
        let (answer, answered) = oneshot::channel();
        self.enqueue(Waiting::Create(call, answer));
        answered.await.unwrap_or_else(|_| Err(unanswered()))
    }

    fn enqueue(&self, waiting: Waiting) {
        if self.batch_queue.push(waiting) {
            let store = self.clone();
            tokio::spawn(async move { store.run_batches().await });
        }
    }

    async fn run_batches(&self) {
        loop {
            let batch = self.batch_queue.next(MAX_BATCH);
            if batch.is_empty() {
                return;
            }
            let results = self.run_together(&batch).await;
            for (waiting, result) in batch.into_iter().zip(results) {
                waiting.answer(result);
            }
        }
    }

    /// `calls` in one transaction; each alone if that transaction fails.
    async fn run_together(&self, calls: &[Waiting]) -> Vec<Result<Done>> {
        if calls.len() > 1 {
            let mut runs: u32 = 0;
            let together: Result<Vec<Result<Done>>> = async {
                super::in_tx!(self, |tx| {
                    runs += 1;
                    // As `in_tx_once`: on PostgreSQL a first run looks for a
                    // request's record only when the request fails.
                    let looked = runs > 1 || self.backend == Backend::Sqlite;
                    let mut answers = Vec::with_capacity(calls.len());
                    for run in runs_of_unlinks(calls) {
                        match run {
                            [c] => answers.push(self.run_one(&mut tx, c, looked).await?),
                            run => answers.extend(self.run_unlinks(&mut tx, run, looked).await?),
                        }
                    }
                    Ok(answers)
                })
            }
            .await;
            match together {
                Ok(answers) => {
                    self.metrics.batches.observe(calls.len() as f64);
                    return answers;
                }
                Err(e) => tracing::warn!(error = %e, "a batch failed; its calls run alone"),
            }
        }
        let mut answers = Vec::with_capacity(calls.len());
        for c in calls {
            self.metrics.batches.observe(1.0);
            answers.push(match c {
                Waiting::Unlink(u, _) => self.unlink_alone(u).await.map(Done::Unlinked),
                Waiting::Create(c, _) => self.create_numbered_alone(c).await.map(Done::Created),
            });
        }
        answers
    }

    /// A run of unlinks of a batch (`unlink_run.rs`), each answered as by
    /// `run_one`.
    async fn run_unlinks(
        &self,
        tx: &mut super::DbConn,
        run: &[Waiting],
        looked: bool,
    ) -> Result<Vec<Result<Done>>> {
        // Answers from records of earlier runs of a call's request.
        let mut answers: Vec<Option<Result<Done>>> = Vec::with_capacity(run.len());
        for c in run {
            let replay = match looked {
                true => tables::replayed(tx, c.origin()).await?,
                false => None,
            };
            answers.push(match replay {
                Some(prev) => Some(replayed(tx, c, prev).await?),
                None => None,
            });
        }
        let calls: Vec<RunCall<'_>> = run
            .iter()
            .zip(&answers)
            .filter_map(|(c, answer)| match (c, answer) {
                (Waiting::Unlink(u, _), None) => Some(RunCall {
                    parent: u.parent,
                    name: &u.name,
                    expect: u.expect,
                    keep: self.keep_open(u.keep_open, u.origin),
                }),
                _ => None,
            })
            .collect();
        let mut done = unlink_run(tx, &calls).await?.into_iter();
        let mut out = Vec::with_capacity(run.len());
        for (c, answer) in run.iter().zip(answers) {
            if let Some(answer) = answer {
                out.push(answer);
                continue;
            }
            let done = done
                .next()
                .ok_or_else(|| StoreError::Interrupted("a run answered too few unlinks".into()))?;
            out.push(match done {
                Ok(d) => {
                    let d = Done::Unlinked(d);
                    tables::record(tx, c.origin(), d.record()).await?;
                    Ok(d)
                }
                // A refused call may be a retry of one done: before this
                // run, or by a call of it recorded just now.
                Err(refused) => match tables::replayed(tx, c.origin()).await? {
                    Some(prev) => replayed(tx, c, prev).await?,
                    None => Err(refused),
                },
            });
        }
        Ok(out)
    }

    /// One call of a batch: `Ok` with its own answer (a refused call wrote
    /// nothing, see `unlink_in` and `create_numbered_in`, so the others go
    /// on), `Err` when the database failed and the whole batch must not
    /// commit.
    async fn run_one(
        &self,
        tx: &mut super::DbConn,
        c: &Waiting,
        looked: bool,
    ) -> Result<Result<Done>> {
        let origin = c.origin();
        if looked {
            if let Some(prev) = tables::replayed(tx, origin).await? {
                return replayed(tx, c, prev).await;
            }
        }
        let done = match c {
            Waiting::Unlink(u, _) => {
                let keep = self.keep_open(u.keep_open, u.origin);
                super::namespace::unlink_in(tx, u.parent, &u.name, u.expect, keep)
                    .await
                    .map(Done::Unlinked)
            }
            Waiting::Create(c, _) => {
                super::namespace::create_numbered_in(tx, &c.args, c.ino, c.time)
                    .await
                    .map(Done::Created)
            }
        };
        match done {
            Ok(done) => {
                tables::record(tx, origin, done.record()).await?;
                Ok(Ok(done))
            }
            Err(e @ StoreError::Db(_)) => Err(e),
            Err(refused) => {
                if !looked {
                    if let Some(prev) = tables::replayed(tx, origin).await? {
                        return replayed(tx, c, prev).await;
                    }
                }
                Ok(Err(refused))
            }
        }
    }
}

/// `calls` cut into runs of consecutive unlinks, every other call a run of
/// its own.
fn runs_of_unlinks(calls: &[Waiting]) -> impl Iterator<Item = &[Waiting]> {
    calls.chunk_by(|a, b| matches!((a, b), (Waiting::Unlink(..), Waiting::Unlink(..))))
}

fn unanswered() -> StoreError {
    StoreError::Interrupted("batch ended unanswered".into())
}

/// The answer of a call's earlier run (a retried request), its directory
/// unread: `Err` only when the database failed.
async fn replayed(tx: &mut super::DbConn, c: &Waiting, prev: i64) -> Result<Result<Done>> {
    match c {
        Waiting::Unlink(..) => Ok(Ok(Done::Unlinked(NameChange {
            done: prev as u64,
            dir: None,
        }))),
        Waiting::Create(..) => match super::namespace::replayed_create(tx, prev).await {
            Ok(made) => Ok(Ok(Done::Created(made))),
            Err(e @ StoreError::Db(_)) => Err(e),
            Err(e) => Ok(Err(e)),
        },
    }
}
