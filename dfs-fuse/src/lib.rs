//! dfs-fuse: mounts a dfs cluster as a directory.
//!
//! `fs` is the file system (namespace through meta, data through `open_file`,
//! the shared read path in `io`, the chunk `cache` and the `memory` bound);
//! `fuse` is the thin kernel adapter; `options` parses the mount command line;
//! `run_foreground` ties them together.

pub mod allocator;
pub mod append;
pub mod backend;
pub mod cache;
pub mod coherence;
pub mod deferred;
pub mod durability;
pub mod error;
#[cfg(test)]
mod fake;
pub mod fs;
pub mod fuse;
pub mod inos;
pub mod io;
pub mod locks;
pub mod memory;
pub mod metacache;
pub mod metrics;
pub mod open_file;
pub mod open_report;
pub mod options;
pub mod refill;
pub mod together;

use std::sync::Arc;

use dfs_client::Channels;

use crate::io::Io;
use crate::options::MountOptions;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0}: {1}")]
    MountPoint(String, String),
    #[error("cannot reach any metadata server ({0})")]
    Meta(String),
    #[error("mount failed: {0}")]
    Mount(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] dfs_common::metrics_http::MetricsError),
    #[error("certificates (or -o insecure): {0}")]
    Tls(#[from] dfs_auth::AuthError),
}

/// Checks the mount point before anything else, with a clear message.
pub fn check_mountpoint(opts: &MountOptions) -> Result<(), MountError> {
    let shown = opts.mountpoint.display().to_string();
    match std::fs::metadata(&opts.mountpoint) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MountError::MountPoint(shown, "not a directory".into())),
        Err(e) => Err(MountError::MountPoint(shown, e.to_string())),
    }
}

/// Chunk placements a mount asks meta for at a time: a writer of small
/// files then places a chunk without a round trip most of the time.
const PLACEMENT_BATCH: u32 = 16;

/// Mounts and serves until the file system is unmounted or SIGTERM/SIGINT
/// arrives (then it flushes open files and unmounts).
pub fn run_foreground(opts: MountOptions) -> Result<(), MountError> {
    check_mountpoint(&opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(MountError::Runtime)?;
    let tls = match &opts.tls {
        Some(files) => Some(files.client()?),
        None => None,
    };
    dfs_client::channels::use_tls(tls);
    let meta = rt.block_on(async {
        let meta = dfs_client::meta::connect(&opts.meta_addrs, opts.meta_timeout)
            .await
            .map_err(|e| MountError::Meta(e.to_string()))?;
        let mountpoint = std::fs::canonicalize(&opts.mountpoint)
            .unwrap_or_else(|_| opts.mountpoint.clone())
            .display()
            .to_string();
        let info = dfs_client::meta::SessionInfo {
            mountpoint,
            kind: "mount".into(),
        };
        let session = meta
            .open_session(info)
            .await
            .map_err(|e| MountError::Meta(format!("cannot open a session: {e}")))?;
        tracing::info!(session, "session opened");
        Ok::<_, MountError>(meta)
    })?;
    let metrics = Arc::new(metrics::FuseMetrics::new());
    if let Some(addr) = &opts.metrics {
        let registry = metrics.registry.clone();
        rt.block_on(dfs_common::metrics_http::serve(
            addr,
            registry,
            std::future::pending(),
        ))?;
    }
    let memory = Arc::new(memory::MemoryBudget::new(opts.cache_size));
    let cache = Arc::new(cache::ChunkCache::new(memory.clone(), metrics.clone()));
    let coherence = Arc::new(coherence::Coherence::new(
        opts.cache_timeout,
        metrics.clone(),
    ));
    let cluster = Arc::new(backend::Cluster {
        meta: meta.client(),
        channels: Channels::new(),
        placements: dfs_client::Placements::new(PLACEMENT_BATCH, Some(meta.clone())),
    });
    let io = Io {
        files: cluster.clone(),
        chunks: cluster,
        cache,
        memory,
        metrics,
        coherence: coherence.clone(),
        fetches: Default::default(),
    };
    {
        let (metrics, channel) = (io.metrics.clone(), meta.clone());
        rt.spawn(async move {
            loop {
                metrics.record_meta_stats(channel.stats());
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        });
    }
    let fs = Arc::new(fs::DfsFs::new(io, meta, opts.sync_unlink, opts.sync_create));
    let adapter = fuse::FuseAdapter::new(fs.clone(), rt.handle().clone(), opts.writeback_cache);

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(opts.source.clone()),
        // fuser drops Subtype when it mounts directly; the kernel takes it as an option.
        fuser::MountOption::CUSTOM("subtype=dfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        if opts.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    config.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(8);
    config.clone_fd = true;
    let session =
        fuser::Session::new(adapter, &opts.mountpoint, &config).map_err(MountError::Mount)?;
    {
        let fs = fs.clone();
        rt.spawn(async move { fs.report_closes().await });
    }
    if opts.cache_timeout > coherence::SHORT_TTL {
        coherence
            .attach(session.notifier())
            .map_err(MountError::Runtime)?;
        let (tell, mut news) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(coherence::run_watch(
            fs.meta_channel().clone(),
            coherence,
            tell,
        ));
        let fs = fs.clone();
        rt.spawn(async move {
            while let Some(n) = news.recv().await {
                match n {
                    coherence::StreamNews::Recall(r) => fs.recall(r),
                    coherence::StreamNews::Lost => fs.grants_lost(),
                    coherence::StreamNews::Live => {
                        let fs = fs.clone();
                        tokio::spawn(async move { fs.announce_open_files().await });
                    }
                }
            }
        });
    }
    let background = session.spawn().map_err(MountError::Mount)?;
    tracing::info!(mountpoint = %opts.mountpoint.display(), source = %opts.source, "mounted");

    // Wait for an unmount from outside (the session ends) or a signal.
    let unmounted_outside = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(MountError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(MountError::Runtime)?;
        tokio::select! {
            _ = term.recv() => Ok::<bool, MountError>(false),
            _ = int.recv() => Ok(false),
            _ = wait_unmounted(&opts.mountpoint) => Ok(true),
        }
    })?;
    if unmounted_outside {
        tracing::info!("unmounted");
        let _ = background.join();
    } else {
        tracing::info!("signal: flushing and unmounting");
        rt.block_on(fs.flush_all());
        if let Err(e) = background.umount_and_join() {
            tracing::warn!(error = %e, "unmount failed (busy?)");
        }
    }
    // Locks and unlinked open files go now rather than when the lease runs
    // out; not for long, though: a meta that is going away too (a cluster
    // being stopped) must not keep the process alive, the lease ends anyway.
    let close = async { tokio::time::timeout(CLOSE_SESSION_FOR, fs.close_session()).await };
    match rt.block_on(close) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot close the session"),
        Err(_) => tracing::warn!("no meta answered the session's close; its lease will end it"),
    }
    Ok(())
}

/// How long an unmounted daemon tries to close its session.
const CLOSE_SESSION_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves once `mountpoint` no longer appears in /proc/self/mountinfo.
async fn wait_unmounted(mountpoint: &std::path::Path) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if !is_mounted(mountpoint) {
            return;
        }
    }
}

/// Whether a dfs file system is mounted at `mountpoint`.
pub fn is_mounted(mountpoint: &std::path::Path) -> bool {
    let Ok(canonical) = std::fs::canonicalize(mountpoint) else {
        return false;
    };
    let target = canonical.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let fstype = l
                    .split(" - ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next());
                fields.get(4) == Some(&target.as_str()) && fstype == Some("fuse.dfs")
            })
        })
        .unwrap_or(false)
}
