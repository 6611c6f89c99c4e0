//! Items that wait while a batch of earlier ones is being handled, then go
//! together in the next batch: group commit without a timer. One runner at a
//! time takes batches until none is left; the item that finds no runner
//! starts one. Used for meta's transactions of early unlinks and creates
//! and the mount's `UnlinkMany` and `CreateMany` calls.

use std::sync::{Mutex, MutexGuard};

/// The items waiting for the batch being handled; `None` while no runner runs.
pub struct Batches<T> {
    waiting: Mutex<Option<Vec<T>>>,
}

impl<T> Default for Batches<T> {
    fn default() -> Self {
        Batches {
            waiting: Mutex::new(None),
        }
    }
}

impl<T> Batches<T> {
    fn lock(&self) -> MutexGuard<'_, Option<Vec<T>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`; true if no runner runs, so the caller must start one.
    pub fn push(&self, item: T) -> bool {
        let mut waiting = self.lock();
        match waiting.as_mut() {
            Some(queue) => {
                queue.push(item);
                false
            }
            None => {
                *waiting = Some(vec![item]);
                true
            }
        }
    }

    /// The runner's next batch (at most `max` items, oldest first), or none:
    /// then the runner ends, and the next `push` starts another.
    pub fn next(&self, max: usize) -> Vec<T> {
        let mut waiting = self.lock();
        match waiting.as_mut() {
            Some(queue) if !queue.is_empty() => {
                let n = queue.len().min(max.max(1));
                queue.drain(..n).collect()
            }
            _ => {
                *waiting = None;
                Vec::new()
            }
        }
    }

    /// What waits now (at most `max`, oldest first), possibly nothing; the
    /// runner goes on either way (one that does not wait for its batch
    /// before taking the next).
    pub fn take(&self, max: usize) -> Vec<T> {
        match self.lock().as_mut() {
            Some(queue) => {
                let n = queue.len().min(max.max(1));
                queue.drain(..n).collect()
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runner_takes_bounded_batches_until_none_wait() {
        let b = Batches::default();
        assert!(b.push(0), "the first starts a runner");
        assert!(!b.push(1), "one runs already");
        for i in 2..70 {
            b.push(i);
        }
        assert_eq!(b.next(64), (0..64).collect::<Vec<_>>());
        assert!(!b.push(70), "the runner still runs");
        assert_eq!(b.next(64), (64..71).collect::<Vec<_>>());
        assert!(b.next(64).is_empty());
        assert!(b.push(71), "the runner ended: the next starts another");
        assert_eq!(b.take(64), vec![71]);
        assert!(b.take(64).is_empty(), "nothing waits");
        assert!(!b.push(72), "but the runner goes on");
    }
}
