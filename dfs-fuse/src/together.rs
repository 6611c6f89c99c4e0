//! Unlinks and creates answered early (`deferred.rs`), on their way to meta
//! together. One call per name cost the mount and meta each about as much
//! CPU in the call's transport (a gRPC stream, TLS records, wake-ups) as in
//! the change, and mass deletes, `rm -rf` and runs of empty files are
//! CPU-bound. Here the requests queued while a call is out wait for it (at
//! most `PATIENCE`) and then go in the next `UnlinkMany` or `CreateMany`
//! call (at most `MAX`); each keeps its own request id
//! (`MetaChannel::request_ids`), so meta does and answers each exactly as
//! its own call, and a retried call replays what was done. A lone request
//! goes as a plain call; so does each of a call a meta without the batched
//! method refused.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use dfs_client::meta::MetaChannel;
use dfs_client::Meta;
use dfs_common::batches::Batches;
use dfs_proto::pb;
use tonic::Status;

/// How long the requests queued behind a call wait for it before they go
/// in a call of their own alongside.
const PATIENCE: Duration = Duration::from_millis(20);

/// A kind of request meta also takes several of in one call.
pub trait Kind: Send + Sync + 'static {
    /// What calls meta (`MetaSender` for the real kinds).
    type Client: Clone + Send + Sync + 'static;
    type Request: Clone + Send + 'static;
    type Reply: Send + 'static;
    /// Requests one call carries at most.
    const MAX: usize;
    /// The name of the batched call, for errors.
    const CALL: &'static str;
    /// One request, as its own call.
    fn alone(
        client: Self::Client,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send;
    /// Several requests in one call, each under its own request id: each
    /// one's answer in order, or the failure of the whole call.
    fn many(
        client: Self::Client,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Result<Vec<Result<Self::Reply, Status>>, Status>> + Send;
}

/// What a request's answer goes to.
pub type OnReply<K> = Box<dyn FnOnce(Result<<K as Kind>::Reply, Status>) + Send>;

/// One request waiting to be sent.
pub struct Queued<K: Kind> {
    pub request: K::Request,
    pub on_reply: OnReply<K>,
}

/// The requests waiting for the call that is out.
pub struct Together<K: Kind> {
    waiting: Batches<Queued<K>>,
}

impl<K: Kind> Default for Together<K> {
    fn default() -> Self {
        Together {
            waiting: Batches::default(),
        }
    }
}

impl<K: Kind> Together<K> {
    /// Sends `queued` in the next call; its `on_reply` runs with meta's answer.
    pub fn send(self: &std::sync::Arc<Self>, client: &K::Client, queued: Queued<K>) {
        if self.waiting.push(queued) {
            let (queue, client) = (self.clone(), client.clone());
            tokio::spawn(async move { queue.run(client).await });
        }
    }

    /// Sends batches while requests wait: the next when the call out is
    /// answered, or alongside it once it has been out for `PATIENCE` (a slow
    /// meta must not make the requests behind it land one call time later:
    /// a directory's grant bounds how long its early calls may take).
    async fn run(&self, client: K::Client) {
        let mut out = FuturesUnordered::new();
        loop {
            let batch = if out.is_empty() {
                let batch = self.waiting.next(K::MAX);
                if batch.is_empty() {
                    return;
                }
                batch
            } else {
                tokio::select! {
                    _ = out.next() => {}
                    _ = tokio::time::sleep(PATIENCE) => {}
                }
                self.waiting.take(K::MAX)
            };
            if !batch.is_empty() {
                out.push(send_together::<K>(&client, batch));
            }
        }
    }
}

async fn send_together<K: Kind>(client: &K::Client, batch: Vec<Queued<K>>) {
    if batch.len() == 1 {
        return send_alone::<K>(client, batch).await;
    }
    let requests = batch.iter().map(|q| q.request.clone()).collect();
    match K::many(client.clone(), requests).await {
        Ok(answers) if answers.len() == batch.len() => {
            for (q, answer) in batch.into_iter().zip(answers) {
                (q.on_reply)(answer);
            }
        }
        Ok(_) => {
            let wrong = Status::internal(format!(
                "{} answered a different number of requests",
                K::CALL
            ));
            for q in batch {
                (q.on_reply)(Err(wrong.clone()));
            }
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            send_alone::<K>(client, batch).await;
        }
        Err(status) => {
            for q in batch {
                (q.on_reply)(Err(status.clone()));
            }
        }
    }
}

/// Each as a call of its own, one after another.
async fn send_alone<K: Kind>(client: &K::Client, batch: Vec<Queued<K>>) {
    for q in batch {
        let reply = K::alone(client.clone(), q.request).await;
        (q.on_reply)(reply);
    }
}

/// One request's outcome in a batched call, as its own call would have
/// answered: the reply (errno 0), or the errno and message.
fn answer<T>(reply: Option<T>, errno: i32, message: String) -> Result<T, Status> {
    if errno == 0 {
        return reply.ok_or_else(|| Status::internal("an outcome without a reply"));
    }
    Err(dfs_proto::status_from_errno(errno, message))
}

/// How the real kinds reach meta: its client, and the channel that hands
/// out request ids (each counted pending until its call is answered, so meta
/// keeps their replay records).
#[derive(Clone)]
pub struct MetaSender {
    pub meta: Meta,
    pub channel: MetaChannel,
}

impl MetaSender {
    /// Runs `call` with `n` new request ids, counted pending until it ends.
    async fn with_request_ids<T, F: Future<Output = T>>(
        &self,
        n: usize,
        call: impl FnOnce(Meta, Vec<u64>) -> F,
    ) -> T {
        let ids = self.channel.request_ids(n);
        let done = call(self.meta.clone(), ids.ids.clone()).await;
        drop(ids);
        done
    }
}

/// Early unlinks: `UnlinkMany`.
pub struct Unlinks;

impl Kind for Unlinks {
    type Client = MetaSender;
    type Request = pb::UnlinkRequest;
    type Reply = pb::DirChangeReply;
    const MAX: usize = dfs_proto::MAX_UNLINK_BATCH;
    const CALL: &'static str = "UnlinkMany";

    async fn alone(
        s: MetaSender,
        request: pb::UnlinkRequest,
    ) -> Result<pb::DirChangeReply, Status> {
        Ok(s.meta.clone().unlink(request).await?.into_inner())
    }

    async fn many(
        s: MetaSender,
        unlinks: Vec<pb::UnlinkRequest>,
    ) -> Result<Vec<Result<pb::DirChangeReply, Status>>, Status> {
        let n = unlinks.len();
        let reply = s
            .with_request_ids(n, |mut meta, request_ids| async move {
                let request = pb::UnlinkManyRequest {
                    unlinks,
                    request_ids,
                };
                meta.unlink_many(request).await
            })
            .await?;
        let outcomes = reply.into_inner().outcomes.into_iter();
        Ok(outcomes
            .map(|o| answer(o.reply, o.errno, o.message))
            .collect())
    }
}

/// Early creates that go alone (not carried by their file's commit): `CreateMany`.
pub struct Creates;

impl Kind for Creates {
    type Client = MetaSender;
    type Request = pb::CreateRequest;
    type Reply = pb::AttrReply;
    const MAX: usize = dfs_proto::MAX_CREATE_BATCH;
    const CALL: &'static str = "CreateMany";

    async fn alone(s: MetaSender, request: pb::CreateRequest) -> Result<pb::AttrReply, Status> {
        Ok(s.meta.clone().create(request).await?.into_inner())
    }

    async fn many(
        s: MetaSender,
        creates: Vec<pb::CreateRequest>,
    ) -> Result<Vec<Result<pb::AttrReply, Status>>, Status> {
        let n = creates.len();
        let reply = s
            .with_request_ids(n, |mut meta, request_ids| async move {
                let request = pb::CreateManyRequest {
                    creates,
                    request_ids,
                };
                meta.create_many(request).await
            })
            .await?;
        let outcomes = reply.into_inner().outcomes.into_iter();
        Ok(outcomes
            .map(|o| answer(o.reply, o.errno, o.message))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::sync::{oneshot, watch};

    /// A meta whose calls wait until the gate opens, and that remembers
    /// which requests each call carried.
    struct Gate {
        open: watch::Sender<bool>,
        calls: Mutex<Vec<Vec<u32>>>,
    }

    impl Gate {
        fn new() -> Arc<Gate> {
            Arc::new(Gate {
                open: watch::channel(false).0,
                calls: Mutex::new(Vec::new()),
            })
        }

        async fn pass(&self, requests: Vec<u32>) {
            self.calls.lock().unwrap().push(requests);
            let _ = self.open.subscribe().wait_for(|o| *o).await;
        }

        fn calls(&self) -> Vec<Vec<u32>> {
            self.calls.lock().unwrap().clone()
        }
    }

    struct Echo;

    impl Kind for Echo {
        type Client = Arc<Gate>;
        type Request = u32;
        type Reply = u32;
        const MAX: usize = 4;
        const CALL: &'static str = "EchoMany";

        async fn alone(gate: Arc<Gate>, request: u32) -> Result<u32, Status> {
            gate.pass(vec![request]).await;
            Ok(request)
        }

        async fn many(
            gate: Arc<Gate>,
            requests: Vec<u32>,
        ) -> Result<Vec<Result<u32, Status>>, Status> {
            gate.pass(requests.clone()).await;
            Ok(requests.into_iter().map(Ok).collect())
        }
    }

    /// Sends `n`; its answer comes on the receiver.
    fn send(queue: &Arc<Together<Echo>>, gate: &Arc<Gate>, n: u32) -> oneshot::Receiver<u32> {
        let (tx, rx) = oneshot::channel();
        let on_reply: OnReply<Echo> = Box::new(move |r| {
            let _ = tx.send(r.unwrap_or(0));
        });
        queue.send(
            gate,
            Queued {
                request: n,
                on_reply,
            },
        );
        rx
    }

    /// Lets the spawned runner take its turn (no time passes).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_queued_behind_a_call_go_together_when_it_is_answered() {
        let (queue, gate) = (Arc::new(Together::<Echo>::default()), Gate::new());
        let mut answers = vec![send(&queue, &gate, 1)];
        settle().await;
        answers.extend((2..=7).map(|n| send(&queue, &gate, n)));
        settle().await;
        assert_eq!(gate.calls(), vec![vec![1]], "the first goes at once, alone");
        gate.open.send_replace(true);
        for (n, answer) in (1..=7).zip(answers) {
            assert_eq!(answer.await.unwrap(), n, "each gets its own answer");
        }
        assert_eq!(
            gate.calls(),
            vec![vec![1], vec![2, 3, 4, 5], vec![6, 7]],
            "then the queued ones, at most MAX a call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_behind_a_slow_call_go_alongside_it_after_the_patience() {
        let (queue, gate) = (Arc::new(Together::<Echo>::default()), Gate::new());
        let first = send(&queue, &gate, 1);
        settle().await;
        let queued: Vec<_> = (2..=4).map(|n| send(&queue, &gate, n)).collect();
        tokio::time::sleep(PATIENCE / 2).await;
        assert_eq!(gate.calls(), vec![vec![1]], "within the patience they wait");
        tokio::time::sleep(PATIENCE).await;
        assert_eq!(
            gate.calls(),
            vec![vec![1], vec![2, 3, 4]],
            "past it they go alongside, the first still unanswered"
        );
        gate.open.send_replace(true);
        assert_eq!(first.await.unwrap(), 1);
        for (n, answer) in (2..=4).zip(queued) {
            assert_eq!(answer.await.unwrap(), n);
        }
        // The runner ended with nothing left: the next request starts another.
        let next = send(&queue, &gate, 9);
        assert_eq!(next.await.unwrap(), 9);
        assert_eq!(gate.calls().last(), Some(&vec![9]));
    }

    #[test]
    fn an_outcome_is_the_answer_of_its_own_call() {
        let reply = pb::DirChangeReply {
            ino: 9,
            grant: 3,
            ..Default::default()
        };
        let done = answer(Some(reply), 0, String::new()).expect("done");
        assert_eq!((done.ino, done.grant), (9, 3));
        let failed = answer::<pb::DirChangeReply>(None, libc::ENOENT, "gone".into());
        let failed = failed.expect_err("failed");
        assert_eq!(dfs_proto::errno_of(&failed), libc::ENOENT);
        assert_eq!(failed.message(), "gone");
        let empty = answer::<pb::AttrReply>(None, 0, String::new());
        assert_eq!(empty.expect_err("no reply").code(), tonic::Code::Internal);
    }
}
