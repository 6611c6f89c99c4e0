//! The metadata store: everything dfs-meta knows lives here, in SQL, so the
//! server process itself is stateless and several can share one PostgreSQL.
//!
//! What is stored and why:
//! - `inodes`, `dentries`, `xattrs`: the namespace. A directory entry is
//!   (parent, name) -> inode, so hard links and atomic rename are plain SQL.
//! - `chunks`, `file_chunks`, `replicas`: the chunk map. Chunks are immutable;
//!   a file's map points (inode, index) -> chunk, a chunk lives on nodes.
//! - `nodes`: the registry, with the last heartbeat that decides up or dead.
//! - `chunk_allocations`, `gc_replicas`: writes in flight, and replicas
//!   waiting to be deleted on their node.
//!
//! One implementation serves SQLite and PostgreSQL through `db` (all SQL uses
//! `$n` parameters; SQLite runs inline through rusqlite, PostgreSQL through
//! sqlx). Every multi-row change is
//! one transaction: SERIALIZABLE with retry on PostgreSQL; on SQLite one writer
//! connection serialises them.
//!
//! Durability: SQLite runs in WAL mode with `synchronous=NORMAL`, so a commit
//! is written to the WAL (it survives a crash of the process) but not fsynced;
//! a thread checkpoints (and so fsyncs) every few dozen commits and after a
//! quiet second (`checkpoint`), and `sync` forces everything committed so far
//! to disk and is what a client's `fsync` ends with. A power loss may
//! therefore drop the newest unsynced transactions, so ids handed out by them
//! must never be handed out again: each open skips ahead in the inode and
//! chunk counters (`ID_GAP_AFTER_OPEN`).
//! PostgreSQL keeps its default synchronous commit; `sync` is a no-op there.

mod checkpoint;
mod chunks;
mod db;
mod drain;
mod error;
mod fsck;
mod ids;
mod leader;
mod locks;
mod metrics;
mod migrate;
mod namespace;
mod nodes;
mod open_files;
mod reconcile;
mod rows;
mod sessions;
mod statistics;
mod strays;
mod subtree;
mod tables;
mod together;
mod unlink_run;

use std::time::Duration;

use db::{DbConn, Pool};

pub use chunks::{ChunkEntry, ChunkMap, CommitArgs, CommitChunk, Placement, MAX_PLACE_BATCH};
pub use drain::NodeUsage;
pub use error::StoreError;
pub use fsck::{ChunkHealth, ChunkProblem, FsckReport};
pub use leader::{LeaderLock, RepairCommand, JOIN_CHANNEL};
pub use locks::{HeldLock, LockKind, LockOutcome, LockRange, LockSpec};
pub use metrics::StoreMetrics;
pub use namespace::{CreateArgs, DirEntry, NameChange, Renamed, SetAttrArgs, MAX_XATTR_VALUE};
pub use nodes::{ClusterCounts, ExtraReplicas, HeartbeatInfo, NodeInfo, RegisterArgs, RepairItem};
pub use rows::{FileKind, Inode, OwnerChanges, Timespec};
pub use sessions::{SessionArgs, SessionRecord};
pub use tables::{NodeRecord, Origin};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which SQL engine a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Settings fixed when the store is first created (format time).
#[derive(Debug, Clone, Copy)]
pub struct FormatOptions {
    pub chunk_size: u32,
    pub replication: u32,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            chunk_size: 4 << 20,
            replication: 3,
        }
    }
}

/// A connected, migrated metadata store.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    metrics: StoreMetrics,
    backend: Backend,
    chunk_size: u32,
    replication: u32,
    /// Every transaction committed before this time (ms) is on disk: the
    /// start of the last successful `sync`.
    durable_before_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// The key chunk tokens are signed with (`dfs_auth::token`).
    token_key: std::sync::Arc<Vec<u8>>,
    /// Inode and chunk ids taken ahead (`ids`).
    ids: std::sync::Arc<ids::IdBlocks>,
    /// Which sessions have which files open (`open_files`).
    open_files: std::sync::Arc<open_files::OpenFiles>,
    /// Unlinks waiting to commit in the next batch.
    batch_queue: std::sync::Arc<together::Queue>,
}

/// How meta connects to PostgreSQL at `url`. Its sessions plan with
/// `random_page_cost = 1.1` (the usual figure for SSDs) unless the URL sets
/// it: with the default 4, PostgreSQL reads tables of a few thousand rows
/// whole for a batch's probes, which is slower than the index and, at
/// SERIALIZABLE, locks the whole table against every other writer (the
/// PostgreSQL manual's advice for serializable workloads, "Serializable
/// Isolation Level": encourage index scans).
fn pg_options(url: &str) -> Result<sqlx::postgres::PgConnectOptions> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(match url.contains("random_page_cost") {
        true => options,
        false => options.options([("random_page_cost", "1.1")]),
    })
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating the SQLite
    /// file if missing, applies migrations, and formats a new store with `format`.
    /// An existing store keeps the chunk size and replication it was created with.
    pub async fn open(url: &str, format: FormatOptions) -> Result<Store> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        if format.chunk_size < 64 * 1024 || format.chunk_size > 256 << 20 {
            return Err(StoreError::Invalid(format!(
                "chunk size {} is outside 64 KiB..256 MiB",
                format.chunk_size
            )));
        }
        if format.replication == 0 || format.replication > 16 {
            return Err(StoreError::Invalid("replication must be 1..16".into()));
        }
        let metrics = StoreMetrics::new();
        let pool = match backend {
            Backend::Sqlite => open_sqlite(url, metrics.statements.clone())?,
            Backend::Postgres => Pool::pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    // Not a ping (a round trip) before each use: a broken
                    // connection fails its statement (UNAVAILABLE, which
                    // clients retry) and sqlx drops it when it comes back.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(pg_options(url)?)
                    .await?,
                metrics.statements.clone(),
            ),
        };
        let (chunk_size, replication) = migrate::run(&pool, backend, format).await?;
        let mut store = Store {
            pool,
            metrics,
            backend,
            chunk_size,
            replication,
            durable_before_ms: Default::default(),
            token_key: Default::default(),
            ids: Default::default(),
            open_files: Default::default(),
            batch_queue: Default::default(),
        };
        store.token_key = std::sync::Arc::new(store.load_token_key().await?);
        if backend == Backend::Sqlite {
            store.skip_unsynced_ids().await?;
        }
        store.sync().await?;
        Ok(store)
    }

    /// The key chunk tokens are signed with: made once per cluster, kept in
    /// meta_config, so every meta of a PostgreSQL store signs alike, and
    /// tokens outlive a meta restart.
    async fn load_token_key(&self) -> Result<Vec<u8>> {
        const KEY: &str = "chunk_token_key";
        let read = async {
            let mut conn = self.conn().await?;
            let row = db::query("SELECT value FROM meta_config WHERE key = $1")
                .bind(KEY)
                .fetch_optional(&mut conn)
                .await?;
            match row {
                Some(r) => Ok::<_, StoreError>(Some(r.try_get::<String, _>(0)?)),
                None => Ok(None),
            }
        };
        let hex = match read.await? {
            Some(hex) => hex,
            None => {
                let key: [u8; dfs_auth::token::KEY_LEN] = rand::random();
                let hex = crate::hex::hex_encode(&key);
                // (One connection: SQLite's store has only one.)
                let mut conn = self.conn().await?;
                // Another meta may have made one meanwhile: keep the first.
                db::query(
                    "INSERT INTO meta_config (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(KEY)
                .bind(&hex)
                .execute(&mut conn)
                .await?;
                db::query("SELECT value FROM meta_config WHERE key = $1")
                    .bind(KEY)
                    .fetch_one(&mut conn)
                    .await?
                    .try_get::<String, _>(0)?
            }
        };
        crate::hex::hex_decode(&hex)
            .ok_or_else(|| StoreError::Invalid("meta_config's chunk_token_key is not hex".into()))
    }

    pub fn token_key(&self) -> &[u8] {
        &self.token_key
    }

    /// Moves the id counters past any id a transaction lost in a power cut may
    /// have handed out (a node may still hold a chunk written under such an
    /// id), durably.
    async fn skip_unsynced_ids(&self) -> Result<()> {
        db::query("UPDATE counters SET value = value + $1 WHERE name IN ('ino', 'chunk')")
            .bind(ID_GAP_AFTER_OPEN)
            .execute(&mut self.conn().await?)
            .await?;
        self.sync().await
    }

    /// Transaction latency, retries and errors, for the server's registry.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn replication(&self) -> u32 {
        self.replication
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction with the isolation every namespace change needs.
    async fn begin(&self) -> Result<DbConn> {
        Ok(self.pool.begin().await?)
    }

    /// A connection for reads outside a transaction.
    async fn conn(&self) -> Result<DbConn> {
        Ok(self.pool.acquire().await?)
    }

    /// Everything committed before this time (ms) is durable (see `sync`).
    pub fn durable_before_ms(&self) -> i64 {
        self.durable_before_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes every transaction committed so far durable on disk. On SQLite a
    /// passive checkpoint fsyncs the WAL (and then the database file); on
    /// PostgreSQL each commit was already flushed.
    pub async fn sync(&self) -> Result<()> {
        let started_ms = now_ms();
        if self.backend == Backend::Sqlite {
            let started = std::time::Instant::now();
            // On the checkpointer's connection, so transactions go on; it
            // fsyncs: off the runtime's threads.
            let result = off_runtime(|| match self.pool.checkpointer() {
                Some(c) => c.checkpoint().map_err(StoreError::from),
                None => Ok(()),
            });
            self.metrics
                .observe(started.elapsed(), result.as_ref().err());
            result?;
        }
        self.durable_before_ms
            .fetch_max(started_ms, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Checks the database answers (used by health checks).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.ping().await?;
        Ok(())
    }
}

/// Runs `$body` (which uses `&mut $tx`) in a transaction, committing on success
/// and retrying the whole body when the database reports a serialization
/// conflict. Every multi-row change goes through here.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt: u32 = 0;
        let started = std::time::Instant::now();
        loop {
            let mut $tx = $store.begin().await?;
            let result: $crate::store::Result<_> = async { $body }.await;
            let result = match result {
                Ok(value) => $tx
                    .commit()
                    .await
                    .map(|()| value)
                    .map_err($crate::store::StoreError::from),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < 20 => {
                    attempt += 1;
                    $store.metrics.retries.inc();
                    // Spread the rerun of conflicting transactions apart.
                    let backoff = 2u64 << attempt.min(6);
                    let jitter = rand::random::<u64>() % backoff;
                    tokio::time::sleep(std::time::Duration::from_millis(backoff / 2 + jitter))
                        .await;
                }
                other => {
                    $store
                        .metrics
                        .observe(started.elapsed(), other.as_ref().err());
                    break other;
                }
            }
        }
    }};
}
pub(crate) use in_tx;

/// `in_tx!` for a mutation a client may retry after a lost reply: if this
/// request (`$origin`) already ran, the transaction only evaluates `$replay`
/// (with `$prev`, the recorded result); otherwise it runs `$body` and records
/// `$made` (computed from its output `$out`) in the same transaction.
///
/// On PostgreSQL, where the look is a round trip and a retried request is
/// rare, the first run does not look for the record first: one that is a
/// replay either fails in the body (the name exists now, the allocation is
/// gone), and then the record is looked for before the error is returned,
/// or succeeds, and then its record collides with the first one's at commit
/// (unique violation, retryable) and the rerun looks first. SQLite looks
/// first every time.
macro_rules! in_tx_once {
    ($store:expr, $origin:expr, |$tx:ident| $body:expr,
     replay |$prev:ident| $replay:expr, made |$out:ident| $made:expr) => {{
        let mut runs: u32 = 0;
        $crate::store::in_tx!($store, |$tx| {
            runs += 1;
            let looked = runs > 1 || $store.backend == $crate::store::Backend::Sqlite;
            if looked {
                if let Some($prev) = $crate::store::tables::replayed(&mut $tx, $origin).await? {
                    return $replay;
                }
            }
            let result: $crate::store::Result<_> = async { $body }.await;
            let $out = match result {
                Ok(out) => out,
                // (After a database error the transaction may be aborted:
                // the error is returned as it is, and a rerun looks first.)
                Err(e) if !looked && !matches!(e, $crate::store::StoreError::Db(_)) => {
                    if let Some($prev) = $crate::store::tables::replayed(&mut $tx, $origin).await? {
                        return $replay;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            $crate::store::tables::record(&mut $tx, $origin, $made).await?;
            Ok($out)
        })
    }};
}
pub(crate) use in_tx_once;

/// How far the inode and chunk counters jump at each SQLite open: more ids
/// than the transactions an unsynced WAL tail can hold (a checkpoint, which
/// syncs, runs at the latest when the WAL reaches
/// `checkpoint::WAL_BACKSTOP_PAGES`, 1,000 pages), each taking at most a block
/// of 1,024 ids: 2^20.
const ID_GAP_AFTER_OPEN: i64 = 1 << 20;

/// Runs `f`, which may block on the disk, without stalling the runtime's
/// other tasks where the runtime allows (a multi-thread runtime).
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Opens the SQLite store at a `sqlite:PATH` / `sqlite://PATH` URL (created
/// if missing): WAL, commits written but fsynced only by `sync`.
fn open_sqlite(url: &str, statements: prometheus::IntCounter) -> Result<Pool> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() {
        return Err(StoreError::BadUrl(url.to_string()));
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=10000;
         PRAGMA wal_autocheckpoint={};",
        checkpoint::WAL_BACKSTOP_PAGES
    ))?;
    conn.set_prepared_statement_cache_capacity(256);
    let checkpointer = checkpoint::Checkpointer::start(path)?;
    Ok(Pool::sqlite(conn, checkpointer, statements))
}

/// Milliseconds since the Unix epoch, the clock node heartbeats are kept in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn meta_plans_for_index_probes_unless_the_url_says_otherwise() {
        let ours = super::pg_options("postgres://u@h/db").unwrap();
        assert_eq!(ours.get_options(), Some("-c random_page_cost=1.1"));
        let theirs =
            super::pg_options("postgres://u@h/db?options=-c%20random_page_cost%3D4").unwrap();
        assert_eq!(theirs.get_options(), Some("-c random_page_cost=4"));
    }
}
