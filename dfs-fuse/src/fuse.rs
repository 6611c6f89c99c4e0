//! The `fuser::Filesystem` adapter: it only translates. Each call decodes the
//! kernel request, runs the matching `DfsFs` method on the tokio runtime,
//! and replies with attributes or the errno.
//!
//! Requests that go to meta or the nodes are served by `serve`: what needs
//! no round trip (a cache hit) is answered on the FUSE thread; what must
//! wait goes on as a runtime task that replies when its answer arrives. No
//! FUSE thread parks on the network, and the answer is not handed back to
//! a parked thread (one thread wake-up fewer per round trip).

use std::ffi::OsStr;
use std::future::Future;
use std::io::IoSlice;
use std::os::unix::ffi::OsStrExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;

use dfs_proto::{inode_flags, pb};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, RequestId, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::coherence::{Coherence, Ticket};
use crate::error::FsError;
use crate::fs::{Caller, DfsFs, Opened, SetAttr};
use crate::locks::LockRequest;

/// How long the kernel may cache what comes with no invalidation behind it
/// (`.` and `..` of a listing); other replies get theirs from `coherence`.
const TTL: Duration = crate::coherence::SHORT_TTL;
const BLKSIZE: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<DfsFs>,
    rt: Handle,
    writeback_cache: bool,
    /// Per open directory, the ticket taken at opendir: its listing's pages
    /// are fetched later and kept, so a later ticket would say too little.
    dir_tickets: Arc<Mutex<std::collections::HashMap<u64, Ticket>>>,
}

/// Where a served request's future first runs.
#[derive(Clone, Copy)]
enum Start {
    /// Polled once on the FUSE thread: often answered from the mount's
    /// caches with no hand-off at all.
    Here,
    /// Always a round trip: straight to a runtime task.
    Task,
}

/// Counts a finished request in the metrics and logs, and maps its error
/// (or its panic: EIO for that request, not a dead thread) to the errno.
fn conclude<T>(
    fs: &DfsFs,
    op: &'static str,
    start: Instant,
    outcome: std::thread::Result<Result<T, FsError>>,
) -> Result<T, Errno> {
    let result = outcome.unwrap_or_else(|_| {
        tracing::error!(op, "request handler panicked; answering EIO");
        Err(FsError::new(libc::EIO, "internal error"))
    });
    let metrics = &fs.io().metrics;
    metrics.requests.with_label_values(&[op]).inc();
    metrics
        .request_seconds
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    result.map_err(|e| {
        let errno = e.errno();
        metrics
            .errors
            .with_label_values(&[op, crate::metrics::errno_name(errno)])
            .inc();
        if errno == libc::EIO || errno == libc::ENOSPC || errno == libc::ETIMEDOUT {
            tracing::warn!(op, errno, error = %e, "request failed");
        } else {
            tracing::debug!(op, errno, error = %e, "request failed");
        }
        Errno::from_i32(errno)
    })
}

impl FuseAdapter {
    pub fn new(fs: Arc<DfsFs>, rt: Handle, writeback_cache: bool) -> FuseAdapter {
        FuseAdapter {
            fs,
            rt,
            writeback_cache,
            dir_tickets: Default::default(),
        }
    }

    /// Runs one request to its end on this FUSE thread (requests that
    /// rarely wait, or whose reply borrows the kernel's buffer).
    fn run<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, FsError>>,
    ) -> Result<T, Errno> {
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.rt.block_on(f)));
        conclude(&self.fs, op, start, outcome)
    }

    /// Serves one request without parking this FUSE thread on a round trip
    /// (see the module): `answer` gets the outcome, here or on the runtime.
    fn serve<T, F>(
        &self,
        op: &'static str,
        first: Start,
        f: F,
        answer: impl FnOnce(&DfsFs, Result<T, Errno>) + Send + 'static,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let start = Instant::now();
        let fs = self.fs.clone();
        let finish = move |outcome| {
            let result = conclude(&fs, op, start, outcome);
            answer(&fs, result)
        };
        let mut f = Box::pin(AssertUnwindSafe(f).catch_unwind());
        if let Start::Here = first {
            let _runtime = self.rt.enter();
            // The task that takes over (if any) polls again with its own
            // waker, which replaces this one wherever it was registered.
            let waker = futures::task::noop_waker();
            if let Poll::Ready(outcome) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
                return finish(outcome);
            }
        }
        self.rt.spawn(async move { finish(f.await) });
    }

    /// `serve` for requests answered with the entry `name` in `parent`.
    fn serve_entry(
        &self,
        op: &'static str,
        first: Start,
        parent: u64,
        name: &OsStr,
        f: impl Future<Output = Result<pb::Attr, FsError>> + Send + 'static,
        reply: ReplyEntry,
    ) {
        let ticket = self.ticket();
        let name = name.as_bytes().to_vec();
        self.serve(op, first, f, move |fs, made| {
            entry(&fs.io().coherence, reply, ticket, parent, &name, made)
        });
    }

    /// `serve` for requests answered "done" or the errno.
    fn serve_empty(
        &self,
        op: &'static str,
        first: Start,
        f: impl Future<Output = Result<(), FsError>> + Send + 'static,
        reply: ReplyEmpty,
    ) {
        self.serve(op, first, f, move |_, done| empty(reply, done));
    }

    fn dir_tickets(&self) -> MutexGuard<'_, std::collections::HashMap<u64, Ticket>> {
        lock_tickets(&self.dir_tickets)
    }

    fn ticket(&self) -> Ticket {
        self.fs.io().coherence.ticket()
    }

    /// Whether writes through a handle opened with `flags` go to the end of
    /// the file as the cluster has it (O_APPEND, see `append.rs`). With the
    /// writeback cache the kernel places appends itself (one mount only).
    fn appends_to_cluster_end(&self, flags: i32) -> bool {
        flags & libc::O_APPEND != 0 && !self.writeback_cache
    }

    /// Takes or releases a lock. One that may wait runs as its own task, so
    /// a waiter parks no FUSE thread; an interrupt ends it with EINTR.
    fn set_lock(&self, req: &Request, lock: LockRequest, sleep: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        if !sleep {
            let op = if lock.flock { "flock" } else { "setlk" };
            let result = self.run(op, async {
                fs.locks.set(&fs.meta_unordered(), lock, false, None).await
            });
            return empty(reply, result);
        }
        let unique = req.unique().0;
        let interrupted = fs.locks.waiting(unique);
        self.rt.spawn(async move {
            let result = fs
                .locks
                .set(&fs.meta_unordered(), lock, true, Some(interrupted))
                .await;
            fs.locks.done_waiting(unique);
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(Errno::from_i32(e.errno())),
            }
        });
    }
}

fn lock_tickets(
    tickets: &Mutex<std::collections::HashMap<u64, Ticket>>,
) -> MutexGuard<'_, std::collections::HashMap<u64, Ticket>> {
    tickets.lock().unwrap_or_else(|p| p.into_inner())
}

/// Replies with the entry `name` in `parent`, or the errno. Under
/// invalidations, a miss is cached too (a negative entry).
fn entry(
    coherence: &Coherence,
    reply: ReplyEntry,
    ticket: Ticket,
    parent: u64,
    name: &[u8],
    result: Result<pb::Attr, Errno>,
) {
    match result {
        Ok(a) => {
            let ttl = coherence.entry_ttl(ticket, parent, name, a.ino);
            reply.entry(&ttl, &file_attr(&a), Generation(0))
        }
        Err(e) if e == Errno::ENOENT && coherence.caches_misses() => {
            let ttl = coherence.entry_ttl(ticket, parent, name, 0);
            if ttl > TTL {
                let none = pb::Attr::default();
                reply.entry(&ttl, &file_attr(&none), Generation(0))
            } else {
                reply.error(e)
            }
        }
        Err(e) => reply.error(e),
    }
}

fn attr(coherence: &Coherence, reply: ReplyAttr, ticket: Ticket, result: Result<pb::Attr, Errno>) {
    match result {
        Ok(a) => {
            let ttl = coherence.attr_ttl(ticket, a.ino);
            reply.attr(&ttl, &file_attr(&a))
        }
        Err(e) => reply.error(e),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn to_time(t: Option<&pb::Timespec>) -> SystemTime {
    let t = t.copied().unwrap_or_default();
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn from_time(t: SystemTime) -> pb::Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => pb::Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            pb::Timespec { sec, nsec }
        }
    }
}

fn kind(k: i32) -> FileType {
    match pb::FileKind::try_from(k) {
        Ok(pb::FileKind::Directory) => FileType::Directory,
        Ok(pb::FileKind::Symlink) => FileType::Symlink,
        Ok(pb::FileKind::Fifo) => FileType::NamedPipe,
        Ok(pb::FileKind::Socket) => FileType::Socket,
        Ok(pb::FileKind::CharDevice) => FileType::CharDevice,
        Ok(pb::FileKind::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &pb::Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: to_time(a.atime.as_ref()),
        mtime: to_time(a.mtime.as_ref()),
        ctime: to_time(a.ctime.as_ref()),
        crtime: to_time(a.ctime.as_ref()),
        kind: kind(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn time_or_now(t: Option<TimeOrNow>) -> (Option<pb::Timespec>, bool) {
    match t {
        Some(TimeOrNow::SpecificTime(t)) => (Some(from_time(t)), false),
        Some(TimeOrNow::Now) => (None, true),
        None => (None, false),
    }
}

fn node_kind(mode: u32) -> Result<pb::FileKind, Errno> {
    Ok(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => pb::FileKind::Regular,
        libc::S_IFIFO => pb::FileKind::Fifo,
        libc::S_IFSOCK => pb::FileKind::Socket,
        libc::S_IFCHR => pb::FileKind::CharDevice,
        libc::S_IFBLK => pb::FileKind::BlockDevice,
        libc::S_IFDIR => pb::FileKind::Directory,
        _ => return Err(Errno::EINVAL),
    })
}

/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
/// `struct fsxattr`: xflags, extsize, nextents, projid, cowextsize, 8 pad bytes.
const FSXATTR_LEN: usize = 28;
/// The inode flags dfs keeps, as (`FS_*_FL`, `FS_XFLAG_*`) pairs.
const XFLAGS: [(u32, u32); 4] = [
    (inode_flags::IMMUTABLE, 0x08),
    (inode_flags::APPEND, 0x10),
    (inode_flags::NOATIME, 0x40),
    (inode_flags::NODUMP, 0x80),
];

fn xflags_of(flags: u32) -> u32 {
    XFLAGS
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .fold(0, |x, (_, xf)| x | xf)
}

/// The inode flags for `FS_XFLAG_*` bits, or None if one is not kept.
fn flags_of(xflags: u32) -> Option<u32> {
    let known = XFLAGS.iter().fold(0, |k, (_, xf)| k | xf);
    (xflags & !known == 0).then(|| {
        XFLAGS
            .iter()
            .filter(|(_, xf)| xflags & xf != 0)
            .fold(0, |f, (fl, _)| f | fl)
    })
}

/// Replies with a new file or directory handle, or the errno.
/// Replies to open. `direct`: the kernel keeps no pages for this handle's
/// writes (O_APPEND handles, whose bytes may land past the kernel's size).
fn opened(reply: ReplyOpen, result: Result<Opened, Errno>, direct: bool) {
    let direct = if direct {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    };
    match result {
        Ok(o) if o.keep_cache => {
            reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_KEEP_CACHE | direct)
        }
        Ok(o) => reply.opened(FileHandle(o.fh), direct),
        Err(e) => reply.error(e),
    }
}

/// Replies with a file just created and opened (create, O_TMPFILE), or the errno.
fn created(
    reply: ReplyCreate,
    result: Result<(pb::Attr, u64), Errno>,
    ttl: impl FnOnce(u64) -> Duration,
    direct: bool,
) {
    match result {
        Ok((a, fh)) => reply.created(
            &ttl(a.ino),
            &file_attr(&a),
            Generation(0),
            FileHandle(fh),
            if direct {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::empty()
            },
        ),
        Err(e) => reply.error(e),
    }
}

/// Replies "done" or the errno.
fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Locks go to this daemon (and on to meta), not the kernel's local table.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            tracing::warn!(?missing, "the kernel keeps these locks local to this mount");
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        if self.writeback_cache {
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                tracing::warn!(
                    ?missing,
                    "the kernel offers no writeback cache; writes go through"
                );
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.rt.block_on(self.fs.flush_all());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, asked) = (self.fs.clone(), name.as_bytes().to_vec());
        let found = async move { fs.lookup(parent.0, &asked).await };
        self.serve_entry("lookup", Start::Here, parent.0, name, found, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ticket = self.ticket();
        let fs = self.fs.clone();
        self.serve(
            "getattr",
            Start::Here,
            async move { fs.getattr(ino.0).await },
            move |fs, got| attr(&fs.io().coherence, reply, ticket, got),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (atime, atime_now) = time_or_now(atime);
        let (mtime, mtime_now) = time_or_now(mtime);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            atime_now,
            mtime_now,
            flags: None,
        };
        let ticket = self.ticket();
        let fs = self.fs.clone();
        self.serve(
            "setattr",
            // Held for the commit of a file being written: answered here.
            Start::Here,
            async move { fs.setattr(ino.0, set).await },
            move |fs, set| attr(&fs.io().coherence, reply, ticket, set),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run("readlink", self.fs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let k = match node_kind(mode) {
            Ok(k) => k,
            Err(e) => return reply.error(e),
        };
        let (fs, asked, who) = (self.fs.clone(), name.as_bytes().to_vec(), caller(req));
        let made = async move {
            let made = fs
                .create_node(parent.0, &asked, k, mode, who, rdev, &[])
                .await;
            if let (Ok(attr), pb::FileKind::Regular) = (&made, k) {
                // Meta counts a new file as open here; mknod opens nothing.
                fs.not_open(attr.ino);
            }
            made
        };
        self.serve_entry("mknod", Start::Task, parent.0, name, made, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (fs, asked, who) = (self.fs.clone(), name.as_bytes().to_vec(), caller(req));
        let made = async move {
            let dir = pb::FileKind::Directory;
            fs.create_node(parent.0, &asked, dir, mode, who, 0, &[])
                .await
        };
        self.serve_entry("mkdir", Start::Task, parent.0, name, made, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let gone = async move { fs.unlink(parent.0, &name).await };
        self.serve_empty("unlink", Start::Here, gone, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let gone = async move { fs.rmdir(parent.0, &name).await };
        self.serve_empty("rmdir", Start::Task, gone, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        let (fs, asked, who) = (self.fs.clone(), link_name.as_bytes().to_vec(), caller(req));
        let made = async move {
            let link = pb::FileKind::Symlink;
            fs.create_node(parent.0, &asked, link, 0o777, who, 0, &target)
                .await
        };
        self.serve_entry("symlink", Start::Task, parent.0, link_name, made, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        let renamed = async move {
            fs.rename(parent.0, &name, newparent.0, &newname, flags.bits())
                .await
        };
        self.serve_empty("rename", Start::Task, renamed, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (fs, asked) = (self.fs.clone(), newname.as_bytes().to_vec());
        let made = async move { fs.link(ino.0, newparent.0, &asked).await };
        self.serve_entry("link", Start::Task, newparent.0, newname, made, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let direct = self.appends_to_cluster_end(flags.0);
        let fs = self.fs.clone();
        self.serve(
            "open",
            Start::Here,
            async move { fs.open(ino.0, flags.0).await },
            move |_, open| opened(reply, open, direct),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run("read", self.fs.read(fh.0, offset, size)) {
            Ok(data) => {
                let parts: Vec<IoSlice> = data.parts().iter().map(|p| IoSlice::new(p)).collect();
                reply.data_vectored(&parts)
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = if self.appends_to_cluster_end(flags.0) {
            self.run("write", self.fs.append(fh.0, offset, data))
        } else {
            self.run("write", self.fs.write(fh.0, offset, data))
        };
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): the data first, then the process's fcntl locks on the file.
        let fs = self.fs.clone();
        let closed = async move {
            let flushed = fs.flush(fh.0).await;
            let unlocked = fs
                .locks
                .release_owner(&fs.meta_unordered(), ino.0, lock_owner.0, false)
                .await;
            flushed.and(unlocked)
        };
        self.serve_empty("flush", Start::Here, closed, reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file description drops its flock lock.
        let fs = self.fs.clone();
        let released = async move {
            let released = fs.release(fh.0).await;
            let unlocked = match lock_owner {
                Some(owner) => {
                    fs.locks
                        .release_owner(&fs.meta_unordered(), ino.0, owner.0, true)
                        .await
                }
                None => Ok(()),
            };
            released.and(unlocked)
        };
        self.serve_empty("release", Start::Here, released, reply);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let lock = LockRequest {
            ino: ino.0,
            owner: lock_owner.0,
            flock: false,
            typ,
            start,
            end,
            pid,
        };
        let fs = &self.fs;
        match self.run("getlk", fs.locks.test(&fs.meta_unordered(), lock)) {
            Ok(Some(c)) => reply.locked(c.start, c.end, c.typ, c.pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock = LockRequest {
            ino: ino.0,
            owner: lock_owner.0,
            flock: false,
            typ,
            start,
            end,
            pid,
        };
        self.set_lock(req, lock, sleep, reply);
    }

    fn flock(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        typ: i32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock = LockRequest {
            ino: ino.0,
            owner: lock_owner.0,
            flock: true,
            typ,
            start: 0,
            end: u64::MAX,
            pid: req.pid(),
        };
        self.set_lock(req, lock, sleep, reply);
    }

    fn interrupt(&self, _req: &Request, unique: RequestId) {
        self.fs.locks.interrupt(unique.0);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.serve_empty(
            "fsync",
            Start::Here,
            async move { fs.fsync(fh.0).await },
            reply,
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.run("fsyncdir", self.fs.fsyncdir()))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ticket = self.ticket();
        let (fs, tickets) = (self.fs.clone(), self.dir_tickets.clone());
        self.serve(
            "opendir",
            Start::Here,
            async move { fs.opendir(ino.0).await },
            move |_, dir| {
                if let Ok(fh) = &dir {
                    lock_tickets(&tickets).insert(*fh, ticket);
                }
                let dir = dir.map(|fh| Opened {
                    fh,
                    keep_cache: false,
                });
                opened(reply, dir, false)
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets: 1 = ".", 2 = "..", 3 + i = entry i.
        let dots = [(1u64, "."), (2, "..")];
        for (off, name) in dots.iter().filter(|(o, _)| *o > offset) {
            if reply.add(ino, *off, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let from = offset.saturating_sub(2) as usize;
        match self.run("readdir", self.fs.readdir(fh.0, from, 256)) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let a = e.attr.unwrap_or_default();
                    if reply.add(
                        INodeNo(a.ino),
                        (from + i + 3) as u64,
                        kind(a.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let from = offset.saturating_sub(2) as usize;
        let ticket = self.dir_tickets().get(&fh.0).copied();
        // An unknown handle: the listing fails below anyway.
        let ticket = ticket.unwrap_or_else(|| self.ticket());
        let fs = self.fs.clone();
        let listed = async move {
            let me = match offset < 2 {
                true => Some(fs.getattr(ino.0).await?),
                false => None,
            };
            Ok((me, fs.readdir(fh.0, from, 256).await?))
        };
        self.serve("readdirplus", Start::Here, listed, move |fs, listed| {
            let (me, entries) = match listed {
                Ok(listed) => listed,
                Err(e) => return reply.error(e),
            };
            if let Some(me) = me {
                let me = file_attr(&me);
                for (off, name) in [(1u64, "."), (2, "..")].iter().filter(|(o, _)| *o > offset) {
                    if reply.add(ino, *off, name, &TTL, &me, Generation(0)) {
                        return reply.ok();
                    }
                }
            }
            let coherence = &fs.io().coherence;
            for (i, e) in entries.iter().enumerate() {
                let a = e.attr.unwrap_or_default();
                let name = OsStr::from_bytes(&e.name);
                if reply.add(
                    INodeNo(a.ino),
                    (from + i + 3) as u64,
                    name,
                    &coherence.entry_ttl(ticket, ino.0, &e.name, a.ino),
                    &file_attr(&a),
                    Generation(0),
                ) {
                    break;
                }
            }
            reply.ok()
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        self.dir_tickets().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = self.fs.clone();
        self.serve(
            "statfs",
            Start::Here,
            async move { fs.statfs().await },
            move |_, stats| match stats {
                Ok(s) => {
                    let bsize = 4096u64;
                    reply.statfs(
                        s.total_bytes / bsize,
                        s.free_bytes / bsize,
                        s.free_bytes / bsize,
                        s.files,
                        u64::from(u32::MAX),
                        bsize as u32,
                        255,
                        bsize as u32,
                    )
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.run(
                "setxattr",
                self.fs
                    .setxattr(ino.0, name.as_bytes(), value, flags as u32),
            ),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.run("getxattr", self.fs.getxattr(ino.0, name.as_bytes())) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.run("listxattr", self.fs.listxattr(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() <= size as usize {
                    reply.data(&buf)
                } else {
                    reply.error(Errno::ERANGE)
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.run("removexattr", self.fs.removexattr(ino.0, name.as_bytes())),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let ticket = self.ticket();
        let (fs, asked, who) = (self.fs.clone(), name.as_bytes().to_vec(), caller(req));
        let name = asked.clone();
        let made = async move { fs.create(parent.0, &asked, mode, who, flags).await };
        let direct = self.appends_to_cluster_end(flags);
        self.serve("create", Start::Here, made, move |fs, made| {
            let coherence = &fs.io().coherence;
            let ttl = |ino| coherence.entry_ttl(ticket, parent.0, &name, ino);
            created(reply, made, ttl, direct)
        });
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let ticket = self.ticket();
        let coherence = &self.fs.io().coherence;
        created(
            reply,
            self.run("tmpfile", self.fs.tmpfile(parent.0, mode, caller(req))),
            |ino| coherence.attr_ttl(ticket, ino),
            false,
        )
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.run("fallocate", self.fs.fallocate(fh.0, offset, length, mode)),
        )
    }

    /// Inode flags: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (chattr, lsattr; a
    /// 4-byte int) and FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR (`struct
    /// fsxattr`, which the kernel also uses to read the old flags before a
    /// change). Other ioctls are ENOTTY.
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let get = || self.run("ioctl", self.fs.inode_flags(ino.0));
        let set =
            |flags: u32| self.run("ioctl", self.fs.set_inode_flags(ino.0, flags, caller(req)));
        let result = match cmd {
            c if c == libc::FS_IOC_GETFLAGS as u32 => get().map(|f| f.to_ne_bytes().to_vec()),
            c if c == libc::FS_IOC_SETFLAGS as u32 => match in_data.get(..4) {
                Some(b) => set(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).map(|()| Vec::new()),
                None => Err(Errno::EINVAL),
            },
            FS_IOC_FSGETXATTR => get().map(|f| {
                let mut fsxattr = vec![0u8; FSXATTR_LEN];
                fsxattr[..4].copy_from_slice(&xflags_of(f).to_ne_bytes());
                fsxattr
            }),
            FS_IOC_FSSETXATTR => match in_data.get(..4) {
                Some(b) => match flags_of(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])) {
                    Some(f) => set(f).map(|()| Vec::new()),
                    None => Err(Errno::from_i32(libc::EOPNOTSUPP)),
                },
                None => Err(Errno::EINVAL),
            },
            _ => Err(Errno::from_i32(libc::ENOTTY)),
        };
        match result {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.run("lseek", self.fs.seek_data_or_hole(fh.0, offset, whence)) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_past_2106_and_before_1970() {
        for t in [
            pb::Timespec {
                sec: 5_000_000_000,
                nsec: 1,
            },
            pb::Timespec { sec: -1, nsec: 500 },
            pb::Timespec { sec: 0, nsec: 0 },
        ] {
            assert_eq!(from_time(to_time(Some(&t))), t);
        }
    }
}
