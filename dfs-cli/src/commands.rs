//! One function per subcommand, over dfs-client.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use dfs_client::error::Refusal;
use dfs_client::files::{self, resolve, PutOptions};
use dfs_client::Meta;
use dfs_client::{Channels, ClientError};
use dfs_proto::pb;
use indicatif::{ProgressBar, ProgressStyle};

use crate::format::{bytes, date, kind_name, mode_string};
use crate::{CaAction, Cli, Command, NodeAction};

type Result<T> = std::result::Result<T, ClientError>;

/// `dfs ca init` and `dfs ca issue`: local files only, no cluster.
pub fn ca(action: &CaAction) -> std::result::Result<(), dfs_auth::AuthError> {
    match action {
        CaAction::Init { dir, name } => {
            let cert = dfs_auth::pki::init_ca(dir, name)?;
            println!("created {} (and its key beside it)", cert.display());
        }
        CaAction::Issue {
            dir,
            role,
            name,
            hosts,
            days,
            out,
        } => {
            let out = out.as_deref().unwrap_or(dir);
            let issued = dfs_auth::pki::issue(dir, out, *role, name, hosts, *days)?;
            println!(
                "issued {} ({role}, valid {days} days) and {}",
                issued.cert.display(),
                issued.key.display()
            );
        }
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    let channel = dfs_client::meta::connect(
        &dfs_client::meta::parse_addrs(&cli.meta),
        std::time::Duration::from_secs(cli.meta_timeout.max(1)),
    )
    .await?;
    let writes = matches!(
        cli.command,
        Command::Mkdir { .. } | Command::Rm { .. } | Command::Put { .. }
    );
    if writes {
        // Its chunk allocations and retried mutations belong to a session.
        channel
            .open_session(dfs_client::meta::SessionInfo {
                mountpoint: String::new(),
                kind: "cli".into(),
            })
            .await?;
    }
    let result = run_command(cli, &mut channel.client()).await;
    if writes {
        if let Err(e) = channel.close_session().await {
            tracing::warn!(error = %e, "cannot close the session");
        }
    }
    result
}

async fn run_command(cli: Cli, meta: &mut Meta) -> Result<()> {
    let meta = &mut *meta;
    match cli.command {
        Command::Status => status(meta, cli.json).await,
        Command::Nodes => nodes(meta, cli.json).await,
        Command::Sessions => sessions(meta, cli.json).await,
        Command::Ls { path, long } => ls(meta, &path, long).await,
        Command::Stat { path } => stat(meta, &path, cli.json).await,
        Command::Mkdir { path, parents } => mkdir(meta, &path, parents).await,
        Command::Rm { path, recursive } => rm(meta, &path, recursive).await,
        Command::Put {
            local,
            path,
            force,
            fsync,
        } => put(meta, &local, &path, force, fsync).await,
        Command::Get { path, local } => get(meta, &path, &local).await,
        Command::Fsck { path, repair } => fsck(meta, &path, repair, cli.json).await,
        // Handled before any connection (`ca`).
        Command::Ca { .. } => Ok(()),
        Command::Node { action } => node_admin(meta, action).await,
    }
}

/// A file's chunk map, and the cluster's nodes (to mark replicas down).
async fn chunk_map_and_nodes(
    meta: &mut Meta,
    ino: u64,
) -> Result<(pb::GetChunksReply, pb::ClusterStatusReply)> {
    let map = meta
        .get_chunks(pb::GetChunksRequest { ino })
        .await?
        .into_inner();
    let status = meta.cluster_status(pb::Empty {}).await?.into_inner();
    Ok((map, status))
}

fn node_up(status: &pb::ClusterStatusReply, id: u64) -> bool {
    status
        .nodes
        .iter()
        .any(|n| n.node_id == id && n.state == "up")
}

/// `dfs stat --json`: attributes, and for a file its chunks with their replicas.
async fn stat_json(meta: &mut Meta, path: &str, a: &pb::Attr) -> Result<()> {
    let ts = |t: Option<&pb::Timespec>| {
        let t = t.copied().unwrap_or_default();
        serde_json::json!({ "sec": t.sec, "nsec": t.nsec })
    };
    let mut doc = serde_json::json!({
        "path": path, "ino": a.ino, "kind": kind_name(a.kind), "mode": a.mode,
        "size": a.size, "nlink": a.nlink, "uid": a.uid, "gid": a.gid,
        "version": a.version, "flags": a.flags,
        "atime": ts(a.atime.as_ref()), "mtime": ts(a.mtime.as_ref()), "ctime": ts(a.ctime.as_ref()),
    });
    if a.kind == pb::FileKind::Regular as i32 {
        let (map, status) = chunk_map_and_nodes(meta, a.ino).await?;
        let up = |id: u64| node_up(&status, id);
        let chunks: Vec<_> = map
            .chunks
            .iter()
            .map(|c| {
                let replicas: Vec<_> = c
                    .replicas
                    .iter()
                    .map(|r| serde_json::json!({ "node_id": r.node_id, "addr": r.addr, "up": up(r.node_id) }))
                    .collect();
                serde_json::json!({
                    "index": c.index, "id": c.chunk_id, "bytes": c.valid_len,
                    "stored_bytes": c.stored_len, "crc32c": c.crc32c, "replicas": replicas,
                })
            })
            .collect();
        doc["chunk_size"] = map.chunk_size.into();
        doc["replication"] = status.replication.into();
        doc["chunks"] = chunks.into();
    }
    println!("{doc}");
    Ok(())
}

/// `dfs node drain|undrain|remove NODE`. A drain waits, showing progress,
/// until no chunk depends on the node (unless `--no-wait`).
async fn node_admin(meta: &mut Meta, action: NodeAction) -> Result<()> {
    let (name, node, wait) = match action {
        NodeAction::Drain { node, no_wait } => ("drain", node, !no_wait),
        NodeAction::Undrain { node } => ("undrain", node, false),
        NodeAction::Remove { node } => ("remove", node, false),
    };
    let call = |action: &'static str, node: String| {
        let mut meta = meta.clone();
        async move {
            meta.node_admin(pb::NodeAdminRequest {
                node,
                action: action.into(),
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let reply = call(name, node.clone())
        .await
        .map_err(|s| ClientError::from(s).with_path(&format!("node {node}")))?;
    if reply.removed {
        println!("node {} ({}) removed", reply.node_id, reply.addr);
        return Ok(());
    }
    let mut r = reply;
    let id = r.node_id.to_string();
    loop {
        println!(
            "node {} ({}): {}, {} replicas, {} chunks depend on it",
            r.node_id,
            r.addr,
            if r.draining { "draining" } else { "in service" },
            r.replicas,
            r.dependent_chunks
        );
        if !wait || r.dependent_chunks == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        r = call("show", id.clone()).await?;
    }
    if wait {
        println!(
            "node {} is drained: `dfs node remove {}` may take it out",
            r.node_id, r.node_id
        );
    }
    Ok(())
}

async fn fsck(meta: &mut Meta, path: &str, repair: bool, json: bool) -> Result<()> {
    let r = meta
        .fsck(pb::FsckRequest {
            path: path.as_bytes().to_vec(),
            repair,
        })
        .await
        .map_err(|s| ClientError::from(s).with_path(path))?
        .into_inner();
    let at_risk: Vec<&pb::FsckProblem> = r.problems.iter().filter(|p| p.at_risk).collect();
    if json {
        let problems: Vec<_> = r
            .problems
            .iter()
            .map(|p| {
                serde_json::json!({
                    "path": p.path, "ino": p.ino, "chunk_index": p.chunk_index,
                    "chunk_id": p.chunk_id, "health": p.health, "at_risk": p.at_risk,
                    "live_replicas": p.live_replicas, "recorded_replicas": p.recorded_replicas,
                    "corrupt_replicas": p.corrupt_replicas,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "healthy": at_risk.is_empty(),
            "files": r.files, "chunks": r.chunks, "replication": r.replication,
            "healthy_chunks": r.healthy_chunks, "chunks_by_health": r.chunks_by_health,
            "orphans": r.orphans, "abandoned_allocations": r.abandoned_allocations,
            "problems": problems, "problems_truncated": r.problems_truncated,
            "repairs_planned": r.repairs_planned, "quarantine_released": r.quarantine_released,
            "stray_chunks": r.stray_chunks, "strays_queued": r.strays_queued,
            "strays": r.strays.iter().map(|s| serde_json::json!({
                "node_id": s.node_id, "addr": s.addr, "chunk_id": s.chunk_id,
            })).collect::<Vec<_>>(),
            "unlisted_nodes": r.unlisted_nodes,
        });
        println!("{doc}");
    } else {
        println!(
            "checked: {} files, {} chunks (replication {})",
            r.files, r.chunks, r.replication
        );
        println!("healthy chunks: {}", r.healthy_chunks);
        let mut by_health: Vec<_> = r.chunks_by_health.iter().collect();
        by_health.sort();
        for (health, n) in by_health {
            println!("{health} chunks: {n}");
        }
        println!(
            "orphans (open, unlinked files): {}  abandoned allocations: {}",
            r.orphans, r.abandoned_allocations
        );
        if repair {
            println!(
                "repair: {} copies planned, {} quarantined replicas released",
                r.repairs_planned, r.quarantine_released
            );
        }
        for p in &r.problems {
            println!(
                "{}: chunk {} (id {}): {}, {} of {} live{}",
                p.path,
                p.chunk_index,
                p.chunk_id,
                p.health,
                p.live_replicas,
                r.replication,
                if p.corrupt_replicas > 0 {
                    format!(", {} corrupt", p.corrupt_replicas)
                } else {
                    String::new()
                }
            );
        }
        if r.problems_truncated {
            println!("(more problems not listed)");
        }
        if path.is_empty() || path == "/" {
            println!(
                "chunk files on nodes that meta does not know: {}{}",
                r.stray_chunks,
                if repair {
                    format!(" ({} queued for deletion)", r.strays_queued)
                } else {
                    String::new()
                }
            );
            for s in &r.strays {
                println!(
                    "stray: chunk {} on node {} ({})",
                    s.chunk_id, s.node_id, s.addr
                );
            }
            for addr in &r.unlisted_nodes {
                println!("node {addr} did not list its chunks: its strays are unknown");
            }
        }
        println!(
            "status: {}",
            if at_risk.is_empty() {
                "HEALTHY"
            } else {
                "DATA AT RISK"
            }
        );
    }
    if at_risk.is_empty() {
        return Ok(());
    }
    let mut files: Vec<&str> = at_risk.iter().map(|p| p.path.as_str()).collect();
    files.dedup();
    Err(ClientError::DataAtRisk(format!(
        "{} chunks of {} files at risk or lost",
        at_risk.len(),
        files.len()
    )))
}

async fn status(meta: &mut Meta, json: bool) -> Result<()> {
    let s = meta.cluster_status(pb::Empty {}).await?.into_inner();
    let up: Vec<_> = s.nodes.iter().filter(|n| n.state == "up").collect();
    let capacity: u64 = up.iter().map(|n| n.capacity_bytes).sum();
    let used: u64 = up.iter().map(|n| n.used_bytes).sum();
    let (health, detail) = if s.lost_chunks > 0 {
        ("DATA UNAVAILABLE", " (chunks with no live replica)")
    } else if s.under_replicated_chunks > 0 || up.len() < s.replication as usize {
        ("DEGRADED", "")
    } else {
        ("HEALTHY", "")
    };
    if json {
        let doc = serde_json::json!({
            "health": health,
            "nodes_up": up.len(), "nodes_down": s.nodes.len() - up.len(),
            "capacity_bytes": capacity, "used_bytes": used,
            "files": s.files, "directories": s.directories, "logical_bytes": s.logical_bytes,
            "chunks": s.chunks, "replication": s.replication, "chunk_size": s.chunk_size,
            "under_replicated_chunks": s.under_replicated_chunks,
            "lost_chunks": s.lost_chunks, "replicas_awaiting_deletion": s.gc_pending,
        });
        println!("{doc}");
        return Ok(());
    }
    let health = format!("{health}{detail}");
    println!("health: {health}");
    println!("nodes: {} up, {} down", up.len(), s.nodes.len() - up.len());
    println!(
        "capacity: {} raw, {} used, {} free",
        bytes(capacity),
        bytes(used),
        bytes(capacity.saturating_sub(used))
    );
    println!(
        "files: {}  directories: {}  data: {}",
        s.files,
        s.directories,
        bytes(s.logical_bytes)
    );
    println!(
        "chunks: {}  replication: {}  chunk size: {}",
        s.chunks,
        s.replication,
        bytes(u64::from(s.chunk_size))
    );
    println!("under-replicated chunks: {}", s.under_replicated_chunks);
    println!("lost chunks: {}", s.lost_chunks);
    println!("replicas awaiting deletion: {}", s.gc_pending);
    Ok(())
}

async fn sessions(meta: &mut Meta, json: bool) -> Result<()> {
    let list = meta
        .list_sessions(pb::Empty {})
        .await?
        .into_inner()
        .sessions;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    if json {
        let doc: Vec<_> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.session_id, "host": s.host, "mountpoint": s.mountpoint,
                    "pid": s.pid, "version": s.version, "kind": s.kind,
                    "since_ms": s.since_ms, "renewed_ms": s.renewed_ms,
                    "expires_ms": s.expires_ms, "open_files": s.open_files,
                    "locks": s.locks, "orphans": s.orphans, "owner": s.owner,
                })
            })
            .collect();
        println!("{}", serde_json::Value::from(doc));
        return Ok(());
    }
    println!(
        "{:>6}  {:<5}  {:<12}  {:<16}  {:>7}  {:<8}  {:<19}  {:>7}  {:>5}  {:>5}  {:>7}  MOUNT POINT",
        "ID", "KIND", "CERTIFICATE", "HOST", "PID", "VERSION", "SINCE", "RENEWED", "OPEN", "LOCKS", "ORPHANS"
    );
    for s in &list {
        let since = pb::Timespec {
            sec: s.since_ms / 1000,
            nsec: 0,
        };
        println!(
            "{:>6}  {:<5}  {:<12}  {:<16}  {:>7}  {:<8}  {:<19}  {:>6}s  {:>5}  {:>5}  {:>7}  {}",
            s.session_id,
            s.kind,
            if s.owner.is_empty() { "-" } else { &s.owner },
            s.host,
            s.pid,
            s.version,
            date(Some(&since)),
            (now - s.renewed_ms).max(0) / 1000,
            s.open_files,
            s.locks,
            s.orphans,
            if s.mountpoint.is_empty() {
                "-"
            } else {
                &s.mountpoint
            }
        );
    }
    Ok(())
}

async fn nodes(meta: &mut Meta, json: bool) -> Result<()> {
    let s = meta.cluster_status(pb::Empty {}).await?.into_inner();
    if json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.node_id, "addr": n.addr, "zone": n.zone, "state": n.state,
                    "draining": n.draining, "capacity_bytes": n.capacity_bytes,
                    "used_bytes": n.used_bytes, "replicas": n.replicas,
                    "chunk_files": n.chunk_count,
                    "last_heartbeat_age_ms": n.last_heartbeat_age_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(nodes));
        return Ok(());
    }
    println!(
        "{:>4}  {:<22} {:<10} {:<8} {:>12} {:>12} {:>8} {:>9}",
        "ID", "ADDRESS", "STATE", "ZONE", "CAPACITY", "USED", "CHUNKS", "HEARTBEAT"
    );
    for n in &s.nodes {
        let state = if n.draining {
            format!("{},drain", n.state)
        } else {
            n.state.clone()
        };
        let zone = if n.zone.is_empty() {
            "-"
        } else {
            n.zone.as_str()
        };
        println!(
            "{:>4}  {:<22} {:<10} {:<8} {:>12} {:>12} {:>8} {:>8.1}s",
            n.node_id,
            n.addr,
            state,
            zone,
            bytes(n.capacity_bytes),
            bytes(n.used_bytes),
            n.replicas,
            n.last_heartbeat_age_ms as f64 / 1000.0
        );
    }
    Ok(())
}

async fn list_all(meta: &mut Meta, ino: u64) -> Result<Vec<pb::DirEntry>> {
    let mut all = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = meta
            .read_dir(pb::ReadDirRequest {
                ino,
                after: after.clone(),
                limit: 1000,
            })
            .await?
            .into_inner();
        if let Some(last) = page.entries.last() {
            after = last.name.clone();
        }
        all.extend(page.entries);
        if !page.more {
            return Ok(all);
        }
    }
}

async fn ls(meta: &mut Meta, path: &str, long: bool) -> Result<()> {
    let attr = resolve(meta, path).await?;
    let entries = if attr.kind == pb::FileKind::Directory as i32 {
        list_all(meta, attr.ino)
            .await
            .map_err(|e| e.with_path(path))?
    } else {
        vec![pb::DirEntry {
            name: path.as_bytes().to_vec(),
            attr: Some(attr),
        }]
    };
    for e in entries {
        let name = String::from_utf8_lossy(&e.name);
        let a = e.attr.unwrap_or_default();
        if long {
            println!(
                "{} {:>3} {:>5} {:>5} {:>12} {} {}",
                mode_string(a.kind, a.mode),
                a.nlink,
                a.uid,
                a.gid,
                a.size,
                date(a.mtime.as_ref()),
                name
            );
        } else {
            println!("{name}");
        }
    }
    Ok(())
}

async fn stat(meta: &mut Meta, path: &str, json: bool) -> Result<()> {
    let a = resolve(meta, path).await?;
    if json {
        return stat_json(meta, path, &a).await;
    }
    println!("path: {path}");
    println!(
        "inode: {}  kind: {}  mode: {} ({:04o})",
        a.ino,
        kind_name(a.kind),
        mode_string(a.kind, a.mode),
        a.mode
    );
    println!(
        "size: {}  links: {}  uid: {}  gid: {}  version: {}",
        a.size, a.nlink, a.uid, a.gid, a.version
    );
    println!(
        "mtime: {}  ctime: {}",
        date(a.mtime.as_ref()),
        date(a.ctime.as_ref())
    );
    if a.kind != pb::FileKind::Regular as i32 {
        return Ok(());
    }
    let (map, status) = chunk_map_and_nodes(meta, a.ino).await?;
    let up = |id: u64| node_up(&status, id);
    println!(
        "chunks: {}  chunk size: {}  replication: {}",
        map.chunks.len(),
        map.chunk_size,
        status.replication
    );
    for c in &map.chunks {
        let nodes: Vec<String> = c
            .replicas
            .iter()
            .map(|r| {
                format!(
                    "{}@{}{}",
                    r.node_id,
                    r.addr,
                    if up(r.node_id) { "" } else { "(down)" }
                )
            })
            .collect();
        println!(
            "chunk {} id={} bytes={} crc32c={:08x} replicas={} nodes={}",
            c.index,
            c.chunk_id,
            c.valid_len,
            c.crc32c,
            c.replicas.len(),
            nodes.join(",")
        );
    }
    Ok(())
}

async fn mkdir(meta: &mut Meta, path: &str, parents: bool) -> Result<()> {
    let components: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if components.is_empty() {
        return if parents { Ok(()) } else { Err(exists(path)) };
    }
    let mut parent = resolve(meta, "/").await?.ino;
    for (i, name) in components.iter().enumerate() {
        let last = i == components.len() - 1;
        let so_far = format!("/{}", components[..=i].join("/"));
        if !last || parents {
            match meta
                .lookup(pb::LookupRequest {
                    parent,
                    name: name.as_bytes().to_vec(),
                })
                .await
            {
                Ok(r) => {
                    let a = r.into_inner().attr.unwrap_or_default();
                    if a.kind != pb::FileKind::Directory as i32 {
                        return Err(ClientError::refused(so_far, Refusal::NotADirectory));
                    }
                    if last {
                        return Ok(());
                    }
                    parent = a.ino;
                    continue;
                }
                Err(s) if dfs_proto::errno_of(&s) == libc::ENOENT && parents => {}
                Err(s) => return Err(ClientError::from(s).with_path(&so_far)),
            }
        }
        let created = meta
            .create(pb::CreateRequest {
                parent,
                name: name.as_bytes().to_vec(),
                kind: pb::FileKind::Directory as i32,
                mode: 0o755,
                uid: process_owner().0,
                gid: process_owner().1,
                rdev: 0,
                symlink_target: vec![],
                ..Default::default()
            })
            .await
            .map_err(|s| ClientError::from(s).with_path(&so_far))?;
        parent = created.into_inner().attr.unwrap_or_default().ino;
    }
    Ok(())
}

fn exists(path: &str) -> ClientError {
    ClientError::refused(path, Refusal::Exists)
}

async fn rm(meta: &mut Meta, path: &str, recursive: bool) -> Result<()> {
    let (parent_path, name) = files::split_path(path)?;
    let parent = resolve(meta, parent_path).await?;
    let attr = resolve(meta, path).await?;
    if attr.kind == pb::FileKind::Directory as i32 {
        if !recursive {
            return Err(ClientError::refused(
                format!("{path} (use -r)"),
                Refusal::IsADirectory,
            ));
        }
        remove_tree(meta, attr.ino)
            .await
            .map_err(|e| e.with_path(path))?;
        meta.rmdir(pb::RmdirRequest {
            parent: parent.ino,
            name: name.as_bytes().to_vec(),
        })
        .await
        .map_err(|s| ClientError::from(s).with_path(path))?;
    } else {
        meta.unlink(pb::UnlinkRequest {
            parent: parent.ino,
            name: name.as_bytes().to_vec(),
            keep_open: false,
            expect_ino: 0,
        })
        .await
        .map_err(|s| ClientError::from(s).with_path(path))?;
    }
    Ok(())
}

/// Empties directory `ino` depth-first.
async fn remove_tree(meta: &mut Meta, ino: u64) -> Result<()> {
    let mut stack = vec![(ino, false)];
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            continue;
        }
        let entries = list_all(meta, dir).await?;
        let subdirs: Vec<_> = entries
            .iter()
            .filter(|e| {
                e.attr
                    .as_ref()
                    .is_some_and(|a| a.kind == pb::FileKind::Directory as i32)
            })
            .collect();
        if !subdirs.is_empty() {
            stack.push((dir, false));
            for d in subdirs {
                let child = d.attr.as_ref().map_or(0, |a| a.ino);
                Box::pin(remove_tree(meta, child)).await?;
                meta.rmdir(pb::RmdirRequest {
                    parent: dir,
                    name: d.name.clone(),
                })
                .await?;
            }
            continue;
        }
        for e in entries {
            meta.unlink(pb::UnlinkRequest {
                parent: dir,
                name: e.name,
                keep_open: false,
                expect_ino: 0,
            })
            .await?;
        }
    }
    Ok(())
}

/// The uid and gid this process runs as (owner of /proc/self).
fn process_owner() -> (u32, u32) {
    std::fs::metadata("/proc/self").map_or((0, 0), |m| (m.uid(), m.gid()))
}

fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || total.is_some_and(|t| t < 8 << 20) {
        return None;
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let style =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

async fn put(meta: &mut Meta, local: &str, path: &str, force: bool, fsync: bool) -> Result<()> {
    let local_name = std::path::Path::new(local)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    // A directory target (or a path ending in '/') keeps the local name.
    let target = match resolve(meta, path).await {
        Ok(a) if a.kind == pb::FileKind::Directory as i32 => match &local_name {
            Some(n) if local != "-" => format!("{}/{}", path.trim_end_matches('/'), n),
            _ => return Err(ClientError::refused(path, Refusal::IsADirectory)),
        },
        _ => path.to_string(),
    };
    let (uid, gid) = process_owner();
    let (reader, size, mode): (
        Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Option<u64>,
        u32,
    ) = if local == "-" {
        (Box::new(tokio::io::stdin()), None, 0o644)
    } else {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| local_error(local, e))?;
        let m = file.metadata().await.map_err(|e| local_error(local, e))?;
        if m.is_dir() {
            return Err(ClientError::refused(local, Refusal::IsADirectory));
        }
        (Box::new(file), Some(m.len()), m.mode() & 0o7777)
    };
    let bar = progress_bar(size);
    let progress = bar
        .clone()
        .map(|b| Arc::new(move |n: u64| b.inc(n)) as files::Progress);
    let channels = Channels::new();
    let opts = PutOptions {
        durable: fsync,
        overwrite: force,
        mode,
        uid,
        gid,
        progress,
    };
    let outcome = files::put(meta, &channels, &target, reader, opts).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if outcome.under_replicated > 0 {
        eprintln!(
            "dfs: warning: {target}: {} of {} chunks are under-replicated (storage nodes down); repair will add copies when nodes are available",
            outcome.under_replicated, outcome.chunks
        );
    }
    Ok(())
}

fn local_error(path: &str, e: std::io::Error) -> ClientError {
    ClientError::LocalFile {
        path: path.to_string(),
        source: e,
    }
}

async fn get(meta: &mut Meta, path: &str, local: &str) -> Result<()> {
    let channels = Channels::new();
    if local == "-" {
        let mut out = tokio::io::stdout();
        files::get(meta, &channels, path, &mut out, None).await?;
        return Ok(());
    }
    let mut target = std::path::PathBuf::from(local);
    if target.is_dir() {
        let (_, name) = files::split_path(path)?;
        target.push(name);
    }
    let attr = resolve(meta, path).await?;
    // Write beside the target and rename, so a failed download leaves nothing behind.
    let tmp = target.with_file_name(format!(
        ".{}.dfs-get.{}",
        target
            .file_name()
            .map_or_else(|| "download".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| local_error(&tmp.to_string_lossy(), e))?;
        let bar = progress_bar(Some(attr.size));
        let progress = bar
            .clone()
            .map(|b| Arc::new(move |n: u64| b.inc(n)) as files::Progress);
        files::get(meta, &channels, path, &mut file, progress).await?;
        file.sync_all()
            .await
            .map_err(|e| local_error(&tmp.to_string_lossy(), e))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        tokio::fs::rename(&tmp, &target)
            .await
            .map_err(|e| local_error(&target.to_string_lossy(), e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
