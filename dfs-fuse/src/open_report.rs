//! Tells meta which files this mount opened for reading without asking it
//! (from a chunk map it held: `OpenFile::cached`) and which it closed (the
//! last reference went: the last handle's release, or a stat or drain that
//! held the file meanwhile; `OpenFile::with_drop_notice`), and, once a new
//! watch stream is live (meta may have restarted and forgotten), which
//! files it has open. Meta keeps a file another client removes while
//! this mount has it open, held by this mount's session, until it hears the
//! file closed here (meta's `open_files.rs`); meta learns of the other opens
//! itself (GetChunks, CommitWrite, Create).
//!
//! Both go in batches (`BATCH_WAIT`), off the open's and the close's path. A
//! file opened and closed again before its open went out is never told; one
//! opened again before its close went out takes the close back; one opened
//! while its close is on its way waits for it, so meta never hears "closed"
//! after the new open.
//!
//! So a file opened from a held map counts as open on meta up to
//! `BATCH_WAIT` and a round trip late: another client that removes it in
//! that moment removes it for good, and a read here then finds its data only
//! where this mount cached it or until the nodes delete it. (A writer's open
//! asks meta: its commits must find the file.)

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
    /// Closes not yet sent.
    pending: HashSet<u64>,
    /// Opens meta has not heard of, not yet sent.
    opened: HashSet<u64>,
    /// Closes on their way.
    in_flight: HashSet<u64>,
}

impl OpenReport {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last handle on `ino` here closed.
    pub fn closed(&self, ino: u64) {
        let mut state = self.state();
        // Opened and closed before meta heard of it: nothing to tell.
        if !state.opened.remove(&ino) {
            state.pending.insert(ino);
            self.wake.notify_one();
        }
    }

    /// `ino` is open here again, its earlier opens' closes all reported
    /// (`reopening` came before): `meta_counted_it` says whether meta counts
    /// it open already (it was asked, or a close was taken back). A close
    /// that came meanwhile is taken back too (meta still counts the file
    /// open); one on its way may reach meta after meta counted this open, so
    /// the open is told again after it.
    pub fn first_open(&self, ino: u64, meta_counted_it: bool) {
        let mut state = self.state();
        if state.pending.remove(&ino) {
            return;
        }
        if !meta_counted_it || state.in_flight.contains(&ino) {
            state.opened.insert(ino);
            self.wake.notify_one();
        }
    }

    /// Before `ino` is opened here again (its first handle): a close not
    /// yet sent is taken back (true: meta still counts the file open), one
    /// on its way is waited for.
    pub async fn reopening(&self, ino: u64) -> bool {
        loop {
            let flown = self.flown.notified();
            tokio::pin!(flown);
            flown.as_mut().enable();
            {
                let mut state = self.state();
                if state.pending.remove(&ino) {
                    return true;
                }
                if !state.in_flight.contains(&ino) {
                    return false;
                }
            }
            flown.await;
        }
    }

    /// Sends the opens and closes as they come, until the mount stops. A
    /// close goes after the file's create answered early (`deferred`): meta
    /// would count the create as an open after the close.
    pub async fn run(&self, meta: dfs_client::Meta, deferred: &crate::deferred::Deferred) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(BATCH_WAIT).await;
            let (opened, closed): (Vec<u64>, Vec<u64>) = {
                let mut state = self.state();
                let pending = std::mem::take(&mut state.pending);
                state.in_flight.clone_from(&pending);
                let opened = std::mem::take(&mut state.opened);
                (opened.into_iter().collect(), pending.into_iter().collect())
            };
            for ino in &closed {
                deferred.settled_ino(*ino).await;
            }
            if !closed.is_empty() || !opened.is_empty() {
                let sent = meta
                    .clone()
                    .open_files(pb::OpenFilesRequest { opened, closed })
                    .await;
                if let Err(e) = sent {
                    // Meta goes on believing closed files open: one another
                    // client removes is kept until this session ends; opens
                    // it missed, until the next watch stream's announce.
                    tracing::warn!(error = %e, "cannot tell meta which files opened or closed");
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
    async fn an_open_closed_before_its_batch_went_is_never_told() {
        let r = OpenReport::default();
        r.first_open(7, false);
        r.first_open(9, false);
        r.closed(7);
        let s = r.state();
        assert_eq!(s.opened, HashSet::from([9]), "9 goes in the batch");
        assert!(
            s.pending.is_empty(),
            "no close of 7: meta never heard of it"
        );
    }

    #[tokio::test]
    async fn a_reopen_says_whether_meta_still_counts_the_file_open() {
        let r = OpenReport::default();
        r.closed(7);
        assert!(r.reopening(7).await, "its close was taken back");
        assert!(!r.reopening(8).await, "never told, or told closed");
    }

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

    #[test]
    fn a_first_open_is_told_unless_meta_counts_it_already() {
        let r = OpenReport::default();
        r.first_open(7, true);
        assert!(r.state().opened.is_empty(), "meta was asked: it counts 7");
        r.first_open(8, false);
        assert_eq!(
            r.state().opened,
            HashSet::from([8]),
            "from a held map: told"
        );
    }

    #[test]
    fn a_first_open_takes_back_a_close_that_came_meanwhile() {
        let r = OpenReport::default();
        // The earlier open's close was reported after the reopen looked.
        r.closed(7);
        r.first_open(7, false);
        let s = r.state();
        assert!(s.pending.is_empty(), "the close is taken back");
        assert!(
            s.opened.is_empty(),
            "meta still counts 7 open: nothing to tell"
        );
    }

    #[test]
    fn a_first_open_is_told_again_after_a_close_on_its_way() {
        let r = OpenReport::default();
        r.state().in_flight.insert(7);
        r.first_open(7, true);
        assert_eq!(
            r.state().opened,
            HashSet::from([7]),
            "the close may reach meta after meta counted this open"
        );
    }
}
