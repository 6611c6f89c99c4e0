//! What one request's caller sees of the namespace: the export rule that
//! admits it and the subtree it is confined to. A client of a subtree export
//! sees the subtree's root as inode 1; meta maps that number both ways and
//! refuses (ENOENT) any other inode or chunk outside the subtree, as MooseFS
//! does for its `mfsexports.cfg` subfolders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dfs_proto::{pb, ROOT_INO};
use tonic::Status;

use crate::exports::Rule;
use crate::store::{FileKind, Store};

/// How long an export path's inode is trusted before it is looked up again
/// (another meta sharing the store may have renamed the directory).
const ROOT_TTL: Duration = Duration::from_secs(1);

/// Export paths resolved to the inodes of their directories.
#[derive(Default)]
pub struct Roots {
    /// Bumped when this meta renames or removes anything: a cached path may
    /// now name another directory, or none.
    generation: AtomicU64,
    resolved: Mutex<HashMap<String, Resolved>>,
}

#[derive(Clone, Copy)]
struct Resolved {
    at: Instant,
    generation: u64,
    ino: u64,
}

impl Roots {
    /// A rename or removal: export paths are looked up again.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The inode of exported directory `path` (ENOENT or ENOTDIR when the
    /// export names nothing usable).
    pub async fn root(&self, store: &Store, path: &str) -> Result<u64, Status> {
        if path == "/" {
            return Ok(ROOT_INO);
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let cached = self.lock().get(path).copied();
        if let Some(r) = cached {
            if r.generation == generation && r.at.elapsed() < ROOT_TTL {
                return Ok(r.ino);
            }
        }
        let inode = store.resolve_path(path.as_bytes()).await.map_err(|e| {
            dfs_proto::status_from_errno(e.errno(), format!("exported directory {path}: {e}"))
        })?;
        if inode.kind != FileKind::Directory {
            return Err(dfs_proto::status_from_errno(
                libc::ENOTDIR,
                format!("exported path {path} is not a directory"),
            ));
        }
        let resolved = Resolved {
            at: Instant::now(),
            generation,
            ino: inode.ino,
        };
        self.lock().insert(path.to_string(), resolved);
        Ok(inode.ino)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resolved>> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One caller's view for one request.
pub struct View<'a> {
    /// The export rule that admits the caller (None: no limits, an admin or
    /// an `--insecure` meta).
    pub rule: Option<&'a Rule>,
    /// The real inode the caller sees as inode 1.
    root: u64,
    session: u64,
    store: &'a Store,
}

impl<'a> View<'a> {
    pub fn new(rule: Option<&'a Rule>, root: u64, session: u64, store: &'a Store) -> View<'a> {
        View {
            rule,
            root,
            session,
            store,
        }
    }

    /// Whether the caller sees the whole namespace.
    pub fn is_whole(&self) -> bool {
        self.root == ROOT_INO
    }

    /// The real inode the caller sees as its root.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The real inode for one the caller named: its root for 1, ENOENT for
    /// one outside its subtree.
    pub async fn ino(&self, ino: u64) -> Result<u64, Status> {
        if self.is_whole() {
            return Ok(ino);
        }
        if ino == ROOT_INO {
            return Ok(self.root);
        }
        if self.store.reaches(self.root, ino, self.session).await? {
            Ok(ino)
        } else {
            Err(outside(format!("inode {ino}")))
        }
    }

    /// Whether the caller may name chunk `chunk_id` (to place more copies of
    /// it or report them): a chunk of a file it reaches, or one handed to
    /// its own write. Admins may name any.
    pub async fn chunk(&self, chunk_id: u64) -> Result<bool, Status> {
        if self.rule.is_none() {
            return Ok(true);
        }
        Ok(self
            .store
            .chunk_reaches(self.root, chunk_id, self.session)
            .await?)
    }

    /// The number the caller knows a real inode by.
    pub fn out(&self, ino: u64) -> u64 {
        if ino == self.root {
            ROOT_INO
        } else {
            ino
        }
    }

    pub fn attr(&self, attr: Option<pb::Attr>) -> Option<pb::Attr> {
        attr.map(|a| pb::Attr {
            ino: self.out(a.ino),
            ..a
        })
    }

    pub fn attr_reply(&self, reply: pb::AttrReply) -> pb::AttrReply {
        pb::AttrReply {
            attr: self.attr(reply.attr),
            parent: self.attr(reply.parent),
            ..reply
        }
    }

    pub fn dir_change(&self, reply: pb::DirChangeReply) -> pb::DirChangeReply {
        pb::DirChangeReply {
            parent: self.attr(reply.parent),
            new_parent: self.attr(reply.new_parent),
            ino: self.out(reply.ino),
            replaced_ino: self.out(reply.replaced_ino),
            grant: reply.grant,
        }
    }
}

/// What a confined client hears of an inode outside its subtree: no more
/// than of one that does not exist.
fn outside(what: String) -> Status {
    dfs_proto::status_from_errno(libc::ENOENT, format!("{what}: no such file"))
}
