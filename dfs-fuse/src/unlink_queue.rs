//! Unlinks answered early (`deferred.rs`), on their way to meta together.
//! One call per unlink cost the mount and meta each about as much CPU in
//! the call's transport (a gRPC stream, TLS records, wake-ups) as in the
//! unlink, and `rm -rf` and mass deletes are CPU-bound. Here the unlinks
//! queued while a call is out wait for it and then go in the next
//! `UnlinkMany` call (at most `MAX_UNLINK_BATCH`); each keeps its own
//! request id (`MetaChannel::request_ids`), so meta does and answers each
//! exactly as its own Unlink, and a retried call replays what was done. A
//! lone unlink goes as a plain Unlink; so does each of a call a meta without
//! UnlinkMany refused.

use std::sync::Mutex;

use dfs_client::meta::MetaChannel;
use dfs_client::Meta;
use dfs_proto::pb;
use dfs_proto::MAX_UNLINK_BATCH;
use tonic::Status;

/// What an unlink's answer goes to.
pub type OnReply = Box<dyn FnOnce(Result<pb::DirChangeReply, Status>) + Send>;

/// One unlink waiting to be sent.
pub struct Queued {
    pub request: pb::UnlinkRequest,
    pub on_reply: OnReply,
}

/// The unlinks waiting for the call that is out; `None` while none is.
#[derive(Default)]
pub struct UnlinkQueue {
    waiting: Mutex<Option<Vec<Queued>>>,
}

impl UnlinkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Queued>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `unlink` in the next call; its `on_reply` runs with meta's answer.
    pub fn send(self: &std::sync::Arc<Self>, meta: &Meta, channel: &MetaChannel, unlink: Queued) {
        let start = {
            let mut waiting = self.lock();
            match waiting.as_mut() {
                Some(queue) => {
                    queue.push(unlink);
                    false
                }
                None => {
                    *waiting = Some(vec![unlink]);
                    true
                }
            }
        };
        if start {
            let (queue, meta, channel) = (self.clone(), meta.clone(), channel.clone());
            tokio::spawn(async move { queue.run(meta, channel).await });
        }
    }

    async fn run(&self, meta: Meta, channel: MetaChannel) {
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                return;
            }
            send_together(&meta, &channel, batch).await;
        }
    }

    /// The next call's unlinks, or none: then the sender ends (the next
    /// unlink starts another).
    fn next_batch(&self) -> Vec<Queued> {
        let mut waiting = self.lock();
        match waiting.as_mut() {
            Some(queue) if !queue.is_empty() => {
                let n = queue.len().min(MAX_UNLINK_BATCH);
                queue.drain(..n).collect()
            }
            _ => {
                *waiting = None;
                Vec::new()
            }
        }
    }
}

async fn send_together(meta: &Meta, channel: &MetaChannel, batch: Vec<Queued>) {
    if batch.len() == 1 {
        return send_alone(meta, batch).await;
    }
    let ids = channel.request_ids(batch.len());
    let request = pb::UnlinkManyRequest {
        unlinks: batch.iter().map(|q| q.request.clone()).collect(),
        request_ids: ids.ids.clone(),
    };
    let reply = meta.clone().unlink_many(request).await;
    drop(ids);
    match reply {
        Ok(r) if r.get_ref().outcomes.len() == batch.len() => {
            for (q, outcome) in batch.into_iter().zip(r.into_inner().outcomes) {
                (q.on_reply)(answer(outcome));
            }
        }
        Ok(_) => {
            let wrong = Status::internal("UnlinkMany answered a different number of unlinks");
            for q in batch {
                (q.on_reply)(Err(wrong.clone()));
            }
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            send_alone(meta, batch).await;
        }
        Err(status) => {
            for q in batch {
                (q.on_reply)(Err(status.clone()));
            }
        }
    }
}

/// Each as a plain Unlink, one after another.
async fn send_alone(meta: &Meta, batch: Vec<Queued>) {
    for q in batch {
        let reply = meta.clone().unlink(q.request).await;
        (q.on_reply)(reply.map(tonic::Response::into_inner));
    }
}

/// One of UnlinkMany's outcomes, as its own Unlink would have answered.
fn answer(outcome: pb::UnlinkOutcome) -> Result<pb::DirChangeReply, Status> {
    if outcome.errno == 0 {
        return Ok(outcome.reply.unwrap_or_default());
    }
    Err(dfs_proto::status_from_errno(outcome.errno, outcome.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_the_answer_of_its_own_unlink() {
        let done = answer(pb::UnlinkOutcome {
            reply: Some(pb::DirChangeReply {
                ino: 9,
                grant: 3,
                ..Default::default()
            }),
            ..Default::default()
        });
        let done = done.expect("done");
        assert_eq!((done.ino, done.grant), (9, 3));
        let failed = answer(pb::UnlinkOutcome {
            errno: libc::ENOENT,
            message: "gone".into(),
            ..Default::default()
        });
        let failed = failed.expect_err("failed");
        assert_eq!(dfs_proto::errno_of(&failed), libc::ENOENT);
        assert_eq!(failed.message(), "gone");
    }

    #[test]
    fn a_batch_takes_at_most_the_limit_and_the_sender_ends_when_none_wait() {
        let q = UnlinkQueue::default();
        let noop = || Queued {
            request: pb::UnlinkRequest::default(),
            on_reply: Box::new(|_| {}),
        };
        *q.lock() = Some((0..MAX_UNLINK_BATCH + 3).map(|_| noop()).collect());
        assert_eq!(q.next_batch().len(), MAX_UNLINK_BATCH);
        assert_eq!(q.next_batch().len(), 3);
        assert!(q.next_batch().is_empty());
        assert!(
            q.lock().is_none(),
            "no sender runs: the next unlink starts one"
        );
    }
}
