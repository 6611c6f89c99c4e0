//! The gRPC adapter: decode and validate the request, call the store, encode the
//! reply. Every store error reaches the client with its errno (see dfs-proto).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use dfs_proto::pb::{self, meta_server::Meta};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert::{attr_reply, node_ref};
use crate::exports::Rule;
use crate::failpoints::Failpoints;
use crate::metrics::MetaMetrics;
use crate::repair::Repairer;
use crate::request;
use crate::sessions::Sessions;
use crate::store::{
    self, HeartbeatInfo, LockOutcome, LockSpec, Origin, RegisterArgs, SessionArgs, SetAttrArgs,
    Store,
};
use crate::view::{Roots, View};
use crate::watch::{Change, Watchers};
use crate::Config;

pub struct MetaService {
    store: Store,
    config: Config,
    repairer: Arc<Repairer>,
    metrics: Arc<MetaMetrics>,
    sessions: Arc<Sessions>,
    watchers: Arc<Watchers>,
    failpoints: Failpoints,
    /// Exported subtrees' root directories.
    roots: Roots,
    /// How meta connects to nodes (fsck's chunk listings); None: plaintext.
    node_tls: Option<dfs_auth::ClientTls>,
}

type Reply<T> = Result<Response<T>, Status>;

/// How long meta waits for a node to confirm what a client reported.
const NODE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Chunks one node may report when it registers (8 bytes of meta's memory
/// each while the registration runs; 400 TB of 4 MiB chunks).
const MAX_REGISTERED_CHUNKS: usize = 100_000_000;
/// Garbage chunk ids one registration reply carries (8 MiB); a node with more
/// is told the rest at its next full report.
const MAX_REGISTER_DELETES: usize = 1_000_000;

/// Problems an fsck reply lists at most.
const FSCK_PROBLEMS: usize = 10_000;

impl MetaService {
    pub fn new(
        store: Store,
        config: Config,
        repairer: Arc<Repairer>,
        metrics: Arc<MetaMetrics>,
        sessions: Arc<Sessions>,
        watchers: Arc<Watchers>,
    ) -> Self {
        MetaService {
            store,
            config,
            repairer,
            metrics,
            sessions,
            watchers,
            failpoints: Failpoints::from_env(),
            roots: Roots::default(),
            node_tls: None,
        }
    }

    /// The export rule for this request's caller. None: no limits (an
    /// admin, or a meta run `--insecure`); a client no rule names may not
    /// touch files. With `write`, a read-only export answers EROFS.
    fn rule<T>(&self, req: &Request<T>, write: bool) -> Result<Option<&Rule>, Status> {
        let rule = match dfs_auth::authz::caller(req) {
            Some(id) if id.role == dfs_auth::Role::Client => {
                Some(self.config.exports.for_client(&id.name).ok_or_else(|| {
                    Status::permission_denied(format!("no export for certificate {:?}", id.name))
                })?)
            }
            _ => None,
        };
        if let (true, Some(rule)) = (write, rule) {
            rule.check_write()?;
        }
        Ok(rule)
    }

    /// The real inode of the directory `rule` exports (the root without one).
    async fn export_root(&self, rule: Option<&Rule>) -> Result<u64, Status> {
        match rule {
            Some(rule) => self.roots.root(&self.store, &rule.path).await,
            None => Ok(dfs_proto::ROOT_INO),
        }
    }

    /// The caller's view of the namespace (its export rule and subtree)
    /// and its request's origin, the session checked.
    async fn view<T>(&self, req: &Request<T>, write: bool) -> Result<(View<'_>, Origin), Status> {
        let rule = self.rule(req, write)?;
        let origin = self
            .sessions
            .origin(req.metadata(), dfs_auth::authz::caller(req))
            .await?;
        let root = self.export_root(rule).await?;
        Ok((View::new(rule, root, origin.session, &self.store), origin))
    }

    /// Signs chunk tokens for `holder` (a certificate name).
    fn tokens<'a>(&'a self, holder: &'a str) -> auth::Tokens<'a> {
        auth::Tokens::new(self.store.token_key(), holder)
    }

    /// Asks the node holding a replica to read it again: Some(true) when
    /// it is there and intact, Some(false) when the node finds it corrupt,
    /// None when missing or the node cannot answer (which confirms nothing).
    async fn node_check(&self, chunk_id: u64, node_id: u64) -> Option<bool> {
        let reply = self
            .node_call(node_id, |mut c| async move {
                c.check_chunk(pb::CheckChunkRequest { chunk_id }).await
            })
            .await?;
        match (reply.intact, reply.corrupt) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// Whether the node holding a replica syncs it to disk when meta asks.
    async fn node_syncs(&self, chunk_id: u64, node_id: u64) -> bool {
        self.node_call(node_id, |mut c| async move {
            c.sync_chunks(pb::SyncChunksRequest {
                chunk_ids: vec![chunk_id],
            })
            .await
        })
        .await
        .is_some()
    }

    /// One call to node `node_id`, within NODE_CHECK_TIMEOUT (None: no answer).
    async fn node_call<R, F>(
        &self,
        node_id: u64,
        call: impl FnOnce(dfs_proto::pb::chunk_client::ChunkClient<tonic::transport::Channel>) -> F,
    ) -> Option<R>
    where
        F: Future<Output = Result<Response<R>, Status>>,
    {
        let node = self.store.find_node(&node_id.to_string()).await.ok()?;
        let attempt = async {
            let client = crate::node_client::connect(&node.addr, self.node_tls.as_ref()).await?;
            call(client).await
        };
        match tokio::time::timeout(NODE_CHECK_TIMEOUT, attempt).await {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            _ => None,
        }
    }

    /// Connects to nodes with this process's certificate.
    pub fn with_node_tls(mut self, tls: Option<dfs_auth::ClientTls>) -> Self {
        self.node_tls = tls;
        self
    }

    /// Runs a mutation's body like `observe`. With the `drop_reply`
    /// failpoint, a reply is sometimes lost after the change was made, as
    /// when the connection breaks at that moment.
    async fn observe_mutation<T>(
        &self,
        method: &'static str,
        origin: Origin,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Reply<T> {
        let reply = self.observe(method, body).await?;
        if origin.request != 0 && self.failpoints.drop_reply() {
            tracing::info!(method, request = origin.request, "failpoint: reply dropped");
            return Err(Status::unavailable("failpoint drop_reply: reply lost"));
        }
        Ok(reply)
    }

    /// `session` has `ino` open (it asked for its chunk map, or commits).
    fn opened(&self, session: u64, ino: u64) {
        let open = self.store.open_files();
        open.opened(session, ino);
        self.metrics.open_files.set(open.len() as i64);
    }

    /// A removal that may have taken a file's last name is over: releases
    /// the holds of sessions that closed it meanwhile (`open_files.rs`).
    /// The removal stands either way: a hold that cannot be released now
    /// goes with its session.
    async fn settle_holds(&self, ino: u64) {
        for session in self.store.open_files().settle(ino) {
            if let Err(e) = self.store.release_orphan(ino, session).await {
                tracing::warn!(ino, session, error = %e, "cannot release a closed file's hold");
            }
        }
    }

    /// Before a call of `origin` about names in `dirs` (or their
    /// attributes) is served: other sessions' grants on them are taken
    /// back, and what those answered early there is on meta (`grants.rs`).
    async fn recall(&self, origin: Origin, dirs: &[u64]) {
        self.watchers.recall(origin.session, dirs).await;
    }

    /// `recall` of the directory `name` in `parent` names, if any (a call
    /// that removes or replaces it: it must be empty of what its holder
    /// created early).
    async fn recall_named(&self, origin: Origin, parent: u64, name: &[u8]) {
        if !self.watchers.others_hold_grants(origin.session) {
            return;
        }
        if let Ok(inode) = self.store.lookup(parent, name).await {
            if inode.kind == store::FileKind::Directory {
                self.recall(origin, &[inode.ino]).await;
            }
        }
    }

    /// A directory's attributes after a change in it, for the reply (a
    /// failure here leaves them out: the client asks when it needs them).
    async fn dir_attr(&self, ino: u64) -> Option<pb::Attr> {
        self.store
            .getattr(ino)
            .await
            .ok()
            .map(|i| crate::convert::attr(&i))
    }

    /// The directory a change left, as the store saw it in the change's
    /// transaction, or read now if that is not known (a replayed request).
    async fn dir_after(&self, ino: u64, dir: Option<store::Inode>) -> Option<pb::Attr> {
        match dir {
            Some(d) => Some(crate::convert::attr(&d)),
            None => self.dir_attr(ino).await,
        }
    }

    /// Refuses an early create (the client chose the inode number and made
    /// the attributes) where the export maps owners, or whose number is not
    /// from a grant of meta's to this caller.
    fn check_early_create(
        &self,
        export: Option<&Rule>,
        holder: &str,
        n: &request::Numbered,
    ) -> Result<(), Status> {
        if !export.is_none_or(|e| e.keeps_owners()) {
            return Err(dfs_proto::status_from_errno(
                libc::EPERM,
                "early creates are not allowed where the export maps owners",
            ));
        }
        dfs_auth::token::verify_inos(self.store.token_key(), holder, n.first, n.count, &n.token)
            .map_err(|e| Status::permission_denied(format!("inode grant: {e}")))?;
        if self.failpoints.refuse_early_create() {
            return Err(dfs_proto::status_from_errno(
                libc::EEXIST,
                "failpoint refuse_early_create",
            ));
        }
        Ok(())
    }

    /// Inode numbers for the caller's next early creates, if it asked and
    /// early creates are allowed where it is.
    async fn ino_grant(
        &self,
        export: Option<&Rule>,
        holder: &str,
        want: u32,
    ) -> Result<Option<pb::InoGrant>, Status> {
        if want == 0 || !export.is_none_or(|e| e.keeps_owners()) {
            return Ok(None);
        }
        let (first, count) = self.store.take_inos(want).await?;
        let token = dfs_auth::token::sign_inos(self.store.token_key(), holder, first, count);
        Ok(Some(pb::InoGrant {
            first,
            count,
            token,
        }))
    }

    /// Tells the other watching clients of `changes`, and returns once
    /// those of this meta confirmed them.
    async fn published(&self, origin: Origin, changes: Vec<Change>) {
        self.watchers
            .publish(origin.session, changes)
            .confirmed()
            .await;
    }

    /// A create, as Create and each of CreateMany's do it.
    async fn create_one(
        &self,
        view: &View<'_>,
        holder: &str,
        origin: Origin,
        r: pb::CreateRequest,
    ) -> Result<pb::AttrReply, Status> {
        let export = view.rule;
        let request::Create {
            mut args,
            unnamed,
            numbered,
            want_inos,
        } = request::Create::try_from(r)?;
        if let Some(e) = export {
            let device = matches!(
                args.kind,
                store::FileKind::CharDevice | store::FileKind::BlockDevice
            );
            if device && !e.may_create_devices() {
                return Err(dfs_proto::status_from_errno(
                    libc::EPERM,
                    "a squashed export may not create device nodes",
                ));
            }
        }
        if let Some(n) = &numbered {
            self.check_early_create(export, holder, n)?;
        }
        args.parent = view.ino(args.parent).await?;
        self.recall(origin, &[args.parent]).await;
        if numbered.is_some() {
            self.failpoints.slow_early_create().await;
        }
        if let Some(e) = export {
            args.uid = e.uid(args.uid)?;
            args.gid = e.gid(args.gid)?;
        }
        let (parent, name) = (args.parent, args.name.clone());
        let mut reply = if unnamed {
            attr_reply(&self.store.create_unnamed(args, origin).await?)
        } else {
            let made = match numbered {
                Some(n) => {
                    self.store
                        .create_numbered(args, n.ino, n.time, origin)
                        .await?
                }
                None => self.store.create_named(args, origin).await?,
            };
            let inode = made.done;
            if inode.kind == store::FileKind::Regular {
                // Made by open(O_CREAT) (a mknod says closed at once).
                self.opened(origin.session, inode.ino);
            }
            self.published(origin, vec![Change::entry(parent, &name)])
                .await;
            let mut reply = attr_reply(&inode);
            reply.parent = self.dir_after(parent, made.dir).await;
            // Grants where the client may answer early: creates of
            // files in the parent, and everything in a new directory.
            reply.grant = match inode.kind {
                store::FileKind::Regular => self.watchers.grant(origin.session, parent),
                store::FileKind::Directory => self.watchers.grant(origin.session, inode.ino),
                _ => 0,
            };
            reply
        };
        reply.inos = self.ino_grant(export, holder, want_inos).await?;
        let ino = reply.attr.as_ref().map_or(0, |a| a.ino);
        self.watchers.note(origin.session, [parent, ino]);
        Ok(view.attr_reply(reply))
    }

    /// An unlink, as Unlink and each of UnlinkMany's do it.
    async fn unlink_one(
        &self,
        view: &View<'_>,
        origin: Origin,
        r: pb::UnlinkRequest,
    ) -> Result<pb::DirChangeReply, Status> {
        let mut r = request::Unlink::try_from(r)?;
        r.parent = view.ino(r.parent).await?;
        self.recall(origin, &[r.parent]).await;
        let keep_open = r.keep_open.then_some(origin.session);
        let unlinked = self
            .store
            .unlink_if(r.parent, r.name.bytes(), r.expect_ino, keep_open, origin)
            .await?;
        let ino = unlinked.done;
        self.settle_holds(ino).await;
        self.roots.changed();
        let changes = vec![Change::entry(r.parent, r.name.bytes()), Change::attrs(ino)];
        self.published(origin, changes).await;
        let grant = self.watchers.grant(origin.session, r.parent);
        Ok(view.dir_change(pb::DirChangeReply {
            parent: self.dir_after(r.parent, unlinked.dir).await,
            new_parent: None,
            ino,
            replaced_ino: 0,
            grant,
        }))
    }

    /// The create a commit carries (`CommitWriteRequest.create`): an early
    /// create of the commit's own file, checked and its directory recalled
    /// as a Create would be.
    async fn carried_create(
        &self,
        c: pb::CreateRequest,
        export: Option<&Rule>,
        holder: &str,
        view: &View<'_>,
        origin: Origin,
    ) -> Result<CarriedCreate, Status> {
        let request::Create {
            mut args,
            unnamed,
            numbered,
            want_inos,
        } = request::Create::try_from(c)?;
        let Some(numbered) = numbered.filter(|_| !unnamed) else {
            return Err(Status::invalid_argument(
                "a commit carries only an early create (a numbered one)",
            ));
        };
        self.check_early_create(export, holder, &numbered)?;
        args.parent = view.ino(args.parent).await?;
        self.recall(origin, &[args.parent]).await;
        self.failpoints.slow_early_create().await;
        if let Some(e) = export {
            args.uid = e.uid(args.uid)?;
            args.gid = e.gid(args.gid)?;
        }
        Ok(CarriedCreate {
            args,
            numbered,
            want_inos,
        })
    }

    /// Heartbeats at or after this instant mean "up".
    fn live_cutoff(&self) -> i64 {
        store::now_ms() - self.config.dead_after.as_millis() as i64
    }

    /// Runs one RPC body, recording its latency and result code.
    async fn observe<T>(
        &self,
        method: &'static str,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Reply<T> {
        let start = Instant::now();
        let result = body.await;
        let code = match &result {
            Ok(_) => "Ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics
            .rpc_requests
            .with_label_values(&[method, &code])
            .inc();
        self.metrics
            .rpc_seconds
            .with_label_values(&[method])
            .observe(start.elapsed().as_secs_f64());
        result.map(Response::new)
    }
}

/// Whether a client retries a call that failed so (`UNAVAILABLE` without an
/// errno: no meta could serve it now), as `dfs-client`'s transport does.
fn retryable(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status
            .metadata()
            .get(dfs_proto::ERRNO_METADATA_KEY)
            .is_none()
}

/// The origin of one request of a call that carries several (UnlinkMany,
/// CreateMany): the call's session, the request's own id. Only a session's
/// calls may carry several, so each can be replayed after a lost reply.
fn together_origin(call: Origin, request: u64) -> Result<Origin, Status> {
    if call.session == 0 {
        return Err(Status::failed_precondition(
            "requests sent together need a session (the dfs-session header)",
        ));
    }
    Ok(Origin {
        session: call.session,
        request,
    })
}

/// The outcomes of the requests of such a call, in order: each reply, or its
/// errno and message. A failure worth a retry (a lost transaction, a
/// failpoint's lost reply) fails the whole call instead: its client sends it
/// again, and what was done replays.
fn outcomes_of<T>(
    done: Vec<Result<Response<T>, Status>>,
) -> Result<Vec<(Option<T>, i32, String)>, Status> {
    done.into_iter()
        .map(|d| match d {
            Ok(reply) => Ok((Some(reply.into_inner()), 0, String::new())),
            Err(status) if retryable(&status) => Err(status),
            Err(status) => Ok((
                None,
                dfs_proto::errno_of(&status),
                status.message().to_string(),
            )),
        })
        .collect()
}

/// An early create a commit carries, checked (`MetaService::carried_create`).
struct CarriedCreate {
    args: store::CreateArgs,
    numbered: request::Numbered,
    want_inos: u32,
}

#[tonic::async_trait]
impl Meta for MetaService {
    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Invalidations, Status>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let (view, origin) = self.view(&req, false).await?;
        self.observe("Watch", async {
            if origin.session == 0 {
                return Err(Status::failed_precondition(
                    "watching needs a session (the dfs-session header)",
                ));
            }
            Ok(self.watchers.register(origin.session, view.root()))
        })
        .await
    }

    async fn recalled(&self, req: Request<pb::Recall>) -> Reply<pb::Empty> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("Recalled", async {
            let dir = view.ino(r.dir).await?;
            self.watchers.recalled(origin.session, dir, r.grant);
            Ok(pb::Empty {})
        })
        .await
    }

    async fn applied(&self, req: Request<pb::AppliedRequest>) -> Reply<pb::Empty> {
        let (_, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("Applied", async {
            self.watchers.applied(origin.session, r.seq);
            Ok(pb::Empty {})
        })
        .await
    }

    async fn open_files(&self, req: Request<pb::OpenFilesRequest>) -> Reply<pb::Empty> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("OpenFiles", async {
            let open = self.store.open_files();
            for ino in r.opened {
                open.opened(origin.session, view.ino(ino).await?);
            }
            for ino in r.closed {
                let ino = view.ino(ino).await?;
                if open.closed(origin.session, ino) {
                    self.store.release_orphan(ino, origin.session).await?;
                }
            }
            self.metrics.open_files.set(open.len() as i64);
            Ok(pb::Empty {})
        })
        .await
    }

    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("Lookup", async {
            let r = request::Lookup::try_from(r)?;
            let parent = view.ino(r.parent).await?;
            self.recall(origin, &[parent]).await;
            // A miss is cached too (a negative entry): note the parent first.
            self.watchers.note(origin.session, [parent]);
            let inode = self.store.lookup(parent, r.name.bytes()).await?;
            self.watchers.note(origin.session, [inode.ino]);
            Ok(view.attr_reply(attr_reply(&inode)))
        })
        .await
    }

    async fn get_attr(&self, req: Request<pb::GetAttrRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("GetAttr", async {
            let ino = view.ino(r.ino).await?;
            self.recall(origin, &[ino]).await;
            self.watchers.note(origin.session, [ino]);
            Ok(view.attr_reply(attr_reply(&self.store.getattr(ino).await?)))
        })
        .await
    }

    async fn resolve_path(&self, req: Request<pb::ResolvePathRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("ResolvePath", async {
            let r = request::ResolvePath::try_from(r)?;
            self.watchers.recall_all(origin.session).await;
            let inode = self.store.resolve_path_in(view.root(), &r.path).await?;
            Ok(view.attr_reply(attr_reply(&inode)))
        })
        .await
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, true).await?;
        let export = view.rule;
        let r = req.into_inner();
        self.observe_mutation("SetAttr", origin, async {
            let mut r = request::SetAttr::try_from(r)?;
            r.ino = view.ino(r.ino).await?;
            self.recall(origin, &[r.ino]).await;
            let now = store::Timespec::now();
            let (uid, gid) = exported_owner(export, r.uid, r.gid)?;
            let args = SetAttrArgs {
                mode: r.mode,
                uid,
                gid,
                size: r.size,
                atime: r.atime.resolve(now),
                mtime: r.mtime.resolve(now),
                explicit_times: r.explicit_times(),
                flags: r.flags,
            };
            let inode = self.store.setattr(r.ino, args, origin).await?;
            let change = if r.size.is_some() {
                Change::data(r.ino)
            } else {
                Change::attrs(r.ino)
            };
            self.watchers
                .publish(origin.session, vec![change])
                .confirmed()
                .await;
            self.watchers.note(origin.session, [r.ino]);
            Ok(view.attr_reply(attr_reply(&inode)))
        })
        .await
    }

    async fn create(&self, req: Request<pb::CreateRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, true).await?;
        let holder = auth::holder(&req);
        let r = req.into_inner();
        self.observe_mutation("Create", origin, self.create_one(&view, &holder, origin, r))
            .await
    }

    async fn create_many(&self, req: Request<pb::CreateManyRequest>) -> Reply<pb::CreateManyReply> {
        let (view, origin) = self.view(&req, true).await?;
        let holder = auth::holder(&req);
        let r = request::CreateMany::try_from(req.into_inner())?;
        let (view, holder) = (&view, holder.as_str());
        let calls = r.creates.into_iter().map(|(c, request)| {
            let origin = together_origin(origin, request)?;
            Ok(self.observe_mutation("Create", origin, self.create_one(view, holder, origin, c)))
        });
        let calls = calls.collect::<Result<Vec<_>, Status>>()?;
        let outcomes = outcomes_of(futures::future::join_all(calls).await)?;
        let outcomes = outcomes
            .into_iter()
            .map(|(reply, errno, message)| pb::CreateOutcome {
                reply,
                errno,
                message,
            })
            .collect();
        Ok(Response::new(pb::CreateManyReply { outcomes }))
    }

    async fn unlink(&self, req: Request<pb::UnlinkRequest>) -> Reply<pb::DirChangeReply> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("Unlink", origin, self.unlink_one(&view, origin, r))
            .await
    }

    async fn unlink_many(&self, req: Request<pb::UnlinkManyRequest>) -> Reply<pb::UnlinkManyReply> {
        let (view, origin) = self.view(&req, true).await?;
        let r = request::UnlinkMany::try_from(req.into_inner())?;
        let view = &view;
        let calls = r.unlinks.into_iter().map(|(u, request)| {
            let origin = together_origin(origin, request)?;
            // Each as an Unlink of its own (the store commits those in
            // flight together, `store/together.rs`).
            Ok(self.observe_mutation("Unlink", origin, self.unlink_one(view, origin, u)))
        });
        let calls = calls.collect::<Result<Vec<_>, Status>>()?;
        let outcomes = outcomes_of(futures::future::join_all(calls).await)?;
        let outcomes = outcomes
            .into_iter()
            .map(|(reply, errno, message)| pb::UnlinkOutcome {
                reply,
                errno,
                message,
            })
            .collect();
        Ok(Response::new(pb::UnlinkManyReply { outcomes }))
    }

    async fn rmdir(&self, req: Request<pb::RmdirRequest>) -> Reply<pb::DirChangeReply> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("Rmdir", origin, async {
            let mut r = request::Rmdir::try_from(r)?;
            r.parent = view.ino(r.parent).await?;
            self.recall(origin, &[r.parent]).await;
            self.recall_named(origin, r.parent, r.name.bytes()).await;
            let ino = self.store.rmdir(r.parent, r.name.bytes(), origin).await?;
            self.roots.changed();
            self.watchers
                .publish(
                    origin.session,
                    vec![Change::entry(r.parent, r.name.bytes())],
                )
                .confirmed()
                .await;
            Ok(view.dir_change(pb::DirChangeReply {
                parent: self.dir_attr(r.parent).await,
                new_parent: None,
                ino,
                replaced_ino: 0,
                grant: 0,
            }))
        })
        .await
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> Reply<pb::DirChangeReply> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("Rename", origin, async {
            let mut r = request::Rename::try_from(r)?;
            r.parent = view.ino(r.parent).await?;
            r.new_parent = view.ino(r.new_parent).await?;
            self.recall(origin, &[r.parent, r.new_parent]).await;
            self.recall_named(origin, r.new_parent, r.new_name.bytes())
                .await;
            let renamed = self
                .store
                .rename(
                    r.parent,
                    r.name.bytes(),
                    r.new_parent,
                    r.new_name.bytes(),
                    r.flags,
                    r.keep_open.then_some(origin.session),
                    origin,
                )
                .await?;
            if let Some(replaced) = renamed.replaced.filter(|i| *i != 0) {
                self.settle_holds(replaced).await;
            }
            self.roots.changed();
            let mut changes = vec![
                Change::entry(r.parent, r.name.bytes()),
                Change::entry(r.new_parent, r.new_name.bytes()),
            ];
            // The moved inode's ctime, the replaced one's nlink and ctime.
            changes.extend(
                [renamed.moved]
                    .into_iter()
                    .chain(renamed.replaced)
                    .filter(|ino| *ino != 0)
                    .map(Change::attrs),
            );
            self.watchers
                .publish(origin.session, changes)
                .confirmed()
                .await;
            let new_parent = if r.new_parent == r.parent {
                None
            } else {
                self.dir_attr(r.new_parent).await
            };
            Ok(view.dir_change(pb::DirChangeReply {
                parent: self.dir_attr(r.parent).await,
                new_parent,
                ino: renamed.moved,
                replaced_ino: renamed.replaced.unwrap_or(0),
                grant: 0,
            }))
        })
        .await
    }

    async fn release_orphan(&self, req: Request<pb::ReleaseOrphanRequest>) -> Reply<pb::Empty> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe_mutation("ReleaseOrphan", origin, async {
            let ino = view.ino(r.ino).await?;
            self.store.release_orphan(ino, origin.session).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("Link", origin, async {
            let mut r = request::Link::try_from(r)?;
            r.ino = view.ino(r.ino).await?;
            r.new_parent = view.ino(r.new_parent).await?;
            self.recall(origin, &[r.new_parent]).await;
            let inode = self
                .store
                .link(r.ino, r.new_parent, r.new_name.bytes(), origin)
                .await?;
            self.watchers
                .publish(
                    origin.session,
                    vec![
                        Change::entry(r.new_parent, r.new_name.bytes()),
                        Change::attrs(r.ino),
                    ],
                )
                .confirmed()
                .await;
            self.watchers.note(origin.session, [r.new_parent, r.ino]);
            let mut reply = attr_reply(&inode);
            reply.parent = self.dir_attr(r.new_parent).await;
            Ok(view.attr_reply(reply))
        })
        .await
    }

    async fn read_link(&self, req: Request<pb::ReadLinkRequest>) -> Reply<pb::ReadLinkReply> {
        let (view, _) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("ReadLink", async {
            Ok(pb::ReadLinkReply {
                target: self.store.readlink(view.ino(r.ino).await?).await?,
            })
        })
        .await
    }

    async fn read_dir(&self, req: Request<pb::ReadDirRequest>) -> Reply<pb::ReadDirReply> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("ReadDir", async {
            let r = request::ReadDir::try_from(r)?;
            let ino = view.ino(r.ino).await?;
            self.recall(origin, &[ino]).await;
            self.watchers.note(origin.session, [ino]);
            let (entries, more) = self.store.readdir(ino, &r.after, r.limit).await?;
            self.watchers
                .note(origin.session, entries.iter().map(|e| e.attr.ino));
            Ok(pb::ReadDirReply {
                entries: entries
                    .iter()
                    .map(|e| pb::DirEntry {
                        name: e.name.clone(),
                        attr: view.attr(Some(crate::convert::attr(&e.attr))),
                    })
                    .collect(),
                more,
            })
        })
        .await
    }

    async fn get_xattr(&self, req: Request<pb::GetXattrRequest>) -> Reply<pb::GetXattrReply> {
        let (view, _) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("GetXattr", async {
            let r = request::XattrOf::try_from(r)?;
            Ok(pb::GetXattrReply {
                value: self
                    .store
                    .get_xattr(view.ino(r.ino).await?, r.name.bytes())
                    .await?,
            })
        })
        .await
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("SetXattr", origin, async {
            let mut r = request::SetXattr::try_from(r)?;
            r.ino = view.ino(r.ino).await?;
            self.store
                .set_xattr(r.ino, r.name.bytes(), &r.value, r.flags, origin)
                .await?;
            self.watchers
                .publish(origin.session, vec![Change::attrs(r.ino)])
                .confirmed()
                .await;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn list_xattr(&self, req: Request<pb::ListXattrRequest>) -> Reply<pb::ListXattrReply> {
        let (view, _) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("ListXattr", async {
            Ok(pb::ListXattrReply {
                names: self.store.list_xattr(view.ino(r.ino).await?).await?,
            })
        })
        .await
    }

    async fn remove_xattr(&self, req: Request<pb::RemoveXattrRequest>) -> Reply<pb::Empty> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("RemoveXattr", origin, async {
            let mut r = request::XattrOf::try_from(r)?;
            r.ino = view.ino(r.ino).await?;
            self.store
                .remove_xattr(r.ino, r.name.bytes(), origin)
                .await?;
            self.watchers
                .publish(origin.session, vec![Change::attrs(r.ino)])
                .confirmed()
                .await;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn stat_fs(&self, _req: Request<pb::Empty>) -> Reply<pb::StatFsReply> {
        self.observe("StatFs", async {
            let cutoff = self.live_cutoff();
            let nodes = self.store.list_nodes().await?;
            let live = nodes
                .iter()
                .filter(|n| n.record.last_heartbeat_ms >= cutoff);
            let (total, free) = live.fold((0u64, 0u64), |(t, f), n| {
                (
                    t + n.record.capacity,
                    f + n.record.capacity.saturating_sub(n.record.used),
                )
            });
            let replication = u64::from(self.store.replication());
            let counts = self.store.cluster_counts(cutoff).await?;
            Ok(pb::StatFsReply {
                total_bytes: total / replication,
                free_bytes: free / replication,
                files: counts.files + counts.directories,
                chunk_size: self.store.chunk_size(),
            })
        })
        .await
    }

    async fn sync(&self, _req: Request<pb::Empty>) -> Reply<pb::Empty> {
        self.observe("Sync", async {
            self.store.sync().await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn get_chunks(&self, req: Request<pb::GetChunksRequest>) -> Reply<pb::GetChunksReply> {
        let (view, origin) = self.view(&req, false).await?;
        let holder = auth::holder(&req);
        let r = req.into_inner();
        self.observe("GetChunks", async {
            let ino = view.ino(r.ino).await?;
            self.watchers.note(origin.session, [ino]);
            // A chunk map goes to a file being opened or open.
            self.opened(origin.session, ino);
            let map = self.store.get_chunks(ino, self.live_cutoff()).await?;
            Ok(chunk_map_reply(&map, &self.tokens(&holder), &view))
        })
        .await
    }

    async fn place_chunk(&self, req: Request<pb::PlaceChunkRequest>) -> Reply<pb::PlaceChunkReply> {
        let (view, origin) = self.view(&req, true).await?;
        let holder = auth::holder(&req);
        let r = req.into_inner();
        self.observe("PlaceChunk", async {
            let r = request::Place::try_from(r)?;
            // More copies of an existing chunk: only of one the caller may name.
            if r.chunk_id != 0 && !view.chunk(r.chunk_id).await? {
                return Err(dfs_proto::status_from_errno(
                    libc::ENOENT,
                    format!("chunk {}: not one of this client's", r.chunk_id),
                ));
            }
            let count = r.count.unwrap_or_else(|| self.store.replication());
            let placement = self
                .store
                .place_chunks(
                    r.chunk_id,
                    count,
                    &r.exclude,
                    self.live_cutoff(),
                    origin.session,
                    r.batch,
                )
                .await?;
            let targets: Vec<pb::NodeRef> = placement.targets.iter().map(node_ref).collect();
            let tokens = self.tokens(&holder);
            let more = placement
                .more_ids
                .iter()
                .map(|id| pb::PlacedChunk {
                    chunk_id: *id,
                    token: Some(tokens.write(*id, &targets)),
                    targets: targets.clone(),
                })
                .collect();
            Ok(pb::PlaceChunkReply {
                chunk_id: placement.chunk_id,
                more,
                token: Some(tokens.write(placement.chunk_id, &targets)),
                targets,
                replication: self.store.replication(),
                min_replicas: self
                    .config
                    .min_write_replicas
                    .clamp(1, self.store.replication()),
            })
        })
        .await
    }

    async fn commit_write(
        &self,
        req: Request<pb::CommitWriteRequest>,
    ) -> Reply<pb::GetChunksReply> {
        let (view, origin) = self.view(&req, true).await?;
        let holder = auth::holder(&req);
        let export = view.rule;
        let mut r = req.into_inner();
        let create = r.create.take();
        self.observe_mutation("CommitWrite", origin, async {
            let mut r = request::Commit::try_from(r)?;
            r.ino = view.ino(r.ino).await?;
            (r.attrs.uid, r.attrs.gid) = exported_owner(export, r.attrs.uid, r.attrs.gid)?;
            let carried = match create {
                Some(c) => Some(
                    self.carried_create(c, export, &holder, &view, origin)
                        .await?,
                ),
                None => None,
            };
            self.opened(origin.session, r.ino);
            let commit = store::CommitArgs {
                ino: r.ino,
                size: r.size,
                chunks: &r.chunks,
                mtime: r.mtime,
                attrs: r.attrs,
            };
            let mut changes = vec![Change::data(r.ino)];
            let committed = match &carried {
                Some(c) => {
                    let create = (c.args.clone(), c.numbered.ino, c.numbered.time);
                    let made = self.store.create_and_commit(create, commit, origin).await?;
                    changes.push(Change::entry(c.args.parent, &c.args.name));
                    made.done
                }
                None => self.store.commit(commit, origin).await?,
            };
            self.published(origin, changes).await;
            self.watchers.note(origin.session, [r.ino]);
            let chunk_size = self.store.chunk_size();
            let mut reply = match (r.return_chunks, committed.chunks) {
                // The commit wrote the whole map: no read after it.
                (true, Some(chunks)) => {
                    let map = store::ChunkMap {
                        inode: committed.inode,
                        chunk_size,
                        chunks,
                    };
                    chunk_map_reply(&map, &self.tokens(&holder), &view)
                }
                (true, None) => {
                    let map = self.store.get_chunks(r.ino, self.live_cutoff()).await?;
                    chunk_map_reply(&map, &self.tokens(&holder), &view)
                }
                (false, _) => pb::GetChunksReply {
                    attr: view.attr(Some(crate::convert::attr(&committed.inode))),
                    chunk_size,
                    ..Default::default()
                },
            };
            if let Some(c) = carried {
                let parent = c.args.parent;
                reply.grant = self.watchers.grant(origin.session, parent);
                reply.inos = self.ino_grant(export, &holder, c.want_inos).await?;
                self.watchers.note(origin.session, [parent]);
            }
            Ok(reply)
        })
        .await
    }

    async fn punch_hole(&self, req: Request<pb::PunchHoleRequest>) -> Reply<pb::AttrReply> {
        let (view, origin) = self.view(&req, true).await?;
        let r = req.into_inner();
        self.observe_mutation("PunchHole", origin, async {
            let mut r = request::PunchHole::try_from(r)?;
            r.ino = view.ino(r.ino).await?;
            let inode = self
                .store
                .punch_chunks(r.ino, r.first_index, r.end_index, origin)
                .await?;
            self.watchers
                .publish(origin.session, vec![Change::data(r.ino)])
                .confirmed()
                .await;
            Ok(view.attr_reply(attr_reply(&inode)))
        })
        .await
    }

    async fn report_fence(&self, _req: Request<pb::Empty>) -> Reply<pb::ReportFenceReply> {
        self.observe("ReportFence", async {
            Ok(pb::ReportFenceReply {
                fence_ms: store::now_ms(),
            })
        })
        .await
    }

    async fn register_node(
        &self,
        req: Request<tonic::Streaming<pb::RegisterNodeRequest>>,
    ) -> Reply<pb::RegisterNodeReply> {
        let cert_name = auth::caller(&req).map(|id| id.name);
        let mut pages = req.into_inner();
        self.observe("RegisterNode", async {
            let mut r = pages
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("an empty registration"))?;
            while let Some(page) = pages.message().await? {
                if r.chunk_ids.len() + page.chunk_ids.len() > MAX_REGISTERED_CHUNKS {
                    return Err(Status::invalid_argument(format!(
                        "a node may report at most {MAX_REGISTERED_CHUNKS} chunks"
                    )));
                }
                r.chunk_ids.extend(page.chunk_ids);
            }
            let addr = r.addr.clone();
            let (node_id, mut delete) = self
                .store
                .register_node(RegisterArgs {
                    uuid: r.uuid,
                    cert_name,
                    addr: r.addr,
                    zone: r.zone,
                    capacity: r.capacity_bytes,
                    used: r.used_bytes,
                    chunk_ids: r.chunk_ids,
                    listed_after_ms: r.listed_after_ms,
                })
                .await?;
            // A node id must never be handed out twice, even across a power cut.
            self.store.sync().await?;
            tracing::info!(node_id, %addr, deletes = delete.len(), "node registered");
            delete.truncate(MAX_REGISTER_DELETES);
            Ok(pb::RegisterNodeReply {
                node_id,
                delete_chunk_ids: delete,
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
                token_key: self.store.token_key().to_vec(),
            })
        })
        .await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Reply<pb::HeartbeatReply> {
        let cert_name = auth::caller(&req).map(|id| id.name);
        let r = req.into_inner();
        self.observe("Heartbeat", async {
            if let Some(name) = &cert_name {
                self.store.check_node_certificate(r.node_id, name).await?;
            }
            // Deletions go out after the grace period, and only for changes
            // already on meta's disk: a power cut cannot bring back a file
            // whose chunks a node has deleted.
            let after_grace = store::now_ms() - self.config.gc_grace.as_millis() as i64;
            if self.store.durable_before_ms() < after_grace {
                self.store.sync().await?;
            }
            let release_before = after_grace.min(self.store.durable_before_ms());
            self.store
                .apply_chunk_changes(r.node_id, &r.added_chunk_ids, &r.removed_chunk_ids)
                .await?;
            let deletes = self
                .store
                .heartbeat(
                    HeartbeatInfo {
                        node_id: r.node_id,
                        capacity: r.capacity_bytes,
                        used: r.used_bytes,
                        chunk_count: r.chunk_count,
                    },
                    release_before,
                )
                .await?;
            Ok(match deletes {
                None => pb::HeartbeatReply {
                    reregister: true,
                    ..Default::default()
                },
                Some(delete_chunk_ids) => pb::HeartbeatReply {
                    delete_chunk_ids,
                    replicate: self.repairer.take_commands(r.node_id).await?,
                    reregister: false,
                },
            })
        })
        .await
    }

    async fn replica_added(&self, req: Request<pb::ReplicaAddedRequest>) -> Reply<pb::Empty> {
        let (view, _) = self.view(&req, true).await?;
        let from_client = auth::caller(&req).is_some_and(|id| id.role == dfs_auth::Role::Client);
        let mut r = req.into_inner();
        self.observe("ReplicaAdded", async {
            // A client's claim (the copies an fsync made) counts only for a
            // chunk it may name, and only for copies their node confirms:
            // a phantom replica would later let trimming drop a real one.
            if from_client {
                if !view.chunk(r.chunk_id).await? {
                    return Ok(pb::Empty {});
                }
                let mut confirmed = Vec::new();
                for node_id in r.node_ids {
                    if self.node_check(r.chunk_id, node_id).await == Some(true) {
                        confirmed.push(node_id);
                    } else {
                        tracing::info!(
                            chunk = r.chunk_id,
                            node = node_id,
                            "replica a client added not confirmed by its node: ignored"
                        );
                    }
                }
                r.node_ids = confirmed;
            }
            self.store.replica_added(r.chunk_id, &r.node_ids).await?;
            self.repairer.finished(r.chunk_id, r.node_ids.len());
            Ok(pb::Empty {})
        })
        .await
    }

    async fn forget_replica(&self, req: Request<pb::ForgetReplicaRequest>) -> Reply<pb::Empty> {
        let (view, _) = self.view(&req, true).await?;
        let from_client = auth::caller(&req).is_some_and(|id| id.role == dfs_auth::Role::Client);
        let r = req.into_inner();
        self.observe("ForgetReplica", async {
            // A client forgets a replica that did not confirm its fsync.
            // Meta asks that node to sync the chunk itself: if it can, the
            // copy is durable after all and stays.
            if from_client
                && (!view.chunk(r.chunk_id).await? || self.node_syncs(r.chunk_id, r.node_id).await)
            {
                return Ok(pb::Empty {});
            }
            let keep = self
                .config
                .min_write_replicas
                .clamp(1, self.store.replication());
            self.store
                .forget_replica(r.chunk_id, r.node_id, keep, self.live_cutoff())
                .await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn report_bad_replica(&self, req: Request<pb::BadReplicaRequest>) -> Reply<pb::Empty> {
        // A node reports what its own reads found; a client's report is
        // only believed once the holding node confirms it.
        let (view, _) = self.view(&req, false).await?;
        let from_client = auth::caller(&req).is_some_and(|id| id.role != dfs_auth::Role::Node);
        let r = req.into_inner();
        self.observe("ReportBadReplica", async {
            if from_client && !view.chunk(r.chunk_id).await? {
                return Ok(pb::Empty {});
            }
            if from_client && self.node_check(r.chunk_id, r.node_id).await != Some(false) {
                tracing::info!(
                    chunk = r.chunk_id,
                    node = r.node_id,
                    "bad-replica report not confirmed by its node: ignored"
                );
                return Ok(pb::Empty {});
            }
            tracing::warn!(chunk = r.chunk_id, node = r.node_id, "bad replica reported");
            self.store.quarantine_replica(r.chunk_id, r.node_id).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn fsck(&self, req: Request<pb::FsckRequest>) -> Reply<pb::FsckReply> {
        if req.get_ref().repair {
            auth::require_admin(auth::caller(&req).as_ref(), "fsck --repair")?;
        }
        // Its report names paths and inodes anywhere in the tree.
        if !self.view(&req, false).await?.0.is_whole() {
            return Err(Status::permission_denied(
                "fsck needs an admin certificate or an export of /",
            ));
        }
        let r = req.into_inner();
        self.observe("Fsck", async {
            let root = self.store.resolve_path(&r.path).await?;
            let (mut planned, mut released) = (0, 0);
            if r.repair {
                planned = self.repairer.scan().await? as u64;
                released = self.store.release_quarantine(self.live_cutoff()).await? as u64;
            }
            let report = self
                .store
                .fsck(root.ino, self.live_cutoff(), FSCK_PROBLEMS)
                .await?;
            // Strays belong to no path: only a check of the whole tree looks.
            let strays = if root.ino == dfs_proto::ROOT_INO {
                crate::strays::scan(
                    &self.store,
                    self.live_cutoff(),
                    r.repair,
                    self.node_tls.as_ref(),
                )
                .await?
            } else {
                Default::default()
            };
            Ok(pb::FsckReply {
                files: report.files,
                chunks: report.chunks,
                replication: self.store.replication(),
                healthy_chunks: report.healthy,
                chunks_by_health: report
                    .counts
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), *v))
                    .collect(),
                orphans: report.orphans,
                abandoned_allocations: report.abandoned_allocations,
                problems: report
                    .problems
                    .iter()
                    .map(|p| pb::FsckProblem {
                        path: p.path.clone(),
                        ino: p.ino,
                        chunk_index: p.index,
                        chunk_id: p.chunk_id,
                        health: p.health.name().to_string(),
                        live_replicas: p.live as u32,
                        recorded_replicas: p.recorded as u32,
                        corrupt_replicas: p.corrupt as u32,
                        at_risk: p.health.at_risk(),
                    })
                    .collect(),
                problems_truncated: report.truncated,
                repairs_planned: planned,
                quarantine_released: released,
                stray_chunks: strays.strays.len() as u64,
                strays_queued: if r.repair {
                    strays.strays.len() as u64
                } else {
                    0
                },
                strays: strays
                    .strays
                    .iter()
                    .take(FSCK_PROBLEMS)
                    .map(|s| pb::FsckStray {
                        node_id: s.node_id,
                        addr: s.addr.clone(),
                        chunk_id: s.chunk_id,
                    })
                    .collect(),
                unlisted_nodes: strays.unlisted,
            })
        })
        .await
    }

    async fn node_admin(&self, req: Request<pb::NodeAdminRequest>) -> Reply<pb::NodeAdminReply> {
        let r = req.into_inner();
        self.observe("NodeAdmin", async {
            let node = self.store.find_node(&r.node).await?;
            match r.action.as_str() {
                "drain" => self.store.set_draining(node.id, true).await?,
                "undrain" => self.store.set_draining(node.id, false).await?,
                "remove" => {
                    self.store.remove_node(node.id, self.live_cutoff()).await?;
                    return Ok(pb::NodeAdminReply {
                        node_id: node.id,
                        addr: node.addr,
                        removed: true,
                        ..Default::default()
                    });
                }
                "show" => {}
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown action {other:?}"
                    )))
                }
            }
            let usage = self.store.node_usage(node.id, self.live_cutoff()).await?;
            Ok(pb::NodeAdminReply {
                node_id: node.id,
                addr: usage.record.addr,
                draining: usage.record.draining,
                replicas: usage.replicas,
                dependent_chunks: usage.dependent_chunks,
                removed: false,
            })
        })
        .await
    }

    async fn cluster_status(&self, _req: Request<pb::Empty>) -> Reply<pb::ClusterStatusReply> {
        self.observe("ClusterStatus", async {
            let cutoff = self.live_cutoff();
            let now = store::now_ms();
            let nodes = self.store.list_nodes().await?;
            let counts = self.store.cluster_counts(cutoff).await?;
            Ok(pb::ClusterStatusReply {
                nodes: nodes
                    .iter()
                    .map(|n| pb::NodeStatus {
                        node_id: n.record.id,
                        addr: n.record.addr.clone(),
                        zone: n.record.zone.clone(),
                        state: if n.record.last_heartbeat_ms >= cutoff {
                            "up"
                        } else {
                            "down"
                        }
                        .into(),
                        capacity_bytes: n.record.capacity,
                        used_bytes: n.record.used,
                        chunk_count: n.record.chunk_count,
                        replicas: n.replicas,
                        last_heartbeat_age_ms: now - n.record.last_heartbeat_ms,
                        draining: n.record.draining,
                    })
                    .collect(),
                files: counts.files,
                directories: counts.directories,
                chunks: counts.chunks,
                under_replicated_chunks: counts.under_replicated,
                lost_chunks: counts.lost,
                logical_bytes: counts.logical_bytes,
                replication: self.store.replication(),
                chunk_size: self.store.chunk_size(),
                gc_pending: counts.gc_pending,
            })
        })
        .await
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Reply<pb::OpenSessionReply> {
        // A client its exports do not admit (or whose exported directory
        // is missing) is refused here, at mount time. (Any session the
        // request names is not checked: this opens a new one.)
        self.export_root(self.rule(&req, false)?).await?;
        let owner = auth::holder(&req);
        let r = req.into_inner();
        self.observe("OpenSession", async {
            let args = SessionArgs {
                host: r.host,
                mountpoint: r.mountpoint,
                pid: r.pid,
                version: r.version,
                kind: r.kind,
                owner,
            };
            let lease_ms = self.sessions.lease_ms();
            let id = self.store.open_session(&args, lease_ms).await?;
            self.sessions
                .opened(id, store::now_ms() + lease_ms, args.owner.clone());
            tracing::info!(session = id, host = %args.host, mountpoint = %args.mountpoint,
                kind = %args.kind, "session opened");
            Ok(pb::OpenSessionReply {
                session_id: id,
                lease_ms: lease_ms as u32,
            })
        })
        .await
    }

    async fn renew_session(
        &self,
        req: Request<pb::RenewSessionRequest>,
    ) -> Reply<pb::RenewSessionReply> {
        let caller = auth::caller(&req);
        let r = req.into_inner();
        self.sessions
            .check_owner(r.session_id, caller.as_ref())
            .await?;
        self.observe("RenewSession", async {
            let renewed = self
                .store
                .renew_session(
                    r.session_id,
                    r.open_files,
                    r.replied_below,
                    self.sessions.lease_ms(),
                )
                .await?;
            match renewed {
                Some(expires) => self.sessions.renewed(r.session_id, expires),
                None => self.sessions.forget(r.session_id),
            }
            Ok(pb::RenewSessionReply {
                expired: renewed.is_none(),
            })
        })
        .await
    }

    async fn close_session(&self, req: Request<pb::CloseSessionRequest>) -> Reply<pb::Empty> {
        let caller = auth::caller(&req);
        let r = req.into_inner();
        self.sessions
            .check_owner(r.session_id, caller.as_ref())
            .await?;
        self.observe("CloseSession", async {
            self.store.close_session(r.session_id).await?;
            self.sessions.forget(r.session_id);
            self.watchers.forget(r.session_id);
            self.sessions.lock_changes.notify_waiters();
            tracing::info!(session = r.session_id, "session closed");
            Ok(pb::Empty {})
        })
        .await
    }

    async fn list_sessions(&self, _req: Request<pb::Empty>) -> Reply<pb::ListSessionsReply> {
        self.observe("ListSessions", async {
            let sessions = self.store.list_sessions().await?;
            Ok(pb::ListSessionsReply {
                sessions: sessions
                    .into_iter()
                    .map(|s| pb::SessionInfo {
                        session_id: s.id,
                        host: s.args.host,
                        mountpoint: s.args.mountpoint,
                        pid: s.args.pid,
                        version: s.args.version,
                        kind: s.args.kind,
                        since_ms: s.since_ms,
                        renewed_ms: s.renewed_ms,
                        expires_ms: s.expires_ms,
                        open_files: s.open_files,
                        locks: s.locks,
                        orphans: s.orphans,
                        owner: s.args.owner,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn lock(&self, req: Request<pb::LockRequest>) -> Reply<pb::LockReply> {
        let (view, origin) = self.view(&req, false).await?;
        let r = req.into_inner();
        self.observe("Lock", async {
            if origin.session == 0 {
                return Err(dfs_proto::status_from_errno(
                    libc::ENOLCK,
                    "locks need a session",
                ));
            }
            let r = request::Lock::try_from(r)?;
            let spec = LockSpec {
                ino: view.ino(r.ino).await?,
                session: origin.session,
                owner: r.owner,
                flock: r.flock,
                kind: r.kind,
                range: r.range,
                pid: r.pid,
            };
            // A waiter sleeps until a lock is released somewhere (or a
            // second passes: another meta may have released it), and
            // answers "not granted" after LOCK_WAIT so the client, which
            // asks again, notices an interrupt or its own end.
            let deadline = tokio::time::Instant::now() + LOCK_WAIT;
            loop {
                let changed = self.sessions.lock_changes.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let (outcome, released) = self.store.lock(&spec, r.test).await?;
                if released {
                    self.sessions.lock_changes.notify_waiters();
                }
                match outcome {
                    LockOutcome::Granted => {
                        return Ok(pb::LockReply {
                            granted: true,
                            conflict: None,
                        })
                    }
                    LockOutcome::Conflict(held)
                        if !r.wait || r.test || tokio::time::Instant::now() >= deadline =>
                    {
                        return Ok(pb::LockReply {
                            granted: false,
                            conflict: Some(pb::LockInfo {
                                r#type: if held.exclusive {
                                    pb::LockType::Write
                                } else {
                                    pb::LockType::Read
                                } as i32,
                                start: held.range.start as u64,
                                end: held.range.end as u64,
                                pid: held.pid,
                                session_id: held.session,
                            }),
                        })
                    }
                    LockOutcome::Conflict(_) => {
                        let _ = tokio::time::timeout_at(
                            deadline.min(tokio::time::Instant::now() + LOCK_RECHECK),
                            changed,
                        )
                        .await;
                    }
                }
            }
        })
        .await
    }
}

/// How long a waiting lock request is held before "not granted, ask again".
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A waiter looks again at least this often (releases on another meta).
const LOCK_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A file's chunk map as the wire carries it, each chunk with a read token
/// for `holder`.
/// The owner a chown asks for, as the caller's export maps it (EPERM when
/// the export does not allow it).
fn exported_owner(
    export: Option<&Rule>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(Option<u32>, Option<u32>), Status> {
    let Some(e) = export else {
        return Ok((uid, gid));
    };
    Ok((
        uid.map(|u| e.uid(u)).transpose()?,
        gid.map(|g| e.gid(g)).transpose()?,
    ))
}

fn chunk_map_reply(
    map: &crate::store::ChunkMap,
    tokens: &auth::Tokens<'_>,
    view: &View<'_>,
) -> pb::GetChunksReply {
    pb::GetChunksReply {
        attr: view.attr(Some(crate::convert::attr(&map.inode))),
        chunk_size: map.chunk_size,
        chunks: map
            .chunks
            .iter()
            .map(|c| pb::ChunkRef {
                index: c.index,
                chunk_id: c.chunk_id,
                stored_len: c.stored_len,
                crc32c: c.crc32c,
                valid_len: c.valid_len,
                replicas: c
                    .replicas
                    .iter()
                    .map(|(id, addr, _)| pb::NodeRef {
                        node_id: *id,
                        addr: addr.clone(),
                    })
                    .collect(),
                read_token: Some(tokens.read(c.chunk_id)),
            })
            .collect(),
        ..Default::default()
    }
}
