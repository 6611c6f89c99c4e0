//! The channel to the metadata service, under tonic's generated client
//! (`Meta = MetaClient<MetaChannel>`), so every call of the mount, the CLI
//! and the nodes gets the same behaviour without each call site knowing:
//!
//! - **Failover and retry.** It knows several meta addresses. A call that
//!   finds no meta answering (refused, reset, timed out, a reply cut off
//!   after its headers, or meta saying UNAVAILABLE, as when its database is
//!   away) is sent again, to the next
//!   address, with backoff, for up to `retry_for`; only then does it fail,
//!   with ETIMEDOUT. An error meta gave (ENOENT, EEXIST...) is final.
//! - **Sessions.** With a session open, every call names it and a renewal
//!   task keeps its lease. If meta says the session expired (a partition
//!   longer than the lease), a new one is opened and the call is sent again;
//!   what the old one held (locks, unlinked open files) is gone, and the
//!   log says so.
//! - **Request ids.** A mutation carries an id unique within the session, the
//!   same on every retry, so meta runs it at most once and a retry after a
//!   lost reply gets the first outcome.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfs_auth::Role;
use dfs_proto::pb::{self, meta_client::MetaClient};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::body::BoxBody;
use tonic::transport::Channel;
use tower_service::Service;

use crate::channels::{endpoint, MAX_META_REPLY, MAX_META_REQUEST};
use crate::ClientError;

/// The metadata client every part of dfs uses.
pub type Meta = MetaClient<MetaChannel>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One attempt may take this long before it counts as lost (a stalled meta);
/// above the longest a lock wait is held on meta (10 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Calls that change the namespace or a file: sent with a request id.
const MUTATIONS: &[&str] = &[
    "SetAttr",
    "Create",
    "Unlink",
    "Rmdir",
    "Rename",
    "ReleaseOrphan",
    "Link",
    "SetXattr",
    "RemoveXattr",
    "CommitWrite",
    "PunchHole",
];

/// What a client tells meta about itself when it opens a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub mountpoint: String,
    /// "mount" or "cli".
    pub kind: String,
}

/// Counts of what the channel went through, for metrics and logs.
#[derive(Debug, Default)]
pub struct MetaStats {
    /// Attempts sent again (after no answer or UNAVAILABLE).
    pub retries: AtomicU64,
    /// Calls that gave up after `retry_for`.
    pub timeouts: AtomicU64,
    /// Sessions meta had expired, replaced by new ones.
    pub sessions_lost: AtomicU64,
    /// Calls by method (once per call, however many attempts it took).
    pub calls: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl MetaStats {
    /// Calls so far, by method.
    pub fn calls(&self) -> Vec<(String, u64)> {
        lock(&self.calls)
            .iter()
            .map(|(m, n)| (m.clone(), *n))
            .collect()
    }
}

struct Current {
    index: usize,
    channel: Channel,
    /// Bumped at each switch, so concurrent failures switch once.
    generation: u64,
}

#[derive(Default)]
struct SessionState {
    id: u64,
    lease: Duration,
    info: Option<SessionInfo>,
}

struct Shared {
    addrs: Vec<String>,
    current: Mutex<Current>,
    retry_for: Duration,
    session: Mutex<SessionState>,
    next_request: AtomicU64,
    /// Request ids sent and not yet answered.
    pending: Mutex<BTreeSet<u64>>,
    /// Files the owner has open, reported with each renewal.
    open_files: AtomicU64,
    stats: MetaStats,
}

/// The tower service under `Meta`; cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct MetaChannel {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects to the first of `addrs` (HOST:PORT) that answers; fails fast if
/// none does. Later failures are retried for `retry_for` (see the module).
pub async fn connect(addrs: &[String], retry_for: Duration) -> Result<MetaChannel, ClientError> {
    if addrs.is_empty() {
        return Err(ClientError::BadAddress("no metadata server address".into()));
    }
    let mut errors = Vec::new();
    for (index, addr) in addrs.iter().enumerate() {
        match endpoint(addr, Role::Meta)?.connect().await {
            Ok(channel) => {
                let shared = Arc::new(Shared {
                    addrs: addrs.to_vec(),
                    current: Mutex::new(Current {
                        index,
                        channel,
                        generation: 0,
                    }),
                    retry_for,
                    session: Mutex::new(SessionState::default()),
                    next_request: AtomicU64::new(1),
                    pending: Mutex::new(BTreeSet::new()),
                    open_files: AtomicU64::new(0),
                    stats: MetaStats::default(),
                });
                return Ok(MetaChannel { shared });
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(ClientError::Unreachable(format!(
        "metadata server {}",
        errors.join("; ")
    )))
}

/// A channel that connects when first used (daemons that start before meta).
pub fn connect_lazy(addrs: &[String], retry_for: Duration) -> Result<MetaChannel, ClientError> {
    let first = addrs
        .first()
        .ok_or_else(|| ClientError::BadAddress("no metadata server address".into()))?;
    let shared = Arc::new(Shared {
        addrs: addrs.to_vec(),
        current: Mutex::new(Current {
            index: 0,
            channel: endpoint(first, Role::Meta)?.connect_lazy(),
            generation: 0,
        }),
        retry_for,
        session: Mutex::new(SessionState::default()),
        next_request: AtomicU64::new(1),
        pending: Mutex::new(BTreeSet::new()),
        open_files: AtomicU64::new(0),
        stats: MetaStats::default(),
    });
    Ok(MetaChannel { shared })
}

fn client(channel: MetaChannel) -> Meta {
    MetaClient::new(channel)
        .max_decoding_message_size(MAX_META_REPLY)
        .max_encoding_message_size(MAX_META_REQUEST)
}

/// A list of addresses as the mount and the CLI take it: `HOST:PORT,HOST:PORT`.
pub fn parse_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl MetaChannel {
    /// The generated client over this channel.
    pub fn client(&self) -> Meta {
        client(self.clone())
    }

    /// Opens a session for this client and keeps its lease alive until
    /// `close_session` (or until every clone of the channel is dropped).
    pub async fn open_session(&self, info: SessionInfo) -> Result<u64, ClientError> {
        lock(&self.shared.session).info = Some(info);
        let id = self.shared.reopen_session(0).await?;
        tokio::spawn(renew_leases(Arc::downgrade(&self.shared)));
        Ok(id)
    }

    /// Ends the session: meta releases its locks and orphans now.
    pub async fn close_session(&self) -> Result<(), ClientError> {
        let id = {
            let mut s = lock(&self.shared.session);
            s.info = None;
            std::mem::take(&mut s.id)
        };
        if id != 0 {
            client(self.clone())
                .close_session(pb::CloseSessionRequest { session_id: id })
                .await?;
        }
        Ok(())
    }

    /// Which meta connection and session calls go over now: (failover
    /// generation, session id). A watch stream is good only while it holds.
    pub fn identity(&self) -> (u64, u64) {
        let generation = lock(&self.shared.current).generation;
        (generation, self.session_id())
    }

    /// The current session id (0: none).
    pub fn session_id(&self) -> u64 {
        lock(&self.shared.session).id
    }

    /// How many files the owner has open (shown by `dfs sessions`).
    pub fn set_open_files(&self, n: u64) {
        self.shared.open_files.store(n, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &MetaStats {
        &self.shared.stats
    }

    /// `n` request ids for calls carried in one request's body (each of
    /// UnlinkMany's unlinks), counted as sent and unanswered (so meta keeps
    /// their records for a retry) until the returned ids are dropped.
    pub fn request_ids(&self, n: usize) -> RequestIds {
        let ids: Vec<u64> = (0..n)
            .map(|_| self.shared.next_request.fetch_add(1, Ordering::Relaxed))
            .collect();
        lock(&self.shared.pending).extend(ids.iter().copied());
        RequestIds {
            shared: self.shared.clone(),
            ids,
        }
    }
}

/// Request ids awaiting their replies (`MetaChannel::request_ids`).
pub struct RequestIds {
    shared: Arc<Shared>,
    pub ids: Vec<u64>,
}

impl Drop for RequestIds {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        for id in &self.ids {
            pending.remove(id);
        }
    }
}

/// Renews the session's lease a few times per lease until the channel goes
/// or the session is closed.
async fn renew_leases(shared: Weak<Shared>) {
    loop {
        let (lease, id) = {
            let Some(s) = shared.upgrade() else { return };
            let state = lock(&s.session);
            (state.lease, state.id)
        };
        if id == 0 {
            return;
        }
        tokio::time::sleep((lease / 3).max(Duration::from_millis(200))).await;
        let Some(s) = shared.upgrade() else { return };
        if lock(&s.session).id != id {
            continue;
        }
        let replied_below = lock(&s.pending)
            .first()
            .copied()
            .unwrap_or_else(|| s.next_request.load(Ordering::Relaxed));
        let request = pb::RenewSessionRequest {
            session_id: id,
            open_files: s.open_files.load(Ordering::Relaxed),
            replied_below,
        };
        let mut meta = client(MetaChannel { shared: s.clone() });
        match meta.renew_session(request).await {
            Ok(reply) if reply.get_ref().expired => {
                if let Err(e) = s.reopen_session(id).await {
                    tracing::warn!(error = %e, "cannot open a new session");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(session = id, error = %e, "session renewal failed"),
        }
    }
}

impl Shared {
    fn current(&self) -> (Channel, u64, String) {
        let c = lock(&self.current);
        (c.channel.clone(), c.generation, self.addrs[c.index].clone())
    }

    /// After a failed attempt on `generation`: the next address, on a
    /// fresh connection (the old one may hang on a stopped server).
    fn fail_over(&self, generation: u64) {
        let mut c = lock(&self.current);
        if c.generation != generation {
            return;
        }
        let index = (c.index + 1) % self.addrs.len();
        if let Ok(e) = endpoint(&self.addrs[index], Role::Meta) {
            c.channel = e.connect_lazy();
            c.index = index;
            c.generation += 1;
        }
    }

    /// Opens a new session in place of `old` (0: the first), unless another
    /// caller already did. Returns the session id now in use.
    async fn reopen_session(self: &Arc<Self>, old: u64) -> Result<u64, ClientError> {
        let info = {
            let s = lock(&self.session);
            if s.id != old {
                return Ok(s.id);
            }
            match &s.info {
                Some(info) => info.clone(),
                None => return Ok(0),
            }
        };
        let request = pb::OpenSessionRequest {
            host: hostname(),
            mountpoint: info.mountpoint.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kind: info.kind.clone(),
        };
        let reply = client(MetaChannel {
            shared: self.clone(),
        })
        .open_session(request)
        .await?
        .into_inner();
        let mut s = lock(&self.session);
        if s.id != old {
            return Ok(s.id);
        }
        if old != 0 {
            self.stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                old,
                new = reply.session_id,
                "meta expired this client's session (no renewal within the lease): \
                 its locks and unlinked open files were released; a new session is open"
            );
        }
        s.id = reply.session_id;
        s.lease = Duration::from_millis(u64::from(reply.lease_ms.max(300)));
        Ok(s.id)
    }

    async fn send(
        self: Arc<Self>,
        request: http::Request<BoxBody>,
    ) -> Result<http::Response<BoxBody>, BoxError> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let method = parts.uri.path().rsplit('/').next().unwrap_or_default();
        {
            let mut calls = lock(&self.stats.calls);
            match calls.get_mut(method) {
                Some(n) => *n += 1,
                None => {
                    calls.insert(method.to_string(), 1);
                }
            }
        }
        let mutation = MUTATIONS.contains(&method);
        let mut pending = PendingId::none(&self);
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        let mut renewed_session = false;
        loop {
            // Opening a session is outside any: naming the old one would get
            // "expired" again, and reopening from inside the reopen recurse.
            let session = match method {
                "OpenSession" => 0,
                _ => lock(&self.session).id,
            };
            if mutation && session != 0 && pending.id == 0 {
                pending = PendingId::new(&self);
            }
            let mut attempt = http::Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone())
                .version(parts.version)
                .body(full(body.clone()))?;
            *attempt.headers_mut() = parts.headers.clone();
            if session != 0 {
                let headers = attempt.headers_mut();
                headers.insert(dfs_proto::session::SESSION_HEADER, session.into());
                if pending.id != 0 {
                    headers.insert(dfs_proto::session::REQUEST_HEADER, pending.id.into());
                }
            }
            let (mut channel, generation, addr) = self.current();
            let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
                futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                let response = channel.call(attempt).await?;
                if STREAMED_REPLIES.contains(&method) {
                    return Ok(response);
                }
                // A meta that dies between a reply's headers and its end
                // answered nothing the caller can use: a failed attempt (a
                // mutation's request id gets the first run's outcome).
                read_whole(response).await.map_err(BoxError::from)
            })
            .await;
            let failure = match outcome {
                Ok(Ok(response)) => match Answer::of(&response) {
                    Answer::Final => return Ok(response),
                    Answer::SessionExpired if !renewed_session && session != 0 => {
                        renewed_session = true;
                        self.reopen_session(session).await?;
                        // The old session's request ids mean nothing now.
                        pending = PendingId::none(&self);
                        continue;
                    }
                    Answer::SessionExpired => return Ok(response),
                    Answer::Unavailable(message) => message,
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
            };
            if Instant::now() + backoff >= deadline {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(method, %addr, error = %failure, "metadata server unreachable; giving up");
                return Ok(timed_out(&format!(
                    "no metadata server answered within {} s (last: {addr}: {failure})",
                    self.retry_for.as_secs()
                )));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(method, %addr, error = %failure, "meta call failed; retrying");
            self.fail_over(generation);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// A request id awaiting its reply; forgotten when dropped.
struct PendingId<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> PendingId<'a> {
    fn none(shared: &'a Shared) -> Self {
        PendingId { shared, id: 0 }
    }

    fn new(shared: &'a Shared) -> Self {
        let id = shared.next_request.fetch_add(1, Ordering::Relaxed);
        lock(&shared.pending).insert(id);
        PendingId { shared, id }
    }
}

impl Drop for PendingId<'_> {
    fn drop(&mut self) {
        if self.id != 0 {
            lock(&self.shared.pending).remove(&self.id);
        }
    }
}

/// What a response (its headers) says about the call.
enum Answer {
    /// Success, or an error meta means (final either way).
    Final,
    /// No meta could serve it now: try again.
    Unavailable(String),
    SessionExpired,
}

impl Answer {
    fn of(response: &http::Response<BoxBody>) -> Answer {
        let headers = response.headers();
        let Some(status) = headers.get("grpc-status") else {
            return Answer::Final;
        };
        if headers.contains_key(dfs_proto::session::EXPIRED_HEADER) {
            return Answer::SessionExpired;
        }
        let unavailable = status.as_bytes() == b"14";
        if unavailable && !headers.contains_key(dfs_proto::ERRNO_METADATA_KEY) {
            let message = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("unavailable");
            return Answer::Unavailable(message.to_string());
        }
        Answer::Final
    }
}

/// Methods whose reply is a stream, handed on as it comes.
const STREAMED_REPLIES: &[&str] = &["Watch"];

/// A unary reply read to its end, data and trailers (where gRPC puts the
/// status), so a connection lost mid-reply fails the attempt instead of the
/// caller's decoding.
async fn read_whole(
    response: http::Response<BoxBody>,
) -> Result<http::Response<BoxBody>, tonic::Status> {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let mut frames = vec![Ok(http_body::Frame::data(collected.to_bytes()))];
    if let Some(trailers) = trailers {
        frames.push(Ok(http_body::Frame::trailers(trailers)));
    }
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
    Ok(http::Response::from_parts(parts, body))
}

fn full(bytes: Bytes) -> BoxBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The answer of a call no meta answered in time: DEADLINE_EXCEEDED with
/// errno ETIMEDOUT, as a gRPC trailers-only response.
fn timed_out(message: &str) -> http::Response<BoxBody> {
    let status = dfs_proto::status_from_errno(libc::ETIMEDOUT, message);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let mut response = http::Response::from_parts(parts, full(Bytes::new()));
    if let Err(e) = status.add_header(response.headers_mut()) {
        tracing::warn!(error = %e, "cannot encode a timeout status");
    }
    response
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl Service<http::Request<BoxBody>> for MetaChannel {
    type Response = http::Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for its own connection's readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        Box::pin(self.shared.clone().send(request))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use futures::StreamExt;
    use prost::Message;

    /// A plaintext gRPC server that answers every call with `reply`, except
    /// that it cuts the body of the first one short after the headers (as a
    /// meta killed mid-reply does). Returns its address and a call counter.
    async fn cutting_server(reply: pb::StatFsReply) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (counter, reply) = (counter.clone(), reply);
                let service = hyper::service::service_fn(move |_req| {
                    let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
                    let mut message = vec![0u8];
                    message.extend_from_slice(&(reply.encoded_len() as u32).to_be_bytes());
                    reply.encode(&mut message).unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    type Frames = std::pin::Pin<
                        Box<
                            dyn futures::Stream<
                                    Item = Result<http_body::Frame<Bytes>, std::io::Error>,
                                > + Send,
                        >,
                    >;
                    let frames: Frames = if first {
                        // Headers and part of the message go out, then the
                        // connection's stream dies.
                        let part = Bytes::copy_from_slice(&message[..3]);
                        Box::pin(
                            futures::stream::iter([Ok(http_body::Frame::data(part))]).chain(
                                futures::stream::once(async {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    Err(std::io::Error::other("meta killed"))
                                }),
                            ),
                        )
                    } else {
                        Box::pin(futures::stream::iter([
                            Ok(http_body::Frame::data(Bytes::from(message))),
                            Ok(http_body::Frame::trailers(trailers)),
                        ]))
                    };
                    let body = http_body_util::StreamBody::new(frames);
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        (addr, calls)
    }

    #[tokio::test]
    async fn a_reply_cut_short_after_its_headers_is_asked_again() {
        let reply = pb::StatFsReply {
            total_bytes: 7,
            files: 3,
            ..Default::default()
        };
        let (addr, calls) = cutting_server(reply).await;
        let channel = connect(&[addr], Duration::from_secs(10)).await.unwrap();
        let got = channel
            .client()
            .stat_fs(pb::Empty {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, reply);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the cut reply was asked again"
        );
    }
}
