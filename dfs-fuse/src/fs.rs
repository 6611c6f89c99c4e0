//! The file system itself, independent of the kernel interface: namespace
//! calls go to meta, file data goes through `OpenFile`. Every method is async
//! and returns an errno-carrying `FsError`; `fuse.rs` only translates.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use dfs_proto::pb;
use tokio::sync::Mutex as AsyncMutex;

use crate::coherence::Ticket;
use crate::deferred::{landing, Deferred, HeldCreate, InFlight, OnAnswer};
use crate::error::{FsError, FsResult};
use crate::io::{Io, ReadData};
use crate::metacache::Known;
use crate::open_file::{now, AttrChange, ContentSignature, OpenFile};
use crate::together::{self, Queued, Together};

/// Directory entries fetched from meta per page.
const DIR_PAGE: u32 = 1000;
/// How long "this inode has no xattrs" from an attribute reply is trusted: the
/// same time the kernel caches attributes.
const NO_XATTR_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Inodes remembered per inode-keyed cache (no-xattrs, page-cache content).
const INODES_REMEMBERED: usize = 100_000;

/// Forgets an inode's cached attributes when dropped: after a change to
/// them whose reply does not carry them (xattrs), whatever its outcome.
struct AttrsChanged<'a>(&'a crate::coherence::Coherence, u64);

impl Drop for AttrsChanged<'_> {
    fn drop(&mut self) {
        self.0.forget_attr(self.1);
        self.0.mutated();
    }
}

/// Attribute changes requested by setattr (a `None` leaves a field alone).
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<pb::Timespec>,
    pub mtime: Option<pb::Timespec>,
    pub atime_now: bool,
    pub mtime_now: bool,
    /// Inode flags (FS_IOC_SETFLAGS).
    pub flags: Option<u32>,
}

/// Who is asking: owner of newly created entries.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A directory being listed: pages fetched on demand, positions stable.
struct DirListing {
    ino: u64,
    entries: Vec<pb::DirEntry>,
    more: bool,
    /// Taken at opendir: if nothing changed since, the whole listing tells
    /// every name in the directory.
    ticket: Ticket,
}

type SharedFile = Arc<AsyncMutex<OpenFile>>;

/// dfs labels nothing for SELinux (the kernel's policy labels a FUSE mount
/// as a whole): a file without this attribute answers EOPNOTSUPP, as a file
/// system without labels does, not ENODATA. `ls -l` asks it of every file
/// and stops once it is unsupported on the device: half of its round trips.
/// One stored with setxattr is still returned.
const SELINUX_LABEL: &[u8] = b"security.selinux";

pub struct DfsFs {
    io: Io,
    /// Namespace calls go straight to meta.
    meta: dfs_client::Meta,
    /// The channel under `meta`: the session, and retry counts.
    meta_channel: dfs_client::meta::MetaChannel,
    /// The open file of each inode while any handle holds it. Handles own the
    /// file (strong references), so a late release can never pull a file out
    /// from under a new open of the same inode.
    files: Arc<Mutex<HashMap<u64, Weak<AsyncMutex<OpenFile>>>>>,
    handles: Mutex<HashMap<u64, SharedFile>>,
    /// Files open here whose last name is gone: orphans on meta that this
    /// mount releases at their last close (`release_orphan_if_closed`).
    orphans: OrphanKeeper,
    dirs: Mutex<HashMap<u64, Arc<AsyncMutex<DirListing>>>>,
    next_fh: AtomicU64,
    /// Inodes whose latest attributes said "no xattrs", and when: `ls -l` asks
    /// for ACL and security xattrs on every entry, answered here without a round trip.
    no_xattrs: Mutex<lru::LruCache<u64, std::time::Instant>>,
    /// The content the kernel's page cache holds for each recently open inode.
    page_cache_content: Mutex<lru::LruCache<u64, ContentSignature>>,
    /// The cluster's chunk size, learned from the first open (0 until then).
    chunk_size: AtomicU32,
    /// fcntl and flock locks, kept by meta for every mount.
    pub locks: crate::locks::Locks,
    /// Directories whose lookups keep missing the cache, listed instead.
    refill: crate::refill::Refill,
    /// Unlinks and creates answered before meta has them (see `deferred.rs`).
    deferred: Deferred,
    /// Early unlinks and creates on their way to meta, sent together.
    unlinks: Arc<Together<together::Unlinks>>,
    creates: Arc<Together<together::Creates>>,
    /// Inode numbers meta granted for creates answered here.
    inos: crate::inos::InoPool,
    /// Closes (and, on a new watch stream, opens) told to meta.
    open_report: Arc<crate::open_report::OpenReport>,
    /// Every open file tells this its inode when it goes (`with_drop_notice`):
    /// whoever held it last (a release, or a stat or drain that looked at
    /// it meanwhile), its close is reported.
    dropped: tokio::sync::mpsc::UnboundedSender<u64>,
    dropped_files: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
}

/// An open file handle, and whether the kernel may keep its cached pages.
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
}

/// An LRU keyed by inode, holding `INODES_REMEMBERED` entries.
fn inode_lru<V>() -> lru::LruCache<u64, V> {
    lru::LruCache::new(
        std::num::NonZeroUsize::new(INODES_REMEMBERED).unwrap_or(std::num::NonZeroUsize::MIN),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An immutable file opens only for reading; an append-only one only for
/// reading or appending, never truncated (meta refuses the changes anyway:
/// this makes the open fail, not the close).
fn check_open_mode(inode_flags: u32, open_flags: i32) -> FsResult<()> {
    let writes = open_flags & libc::O_ACCMODE != libc::O_RDONLY || open_flags & libc::O_TRUNC != 0;
    let immutable = inode_flags & dfs_proto::inode_flags::IMMUTABLE != 0;
    let append_only = inode_flags & dfs_proto::inode_flags::APPEND != 0;
    if writes
        && (immutable
            || (append_only
                && (open_flags & libc::O_APPEND == 0 || open_flags & libc::O_TRUNC != 0)))
    {
        return Err(FsError::new(
            libc::EPERM,
            "the file is immutable or append-only",
        ));
    }
    Ok(())
}

/// Immutable or append-only: its names and attributes change only through meta.
fn pinned(a: &pb::Attr) -> bool {
    a.flags & (dfs_proto::inode_flags::IMMUTABLE | dfs_proto::inode_flags::APPEND) != 0
}

fn attr_of(reply: pb::AttrReply) -> FsResult<pb::Attr> {
    reply
        .attr
        .ok_or_else(|| FsError::new(libc::EIO, "metadata reply without attributes"))
}

impl DfsFs {
    /// `sync_unlink`, `sync_create`: every unlink, every create, waits for
    /// meta (`-o sync_unlink`, `-o sync_create`).
    pub fn new(
        io: Io,
        meta_channel: dfs_client::meta::MetaChannel,
        sync_unlink: bool,
        sync_create: bool,
    ) -> DfsFs {
        let files: Arc<Mutex<HashMap<u64, Weak<AsyncMutex<OpenFile>>>>> = Default::default();
        let meta = meta_channel.client();
        let refill = crate::refill::Refill::new(io.coherence.cache_timeout());
        let open_report = Arc::new(crate::open_report::OpenReport::default());
        let (dropped, dropped_files) = tokio::sync::mpsc::unbounded_channel();
        DfsFs {
            io,
            meta: meta.clone(),
            meta_channel,
            files: files.clone(),
            handles: Mutex::new(HashMap::new()),
            orphans: OrphanKeeper {
                files,
                orphans: Default::default(),
                meta,
                report: open_report.clone(),
            },
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            no_xattrs: Mutex::new(inode_lru()),
            chunk_size: AtomicU32::new(0),
            page_cache_content: Mutex::new(inode_lru()),
            locks: Default::default(),
            refill,
            deferred: Deferred::new(!sync_unlink, !sync_create),
            unlinks: Arc::default(),
            creates: Arc::default(),
            inos: Default::default(),
            open_report,
            dropped,
            dropped_files: Mutex::new(Some(dropped_files)),
        }
    }

    /// Sends this mount's closes to meta as they come (`open_report.rs`),
    /// until the mount stops.
    pub async fn report_closes(&self) {
        let dropped = lock(&self.dropped_files).take();
        let released = async {
            let Some(mut dropped) = dropped else { return };
            while let Some(ino) = dropped.recv().await {
                // A file something other than its last handle let go of
                // last (a release that drops it reports itself).
                if let Err(e) = self.orphans.release_if_closed(ino).await {
                    tracing::warn!(ino, error = %e, "cannot release an orphan");
                }
            }
        };
        let reported = self.open_report.run(self.meta.clone(), &self.deferred);
        tokio::join!(released, reported);
    }

    /// A file meta counts as open here (every new regular file) is not.
    pub fn not_open(&self, ino: u64) {
        self.open_report.closed(ino);
    }

    /// Tells meta every file open here: a new watch stream is live, and meta
    /// may have restarted since it last heard.
    pub async fn announce_open_files(&self) {
        let open: Vec<u64> = lock(&self.files)
            .iter()
            .filter(|(_, f)| f.strong_count() > 0)
            .map(|(ino, _)| *ino)
            .collect();
        self.open_report.announce(self.meta.clone(), open).await
    }

    /// Remembers what an attribute reply says about the inode's xattrs.
    fn note_attr(&self, attr: &pb::Attr) {
        let mut cache = lock(&self.no_xattrs);
        if attr.has_xattrs {
            cache.pop(&attr.ino);
        } else {
            cache.put(attr.ino, std::time::Instant::now());
        }
    }

    /// Whether a fresh attribute reply said the inode has no xattrs.
    fn known_without_xattrs(&self, ino: u64) -> bool {
        // While invalidations are live, cached attributes stay true (an
        // xattr change drops them).
        if let Some(attr) = self.coherence().known_attr(ino) {
            return !attr.has_xattrs;
        }
        lock(&self.no_xattrs)
            .get(&ino)
            .is_some_and(|t| t.elapsed() < NO_XATTR_TTL)
    }

    pub fn io(&self) -> &Io {
        &self.io
    }

    /// The meta client for a call that reads or changes names or attributes:
    /// once the unlinks and creates this mount answered early are on meta.
    async fn meta(&self) -> dfs_client::Meta {
        self.deferred.settled().await;
        self.meta.clone()
    }

    /// Meta recalled its grant on a directory (another client is about to
    /// look at it or change it): nothing more is answered early there, and
    /// once the calls answered early so far are on meta, meta hears so.
    pub fn recall(self: &Arc<Self>, recall: pb::Recall) {
        self.deferred.recall(recall.dir, recall.grant);
        let fs = self.clone();
        tokio::spawn(async move {
            fs.deferred.settled().await;
            let (dir, grant) = (recall.dir, recall.grant);
            if let Err(e) = fs.meta.clone().recalled(recall).await {
                // Meta waits the grant out instead.
                tracing::debug!(dir, grant, error = %e, "could not answer a recall");
            }
        });
    }

    /// The watch stream broke: recalls may be lost meanwhile, so no grant
    /// of meta's counts any more.
    pub fn grants_lost(&self) {
        self.deferred.forget_grants();
    }

    /// How the calls sent together reach meta.
    fn sender(&self) -> together::MetaSender {
        together::MetaSender {
            meta: self.meta.clone(),
            channel: self.meta_channel.clone(),
        }
    }

    /// The meta client for calls that do not depend on names (locks).
    pub(crate) fn meta_unordered(&self) -> dfs_client::Meta {
        self.meta.clone()
    }

    pub fn meta_channel(&self) -> &dfs_client::meta::MetaChannel {
        &self.meta_channel
    }

    fn open_file(&self, ino: u64) -> Option<SharedFile> {
        lock(&self.files).get(&ino).and_then(Weak::upgrade)
    }

    fn file_of(&self, fh: u64) -> FsResult<SharedFile> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown handle"))
    }

    /// Meta's attributes, corrected for a file open here (`OpenFile::overlay`).
    async fn overlay(&self, mut attr: pb::Attr) -> pb::Attr {
        self.note_attr(&attr);
        if let Some(file) = self.open_file(attr.ino) {
            file.lock().await.overlay(&mut attr);
        }
        attr
    }

    fn coherence(&self) -> &crate::coherence::Coherence {
        &self.io.coherence
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<pb::Attr> {
        let mut known = self.coherence().known(parent, name);
        if known.is_none() && self.coherence().caches_misses() && self.refill.missed(parent) {
            // Many names of this directory wanted and not known: list it.
            if let Err(e) = self.list_into_cache(parent).await {
                tracing::debug!(dir = parent, error = %e, "listing for lookups failed");
            }
            known = self.coherence().known(parent, name);
        }
        match known {
            Some(Known::Missing) => return Err(FsError::new(libc::ENOENT, "no such entry")),
            Some(Known::Found(attr)) => return Ok(self.overlay(attr).await),
            None => {}
        }
        let ticket = self.coherence().ticket();
        let reply = self
            .meta()
            .await
            .lookup(pb::LookupRequest {
                parent,
                name: name.to_vec(),
            })
            .await
            .map_err(FsError::from);
        match reply {
            Ok(reply) => {
                let attr = attr_of(reply.into_inner())?;
                self.coherence()
                    .learned_entry(ticket, parent, name, Some(&attr));
                Ok(self.overlay(attr).await)
            }
            Err(e) => {
                if e.errno() == libc::ENOENT {
                    self.coherence().learned_entry(ticket, parent, name, None);
                }
                Err(e)
            }
        }
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<pb::Attr> {
        if let Some(attr) = self.coherence().known_attr(ino) {
            return Ok(self.overlay(attr).await);
        }
        // A file created here early is on meta only once its create lands;
        // if meta refused it, the kernel's open of it fails EIO, not ENOENT.
        if let Some(file) = self.open_file(ino) {
            file.lock().await.landed().await?;
        }
        let ticket = self.coherence().ticket();
        let reply = self
            .meta()
            .await
            .get_attr(pb::GetAttrRequest { ino })
            .await?;
        let attr = attr_of(reply.into_inner())?;
        self.coherence().learned_attr(ticket, &attr);
        Ok(self.overlay(attr).await)
    }

    /// A directory's attributes as a change in it left them (from meta's reply).
    fn learned_dirs(&self, ticket: Ticket, dirs: [Option<&pb::Attr>; 2]) {
        for dir in dirs.into_iter().flatten() {
            self.coherence().learned_attr(ticket, dir);
        }
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<pb::Attr> {
        let file = self.open_file(ino);
        if let Some(f) = &file {
            if let Some(attr) = self.held_setattr(ino, f, &set).await? {
                return Ok(attr);
            }
        }
        // A size change lands on committed data: flush what this mount holds first.
        let mut guard = match &file {
            Some(f) if set.size.is_some() => {
                let mut g = f.lock().await;
                g.flush(&self.io, false).await?;
                Some(g)
            }
            _ => None,
        };
        if let (None, Some(f)) = (&guard, &file) {
            // Changes held for the commit land first, then this one over them
            // (a chown's setuid clearing, the kernel's mode, a later chmod).
            let held = f.lock().await.take_held_attrs();
            if let Some(h) = held {
                let request = pb::SetAttrRequest {
                    ino,
                    mode: h.mode,
                    uid: h.uid,
                    gid: h.gid,
                    atime: h.atime,
                    ..Default::default()
                };
                self.meta().await.set_attr(request).await?;
            }
        }
        let request = pb::SetAttrRequest {
            ino,
            mode: set.mode,
            uid: set.uid,
            gid: set.gid,
            size: set.size,
            atime: set.atime,
            mtime: set.mtime,
            atime_now: set.atime_now,
            mtime_now: set.mtime_now,
            flags: set.flags,
        };
        let ticket = self.coherence().ticket().own();
        let reply = self.meta().await.set_attr(request).await;
        let attr = match reply {
            Ok(r) => attr_of(r.into_inner()),
            Err(e) => Err(e.into()),
        };
        match &attr {
            Ok(a) => self.coherence().learned_attr(ticket, a),
            Err(_) => self.coherence().forget_attr(ino),
        }
        self.coherence().mutated();
        let attr = attr?;
        if let Some(g) = guard.as_mut() {
            g.refresh(&self.io).await?;
        }
        drop(guard);
        if let (Some(f), Some(mtime)) = (&file, attr.mtime) {
            if set.mtime.is_some() || set.mtime_now {
                // Pending writes here would otherwise commit their own time over it.
                f.lock().await.set_mtime(mtime);
            }
        }
        Ok(self.overlay(attr).await)
    }

    /// setattr answered by this mount and sent with the file's next commit
    /// (`OpenFile::hold_attrs` says when); None: it goes to meta now.
    async fn held_setattr(
        &self,
        ino: u64,
        file: &SharedFile,
        set: &SetAttr,
    ) -> FsResult<Option<pb::Attr>> {
        if set.size.is_some() || set.flags.is_some() {
            return Ok(None);
        }
        let current = self.getattr(ino).await?;
        let change = AttrChange {
            mode: set.mode,
            uid: set.uid,
            gid: set.gid,
            atime: set.atime.or_else(|| set.atime_now.then(now)),
            mtime: set.mtime.or_else(|| set.mtime_now.then(now)),
        };
        let mut f = file.lock().await;
        if !f.hold_attrs(&current, change) {
            return Ok(None);
        }
        let mut attr = current;
        f.overlay(&mut attr);
        Ok(Some(attr))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_node(
        &self,
        parent: u64,
        name: &[u8],
        kind: pb::FileKind,
        mode: u32,
        caller: Caller,
        rdev: u32,
        target: &[u8],
    ) -> FsResult<pb::Attr> {
        let regular = kind == pb::FileKind::Regular;
        let want_inos = if regular && self.deferred.creates_early() {
            self.inos.want()
        } else {
            0
        };
        let request = pb::CreateRequest {
            parent,
            name: name.to_vec(),
            kind: kind as i32,
            mode,
            uid: caller.uid,
            gid: caller.gid,
            rdev,
            symlink_target: target.to_vec(),
            want_inos,
            ..Default::default()
        };
        let ticket = self.coherence().ticket().own();
        let mut meta = self.meta().await;
        let sent = Instant::now();
        let reply = meta.create(request).await;
        if want_inos > 0 {
            self.inos
                .answered(reply.as_ref().ok().and_then(|r| r.get_ref().inos.clone()));
        }
        let made = match reply {
            Ok(r) => {
                let r = r.into_inner();
                if regular {
                    self.deferred.learned(parent, r.grant, sent);
                }
                if let (pb::FileKind::Directory, Some(dir)) = (kind, &r.attr) {
                    self.deferred.learned(dir.ino, r.grant, sent);
                }
                match r.attr {
                    Some(attr) => Ok((attr, r.parent)),
                    None => Err(FsError::new(libc::EIO, "metadata reply without attributes")),
                }
            }
            Err(e) => Err(e.into()),
        };
        match &made {
            Ok((attr, dir)) => {
                self.coherence()
                    .learned_entry(ticket, parent, name, Some(attr));
                self.learned_dirs(ticket, [dir.as_ref(), None]);
                if kind == pb::FileKind::Directory {
                    // Made here just now: every name in it is known (none).
                    self.coherence()
                        .learned_listing(ticket, attr.ino, Default::default());
                }
            }
            Err(_) => {
                // Whatever the cache said of the name, meta knows better.
                self.coherence().forget_entry(parent, name);
                self.coherence().forget_attr(parent);
            }
        }
        self.coherence().mutated();
        let (attr, _) = made?;
        self.note_attr(&attr);
        Ok(attr)
    }

    /// The inode behind `name` if this mount holds it open (one lookup, made
    /// only while files are open at all).
    async fn open_victim(&self, parent: u64, name: &[u8]) -> Option<u64> {
        if lock(&self.files).is_empty() {
            return None;
        }
        let open_here = |ino: u64| self.open_file(ino).map(|_| ino);
        if let Some(ino) = self.coherence().known_ino(parent, name) {
            return open_here(ino);
        }
        let request = pb::LookupRequest {
            parent,
            name: name.to_vec(),
        };
        let ino = self
            .meta()
            .await
            .lookup(request)
            .await
            .ok()?
            .into_inner()
            .attr?
            .ino;
        open_here(ino)
    }

    /// Removes a name. A file this mount holds open stays readable and writable
    /// until its last close (an orphan on meta, released then). One this mount
    /// can vouch for is answered at once and sent meanwhile (`deferred.rs`).
    pub async fn unlink(self: &Arc<Self>, parent: u64, name: &[u8]) -> FsResult<()> {
        let deferrable = self
            .deferrable_unlink(parent, name)
            .filter(|&ino| !self.deferred.busy(ino, parent, name));
        if let Some(ino) = deferrable {
            let in_flight = self.deferred.begin(ino, parent, name).await;
            // Waiting for the slot may have taken a while: ask again.
            if self.deferred.alone(&in_flight) && self.deferrable_unlink(parent, name) == Some(ino)
            {
                self.unlink_later(parent, name, ino, in_flight);
                return Ok(());
            }
        }
        let victim = self.open_victim(parent, name).await;
        let request = pb::UnlinkRequest {
            parent,
            name: name.to_vec(),
            keep_open: victim.is_some(),
            expect_ino: 0,
        };
        let ticket = self.coherence().ticket().own();
        let mut meta = self.meta().await;
        let sent = Instant::now();
        let reply = meta.unlink(request).await;
        let removed = self.name_removed(ticket, parent, name, reply)?;
        self.deferred.learned(parent, removed.grant, sent);
        if let Some(ino) = victim {
            self.orphaned(ino).await?;
        }
        Ok(())
    }

    /// The inode `name` names, if its unlink may be answered before meta has
    /// it: in a directory meta said no other client looks at, a regular file
    /// or symlink known here with its directory, neither immutable nor
    /// append-only, not open here (see `deferred.rs`).
    fn deferrable_unlink(&self, parent: u64, name: &[u8]) -> Option<u64> {
        if !self.deferred.unlink_allowed(parent) {
            return None;
        }
        let Some(Known::Found(attr)) = self.coherence().known(parent, name) else {
            return None;
        };
        let plain =
            attr.kind == pb::FileKind::Regular as i32 || attr.kind == pb::FileKind::Symlink as i32;
        let dir = self.coherence().known_attr(parent)?;
        (plain && !pinned(&attr) && !pinned(&dir) && self.open_file(attr.ino).is_none())
            .then_some(attr.ino)
    }

    /// Answers the unlink of `name` (inode `ino`) here and sends it to meta.
    fn unlink_later(self: &Arc<Self>, parent: u64, name: &[u8], ino: u64, in_flight: InFlight) {
        let c = self.coherence();
        let ticket = c.ticket().own();
        c.learned_entry(ticket, parent, name, None);
        c.touched_dir(parent, now());
        c.forget_inode(ino);
        c.mutated();
        let request = pb::UnlinkRequest {
            parent,
            name: name.to_vec(),
            keep_open: false,
            expect_ino: ino,
        };
        let (fs, name, sent) = (self.clone(), name.to_vec(), Instant::now());
        let on_reply: together::OnReply<together::Unlinks> = Box::new(move |reply| {
            let reply = reply.map(tonic::Response::new);
            let removed = fs.name_removed(ticket, parent, &name, reply);
            let grant = removed.as_ref().map_or(0, |r| r.grant);
            fs.deferred.learned(parent, grant, sent);
            let outcome = match removed {
                Ok(_) => "done",
                // Gone already, or another inode's name now: nothing to remove.
                Err(e) if e.errno() == libc::ENOENT => "gone",
                Err(e) => {
                    tracing::warn!(parent, ino, name = %String::from_utf8_lossy(&name), error = %e,
                        "an unlink answered early failed on meta: the name stays");
                    "failed"
                }
            };
            fs.io
                .metrics
                .deferred_unlinks
                .with_label_values(&[outcome])
                .inc();
            drop(in_flight);
        });
        self.unlinks
            .send(&self.sender(), Queued { request, on_reply });
    }

    /// After an unlink or rmdir: the name is gone, the directory changed.
    fn name_removed(
        &self,
        ticket: Ticket,
        parent: u64,
        name: &[u8],
        reply: Result<tonic::Response<pb::DirChangeReply>, tonic::Status>,
    ) -> FsResult<pb::DirChangeReply> {
        let outcome = match reply {
            Ok(r) => {
                let r = r.into_inner();
                self.coherence().learned_entry(ticket, parent, name, None);
                self.learned_dirs(ticket, [r.parent.as_ref(), None]);
                self.coherence().forget_inode(r.ino);
                Ok(r)
            }
            Err(e) => {
                self.coherence().forget_entry(parent, name);
                self.coherence().forget_attr(parent);
                Err(e.into())
            }
        };
        self.coherence().mutated();
        outcome
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let ticket = self.coherence().ticket().own();
        let reply = self
            .meta()
            .await
            .rmdir(pb::RmdirRequest {
                parent,
                name: name.to_vec(),
            })
            .await;
        self.name_removed(ticket, parent, name, reply)?;
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let victim = self.open_victim(new_parent, new_name).await;
        let request = pb::RenameRequest {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            keep_open: victim.is_some(),
        };
        let ticket = self.coherence().ticket().own();
        let reply = match self.meta().await.rename(request).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                for (dir, name) in [(parent, name), (new_parent, new_name)] {
                    self.coherence().forget_entry(dir, name);
                    self.coherence().forget_attr(dir);
                }
                self.coherence().mutated();
                return Err(e.into());
            }
        };
        let c = self.coherence();
        if flags & libc::RENAME_EXCHANGE != 0 || reply.ino == 0 {
            // Both names still exist (or a replayed reply tells nothing).
            c.forget_entry(parent, name);
            c.forget_entry(new_parent, new_name);
        } else {
            c.learned_entry(ticket, parent, name, None);
            c.learned_unknown_entry(ticket, new_parent, new_name);
        }
        for ino in [reply.ino, reply.replaced_ino] {
            c.forget_attr(ino);
        }
        self.learned_dirs(ticket, [reply.parent.as_ref(), reply.new_parent.as_ref()]);
        c.mutated();
        if let Some(ino) = victim {
            self.orphaned(ino).await?;
        }
        Ok(())
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<pb::Attr> {
        let request = pb::LinkRequest {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        };
        let ticket = self.coherence().ticket().own();
        let reply = match self.meta().await.link(request).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.coherence().forget_entry(new_parent, new_name);
                self.coherence().forget_attr(ino);
                self.coherence().mutated();
                return Err(e.into());
            }
        };
        let dir = reply.parent;
        let attr = attr_of(reply);
        match &attr {
            Ok(a) => {
                self.coherence()
                    .learned_entry(ticket, new_parent, new_name, Some(a));
                self.learned_dirs(ticket, [dir.as_ref(), None]);
            }
            Err(_) => self.coherence().forget_entry(new_parent, new_name),
        }
        self.coherence().mutated();
        attr
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        Ok(self
            .meta()
            .await
            .read_link(pb::ReadLinkRequest { ino })
            .await?
            .into_inner()
            .target)
    }

    /// Opens a regular file; all handles on one inode share its state.
    /// open(2): a handle on the file's shared state, and whether the kernel may
    /// keep the pages it cached for this inode: only when meta reports the same
    /// content as at this mount's previous open. Any commit since, from any
    /// mount (this one included), or a truncate, changes the signature and the
    /// pages are dropped: close-to-open.
    pub async fn open(&self, ino: u64, open_flags: i32) -> FsResult<Opened> {
        // An unlink of this inode answered early lands first.
        self.deferred.settled_ino(ino).await;
        let (file, shared) = match self.open_file(ino) {
            Some(f) => (f, true),
            None => {
                let meta_counts_it_open = self.open_report.reopening(ino).await;
                // For reading, a map this mount holds saves the round trip;
                // meta then hears of the open in the next batch
                // (`open_report.rs`). A writer asks meta, which counts the
                // file open at once: if another client removes it, the
                // writer's commits still land (on the orphan).
                let reading = open_flags & libc::O_ACCMODE == libc::O_RDONLY;
                let held = reading.then(|| OpenFile::cached(&self.io, ino)).flatten();
                let (loaded, held_map) = match held {
                    Some(f) => (f, true),
                    None => (OpenFile::load(&self.io, ino).await?, false),
                };
                let loaded = loaded.with_drop_notice(self.dropped.clone());
                let source = if held_map { "cache" } else { "meta" };
                self.io.metrics.open_maps.with_label_values(&[source]).inc();
                let loaded = Arc::new(AsyncMutex::new(loaded));
                let mut files = lock(&self.files);
                match files.get(&ino).map(Weak::upgrade) {
                    // Another open of this inode finished first: share its state.
                    Some(Some(f)) => (f, false),
                    earlier => {
                        // An entry whose last reference went is an earlier
                        // open whose close is not reported yet: it will find
                        // this open and report nothing, so what meta counts
                        // carries over. Without one, this is a first open.
                        if earlier.is_none() {
                            let meta_counted_it = !held_map || meta_counts_it_open;
                            self.open_report.first_open(ino, meta_counted_it);
                        }
                        files.insert(ino, Arc::downgrade(&loaded));
                        (loaded, false)
                    }
                }
            }
        };
        let (signature, chunk_size) = {
            let mut f = file.lock().await;
            if shared {
                // Already open here: fetch the chunk map again (close-to-open).
                f.refresh(&self.io).await?;
            }
            check_open_mode(f.inode_flags, open_flags)?;
            (f.signature(), f.chunk_size())
        };
        self.chunk_size.store(chunk_size, Ordering::Relaxed);
        let keep_cache = {
            let mut seen = lock(&self.page_cache_content);
            let unchanged = seen.get(&ino) == Some(&signature);
            seen.put(ino, signature);
            unchanged
        };
        Ok(Opened {
            fh: self.add_handle(file),
            keep_cache,
        })
    }

    /// A new handle on an open file.
    fn add_handle(&self, file: SharedFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let open = {
            let mut handles = lock(&self.handles);
            handles.insert(fh, file);
            handles.len()
        };
        self.meta_channel.set_open_files(open as u64);
        fh
    }

    /// open(2) with O_CREAT of a name this mount believed free. If another
    /// mount created it meanwhile, open(2) without O_EXCL opens that file
    /// (truncated with O_TRUNC), as on a local disk. One this mount can
    /// vouch for is answered at once and sent meanwhile (`deferred.rs`),
    /// O_EXCL included: meta recalls the directory from this mount before
    /// another client may create there, so that one finds the name taken.
    pub async fn create(
        self: &Arc<Self>,
        parent: u64,
        name: &[u8],
        mode: u32,
        caller: Caller,
        open_flags: i32,
    ) -> FsResult<(pb::Attr, u64)> {
        if let Some(made) = self.create_early(parent, name, mode, caller).await {
            return Ok(made);
        }
        let made = self
            .create_node(parent, name, pb::FileKind::Regular, mode, caller, 0, &[])
            .await;
        let attr = match made {
            Ok(attr) => attr,
            Err(e) if e.errno() == libc::EEXIST && open_flags & libc::O_EXCL == 0 => {
                return self.open_existing(parent, name, open_flags, caller).await;
            }
            Err(e) => return Err(e),
        };
        let fh = self.open_new(&attr, false).await?;
        Ok((attr, fh))
    }

    /// The directory's attributes, if a create of `name` in it may be
    /// answered before meta has it: in a directory meta said no other client
    /// looks at, neither immutable nor append-only, whose attributes are
    /// known here, under a name the cache knows is free (see `deferred.rs`).
    fn deferrable_create(&self, parent: u64, name: &[u8]) -> Option<pb::Attr> {
        if !self.deferred.create_allowed(parent) {
            return None;
        }
        if !matches!(self.coherence().known(parent, name), Some(Known::Missing)) {
            return None;
        }
        let dir = self.coherence().known_attr(parent)?;
        (dir.kind == pb::FileKind::Directory as i32 && !pinned(&dir)).then_some(dir)
    }

    /// A regular file created here, answered at once and sent to meta
    /// meanwhile, when this mount can vouch for it; None: it goes to meta now.
    async fn create_early(
        self: &Arc<Self>,
        parent: u64,
        name: &[u8],
        mode: u32,
        caller: Caller,
    ) -> Option<(pb::Attr, u64)> {
        let chunk_size = self.chunk_size.load(Ordering::Relaxed);
        if chunk_size == 0
            || self.deferred.name_busy(parent, name)
            || self.deferrable_create(parent, name).is_none()
        {
            return None;
        }
        let numbered = self.inos.take()?;
        let in_flight = self.deferred.begin(numbered.ino, parent, name).await;
        // Waiting for the slot may have taken a while: ask again.
        let dir = self.deferrable_create(parent, name);
        let dir = dir.filter(|_| self.deferred.alone(&in_flight))?;
        let time = now();
        // What meta makes of the same create (`create_in` in its store).
        let attr = pb::Attr {
            ino: numbered.ino,
            kind: pb::FileKind::Regular as i32,
            mode: mode & 0o7777,
            uid: caller.uid,
            gid: if dir.mode & libc::S_ISGID != 0 {
                dir.gid
            } else {
                caller.gid
            },
            nlink: 1,
            atime: Some(time),
            mtime: Some(time),
            ctime: Some(time),
            ..Default::default()
        };
        let c = self.coherence();
        let ticket = c.ticket().own();
        c.learned_entry(ticket, parent, name, Some(&attr));
        c.touched_dir(parent, time);
        c.mutated();
        self.note_attr(&attr);
        let (lander, landing) = landing();
        let request = pb::CreateRequest {
            parent,
            name: name.to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode,
            uid: caller.uid,
            gid: caller.gid,
            ino: numbered.ino,
            grant: Some(numbered.grant),
            time: Some(time),
            want_inos: self.inos.want(),
            ..Default::default()
        };
        let held = HeldCreate::new(request, lander, self.on_create_answer(), in_flight);
        let file = OpenFile::created(&self.io, &attr, chunk_size, Some(landing))
            .with_held_create(held.clone())
            .with_drop_notice(self.dropped.clone());
        let file = Arc::new(AsyncMutex::new(file));
        lock(&self.files).insert(attr.ino, Arc::downgrade(&file));
        let fh = self.add_handle(file);
        self.create_later(held);
        Some((attr, fh))
    }

    /// Sends a create answered early once it must go alone (its file's
    /// first commit did not carry it, see `deferred.rs`).
    fn create_later(self: &Arc<Self>, held: Arc<HeldCreate>) {
        let fs = self.clone();
        tokio::spawn(async move {
            let Some(create) = held.wait(fs.deferred.kicks()).await else {
                return;
            };
            // (Queued now: a grant counts from here, no later than the call.)
            let (request, sent) = (create.request.clone(), Instant::now());
            let on_reply = Box::new(move |reply: Result<pb::AttrReply, tonic::Status>| {
                let answer = reply.map(|r| (r.grant, r.inos)).map_err(FsError::from);
                create.answered(sent, answer);
            });
            fs.creates.send(&fs.sender(), Queued { request, on_reply });
        });
    }

    /// The mount's part of meta's answer to an early create, alone or
    /// carried by its file's first commit.
    fn on_create_answer(self: &Arc<Self>) -> OnAnswer {
        let fs = self.clone();
        Box::new(move |request, sent, answer| {
            let (parent, ino, name) = (request.parent, request.ino, &request.name);
            if request.want_inos > 0 {
                fs.inos
                    .answered(answer.as_ref().ok().and_then(|(_, inos)| inos.clone()));
            }
            let outcome = match answer {
                Ok((grant, _)) => {
                    fs.deferred.learned(parent, grant, sent);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(parent, ino, name = %String::from_utf8_lossy(name), error = %e,
                        "a create answered early failed on meta: the file is not there");
                    fs.deferred.learned(parent, 0, sent);
                    fs.coherence().answered_wrongly(parent, name, ino);
                    Err(e.to_string())
                }
            };
            let label = if outcome.is_ok() { "done" } else { "failed" };
            fs.io
                .metrics
                .deferred_creates
                .with_label_values(&[label])
                .inc();
            outcome
        })
    }

    /// The file another mount created under `name` first, opened. The
    /// kernel checked only the right to create in `parent`, so the right to
    /// open this file is checked here (owner, group, other bits; the
    /// caller's supplementary groups are not known, so they do not count).
    async fn open_existing(
        &self,
        parent: u64,
        name: &[u8],
        open_flags: i32,
        caller: Caller,
    ) -> FsResult<(pb::Attr, u64)> {
        let mut attr = self.lookup(parent, name).await?;
        let wanted = match open_flags & libc::O_ACCMODE {
            libc::O_RDONLY => 0o4,
            libc::O_WRONLY => 0o2,
            _ => 0o6,
        } | if open_flags & libc::O_TRUNC != 0 {
            0o2
        } else {
            0
        };
        let granted = if caller.uid == 0 {
            0o7
        } else if caller.uid == attr.uid {
            attr.mode >> 6
        } else if caller.gid == attr.gid {
            attr.mode >> 3
        } else {
            attr.mode
        } & 0o7;
        if granted & wanted != wanted {
            return Err(FsError::new(libc::EACCES, "no permission to open the file"));
        }
        if attr.kind == pb::FileKind::Directory as i32 {
            return Err(FsError::new(libc::EISDIR, "a directory has that name"));
        }
        if attr.kind != pb::FileKind::Regular as i32 {
            return Err(FsError::new(libc::EEXIST, "a special file has that name"));
        }
        if open_flags & libc::O_TRUNC != 0 {
            let truncate = SetAttr {
                size: Some(0),
                ..SetAttr::default()
            };
            attr = self.setattr(attr.ino, truncate).await?;
        }
        let opened = self.open(attr.ino, open_flags).await?;
        Ok((attr, opened.fh))
    }

    /// open(2) with O_TMPFILE: a file with no name in `parent`, deleted at
    /// its last close unless linkat(2) gives it a name first.
    pub async fn tmpfile(
        &self,
        parent: u64,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(pb::Attr, u64)> {
        let request = pb::CreateRequest {
            parent,
            kind: pb::FileKind::Regular as i32,
            mode,
            uid: caller.uid,
            gid: caller.gid,
            unnamed: true,
            ..Default::default()
        };
        let attr = attr_of(self.meta().await.create(request).await?.into_inner())?;
        self.note_attr(&attr);
        let fh = self.open_new(&attr, true).await?;
        Ok((attr, fh))
    }

    /// A handle on a file just created. It is empty, so it opens without
    /// fetching its chunk map once the chunk size is known from an earlier
    /// open. An `unnamed` one is an orphan on meta: released at the last close.
    async fn open_new(&self, attr: &pb::Attr, unnamed: bool) -> FsResult<u64> {
        let chunk_size = self.chunk_size.load(Ordering::Relaxed);
        let fh = if chunk_size == 0 || self.open_file(attr.ino).is_some() {
            self.open(attr.ino, libc::O_RDWR).await?.fh
        } else {
            let file = OpenFile::created(&self.io, attr, chunk_size, None)
                .with_drop_notice(self.dropped.clone());
            let file = Arc::new(AsyncMutex::new(file));
            lock(&self.files).insert(attr.ino, Arc::downgrade(&file));
            self.add_handle(file)
        };
        if unnamed {
            self.orphaned(attr.ino).await?;
        }
        Ok(fh)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let file = self.file_of(fh)?;
        let plan = {
            let mut f = file.lock().await;
            // Another mount committed to this file since its map was read:
            // read what it wrote, as a local disk would show it.
            if self.coherence().take_stale_map(f.ino) {
                f.reload_map(&self.io).await?;
            }
            f.plan_read(&self.io, offset, size)
        };
        let data = match self.io.complete_read(plan).await {
            // The file changed on another mount and the chunks of the map
            // this open read are deleted: read the new map and go on.
            Err(e) if e.is_chunk_gone() => {
                let mut f = file.lock().await;
                f.reload_map(&self.io).await?;
                let plan = f.plan_read(&self.io, offset, size);
                drop(f);
                self.io.complete_read(plan).await?
            }
            other => other?,
        };
        self.io.metrics.read_bytes.inc_by(data.len() as u64);
        Ok(data)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.file_of(fh)?;
        {
            let mut file = file.lock().await;
            file.write(&self.io, offset, data).await?;
            if self.io.memory.writes_over_share() {
                file.drain(&self.io, true).await?;
            }
        }
        self.io.metrics.write_bytes.inc_by(data.len() as u64);
        if self.io.memory.writes_over_share() {
            self.drain_idle_files().await;
        }
        Ok(data.len() as u32)
    }

    /// A write to a handle opened with O_APPEND: the bytes go to the end of
    /// the file as the cluster has it, under the file's append lock (see
    /// `append.rs`), whatever offset (`assumed`) the kernel chose.
    pub async fn append(&self, fh: u64, assumed: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.file_of(fh)?;
        {
            let mut f = file.lock().await;
            if crate::append::take(&self.io, &mut f).await? {
                self.give_back_append_lock_later(&file);
            }
            let end = f.size;
            f.write(&self.io, end, data).await?;
            if end != assumed {
                // The kernel now believes the file ends at assumed + len.
                self.io.coherence.attrs_stale(f.ino);
            }
            if self.io.memory.writes_over_share() {
                f.drain(&self.io, true).await?;
            }
        }
        self.io.metrics.write_bytes.inc_by(data.len() as u64);
        if self.io.memory.writes_over_share() {
            self.drain_idle_files().await;
        }
        Ok(data.len() as u32)
    }

    /// `append::HOLD` after taking a file's append lock: commit its appends
    /// and give the lock back, so appenders on other mounts get their turn.
    /// A failed commit keeps the lock (the bytes must land at this end) and
    /// tries again a moment later; the error reaches the next flush.
    fn give_back_append_lock_later(&self, file: &SharedFile) {
        let io = self.io.clone();
        // Not a handle: when the last one closes, its release gives the lock
        // back, and this task must not keep the file open (an orphan would
        // then never be released).
        let file = Arc::downgrade(file);
        let orphans = self.orphans.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::append::HOLD).await;
                let Some(file) = file.upgrade() else {
                    return;
                };
                let mut f = file.lock().await;
                if !f.append_lock_held {
                    return;
                }
                let ino = f.ino;
                let done = Self::give_back_now(&io, &mut f).await;
                drop(f);
                drop(file);
                // Its last close may have come while this task held it.
                if let Err(e) = orphans.release_if_closed(ino).await {
                    tracing::warn!(ino, error = %e, "cannot release an orphan");
                }
                if done {
                    return;
                }
            }
        });
    }

    /// One attempt of `give_back_append_lock_later`; true when done.
    async fn give_back_now(io: &Io, f: &mut OpenFile) -> bool {
        match f.flush(io, false).await {
            Ok(()) => match crate::append::give_back_if_committed(io, f).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(ino = f.ino, error = %e, "cannot give the append lock back");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(ino = f.ino, error = %e, "committing appends failed; keeping the append lock");
                f.defer_error(e);
                false
            }
        }
    }

    /// Has open files that nobody is using right now upload their buffers, so
    /// buffers left in idle files cannot hold the mount over its memory bound.
    /// Files in use are skipped: their writers drain them on their next write.
    /// A file written in the last second keeps the chunk it is filling, so
    /// writers taking turns do not upload each other's partial chunks again and
    /// again (the bound's slack: one chunk per file being written).
    async fn drain_idle_files(&self) {
        let files: Vec<_> = lock(&self.files)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for file in files {
            if !self.io.memory.writes_over_share() {
                return;
            }
            let Ok(mut f) = file.try_lock() else {
                continue;
            };
            let keep_current = f.recently_written();
            if let Err(e) = f.drain(&self.io, keep_current).await {
                // Its own next flush, close or fsync reports the failure.
                tracing::warn!(ino = f.ino, error = %e, "draining an idle file's buffers failed");
                f.defer_error(e);
            }
        }
    }

    /// FS_IOC_GETFLAGS: the inode's chattr flags.
    pub async fn inode_flags(&self, ino: u64) -> FsResult<u32> {
        Ok(self.getattr(ino).await?.flags)
    }

    /// FS_IOC_SETFLAGS. Changing immutable or append-only takes
    /// CAP_LINUX_IMMUTABLE (the kernel checks it before asking; root here),
    /// the other flags the owner; meta enforces what the flags mean for
    /// every mount.
    pub async fn set_inode_flags(&self, ino: u64, flags: u32, caller: Caller) -> FsResult<()> {
        let attr = self.getattr(ino).await?;
        let pinning = dfs_proto::inode_flags::IMMUTABLE | dfs_proto::inode_flags::APPEND;
        if caller.uid != 0 && ((attr.flags ^ flags) & pinning != 0 || caller.uid != attr.uid) {
            return Err(FsError::new(
                libc::EPERM,
                "not allowed to change these flags",
            ));
        }
        let set = SetAttr {
            flags: Some(flags),
            ..Default::default()
        };
        self.setattr(ino, set).await?;
        if let Some(file) = self.open_file(ino) {
            file.lock().await.inode_flags = flags;
        }
        Ok(())
    }

    /// fallocate(2). Mode 0 extends the file (the new bytes read as zeros);
    /// KEEP_SIZE alone reserves nothing (the nodes' space is shared, so
    /// there is nothing to reserve) and succeeds; PUNCH_HOLE and ZERO_RANGE
    /// zero the range, whole chunks becoming holes. Collapse and insert
    /// ranges are EOPNOTSUPP.
    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        const ZEROING: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | ZEROING) != 0 {
            return Err(FsError::new(
                libc::EOPNOTSUPP,
                "fallocate mode not supported",
            ));
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= dfs_proto::MAX_FILE_SIZE)
            .ok_or_else(|| FsError::new(libc::EFBIG, "past the largest file size"))?;
        let file = self.file_of(fh)?;
        let mut file = file.lock().await;
        if mode & ZEROING != 0 {
            file.zero_range(&self.io, offset, length).await?;
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            file.extend_to(&self.io, end).await?;
        }
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE (the kernel answers the others).
    pub async fn seek_data_or_hole(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => return Err(FsError::new(libc::EINVAL, "unsupported whence")),
        };
        let offset =
            u64::try_from(offset).map_err(|_| FsError::new(libc::ENXIO, "negative offset"))?;
        let file = self.file_of(fh)?;
        let found = file.lock().await.seek_data_or_hole(offset, hole)?;
        i64::try_from(found).map_err(|_| FsError::new(libc::EOVERFLOW, "offset too large"))
    }

    /// close(2) semantics: everything written is on every replica and committed.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.file_of(fh)?;
        let mut file = file.lock().await;
        file.flush(&self.io, false).await?;
        crate::append::give_back_if_committed(&self.io, &mut file).await
    }

    /// fsync(2) semantics: as flush, and on stable storage on the replicas.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.file_of(fh)?;
        let mut file = file.lock().await;
        file.flush(&self.io, true).await?;
        crate::append::give_back_if_committed(&self.io, &mut file).await?;
        self.sync_meta().await
    }

    /// fsyncdir(2): the directory's entries are durable once meta has synced.
    pub async fn fsyncdir(&self) -> FsResult<()> {
        self.sync_meta().await
    }

    async fn sync_meta(&self) -> FsResult<()> {
        let mut meta = self.meta().await;
        meta.sync(pb::Empty {}).await?;
        Ok(())
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let removed = {
            let mut handles = lock(&self.handles);
            let file = handles.remove(&fh);
            self.meta_channel.set_open_files(handles.len() as u64);
            file
        };
        let Some(file) = removed else {
            return Ok(());
        };
        let (ino, result) = {
            let mut guard = file.lock().await;
            let mut result = guard.flush(&self.io, false).await;
            // (Whether this was the file's last handle is asked only on failure:
            // a scan of the open handles on every close is not needed.)
            let unlocked = if result.is_ok() {
                crate::append::give_back_if_committed(&self.io, &mut guard).await
            } else if guard.append_lock_held
                && !lock(&self.handles).values().any(|h| Arc::ptr_eq(h, &file))
            {
                // The bytes go with this last handle; so does the turn.
                crate::append::give_back(&self.io, &mut guard).await
            } else {
                Ok(())
            };
            result = result.and(unlocked);
            (guard.ino, result)
        };
        if result.is_err() {
            // The last close failed: its unsaved bytes go with the handle, and
            // the kernel must not keep pages holding them (the next open
            // reads what the cluster has). What the mount shows never
            // changes later by itself.
            lock(&self.page_cache_content).pop(&ino);
        }
        // The last close of a file whose last name is gone releases it. The
        // handle goes under the lock of the open files, so the release the
        // file's drop notice asks for finds this one done.
        let orphan = {
            let mut files = lock(&self.files);
            // The last reference (others are taken under this lock, or by a
            // task that checks again when it lets go): what its drop notice
            // would ask for is done just below, without waking the reporter.
            if Arc::strong_count(&file) == 1 {
                if let Ok(mut f) = file.try_lock() {
                    f.forget_drop_notice();
                }
            }
            drop(file);
            self.orphans.closed_locked(&mut files, ino)
        };
        if orphan {
            self.orphans.release_orphan(ino).await?;
        }
        result
    }

    /// A file open here lost its last name (or never had one): meta keeps it
    /// for this mount until its last close here.
    async fn orphaned(&self, ino: u64) -> FsResult<()> {
        lock(&self.orphans.orphans).insert(ino);
        // Its last handle may have closed while meta removed the name: then
        // no later close will release it.
        self.orphans.release_if_closed(ino).await
    }

    /// Ends this mount's session: meta releases its locks and orphans now.
    pub async fn close_session(&self) -> FsResult<()> {
        Ok(self.meta_channel.close_session().await?)
    }

    /// Flushes every open file (unmount, shutdown).
    pub async fn flush_all(&self) {
        self.deferred.settled().await;
        let files: Vec<_> = lock(&self.files)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for file in files {
            let mut f = file.lock().await;
            if let Err(e) = f.flush(&self.io, false).await {
                tracing::error!(ino = f.ino, error = %e, "flush at unmount failed: data of this file may be lost");
            }
        }
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let attr = self.getattr(ino).await?;
        if attr.kind != pb::FileKind::Directory as i32 {
            return Err(FsError::new(libc::ENOTDIR, "not a directory"));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let listing = self.new_listing(ino);
        lock(&self.dirs).insert(fh, Arc::new(AsyncMutex::new(listing)));
        Ok(fh)
    }

    /// Entries from position `from` on (0 is the first real entry), at most `max`.
    /// Pages are fetched from meta only as far as the caller reads.
    pub async fn readdir(&self, fh: u64, from: usize, max: usize) -> FsResult<Vec<pb::DirEntry>> {
        let listing = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown directory handle"))?;
        let mut l = listing.lock().await;
        if l.more && l.entries.is_empty() {
            self.list_from_cache(&mut l);
        }
        while l.more && l.entries.len() < from + max {
            self.next_page(&mut l).await?;
        }
        let mut page: Vec<pb::DirEntry> = l.entries.iter().skip(from).take(max).cloned().collect();
        drop(l);
        // readdirplus hands these attributes to the kernel's cache: files open
        // here get this mount's view, as for lookup and getattr.
        for e in page.iter_mut() {
            if let Some(attr) = e.attr.take() {
                e.attr = Some(self.overlay(attr).await);
            }
        }
        Ok(page)
    }

    /// A listing's entries from the mount's cache, if it knows every name in
    /// the directory (one made here, or listed whole since): `rm -rf` lists
    /// each directory twice, `cp -r` out lists what `cp -r` in made.
    fn list_from_cache(&self, l: &mut DirListing) {
        let known = self.coherence().known_listing(l.ino);
        let source = if known.is_some() { "cache" } else { "meta" };
        self.io.metrics.listings.with_label_values(&[source]).inc();
        if let Some(entries) = known {
            l.entries = entries;
            l.more = false;
        }
    }

    /// The listing's next page from meta; once it has them all, the cache
    /// learns them.
    async fn next_page(&self, l: &mut DirListing) -> FsResult<()> {
        let after = l.entries.last().map(|e| e.name.clone()).unwrap_or_default();
        let page = self
            .meta()
            .await
            .read_dir(pb::ReadDirRequest {
                ino: l.ino,
                after,
                limit: DIR_PAGE,
            })
            .await?
            .into_inner();
        l.more = page.more;
        l.entries.extend(page.entries);
        if !l.more {
            self.learned_listing(l);
        }
        Ok(())
    }

    /// Lists `dir` into the cache for lookups that keep missing there
    /// (`refill.rs`): the whole directory, or its first pages, whose names
    /// are then known but not the absence of others.
    async fn list_into_cache(&self, dir: u64) -> FsResult<()> {
        let mut l = self.new_listing(dir);
        for _ in 0..crate::refill::MAX_PAGES {
            if !l.more {
                return Ok(());
            }
            self.next_page(&mut l).await?;
        }
        if l.more {
            // Partial: the names seen are known, not the absence of others.
            self.learned_entries(&l);
        }
        Ok(())
    }

    /// A listing of `ino` with nothing fetched yet.
    fn new_listing(&self, ino: u64) -> DirListing {
        DirListing {
            ino,
            entries: Vec::new(),
            more: true,
            ticket: self.coherence().ticket(),
        }
    }

    /// The names and attributes a listing fetched so far go to the cache.
    fn learned_entries(&self, l: &DirListing) {
        let c = self.coherence();
        for e in &l.entries {
            if let Some(attr) = &e.attr {
                c.learned_entry(l.ticket, l.ino, &e.name, Some(attr));
            }
        }
    }

    /// A listing fetched whole: its names and attributes go to the cache, and
    /// that the directory holds no others.
    fn learned_listing(&self, l: &DirListing) {
        self.learned_entries(l);
        let names = l.entries.iter().map(|e| e.name.clone()).collect();
        self.coherence().learned_listing(l.ticket, l.ino, names);
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    pub async fn statfs(&self) -> FsResult<pb::StatFsReply> {
        Ok(self.meta().await.stat_fs(pb::Empty {}).await?.into_inner())
    }

    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let got = self.stored_xattr(ino, name).await;
        match got {
            Err(e) if e.errno() == libc::ENODATA && name == SELINUX_LABEL => Err(FsError::new(
                libc::EOPNOTSUPP,
                "no SELinux label: dfs keeps none of its own",
            )),
            got => got,
        }
    }

    async fn stored_xattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if self.known_without_xattrs(ino) {
            return Err(FsError::new(libc::ENODATA, "no such attribute"));
        }
        let request = pb::GetXattrRequest {
            ino,
            name: name.to_vec(),
        };
        Ok(self
            .meta()
            .await
            .get_xattr(request)
            .await?
            .into_inner()
            .value)
    }

    pub async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        lock(&self.no_xattrs).pop(&ino);
        let _changed = AttrsChanged(self.coherence(), ino);
        let request = pb::SetXattrRequest {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.meta().await.set_xattr(request).await?;
        Ok(())
    }

    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        if self.known_without_xattrs(ino) {
            return Ok(Vec::new());
        }
        Ok(self
            .meta()
            .await
            .list_xattr(pb::ListXattrRequest { ino })
            .await?
            .into_inner()
            .names)
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let _changed = AttrsChanged(self.coherence(), ino);
        self.meta()
            .await
            .remove_xattr(pb::RemoveXattrRequest {
                ino,
                name: name.to_vec(),
            })
            .await?;
        Ok(())
    }
}

/// The files this mount holds open whose last name is gone: orphans on meta,
/// each released once no handle (and no task) holds it any more.
#[derive(Clone)]
struct OrphanKeeper {
    files: Arc<Mutex<HashMap<u64, Weak<AsyncMutex<OpenFile>>>>>,
    orphans: Arc<Mutex<HashSet<u64>>>,
    meta: dfs_client::Meta,
    report: Arc<crate::open_report::OpenReport>,
}

impl OrphanKeeper {
    /// Releases an orphan of this mount once nothing holds it open. Called
    /// after every last close, every orphaning and every background task
    /// that held the file, so whichever comes last releases it, exactly once.
    async fn release_if_closed(&self, ino: u64) -> FsResult<()> {
        let orphan = self.closed_locked(&mut lock(&self.files), ino);
        if orphan {
            self.release_orphan(ino).await?;
        }
        Ok(())
    }

    /// With the open files locked: if nothing holds `ino` any more, it is
    /// forgotten and its close reported (once). True: it was this mount's
    /// orphan, which the caller must now release (`release_orphan`).
    fn closed_locked(
        &self,
        files: &mut HashMap<u64, Weak<AsyncMutex<OpenFile>>>,
        ino: u64,
    ) -> bool {
        let open = files.get(&ino).is_some_and(|w| w.strong_count() > 0);
        if !open && files.remove(&ino).is_some() {
            self.report.closed(ino);
        }
        !open && lock(&self.orphans).remove(&ino)
    }

    async fn release_orphan(&self, ino: u64) -> FsResult<()> {
        self.meta
            .clone()
            .release_orphan(pb::ReleaseOrphanRequest { ino })
            .await?;
        Ok(())
    }
}
