//! An in-memory cluster for unit tests of the data path: one `FakeCluster`
//! is both `FileMeta` and `ChunkStore`, keeps files and chunk bytes in maps,
//! follows meta's commit rules (a stale base is ESTALE, released ids are
//! EKEYEXPIRED, a commit never shrinks a file), and fails on purpose: the
//! next call of a kind can be made to fail with a chosen fault, or to take
//! effect and lose its reply.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_client::chunk_io::UploadedChunk;
use dfs_client::error::Shortfall;
use dfs_client::ClientError;
use dfs_proto::pb;
use futures::future::BoxFuture;
use futures::FutureExt;
use prost::bytes::Bytes;

use crate::backend::{Call, ChunkStore, FileMeta};
use crate::io::Io;

/// The calls a fault can be planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    GetChunks,
    Commit,
    Upload,
    Read,
    Sync,
    ForgetReplica,
}

/// What goes wrong with a planned call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No node had room: the write falls short with ENOSPC.
    NoSpace,
    /// Nodes stalled or failed: the write falls short (EIO).
    NodesFailed,
    /// Nobody answered: the call did nothing.
    Timeout,
    /// The call took effect, but its reply was lost on the way back.
    LostReply,
    /// The session's ids were released (a commit gets EKEYEXPIRED).
    IdsReleased,
    /// Meta refuses (EIO from the server).
    Refused,
}

impl Fault {
    fn error(self, what: &str) -> ClientError {
        match self {
            Fault::NoSpace => ClientError::ReplicationShortfall {
                cause: Shortfall::NoSpace,
                message: format!("{what}: no node has room"),
            },
            Fault::NodesFailed => ClientError::ReplicationShortfall {
                cause: Shortfall::NodesFailed,
                message: format!("{what}: nodes timed out"),
            },
            Fault::Timeout | Fault::LostReply => {
                ClientError::Unreachable(format!("{what}: no answer"))
            }
            Fault::IdsReleased => ClientError::Remote {
                errno: libc::EKEYEXPIRED,
                message: format!("{what}: ids released"),
            },
            Fault::Refused => ClientError::Remote {
                errno: libc::EIO,
                message: format!("{what}: refused"),
            },
        }
    }
}

#[derive(Debug, Default, Clone)]
struct FakeFile {
    size: u64,
    version: u64,
    chunks: BTreeMap<u64, pb::ChunkRef>,
    /// Permission bits and mtime as the last commit that set them left them.
    mode: u32,
    mtime: Option<pb::Timespec>,
}

#[derive(Default)]
struct State {
    files: HashMap<u64, FakeFile>,
    /// Chunk bytes as the nodes hold them.
    stored: HashMap<u64, Bytes>,
    /// Ids uploaded but not committed yet.
    uncommitted: HashSet<u64>,
    next_id: u64,
    faults: HashMap<Op, VecDeque<Fault>>,
    /// Node addresses whose sync fails.
    unsyncable: HashSet<String>,
    calls: HashMap<&'static str, u64>,
    /// Replicas meta forgot (chunk, node), and replicas added.
    forgotten: Vec<(u64, u64)>,
    added: Vec<(u64, Vec<u64>)>,
}

pub const CHUNK_SIZE: u32 = 1024;

/// Nodes every chunk is stored on in the fake.
fn replicas() -> Vec<pb::NodeRef> {
    (1..=3)
        .map(|n| pb::NodeRef {
            node_id: n,
            addr: format!("node{n}"),
        })
        .collect()
}

#[derive(Clone, Default)]
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
}

impl FakeCluster {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// The next call of `op` fails with `fault` (faults queue up per call kind).
    pub fn fail_next(&self, op: Op, fault: Fault) {
        self.with(|s| s.faults.entry(op).or_default().push_back(fault));
    }

    /// Syncs sent to `addr` fail from now on (a node that cannot fsync).
    pub fn unsyncable(&self, addr: &str) {
        self.with(|s| s.unsyncable.insert(addr.to_string()));
    }

    /// How many times a call was made.
    pub fn calls(&self, name: &str) -> u64 {
        self.with(|s| s.calls.get(name).copied().unwrap_or(0))
    }

    pub fn forgotten(&self) -> Vec<(u64, u64)> {
        self.with(|s| s.forgotten.clone())
    }

    pub fn added(&self) -> Vec<(u64, Vec<u64>)> {
        self.with(|s| s.added.clone())
    }

    /// A new empty file.
    pub fn create(&self, ino: u64) {
        self.with(|s| s.files.insert(ino, FakeFile::default()));
    }

    /// The file's content as meta and the nodes have it now.
    /// The file's attributes as meta has them (as a fresh open sees them).
    pub fn attr(&self, ino: u64) -> pb::Attr {
        self.with(|s| {
            let file = s.files.get(&ino).cloned().unwrap_or_default();
            map_of(ino, &file).attr.unwrap_or_default()
        })
    }

    pub fn content(&self, ino: u64) -> Vec<u8> {
        self.with(|s| {
            let file = s.files.get(&ino).cloned().unwrap_or_default();
            let mut out = vec![0u8; file.size as usize];
            for c in file.chunks.values() {
                let start = (c.index * u64::from(CHUNK_SIZE)) as usize;
                let data = s.stored.get(&c.chunk_id).cloned().unwrap_or_default();
                let valid = (c.valid_len as usize).min(data.len());
                let end = (start + valid).min(out.len());
                if end > start {
                    out[start..end].copy_from_slice(&data[..end - start]);
                }
            }
            out
        })
    }

    /// The chunk the file has at `index` loses its bytes on every node (it
    /// was replaced elsewhere and deleted after the grace period).
    pub fn vanish(&self, ino: u64, index: u64) {
        self.with(|s| {
            let id = s
                .files
                .get(&ino)
                .and_then(|f| f.chunks.get(&index))
                .map(|c| c.chunk_id);
            if let Some(id) = id {
                s.stored.remove(&id);
            }
        });
    }

    fn planned(&self, op: Op, name: &'static str) -> Option<Fault> {
        self.with(|s| {
            *s.calls.entry(name).or_default() += 1;
            s.faults.get_mut(&op).and_then(VecDeque::pop_front)
        })
    }

    /// An `Io` over this fake, with a mount's cache and memory bound.
    pub fn io(&self) -> Io {
        let metrics = Arc::new(crate::metrics::FuseMetrics::new());
        let memory = Arc::new(crate::memory::MemoryBudget::new(64 << 20));
        Io {
            files: Arc::new(self.clone()),
            chunks: Arc::new(self.clone()),
            cache: Arc::new(crate::cache::ChunkCache::new(
                memory.clone(),
                metrics.clone(),
            )),
            memory,
            coherence: Arc::new(crate::coherence::Coherence::new(
                Duration::from_secs(1),
                metrics.clone(),
            )),
            metrics,
            fetches: Default::default(),
        }
    }
}

fn map_of(ino: u64, file: &FakeFile) -> pb::GetChunksReply {
    pb::GetChunksReply {
        attr: Some(pb::Attr {
            ino,
            kind: pb::FileKind::Regular as i32,
            size: file.size,
            version: file.version,
            mode: file.mode,
            mtime: file.mtime.or(Some(pb::Timespec {
                sec: file.version as i64,
                nsec: 0,
            })),
            ..Default::default()
        }),
        chunk_size: CHUNK_SIZE,
        chunks: file.chunks.values().cloned().collect(),
        ..Default::default()
    }
}

fn no_such_file() -> ClientError {
    ClientError::Remote {
        errno: libc::ENOENT,
        message: "no such file".into(),
    }
}

impl FakeCluster {
    /// Meta's commit rules: every base still current (else ESTALE, nothing
    /// changes), every id uploaded and not released (else EKEYEXPIRED).
    fn apply_commit(
        &self,
        req: &pb::CommitWriteRequest,
    ) -> Result<pb::GetChunksReply, ClientError> {
        self.with(|s| {
            if req.create.as_ref().is_some_and(|c| c.ino == req.ino) {
                // The file's create, carried: made with the commit.
                *s.calls.entry("carried_create").or_default() += 1;
                s.files.entry(req.ino).or_default();
            }
            let file = s.files.get(&req.ino).cloned().ok_or_else(no_such_file)?;
            for c in &req.chunks {
                let current = file.chunks.get(&c.index).map_or(0, |r| r.chunk_id);
                if c.check_base && current != c.base_chunk_id {
                    return Err(ClientError::Remote {
                        errno: libc::ESTALE,
                        message: format!("chunk {} changed", c.index),
                    });
                }
                if !s.uncommitted.contains(&c.chunk_id) {
                    return Err(ClientError::Remote {
                        errno: libc::EKEYEXPIRED,
                        message: format!("chunk id {} is not allocated", c.chunk_id),
                    });
                }
            }
            let file = s.files.entry(req.ino).or_default();
            for c in &req.chunks {
                file.chunks.insert(
                    c.index,
                    pb::ChunkRef {
                        index: c.index,
                        chunk_id: c.chunk_id,
                        stored_len: c.stored_len,
                        crc32c: c.crc32c,
                        valid_len: c.valid_len,
                        replicas: replicas(),
                        read_token: None,
                    },
                );
            }
            file.size = file.size.max(req.size);
            file.version += 1;
            file.mtime = req.mtime.or(file.mtime);
            if let Some(mode) = req.attrs.as_ref().and_then(|a| a.mode) {
                file.mode = mode;
            }
            let reply = map_of(req.ino, file);
            for c in &req.chunks {
                s.uncommitted.remove(&c.chunk_id);
            }
            Ok(reply)
        })
    }

    /// Another mount's write of a whole chunk, committed at once.
    pub fn write_elsewhere(&self, ino: u64, index: u64, data: &[u8]) {
        let id = self.with(|s| {
            s.next_id += 1;
            s.stored.insert(s.next_id, Bytes::copy_from_slice(data));
            s.uncommitted.insert(s.next_id);
            s.next_id
        });
        let request = pb::CommitWriteRequest {
            ino,
            size: index * u64::from(CHUNK_SIZE) + data.len() as u64,
            chunks: vec![pb::CommittedChunk {
                index,
                chunk_id: id,
                stored_len: data.len() as u64,
                crc32c: crc32c::crc32c(data),
                valid_len: data.len() as u64,
                node_ids: vec![1, 2, 3],
                base_chunk_id: 0,
                check_base: false,
            }],
            mtime: None,
            return_chunks: true,
            ..Default::default()
        };
        let _ = self.apply_commit(&request);
    }
}

impl FileMeta for FakeCluster {
    fn get_chunks(&self, ino: u64) -> Call<pb::GetChunksReply> {
        let fault = self.planned(Op::GetChunks, "get_chunks");
        let this = self.clone();
        async move {
            if let Some(f) = fault {
                return Err(f.error("get_chunks"));
            }
            this.with(|s| s.files.get(&ino).map(|f| map_of(ino, f)))
                .ok_or_else(no_such_file)
        }
        .boxed()
    }

    fn commit_write(&self, request: pb::CommitWriteRequest) -> Call<pb::GetChunksReply> {
        let fault = self.planned(Op::Commit, "commit_write");
        let this = self.clone();
        async move {
            match fault {
                Some(Fault::LostReply) => {
                    let _ = this.apply_commit(&request);
                    Err(Fault::LostReply.error("commit"))
                }
                Some(Fault::IdsReleased) => {
                    // The session expired: its uncommitted ids are gone.
                    this.with(|s| s.uncommitted.clear());
                    this.apply_commit(&request)
                }
                Some(f) => Err(f.error("commit")),
                None => this.apply_commit(&request),
            }
        }
        .boxed()
    }

    fn punch_hole(&self, request: pb::PunchHoleRequest) -> Call<pb::AttrReply> {
        let this = self.clone();
        async move {
            this.with(|s| {
                let file = s.files.get_mut(&request.ino).ok_or_else(no_such_file)?;
                file.chunks
                    .retain(|i, _| !(request.first_index..request.end_index).contains(i));
                file.version += 1;
                Ok(pb::AttrReply {
                    attr: map_of(request.ino, file).attr,
                    ..Default::default()
                })
            })
        }
        .boxed()
    }

    fn place_chunk(&self, request: pb::PlaceChunkRequest) -> Call<pb::PlaceChunkReply> {
        async move {
            Ok(pb::PlaceChunkReply {
                chunk_id: request.chunk_id,
                targets: vec![pb::NodeRef {
                    node_id: 4,
                    addr: "node4".into(),
                }],
                ..Default::default()
            })
        }
        .boxed()
    }

    fn replica_added(&self, request: pb::ReplicaAddedRequest) -> Call<()> {
        let this = self.clone();
        async move {
            this.with(|s| s.added.push((request.chunk_id, request.node_ids)));
            Ok(())
        }
        .boxed()
    }

    fn forget_replica(&self, request: pb::ForgetReplicaRequest) -> Call<()> {
        let fault = self.planned(Op::ForgetReplica, "forget_replica");
        let this = self.clone();
        async move {
            if let Some(f) = fault {
                return Err(f.error("forget_replica"));
            }
            this.with(|s| s.forgotten.push((request.chunk_id, request.node_id)));
            Ok(())
        }
        .boxed()
    }

    fn lock(&self, _request: pb::LockRequest) -> Call<pb::LockReply> {
        async move {
            Ok(pb::LockReply {
                granted: true,
                ..Default::default()
            })
        }
        .boxed()
    }
}

impl ChunkStore for FakeCluster {
    fn upload(&self, data: Bytes, _durable: bool) -> Call<UploadedChunk> {
        let fault = self.planned(Op::Upload, "upload");
        let this = self.clone();
        async move {
            if let Some(f) = fault {
                return Err(f.error("upload"));
            }
            let chunk_id = this.with(|s| {
                s.next_id += 1;
                s.stored.insert(s.next_id, data.clone());
                s.uncommitted.insert(s.next_id);
                s.next_id
            });
            Ok(UploadedChunk {
                chunk_id,
                crc32c: crc32c::crc32c(&data),
                stored_len: data.len() as u64,
                node_ids: vec![1, 2, 3],
                replication: 3,
            })
        }
        .boxed()
    }

    fn read(&self, chunk: pb::ChunkRef) -> Call<Bytes> {
        let fault = self.planned(Op::Read, "read");
        let this = self.clone();
        async move {
            if let Some(f) = fault {
                return Err(f.error("read"));
            }
            this.with(|s| s.stored.get(&chunk.chunk_id).cloned())
                .ok_or(ClientError::ChunkGone {
                    chunk_id: chunk.chunk_id,
                })
        }
        .boxed()
    }

    fn read_range(&self, chunk: pb::ChunkRef, offset: u64, length: u64) -> Call<Bytes> {
        let whole = self.read(chunk);
        async move {
            let data = whole.await?;
            let from = (offset as usize).min(data.len());
            let to = (offset.saturating_add(length) as usize).min(data.len());
            Ok(data.slice(from..to))
        }
        .boxed()
    }

    fn sync(&self, addr: String, _chunk_ids: Vec<u64>, _deadline: Duration) -> Call<()> {
        let fault = self.planned(Op::Sync, "sync");
        let this = self.clone();
        async move {
            if fault.is_some() || this.with(|s| s.unsyncable.contains(&addr)) {
                return Err(ClientError::Unreachable(format!("{addr}: sync timed out")));
            }
            Ok(())
        }
        .boxed()
    }

    fn copy(
        &self,
        _chunk_id: u64,
        _data: Bytes,
        _crc32c: u32,
        targets: Vec<pb::NodeRef>,
        _token: Option<pb::ChunkToken>,
    ) -> BoxFuture<'static, Vec<u64>> {
        async move { targets.iter().map(|t| t.node_id).collect() }.boxed()
    }
}
