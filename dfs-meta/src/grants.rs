//! Grants: meta's word to one session that no other client looks at a
//! directory, on which that session answers its unlinks and creates there
//! before meta has them (the mount's `deferred.rs`). A grant lasts
//! `GRANT_FOR`, renewed by each reply that gives it again.
//!
//! Before meta serves any other client in a granted directory it recalls the
//! grant: the holder stops answering early there, sends what it answered
//! early, and says so (`Recalled`); only then is the other client served, so
//! it sees every change the holder's applications were told is done. A holder
//! that does not answer (stopped, cut off) is waited out: its grant ends on
//! its own by `until`, counted here from a moment after the holder's own
//! clock started (it counts from sending its call).
//!
//! After a recall a directory is not granted again for `GRANT_FOR`, so the
//! invalidations of the other client's changes reach the holder before any
//! new grant could (they go out on the same connection, long before).
//!
//! This module is the bookkeeping alone; `watch.rs` sends the recalls.

use std::collections::HashMap;
use std::time::Instant;

use dfs_proto::GRANT_FOR;
use tokio::sync::watch;

/// Entries kept before expired ones are swept.
const SWEEP_ABOVE: usize = 4096;

enum State {
    /// Held by the session: it may answer early in the directory.
    Held,
    /// Being recalled: the holder was asked; `done` turns true once it answered.
    Recalling(watch::Sender<bool>),
    /// Recalled: no new grant until `until`.
    Cooling,
}

struct Grant {
    session: u64,
    grant: u64,
    /// When the holder's word ends (Held, Recalling) or the cooling does.
    until: Instant,
    state: State,
}

/// What a call from another session must do before it is served.
pub enum Recall {
    /// No grant stands in its way.
    Nothing,
    /// Tell `holder` that `grant` on the directory ends, then wait.
    Send { holder: u64, grant: u64, wait: Wait },
    /// Already being recalled: wait.
    Wait(Wait),
}

/// Until the holder answers or its grant runs out.
pub struct Wait {
    pub done: watch::Receiver<bool>,
    pub until: Instant,
    pub grant: u64,
}

#[derive(Default)]
pub struct Grants {
    last: u64,
    dirs: HashMap<u64, Grant>,
}

impl Grants {
    /// Grants `session` `dir` unless another session holds it, or it is
    /// being recalled or cooling: the grant's number, 0 for none.
    pub fn give(&mut self, session: u64, dir: u64, now: Instant) -> u64 {
        self.sweep(now);
        let free = match self.dirs.get(&dir) {
            None => true,
            Some(g) if g.until <= now => !matches!(g.state, State::Recalling(_)),
            Some(g) => g.session == session && matches!(g.state, State::Held),
        };
        if !free {
            return 0;
        }
        self.last += 1;
        self.dirs.insert(
            dir,
            Grant {
                session,
                grant: self.last,
                until: now + GRANT_FOR,
                state: State::Held,
            },
        );
        self.last
    }

    /// Before a call of `session` about `dir` is served.
    pub fn recall(&mut self, session: u64, dir: u64, now: Instant) -> Recall {
        let Some(g) = self.dirs.get_mut(&dir) else {
            return Recall::Nothing;
        };
        if g.session == session {
            // Its own calls (those it answered early among them, which the
            // recall waits for) never wait.
            return Recall::Nothing;
        }
        let wait = |done: &watch::Sender<bool>, g: &Grant| Wait {
            done: done.subscribe(),
            until: g.until,
            grant: g.grant,
        };
        match &g.state {
            State::Held if g.until > now => {
                let (done, _) = watch::channel(false);
                let w = wait(&done, g);
                g.state = State::Recalling(done);
                Recall::Send {
                    holder: g.session,
                    grant: g.grant,
                    wait: w,
                }
            }
            State::Recalling(done) if g.until > now => Recall::Wait(wait(done, g)),
            // Run out, or cooling: nothing to wait for.
            _ => Recall::Nothing,
        }
    }

    /// The holder answered the recall of `grant` on `dir` (or it ran out):
    /// those waiting go on, and the directory cools.
    pub fn recalled(&mut self, session: Option<u64>, dir: u64, grant: u64, now: Instant) {
        let Some(g) = self.dirs.get_mut(&dir) else {
            return;
        };
        if g.grant != grant || session.is_some_and(|s| s != g.session) {
            return;
        }
        if let State::Recalling(done) = &g.state {
            let _ = done.send(true);
            g.state = State::Cooling;
            g.until = now + GRANT_FOR;
        }
    }

    /// `session` closed: its grants end, and recalls of them wait no more.
    pub fn drop_session(&mut self, session: u64) {
        self.dirs.retain(|_, g| {
            if g.session != session {
                return true;
            }
            if let State::Recalling(done) = &g.state {
                let _ = done.send(true);
            }
            false
        });
    }

    /// Whether any grant may stand in the way of `session`'s calls.
    pub fn any_besides(&self, session: u64, now: Instant) -> bool {
        self.dirs
            .values()
            .any(|g| g.session != session && g.until > now && !matches!(g.state, State::Cooling))
    }

    /// Directories whose grants may stand in the way of `session`'s calls.
    pub fn dirs_besides(&self, session: u64, now: Instant) -> Vec<u64> {
        self.dirs
            .iter()
            .filter(|(_, g)| {
                g.session != session && g.until > now && !matches!(g.state, State::Cooling)
            })
            .map(|(d, _)| *d)
            .collect()
    }

    fn sweep(&mut self, now: Instant) {
        if self.dirs.len() > SWEEP_ABOVE {
            self.dirs
                .retain(|_, g| g.until > now || matches!(g.state, State::Recalling(_)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_holder_per_directory_until_it_runs_out() {
        let mut g = Grants::default();
        let t = Instant::now();
        let n = g.give(1, 10, t);
        assert!(n > 0);
        assert!(g.give(1, 11, t) > n);
        assert_eq!(g.give(2, 10, t), 0, "held by session 1");
        let again = g.give(1, 10, t);
        assert!(again > n, "renewed, a newer number");
        let later = t + GRANT_FOR + Duration::from_millis(1);
        assert!(g.give(2, 11, later) > 0, "session 1's ran out");
    }

    #[test]
    fn a_recall_waits_until_the_holder_answers_and_then_the_directory_cools() {
        let mut g = Grants::default();
        let t = Instant::now();
        let n = g.give(1, 10, t);
        assert!(matches!(g.recall(1, 10, t), Recall::Nothing), "its own");
        let Recall::Send {
            holder,
            grant,
            wait,
        } = g.recall(2, 10, t)
        else {
            panic!("session 2 must recall 10 from session 1");
        };
        assert_eq!((holder, grant), (1, n));
        assert!(!*wait.done.borrow());
        let Recall::Wait(second) = g.recall(3, 10, t) else {
            panic!("a second caller waits for the same recall");
        };
        assert_eq!(g.give(1, 10, t), 0, "no renewal while recalled");
        assert!(
            matches!(g.recall(1, 10, t), Recall::Nothing),
            "the holder's own calls (those the recall waits for) go on"
        );
        g.recalled(Some(2), 10, n, t);
        assert!(!*wait.done.borrow(), "only the holder's word counts");
        g.recalled(Some(1), 10, n, t);
        assert!(*wait.done.borrow() && *second.done.borrow());
        assert!(matches!(g.recall(2, 10, t), Recall::Nothing));
        assert_eq!(g.give(1, 10, t), 0, "cooling");
        assert_eq!(g.give(2, 10, t), 0, "cooling for everyone");
        let later = t + GRANT_FOR + Duration::from_millis(1);
        assert!(g.give(1, 10, later) > 0);
    }

    #[test]
    fn a_run_out_grant_is_not_recalled() {
        let mut g = Grants::default();
        let t = Instant::now();
        g.give(1, 10, t);
        let later = t + GRANT_FOR + Duration::from_millis(1);
        assert!(matches!(g.recall(2, 10, later), Recall::Nothing));
        assert!(!g.any_besides(2, later));
        assert!(g.any_besides(2, t));
        assert!(!g.any_besides(1, t), "its own");
        assert_eq!(g.dirs_besides(2, t), vec![10]);
    }

    #[test]
    fn a_closed_session_s_grants_end_and_their_recalls_with_them() {
        let mut g = Grants::default();
        let t = Instant::now();
        g.give(1, 10, t);
        g.give(1, 11, t);
        let Recall::Send { wait, .. } = g.recall(2, 10, t) else {
            panic!("10 is held");
        };
        g.drop_session(1);
        assert!(*wait.done.borrow(), "the recall waits no more");
        assert!(matches!(g.recall(2, 11, t), Recall::Nothing));
        assert!(g.give(2, 10, t) > 0);
    }
}
