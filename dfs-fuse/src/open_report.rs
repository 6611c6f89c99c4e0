//! Tells meta which files this mount's last handle closed, and, once a new
//! watch stream is live (meta may have restarted and forgotten), which files
//! it has open. Meta keeps a file another client removes while this mount
//! has it open, held by this mount's session, until it hears the file closed
//! here (meta's `open_files.rs`); meta learns of opens itself (GetChunks,
//! CommitWrite).
//!
//! Closes go in batches (`BATCH_WAIT`), off the close's path. A file opened
//! again before its close went out takes the close back; one opened while
//! its close is on its way waits for it, so meta never hears "closed" after
//! the new open.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use dfs_proto::pb;
use tokio::sync::Notify;

/// How long closes gather before they go to meta in one call.
const BATCH_WAIT: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct OpenReport {
    state: Mutex<State>,
    /// A close is waiting to go.
    wake: Notify,
    /// A batch reached meta (or failed).
    flown: Notify,
}

#[derive(Default)]
struct State {
    pending: HashSet<u64>,
    in_flight: HashSet<u64>,
}

impl OpenReport {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last handle on `ino` here closed.
    pub fn closed(&self, ino: u64) {
        self.state().pending.insert(ino);
        self.wake.notify_one();
    }

    /// Before `ino` is opened here again (its first handle): a close not
    /// yet sent is taken back, one on its way is waited for.
    pub async fn reopening(&self, ino: u64) {
        loop {
            let flown = self.flown.notified();
            tokio::pin!(flown);
            flown.as_mut().enable();
            {
                let mut state = self.state();
                if state.pending.remove(&ino) || !state.in_flight.contains(&ino) {
                    return;
                }
            }
            flown.await;
        }
    }

    /// Sends the closes as they come, until the mount stops. A close goes
    /// after the file's create answered early (`deferred`): meta would
    /// count the create as an open after the close.
    pub async fn run(&self, meta: dfs_client::Meta, deferred: &crate::deferred::Deferred) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(BATCH_WAIT).await;
            let closed: Vec<u64> = {
                let mut state = self.state();
                let pending = std::mem::take(&mut state.pending);
                state.in_flight.clone_from(&pending);
                pending.into_iter().collect()
            };
            for ino in &closed {
                deferred.settled_ino(*ino).await;
            }
            if !closed.is_empty() {
                let sent = meta
                    .clone()
                    .open_files(pb::OpenFilesRequest {
                        opened: Vec::new(),
                        closed,
                    })
                    .await;
                if let Err(e) = sent {
                    // Meta goes on believing them open: one another client
                    // removes is kept until this session ends.
                    tracing::warn!(error = %e, "cannot tell meta which files closed");
                }
            }
            self.state().in_flight.clear();
            self.flown.notify_waiters();
        }
    }

    /// Tells meta every file open here (a new watch stream: meta may have
    /// restarted).
    pub async fn announce(&self, meta: dfs_client::Meta, opened: Vec<u64>) {
        if opened.is_empty() {
            return;
        }
        let sent = meta
            .clone()
            .open_files(pb::OpenFilesRequest {
                opened,
                closed: Vec::new(),
            })
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot tell meta which files are open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reopen_takes_back_a_close_not_yet_sent_and_waits_for_one_on_its_way() {
        let r = std::sync::Arc::new(OpenReport::default());
        r.closed(7);
        r.reopening(7).await;
        assert!(r.state().pending.is_empty(), "the close is taken back");
        r.state().in_flight.insert(8);
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.reopening(8).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits for the batch");
        r.state().in_flight.clear();
        r.flown.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the batch flew")
            .expect("no panic");
        r.reopening(9).await;
    }
}
