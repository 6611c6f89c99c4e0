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

use dfs_client::meta::MetaChannel;
use dfs_client::Meta;
use dfs_common::batches::Batches;
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

/// The unlinks waiting for the call that is out.
#[derive(Default)]
pub struct UnlinkQueue {
    waiting: Batches<Queued>,
}

impl UnlinkQueue {
    /// Sends `unlink` in the next call; its `on_reply` runs with meta's answer.
    pub fn send(self: &std::sync::Arc<Self>, meta: &Meta, channel: &MetaChannel, unlink: Queued) {
        if self.waiting.push(unlink) {
            let (queue, meta, channel) = (self.clone(), meta.clone(), channel.clone());
            tokio::spawn(async move { queue.run(meta, channel).await });
        }
    }

    async fn run(&self, meta: Meta, channel: MetaChannel) {
        loop {
            let batch = self.waiting.next(MAX_UNLINK_BATCH);
            if batch.is_empty() {
                return;
            }
            send_together(&meta, &channel, batch).await;
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
}
