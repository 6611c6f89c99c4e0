//! One conformance suite for the metadata store, run against every backend:
//! SQLite (a temp file) and PostgreSQL (a fresh database on the server named by
//! DFS_TEST_POSTGRES_URL; `make test` starts one). Each case is written once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dfs_meta::store::{
    Backend, CommitArgs, CommitChunk, CreateArgs, FileKind, HeartbeatInfo, Inode, LockKind,
    LockOutcome, LockRange, LockSpec, Origin, OwnerChanges, RegisterArgs, SessionArgs, SetAttrArgs,
    Store, StoreError, Timespec,
};
use dfs_meta::FormatOptions;
use dfs_proto::ROOT_INO;

const CS: u32 = 1 << 20;

struct Handle {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Option<Handle> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/meta.db", dir.path().display());
    let store = Store::open(&url, fmt()).await.unwrap();
    Some(Handle {
        store,
        url,
        _dir: Some(dir),
    })
}

async fn postgres() -> Option<Handle> {
    let Ok(admin) = std::env::var("DFS_TEST_POSTGRES_URL") else {
        if std::env::var_os("CI").is_some() || std::env::var_os("DFS_REQUIRE_POSTGRES").is_some() {
            panic!("DFS_TEST_POSTGRES_URL is not set: the PostgreSQL conformance run cannot be skipped here");
        }
        eprintln!("SKIP: DFS_TEST_POSTGRES_URL not set (make test sets it)");
        return None;
    };
    let db = format!("dfs_t_{}", rand::random::<u64>());
    psql(&admin, &format!("CREATE DATABASE {db}"));
    let base = admin.rsplit_once('/').unwrap().0;
    let url = format!("{base}/{db}");
    let store = Store::open(&url, fmt()).await.unwrap();
    Some(Handle {
        store,
        url,
        _dir: None,
    })
}

/// Runs `sql` with psql on the database at `url`; panics if it fails.
fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fmt() -> FormatOptions {
    FormatOptions {
        chunk_size: CS,
        replication: 3,
    }
}

/// What a mount at /mnt/a says when it opens a session.
fn mount_session() -> SessionArgs {
    SessionArgs {
        host: "h1".into(),
        mountpoint: "/mnt/a".into(),
        pid: 42,
        version: "0.1.0".into(),
        kind: "mount".into(),
        owner: "client".into(),
    }
}

fn errno(e: StoreError) -> i32 {
    e.errno()
}

fn file(parent: u64, name: &str) -> CreateArgs {
    node(parent, name, FileKind::Regular)
}

fn node(parent: u64, name: &str, kind: FileKind) -> CreateArgs {
    CreateArgs {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        symlink_target: b"target".to_vec(),
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test] async fn $case() { if let Some(h) = super::sqlite().await { super::$case(h).await } })*
        }
        mod postgres_backend {
            $(#[tokio::test] async fn $case() { if let Some(h) = super::postgres().await { super::$case(h).await } })*
        }
    };
}

conformance!(
    create_lookup_and_errors,
    directories_nlink_and_rmdir,
    rename_rules,
    rename_flags,
    hard_links,
    unlink_names_the_inode_it_expects,
    numbered_creates_keep_the_clients_number_and_time,
    a_create_and_its_first_commit_are_one_change,
    symlinks_and_special_files,
    readdir_pages_in_byte_order,
    xattrs,
    setattr_and_truncate,
    chunk_commit_and_gc,
    deleted_files_are_purged_in_batches,
    punched_chunks_leave_the_map,
    inode_flags_pin_files,
    unnamed_files_are_orphans_until_linked,
    corrupt_replicas_are_quarantined_until_recopied,
    draining_nodes_hand_over_and_leave,
    full_reports_are_fenced_and_keep_deletions,
    a_node_with_many_chunks_registers_in_batches,
    a_node_is_bound_to_its_first_certificate,
    nul_bytes_are_refused_in_symlink_targets_and_xattr_names,
    heartbeats_carry_chunk_changes,
    bad_commits_change_nothing,
    node_reconcile,
    under_replication_is_seen,
    extra_replicas_are_trimmed,
    reopen_keeps_everything,
    concurrent_creates_all_land,
    unlinks_sent_at_once_commit_together_and_answer_alone,
    creates_and_unlinks_sent_at_once_commit_together,
    resolve_path,
    open_files_survive_unlink_as_orphans,
    retried_mutations_run_once,
    sessions_hold_orphans_allocations_and_locks,
    locks_exclude_split_and_release,
    placements_come_in_batches_held_by_the_session,
    stale_statistics_are_refreshed,
    small_file_calls_take_few_statements,
    one_commit_of_several_chunks,
    commits_carry_attribute_changes,
);

async fn create_lookup_and_errors(h: Handle) {
    let s = &h.store;
    let root = s.getattr(ROOT_INO).await.unwrap();
    assert_eq!(root.kind, FileKind::Directory);
    let f = s
        .create(file(ROOT_INO, "a.txt"), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(f.nlink, 1);
    assert_eq!(f.uid, 1000);
    assert_eq!(s.lookup(ROOT_INO, b"a.txt").await.unwrap(), f);
    assert_eq!(
        errno(
            s.create(file(ROOT_INO, "a.txt"), Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(s.lookup(ROOT_INO, b"nope").await.unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(s.lookup(f.ino, b"x").await.unwrap_err()),
        libc::ENOTDIR,
        "lookup under a file"
    );
    assert_eq!(
        errno(s.lookup(987_654, b"x").await.unwrap_err()),
        libc::ENOENT,
        "lookup in a missing directory"
    );
    assert_eq!(
        errno(s.lookup(u64::MAX, b"x").await.unwrap_err()),
        libc::ENOENT,
        "an inode number past i64"
    );
    s.set_xattr(f.ino, b"user.k", b"v", 0, Origin::NONE)
        .await
        .unwrap();
    let with_xattr = s.lookup(ROOT_INO, b"a.txt").await.unwrap();
    assert!(with_xattr.has_xattrs, "lookup reports xattrs");
    assert_eq!(with_xattr, s.getattr(f.ino).await.unwrap());
    s.remove_xattr(f.ino, b"user.k", Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(s.create(file(f.ino, "x"), Origin::NONE).await.unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(
            s.create(file(ROOT_INO, &"n".repeat(256)), Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENAMETOOLONG
    );
    assert!(s
        .create(file(ROOT_INO, &"n".repeat(255)), Origin::NONE)
        .await
        .is_ok());
    assert_eq!(
        errno(
            s.create(file(ROOT_INO, "a/b"), Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    assert_eq!(errno(s.getattr(999_999).await.unwrap_err()), libc::ENOENT);
    assert_eq!(errno(s.getattr(u64::MAX).await.unwrap_err()), libc::ENOENT);
}

async fn directories_nlink_and_rmdir(h: Handle) {
    let s = &h.store;
    let before = s.getattr(ROOT_INO).await.unwrap().nlink;
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(d.nlink, 2);
    assert_eq!(s.getattr(ROOT_INO).await.unwrap().nlink, before + 1);
    s.create(file(d.ino, "f"), Origin::NONE).await.unwrap();
    assert_eq!(
        errno(s.rmdir(ROOT_INO, b"d", Origin::NONE).await.unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(
            s.unlink(ROOT_INO, b"d", None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EISDIR
    );
    assert_eq!(
        errno(s.rmdir(d.ino, b"f", Origin::NONE).await.unwrap_err()),
        libc::ENOTDIR
    );
    s.unlink(d.ino, b"f", None, Origin::NONE).await.unwrap();
    s.rmdir(ROOT_INO, b"d", Origin::NONE).await.unwrap();
    assert_eq!(s.getattr(ROOT_INO).await.unwrap().nlink, before);
    assert_eq!(errno(s.getattr(d.ino).await.unwrap_err()), libc::ENOENT);
}

async fn rename_rules(h: Handle) {
    let s = &h.store;
    let a = s.create(file(ROOT_INO, "a"), Origin::NONE).await.unwrap();
    let b = s.create(file(ROOT_INO, "b"), Origin::NONE).await.unwrap();
    s.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0, None, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"b").await.unwrap().ino, a.ino);
    assert_eq!(
        errno(s.getattr(b.ino).await.unwrap_err()),
        libc::ENOENT,
        "replaced file is gone"
    );
    assert_eq!(
        errno(s.lookup(ROOT_INO, b"a").await.unwrap_err()),
        libc::ENOENT
    );

    let d1 = s
        .create(node(ROOT_INO, "d1", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let d2 = s
        .create(node(ROOT_INO, "d2", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let sub = s
        .create(node(d1.ino, "sub", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"d1", sub.ino, b"x", 0, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"d1", d1.ino, b"x", 0, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"b", ROOT_INO, b"d2", 0, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EISDIR
    );
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"d2", ROOT_INO, b"b", 0, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENOTDIR
    );
    // Directory over a non-empty directory fails; over an empty one it replaces it.
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"d2", ROOT_INO, b"d1", 0, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENOTEMPTY
    );
    let root_links = s.getattr(ROOT_INO).await.unwrap().nlink;
    s.rename(ROOT_INO, b"d1", ROOT_INO, b"d2", 0, None, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"d2").await.unwrap().ino, d1.ino);
    assert_eq!(errno(s.getattr(d2.ino).await.unwrap_err()), libc::ENOENT);
    assert_eq!(s.getattr(ROOT_INO).await.unwrap().nlink, root_links - 1);
    // Moving a directory across parents moves a link count.
    let other = s
        .create(node(ROOT_INO, "other", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    s.rename(d1.ino, b"sub", other.ino, b"sub2", 0, None, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.getattr(d1.ino).await.unwrap().nlink, 2);
    assert_eq!(s.getattr(other.ino).await.unwrap().nlink, 3);
    assert_eq!(s.lookup(other.ino, b"sub2").await.unwrap().ino, sub.ino);
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"missing", ROOT_INO, b"z", 0, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENOENT
    );
}

async fn rename_flags(h: Handle) {
    let s = &h.store;
    let a = s.create(file(ROOT_INO, "a"), Origin::NONE).await.unwrap();
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"a", ROOT_INO, b"d", 1, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"a", ROOT_INO, b"none", 2, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno(
            s.rename(ROOT_INO, b"a", ROOT_INO, b"d", 3, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    let inner = s
        .create(node(d.ino, "inner", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    // Exchange a file in the root with a directory inside d.
    s.rename(ROOT_INO, b"a", d.ino, b"inner", 2, None, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"a").await.unwrap().ino, inner.ino);
    assert_eq!(s.lookup(d.ino, b"inner").await.unwrap().ino, a.ino);
    assert_eq!(
        s.getattr(d.ino).await.unwrap().nlink,
        2,
        "d lost its subdirectory"
    );
    s.rename(ROOT_INO, b"a", ROOT_INO, b"fresh", 1, None, Origin::NONE)
        .await
        .unwrap();
}

async fn hard_links(h: Handle) {
    let s = &h.store;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let l = s.link(f.ino, d.ino, b"g", Origin::NONE).await.unwrap();
    assert_eq!(l.nlink, 2);
    assert_eq!(
        errno(s.link(f.ino, d.ino, b"g", Origin::NONE).await.unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            s.link(d.ino, ROOT_INO, b"dl", Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EPERM
    );
    s.unlink(ROOT_INO, b"f", None, Origin::NONE).await.unwrap();
    assert_eq!(s.getattr(f.ino).await.unwrap().nlink, 1);
    // Renaming one name onto another name of the same inode does nothing.
    s.link(f.ino, d.ino, b"h", Origin::NONE).await.unwrap();
    s.rename(d.ino, b"g", d.ino, b"h", 0, None, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.getattr(f.ino).await.unwrap().nlink, 2);
    s.unlink(d.ino, b"g", None, Origin::NONE).await.unwrap();
    s.unlink(d.ino, b"h", None, Origin::NONE).await.unwrap();
    assert_eq!(errno(s.getattr(f.ino).await.unwrap_err()), libc::ENOENT);
}

/// An unlink answered early by a mount names the inode it removed: a file
/// renamed over the name meanwhile is not removed in its place.
async fn unlink_names_the_inode_it_expects(h: Handle) {
    let s = &h.store;
    let old = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let new = s.create(file(ROOT_INO, "g"), Origin::NONE).await.unwrap();
    s.rename(ROOT_INO, b"g", ROOT_INO, b"f", 0, None, Origin::NONE)
        .await
        .unwrap();
    let refused = s
        .unlink_if(ROOT_INO, b"f", Some(old.ino), None, Origin::NONE)
        .await
        .unwrap_err();
    assert_eq!(errno(refused), libc::ENOENT);
    assert_eq!(s.lookup(ROOT_INO, b"f").await.unwrap().ino, new.ino);
    assert_eq!(s.getattr(new.ino).await.unwrap().nlink, 1);
    let gone = s
        .unlink_if(ROOT_INO, b"f", Some(new.ino), None, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(gone.done, new.ino);
    assert_eq!(
        gone.dir,
        Some(s.getattr(ROOT_INO).await.unwrap()),
        "the directory as the unlink left it"
    );
    assert_eq!(
        errno(s.lookup(ROOT_INO, b"f").await.unwrap_err()),
        libc::ENOENT
    );
    let missing = s
        .unlink_if(ROOT_INO, b"f", Some(new.ino), None, Origin::NONE)
        .await
        .unwrap_err();
    assert_eq!(errno(missing), libc::ENOENT);
}

/// `create_and_commit`: the file and its data appear together, or neither.
async fn a_create_and_its_first_commit_are_one_change(h: Handle) {
    let s = &h.store;
    three_nodes(s).await;
    let sid = s
        .open_session(&SessionArgs::default(), 60_000)
        .await
        .unwrap();
    let (first, _) = s.take_inos(8).await.unwrap();
    let time = Timespec {
        sec: 1_700_000_000,
        nsec: 7,
    };
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let written = [CommitChunk {
        index: 0,
        chunk_id: p.chunk_id,
        stored_len: 5,
        crc32c: 42,
        valid_len: 5,
        node_ids: p.targets.iter().map(|n| n.id).collect(),
        base: None,
    }];
    let commit = |ino| CommitArgs {
        ino,
        size: 5,
        chunks: &written,
        mtime: Some(time),
        attrs: OwnerChanges::NONE,
    };
    let made = s
        .create_and_commit(
            (file(ROOT_INO, "f"), first, time),
            commit(first),
            from(sid, 1),
        )
        .await
        .unwrap();
    assert_eq!((made.done.inode.ino, made.done.inode.size), (first, 5));
    assert_eq!(
        made.dir,
        Some(s.getattr(ROOT_INO).await.unwrap()),
        "the directory as the create left it"
    );
    assert_eq!(s.lookup(ROOT_INO, b"f").await.unwrap(), made.done.inode);
    let map = s.get_chunks(first, 0).await.unwrap();
    assert_eq!(map.chunks.len(), 1);
    assert_eq!(map.chunks[0].chunk_id, p.chunk_id);
    assert_eq!(
        made.done.chunks.as_ref(),
        Some(&map.chunks),
        "the map the commit made, as a read finds it"
    );
    // Sent again under its request id: the same answer, nothing more.
    let again = s
        .create_and_commit(
            (file(ROOT_INO, "f"), first, time),
            commit(first),
            from(sid, 1),
        )
        .await
        .unwrap();
    assert_eq!(again.done.inode, made.done.inode);

    // The name taken: no file, and the chunk stays uncommitted.
    let q = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let other = [CommitChunk {
        chunk_id: q.chunk_id,
        node_ids: q.targets.iter().map(|n| n.id).collect(),
        ..written[0].clone()
    }];
    let taken = s
        .create_and_commit(
            (file(ROOT_INO, "f"), first + 1, time),
            CommitArgs {
                chunks: &other,
                ..commit(first + 1)
            },
            from(sid, 2),
        )
        .await
        .unwrap_err();
    assert_eq!(errno(taken), libc::EEXIST);
    assert_eq!(errno(s.getattr(first + 1).await.unwrap_err()), libc::ENOENT);
    // The commit refused (its chunk was never allocated): no file either.
    let refused = s
        .create_and_commit(
            (file(ROOT_INO, "g"), first + 2, time),
            CommitArgs {
                chunks: &[CommitChunk {
                    chunk_id: 999_999,
                    ..written[0].clone()
                }],
                ..commit(first + 2)
            },
            from(sid, 3),
        )
        .await
        .unwrap_err();
    assert_eq!(errno(refused), libc::EKEYEXPIRED);
    assert_eq!(
        errno(s.lookup(ROOT_INO, b"g").await.unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(errno(s.getattr(first + 2).await.unwrap_err()), libc::ENOENT);
    // Only its own file's create.
    let mismatched = s
        .create_and_commit(
            (file(ROOT_INO, "h"), first + 3, time),
            commit(first + 4),
            from(sid, 4),
        )
        .await
        .unwrap_err();
    assert_eq!(errno(mismatched), libc::EINVAL);
    // What was refused can be done afterwards (nothing was left behind).
    s.create_and_commit(
        (file(ROOT_INO, "g"), first + 2, time),
        CommitArgs {
            chunks: &other,
            ..commit(first + 2)
        },
        from(sid, 5),
    )
    .await
    .unwrap();
    assert_eq!(s.get_chunks(first + 2, 0).await.unwrap().inode.size, 5);
}

async fn numbered_creates_keep_the_clients_number_and_time(h: Handle) {
    let s = &h.store;
    let (first, count) = s.take_inos(8).await.unwrap();
    assert_eq!(count, 8);
    // A plain create never takes a granted number.
    let plain = s
        .create(file(ROOT_INO, "plain"), Origin::NONE)
        .await
        .unwrap();
    assert!(!(first..first + 8).contains(&plain.ino));
    let time = Timespec {
        sec: 1_700_000_000,
        nsec: 42,
    };
    let made = s
        .create_numbered(file(ROOT_INO, "f"), first + 2, time, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        made.dir,
        Some(s.getattr(ROOT_INO).await.unwrap()),
        "the directory as the create left it"
    );
    let made = made.done;
    assert_eq!((made.ino, made.mtime, made.ctime), (first + 2, time, time));
    assert_eq!(s.lookup(ROOT_INO, b"f").await.unwrap().ino, first + 2);
    assert_eq!(s.getattr(first + 2).await.unwrap().mtime, time);
    assert_eq!(s.getattr(ROOT_INO).await.unwrap().mtime, time);
    // The same create sent again is the same file; the number under
    // another name, or the name under another number, is refused.
    let again = s
        .create_numbered(file(ROOT_INO, "f"), first + 2, time, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(again.done.ino, first + 2);
    assert_eq!(again.dir, None, "made before: the directory is not known");
    let taken = s
        .create_numbered(file(ROOT_INO, "g"), first + 2, time, Origin::NONE)
        .await
        .unwrap_err();
    assert_eq!(errno(taken), libc::EEXIST);
    let name_taken = s
        .create_numbered(file(ROOT_INO, "f"), first + 3, time, Origin::NONE)
        .await
        .unwrap_err();
    assert_eq!(errno(name_taken), libc::EEXIST);
    // Only a regular file.
    let dir = s
        .create_numbered(
            node(ROOT_INO, "d", FileKind::Directory),
            first + 4,
            time,
            Origin::NONE,
        )
        .await
        .unwrap_err();
    assert_eq!(errno(dir), libc::EINVAL);
    assert_eq!(
        errno(s.getattr(first + 3).await.unwrap_err()),
        libc::ENOENT,
        "nothing made under the refused numbers"
    );
}

async fn symlinks_and_special_files(h: Handle) {
    let s = &h.store;
    let l = s
        .create(node(ROOT_INO, "l", FileKind::Symlink), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(l.size, 6);
    assert_eq!(s.readlink(l.ino).await.unwrap(), b"target");
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    assert_eq!(errno(s.readlink(f.ino).await.unwrap_err()), libc::EINVAL);
    let mut empty = node(ROOT_INO, "e", FileKind::Symlink);
    empty.symlink_target.clear();
    assert_eq!(
        errno(s.create(empty, Origin::NONE).await.unwrap_err()),
        libc::EINVAL
    );
    let mut dev = node(ROOT_INO, "tty", FileKind::CharDevice);
    dev.rdev = 0x0501;
    assert_eq!(s.create(dev, Origin::NONE).await.unwrap().rdev, 0x0501);
    let fifo = s
        .create(node(ROOT_INO, "p", FileKind::Fifo), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(fifo.kind, FileKind::Fifo);
}

async fn readdir_pages_in_byte_order(h: Handle) {
    let s = &h.store;
    let d = s
        .create(node(ROOT_INO, "big", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let mut names: Vec<Vec<u8>> = (0..250).map(|i| format!("f{i:04}").into_bytes()).collect();
    names.push(vec![b'Z']);
    names.push(vec![0xff, 0xfe]);
    for n in &names {
        s.create(
            CreateArgs {
                name: n.clone(),
                ..file(d.ino, "x")
            },
            Origin::NONE,
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = Vec::new();
    let mut pages = 0;
    loop {
        let (entries, more) = s.readdir(d.ino, &after, 100).await.unwrap();
        pages += 1;
        for e in &entries {
            assert_eq!(e.attr.kind, FileKind::Regular);
            seen.push(e.name.clone());
        }
        after = entries.last().map(|e| e.name.clone()).unwrap_or_default();
        if !more {
            break;
        }
    }
    names.sort();
    assert_eq!(seen, names, "every entry once, in byte order");
    assert_eq!(pages, 3);
    let f = s.lookup(d.ino, b"Z").await.unwrap();
    assert_eq!(
        errno(s.readdir(f.ino, b"", 10).await.unwrap_err()),
        libc::ENOTDIR
    );
}

async fn xattrs(h: Handle) {
    let s = &h.store;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    assert_eq!(
        errno(s.get_xattr(f.ino, b"user.a").await.unwrap_err()),
        libc::ENODATA
    );
    assert!(!s.getattr(f.ino).await.unwrap().has_xattrs);
    s.set_xattr(f.ino, b"user.a", b"1", 0, Origin::NONE)
        .await
        .unwrap();
    s.set_xattr(f.ino, b"user.b", &[0u8, 1, 2], 0, Origin::NONE)
        .await
        .unwrap();
    assert!(
        s.getattr(f.ino).await.unwrap().has_xattrs,
        "attributes say xattrs exist"
    );
    let (listing, _) = s.readdir(ROOT_INO, b"", 10).await.unwrap();
    assert!(
        listing.iter().any(|e| e.name == b"f" && e.attr.has_xattrs),
        "so does readdir"
    );
    assert_eq!(s.get_xattr(f.ino, b"user.b").await.unwrap(), vec![0, 1, 2]);
    assert_eq!(
        errno(
            s.set_xattr(f.ino, b"user.a", b"2", 1, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            s.set_xattr(f.ino, b"user.c", b"2", 2, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENODATA
    );
    s.set_xattr(f.ino, b"user.a", b"2", 2, Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.get_xattr(f.ino, b"user.a").await.unwrap(), b"2");
    assert_eq!(
        s.list_xattr(f.ino).await.unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    assert_eq!(
        errno(
            s.set_xattr(f.ino, b"user.big", &vec![0; 65537], 0, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::E2BIG
    );
    s.remove_xattr(f.ino, b"user.a", Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(
            s.remove_xattr(f.ino, b"user.a", Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENODATA
    );
    assert_eq!(s.list_xattr(f.ino).await.unwrap().len(), 1);
    s.remove_xattr(f.ino, b"user.b", Origin::NONE)
        .await
        .unwrap();
    assert!(!s.getattr(f.ino).await.unwrap().has_xattrs, "none left");
}

async fn setattr_and_truncate(h: Handle) {
    let s = &h.store;
    let f = s
        .create(
            CreateArgs {
                mode: 0o6755,
                ..file(ROOT_INO, "f")
            },
            Origin::NONE,
        )
        .await
        .unwrap();
    let t = Timespec {
        sec: 5_000_000_000,
        nsec: 123_456_789,
    };
    let a = s
        .setattr(
            f.ino,
            SetAttrArgs {
                uid: Some(7),
                mtime: Some(t),
                atime: Some(t),
                ..Default::default()
            },
            Origin::NONE,
        )
        .await
        .unwrap();
    assert_eq!(a.uid, 7);
    assert_eq!(
        a.mtime, t,
        "64-bit seconds past 2106 and nanoseconds survive"
    );
    assert_eq!(
        a.mode, 0o0755,
        "chown cleared setuid and (group-exec) setgid"
    );
    assert!(a.ctime >= f.ctime);
    let a = s
        .setattr(
            f.ino,
            SetAttrArgs {
                mode: Some(0o600),
                ..Default::default()
            },
            Origin::NONE,
        )
        .await
        .unwrap();
    assert_eq!(a.mode, 0o600);
    let a = s
        .setattr(
            f.ino,
            SetAttrArgs {
                size: Some(10 << 20),
                ..Default::default()
            },
            Origin::NONE,
        )
        .await
        .unwrap();
    assert_eq!(a.size, 10 << 20);
    assert!(a.version > f.version);
    let too_big = SetAttrArgs {
        size: Some(dfs_proto::MAX_FILE_SIZE + 1),
        ..Default::default()
    };
    assert_eq!(
        errno(s.setattr(f.ino, too_big, Origin::NONE).await.unwrap_err()),
        libc::EFBIG
    );
    assert_eq!(
        errno(
            s.commit_write(f.ino, u64::MAX, &[], None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EFBIG
    );
    assert_eq!(s.getattr(f.ino).await.unwrap().size, 10 << 20, "unchanged");
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(
            s.setattr(
                d.ino,
                SetAttrArgs {
                    size: Some(1),
                    ..Default::default()
                },
                Origin::NONE
            )
            .await
            .unwrap_err()
        ),
        libc::EISDIR
    );
    assert_eq!(
        errno(
            s.setattr(
                f.ino,
                SetAttrArgs {
                    size: Some(u64::MAX),
                    ..Default::default()
                },
                Origin::NONE
            )
            .await
            .unwrap_err()
        ),
        libc::EFBIG,
        "a size no file can have"
    );
}

async fn three_nodes(s: &Store) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..3 {
        let (id, del) = s
            .register_node(RegisterArgs {
                uuid: format!("uuid-{i}"),
                cert_name: None,
                addr: format!("127.0.0.1:{}", 7001 + i),
                zone: String::new(),
                capacity: 1 << 40,
                used: 0,
                chunk_ids: vec![],
                listed_after_ms: i64::MAX,
            })
            .await
            .unwrap();
        assert!(del.is_empty());
        ids.push(id);
    }
    ids
}

/// A fourth, empty node (after `three_nodes`).
async fn fourth_node(s: &Store) -> u64 {
    s.register_node(RegisterArgs {
        uuid: "uuid-3".into(),
        cert_name: None,
        addr: "127.0.0.1:7004".into(),
        zone: String::new(),
        capacity: 1 << 40,
        used: 0,
        chunk_ids: vec![],
        listed_after_ms: i64::MAX,
    })
    .await
    .unwrap()
    .0
}

async fn write_chunk(s: &Store, ino: u64, index: u64, len: u64, size: u64) -> (u64, Vec<u64>) {
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let nodes: Vec<u64> = p.targets.iter().map(|n| n.id).collect();
    s.commit_write(
        ino,
        size,
        &[CommitChunk {
            index,
            chunk_id: p.chunk_id,
            stored_len: len,
            crc32c: 42,
            valid_len: len,
            node_ids: nodes.clone(),
            base: None,
        }],
        None,
        Origin::NONE,
    )
    .await
    .unwrap();
    (p.chunk_id, nodes)
}

async fn deleted_files_are_purged_in_batches(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let beat = |node_id: u64| HeartbeatInfo {
        node_id,
        capacity: 1 << 40,
        used: 0,
        chunk_count: 0,
    };
    // Three files with data: unlinked, replaced by a rename, and one of two links.
    let mut chunks = Vec::new();
    let mut queued = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let f = s.create(file(ROOT_INO, name), Origin::NONE).await.unwrap();
        chunks.push(write_chunk(s, f.ino, 0, 100, 100).await.0);
        queued.push(f.ino);
    }
    s.link(queued[3], ROOT_INO, b"d2", Origin::NONE)
        .await
        .unwrap();
    let empty = s.create(file(ROOT_INO, "e"), Origin::NONE).await.unwrap();
    s.unlink(ROOT_INO, b"a", None, Origin::NONE).await.unwrap();
    s.rename(ROOT_INO, b"c", ROOT_INO, b"b", 0, None, Origin::NONE)
        .await
        .unwrap();
    s.unlink(ROOT_INO, b"d", None, Origin::NONE).await.unwrap();
    // A file without data goes at once; one with another link stays.
    s.unlink(ROOT_INO, b"e", None, Origin::NONE).await.unwrap();
    assert_eq!(errno(s.getattr(empty.ino).await.unwrap_err()), libc::ENOENT);
    assert_eq!(s.getattr(queued[3]).await.unwrap().nlink, 1);
    for ino in &queued[..2] {
        assert_eq!(s.getattr(*ino).await.unwrap().nlink, 0, "queued");
    }
    let counts = s.cluster_counts(0).await.unwrap();
    assert_eq!(
        (counts.files, counts.chunks),
        (2, 4),
        "queued files no longer count"
    );
    assert_eq!(
        s.heartbeat(beat(nodes[0]), i64::MAX).await.unwrap(),
        Some(vec![]),
        "nothing collected before the purge"
    );
    // Batches of one: two files, then an empty queue.
    assert_eq!(s.purge_deleted(1).await.unwrap(), 1);
    assert_eq!(s.purge_deleted(1).await.unwrap(), 1);
    assert_eq!(s.purge_deleted(1).await.unwrap(), 0);
    for ino in &queued[..2] {
        assert_eq!(errno(s.getattr(*ino).await.unwrap_err()), libc::ENOENT);
    }
    assert_eq!(s.cluster_counts(0).await.unwrap().chunks, 2);
    assert_eq!(s.lookup(ROOT_INO, b"b").await.unwrap().ino, queued[2]);
    assert_eq!(s.get_chunks(queued[2], 0).await.unwrap().chunks.len(), 1);
    assert_eq!(s.get_chunks(queued[3], 0).await.unwrap().chunks.len(), 1);
    for node in nodes {
        let mut deleted = s.heartbeat(beat(node), i64::MAX).await.unwrap().unwrap();
        deleted.sort_unstable();
        assert_eq!(deleted, chunks[..2], "node {node}");
    }
}

async fn chunk_commit_and_gc(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let mut targets: Vec<u64> = p.targets.iter().map(|n| n.id).collect();
    targets.sort();
    assert_eq!(targets, nodes, "three distinct nodes");
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c0, _) = write_chunk(s, f.ino, 0, u64::from(CS), u64::from(CS)).await;
    let (c1, _) = write_chunk(s, f.ino, 1, 100, u64::from(CS) + 100).await;
    let map = s.get_chunks(f.ino, 0).await.unwrap();
    assert_eq!(map.inode.size, u64::from(CS) + 100);
    assert_eq!(map.chunks.len(), 2);
    assert_eq!(map.chunks[0].chunk_id, c0);
    assert_eq!(map.chunks[1].valid_len, 100);
    assert!(map.chunks.iter().all(|c| c.replicas.len() == 3));
    // Overwriting chunk 0 queues the old one for deletion on its nodes.
    let (c0b, _) = write_chunk(s, f.ino, 0, u64::from(CS), u64::from(CS) + 100).await;
    assert_ne!(c0, c0b);
    // Not before the grace period and durability watermark the caller gives.
    let early = HeartbeatInfo {
        node_id: nodes[0],
        capacity: 1 << 40,
        used: 0,
        chunk_count: 0,
    };
    assert_eq!(s.heartbeat(early, 0).await.unwrap(), Some(vec![]));
    let del = s
        .heartbeat(
            HeartbeatInfo {
                node_id: nodes[0],
                capacity: 1 << 40,
                used: 0,
                chunk_count: 0,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(del, Some(vec![c0]));
    // Truncating into chunk 0 drops chunk 1 and clamps chunk 0.
    s.setattr(
        f.ino,
        SetAttrArgs {
            size: Some(10),
            ..Default::default()
        },
        Origin::NONE,
    )
    .await
    .unwrap();
    let map = s.get_chunks(f.ino, 0).await.unwrap();
    assert_eq!(map.chunks.len(), 1);
    assert_eq!(map.chunks[0].valid_len, 10);
    let del = s
        .heartbeat(
            HeartbeatInfo {
                node_id: nodes[1],
                capacity: 1 << 40,
                used: 0,
                chunk_count: 0,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    let mut del = del.unwrap();
    del.sort();
    assert_eq!(del, vec![c0, c1]);
    s.unlink(ROOT_INO, b"f", None, Origin::NONE).await.unwrap();
    // A file with data waits for the purge: the inode stays, without links,
    // and cannot be linked back.
    assert_eq!(s.getattr(f.ino).await.unwrap().nlink, 0);
    assert_eq!(
        errno(
            s.link(f.ino, ROOT_INO, b"back", Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::ENOENT
    );
    assert_eq!(s.purge_deleted(100).await.unwrap(), 1);
    assert_eq!(s.purge_deleted(100).await.unwrap(), 0, "the queue is empty");
    assert_eq!(errno(s.getattr(f.ino).await.unwrap_err()), libc::ENOENT);
    let del = s
        .heartbeat(
            HeartbeatInfo {
                node_id: nodes[2],
                capacity: 1 << 40,
                used: 0,
                chunk_count: 0,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(
        del.unwrap().len(),
        3,
        "c0, c1 and c0b all deleted on node 3"
    );
    assert_eq!(s.cluster_counts(0).await.unwrap().chunks, 0);
    assert_eq!(
        s.heartbeat(
            HeartbeatInfo {
                node_id: 999,
                capacity: 0,
                used: 0,
                chunk_count: 0
            },
            i64::MAX
        )
        .await
        .unwrap(),
        None
    );
}

async fn punched_chunks_leave_the_map(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let cs = u64::from(CS);
    let mut ids = Vec::new();
    for index in 0..4 {
        ids.push(write_chunk(s, f.ino, index, cs, (index + 1) * cs).await.0);
    }
    let before = s.getattr(f.ino).await.unwrap();
    let after = s.punch_chunks(f.ino, 1, 3, Origin::NONE).await.unwrap();
    assert_eq!(after.size, 4 * cs, "the size stays");
    assert!(after.version > before.version, "the content version moves");
    let map = s.get_chunks(f.ino, 0).await.unwrap();
    let left: Vec<u64> = map.chunks.iter().map(|c| c.chunk_id).collect();
    assert_eq!(left, vec![ids[0], ids[3]]);
    let del = s
        .heartbeat(
            HeartbeatInfo {
                node_id: nodes[0],
                capacity: 1 << 40,
                used: 0,
                chunk_count: 0,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(
        del,
        Some(vec![ids[1], ids[2]]),
        "punched chunks are garbage"
    );
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(s.punch_chunks(d.ino, 0, 1, Origin::NONE).await.unwrap_err()),
        libc::EISDIR
    );
}

async fn inode_flags_pin_files(h: Handle) {
    use dfs_proto::inode_flags::{APPEND, IMMUTABLE};
    let s = &h.store;
    three_nodes(s).await;
    let cs = u64::from(CS);
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    write_chunk(s, f.ino, 0, cs, cs).await;
    let flags = |f| SetAttrArgs {
        flags: Some(f),
        ..Default::default()
    };
    assert_eq!(
        s.setattr(f.ino, flags(IMMUTABLE), Origin::NONE)
            .await
            .unwrap()
            .flags,
        IMMUTABLE
    );
    let chmod = SetAttrArgs {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(
        errno(
            s.setattr(f.ino, chmod.clone(), Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EPERM
    );
    assert_eq!(
        errno(
            s.unlink(ROOT_INO, b"f", None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EPERM
    );
    assert_eq!(
        errno(s.punch_chunks(f.ino, 0, 1, Origin::NONE).await.unwrap_err()),
        libc::EPERM
    );
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let chunk = |index| CommitChunk {
        index,
        chunk_id: p.chunk_id,
        stored_len: 10,
        crc32c: 1,
        valid_len: 10,
        node_ids: p.targets.iter().map(|n| n.id).collect(),
        base: None,
    };
    assert_eq!(
        errno(
            s.commit_write(f.ino, cs + 10, &[chunk(1)], None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EPERM
    );
    // Append-only: growth at the end commits; a rewrite of an earlier chunk does not.
    s.setattr(f.ino, flags(APPEND), Origin::NONE).await.unwrap();
    assert_eq!(
        errno(
            s.commit_write(f.ino, cs + 10, &[chunk(0)], None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EPERM
    );
    s.commit_write(f.ino, cs + 10, &[chunk(1)], None, Origin::NONE)
        .await
        .unwrap();
    let truncate = SetAttrArgs {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(
        errno(s.setattr(f.ino, truncate, Origin::NONE).await.unwrap_err()),
        libc::EPERM
    );
    assert_eq!(
        errno(
            s.setattr(f.ino, flags(0x4000), Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EOPNOTSUPP
    );
    // Flags survive a reopen; cleared, the file changes again.
    let url = h.url.clone();
    drop(h.store);
    let s = Store::open(&url, fmt()).await.unwrap();
    assert_eq!(s.getattr(f.ino).await.unwrap().flags, APPEND);
    s.setattr(f.ino, flags(0), Origin::NONE).await.unwrap();
    s.setattr(f.ino, chmod, Origin::NONE).await.unwrap();
    s.unlink(ROOT_INO, b"f", None, Origin::NONE).await.unwrap();
}

async fn unnamed_files_are_orphans_until_linked(h: Handle) {
    let s = &h.store;
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let before = s.getattr(d.ino).await.unwrap();
    let t = s
        .create_unnamed(file(d.ino, "/"), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(t.nlink, 0);
    assert!(s.readdir(d.ino, b"", 10).await.unwrap().0.is_empty());
    assert_eq!(
        s.getattr(d.ino).await.unwrap().mtime,
        before.mtime,
        "no entry changed"
    );
    // Linked: a name, and no longer an orphan (a release leaves it alone).
    assert_eq!(
        s.link(t.ino, d.ino, b"named", Origin::NONE)
            .await
            .unwrap()
            .nlink,
        1
    );
    s.release_orphan(t.ino, 0).await.unwrap();
    assert_eq!(s.lookup(d.ino, b"named").await.unwrap().ino, t.ino);
    // Never linked: the last close deletes it.
    let u = s
        .create_unnamed(file(d.ino, "/"), Origin::NONE)
        .await
        .unwrap();
    s.release_orphan(u.ino, 0).await.unwrap();
    assert_eq!(errno(s.getattr(u.ino).await.unwrap_err()), libc::ENOENT);
    assert_eq!(
        errno(
            s.create_unnamed(node(d.ino, "/", FileKind::Directory), Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
}

async fn corrupt_replicas_are_quarantined_until_recopied(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, holders) = write_chunk(s, f.ino, 0, 100, 100).await;
    let beat = |node: u64| HeartbeatInfo {
        node_id: node,
        capacity: 1 << 40,
        used: 0,
        chunk_count: 0,
    };
    s.quarantine_replica(c, holders[1]).await.unwrap();
    let map = s.get_chunks(f.ino, 0).await.unwrap();
    assert_eq!(map.chunks[0].replicas.len(), 2, "no longer served");
    // Not deleted: the chunk is short of good copies.
    assert_eq!(
        s.heartbeat(beat(holders[1]), i64::MAX).await.unwrap(),
        Some(vec![])
    );
    assert_eq!(s.release_quarantine(0).await.unwrap(), 0);
    // A fourth node gets a good copy: the quarantined one may go now.
    let fourth = fourth_node(s).await;
    s.replica_added(c, &[fourth]).await.unwrap();
    assert_eq!(s.release_quarantine(0).await.unwrap(), 1);
    assert_eq!(
        s.heartbeat(beat(holders[1]), i64::MAX).await.unwrap(),
        Some(vec![c])
    );
    // A quarantined replica of a chunk that is deleted goes with it.
    let (d, dh) = write_chunk(s, f.ino, 1, 100, u64::from(CS) + 100).await;
    s.quarantine_replica(d, dh[0]).await.unwrap();
    s.unlink(ROOT_INO, b"f", None, Origin::NONE).await.unwrap();
    assert_eq!(s.purge_deleted(100).await.unwrap(), 1);
    let mut deleted = s.heartbeat(beat(dh[0]), i64::MAX).await.unwrap().unwrap();
    deleted.sort_unstable();
    assert!(deleted.contains(&d), "{deleted:?}");
    assert!(nodes.contains(&dh[0]));
}

async fn draining_nodes_hand_over_and_leave(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, _) = write_chunk(s, f.ino, 0, 100, 100).await;
    let by_addr = s.find_node("127.0.0.1:7001").await.unwrap();
    assert_eq!(by_addr.id, nodes[0]);
    assert_eq!(
        s.find_node(&nodes[1].to_string()).await.unwrap().addr,
        "127.0.0.1:7002"
    );
    s.set_draining(nodes[0], true).await.unwrap();
    let usage = s.node_usage(nodes[0], 0).await.unwrap();
    assert!(usage.record.draining);
    assert_eq!((usage.replicas, usage.dependent_chunks), (1, 1));
    // No new chunk goes to it, and the chunk counts as short of a copy.
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    assert!(p.targets.iter().all(|t| t.id != nodes[0]));
    let short = s.under_replicated(0, 10).await.unwrap();
    assert_eq!((short.len(), short[0].good), (1, 2));
    assert_eq!(
        errno(s.remove_node(nodes[0], 0).await.unwrap_err()),
        libc::EBUSY
    );
    // A fourth node gets the copy: nothing depends on the draining node now,
    // and its replica is the one trimmed.
    let fourth = fourth_node(s).await;
    s.replica_added(c, &[fourth]).await.unwrap();
    assert_eq!(s.node_usage(nodes[0], 0).await.unwrap().dependent_chunks, 0);
    let extra = s.over_replicated(0, 10).await.unwrap();
    assert_eq!(extra[0].draining_holders, vec![nodes[0]]);
    assert!(
        !s.drop_extra_replica(c, nodes[1], 0).await.unwrap(),
        "the last-copy guard"
    );
    assert!(s.drop_extra_replica(c, nodes[0], 0).await.unwrap());
    s.remove_node(nodes[0], 0).await.unwrap();
    assert_eq!(
        errno(s.find_node("127.0.0.1:7001").await.unwrap_err()),
        libc::ENOENT
    );
}

async fn full_reports_are_fenced_and_keep_deletions(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let report = |i: usize, chunk_ids: Vec<u64>, listed_after_ms: i64| RegisterArgs {
        uuid: format!("uuid-{i}"),
        cert_name: None,
        addr: format!("127.0.0.1:{}", 7001 + i),
        zone: String::new(),
        capacity: 1 << 40,
        used: 0,
        chunk_ids,
        listed_after_ms,
    };
    let replicas = |map: dfs_meta::store::ChunkMap| map.chunks[0].replicas.len();
    // Node 0 listed its chunks before this commit: its report cannot show it.
    let fence = dfs_meta::store::now_ms() - 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (c, holders) = write_chunk(s, f.ino, 0, 100, 100).await;
    let i = nodes.iter().position(|n| *n == holders[0]).unwrap();
    s.register_node(report(i, vec![], fence)).await.unwrap();
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()), 3, "kept");
    // A list taken after the commit that lacks it: the node lost it.
    s.register_node(report(i, vec![], i64::MAX)).await.unwrap();
    assert_eq!(
        replicas(s.get_chunks(f.ino, 0).await.unwrap()),
        2,
        "forgotten"
    );
    // A replica queued for deletion is not brought back by a report that
    // still lists it: it is deleted.
    let j = nodes.iter().position(|n| *n == holders[1]).unwrap();
    s.forget_replica(c, holders[1], 1, 0).await.unwrap();
    let (_, delete) = s.register_node(report(j, vec![c], i64::MAX)).await.unwrap();
    assert_eq!(delete, vec![c]);
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()), 1);
    // A report listing it without a queued deletion brings it back.
    s.register_node(report(i, vec![c], i64::MAX)).await.unwrap();
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()), 2);
}

/// Inserts `rows` into `table` (`columns`) straight through SQL, 300 rows a
/// statement, in one transaction: test setup for large stores.
async fn bulk_insert(url: &str, table: &str, columns: &[&str], rows: &[Vec<i64>]) {
    let statement = |batch: &[Vec<i64>]| {
        let mut n = 0;
        let values: Vec<String> = batch
            .iter()
            .map(|r| {
                let p: Vec<String> = r
                    .iter()
                    .map(|_| {
                        n += 1;
                        format!("${n}")
                    })
                    .collect();
                format!("({})", p.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO {table} ({}) VALUES {}",
            columns.join(", "),
            values.join(", ")
        )
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = rusqlite::Connection::open(path.split('?').next().unwrap()).unwrap();
        let tx = conn.transaction().unwrap();
        for batch in rows.chunks(300) {
            let sql = statement(batch).replace('$', "?");
            let values: Vec<i64> = batch.iter().flatten().copied().collect();
            tx.execute(&sql, rusqlite::params_from_iter(values))
                .unwrap();
        }
        tx.commit().unwrap();
        return;
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    for batch in rows.chunks(300) {
        let sql = statement(batch);
        let mut q = sqlx::query(&sql);
        for v in batch.iter().flatten() {
            q = q.bind(*v);
        }
        q.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// A node's full report is reconciled in batches. `make test` uses 20,000
/// chunks; DFS_REGISTER_CHUNKS=1000000 measures the 30 s target.
async fn a_node_with_many_chunks_registers_in_batches(h: Handle) {
    let s = &h.store;
    let n: i64 = std::env::var("DFS_REGISTER_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let args = |chunk_ids: Vec<u64>| RegisterArgs {
        uuid: "big".into(),
        cert_name: None,
        addr: "127.0.0.1:7009".into(),
        zone: String::new(),
        capacity: 1 << 40,
        used: 0,
        chunk_ids,
        listed_after_ms: i64::MAX,
    };
    let (node, _) = s.register_node(args(vec![])).await.unwrap();
    let base = 1i64 << 40;
    let chunks: Vec<Vec<i64>> = (0..n).map(|i| vec![base + i, 4096, 7]).collect();
    bulk_insert(&h.url, "chunks", &["id", "stored_len", "crc32c"], &chunks).await;
    let ids: Vec<u64> = (0..n).map(|i| (base + i) as u64).collect();
    // Meta knows none of them on this node (its rows were lost): every one
    // becomes a replica again. Plus 1,000 unknown ids: garbage.
    let mut report = ids.clone();
    report.extend((0..1000).map(|i| (base + n + i) as u64));
    let started = std::time::Instant::now();
    let (_, delete) = s.register_node(args(report.clone())).await.unwrap();
    let first = started.elapsed();
    assert_eq!(delete.len(), 1000);
    // A restart: the same report again, every replica known.
    let started = std::time::Instant::now();
    s.register_node(args(ids.clone())).await.unwrap();
    let again = started.elapsed();
    // The node lost half its chunks: those replicas are forgotten.
    let started = std::time::Instant::now();
    s.register_node(args(ids[..ids.len() / 2].to_vec()))
        .await
        .unwrap();
    let half = started.elapsed();
    let info = s.node_usage(node, 0).await.unwrap();
    assert_eq!(info.replicas, n as u64 / 2);
    eprintln!(
        "register {n} chunks ({}): all new {:.1} s, all known {:.1} s, half gone {:.1} s",
        h.url.split(':').next().unwrap_or(""),
        first.as_secs_f64(),
        again.as_secs_f64(),
        half.as_secs_f64()
    );
}

async fn heartbeats_carry_chunk_changes(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, holders) = write_chunk(s, f.ino, 0, 100, 100).await;
    let replicas = |map: dfs_meta::store::ChunkMap| -> Vec<u64> {
        let mut ids: Vec<u64> = map.chunks[0].replicas.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids
    };
    // A node lost the file: no longer a replica.
    s.apply_chunk_changes(holders[0], &[], &[c]).await.unwrap();
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()).len(), 2);
    // It has it again: a replica again; an unreferenced new file (a write in
    // flight) changes nothing.
    s.apply_chunk_changes(holders[0], &[c, 999_999], &[])
        .await
        .unwrap();
    let mut all = nodes.clone();
    all.sort_unstable();
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()), all);
    // Reported twice: still one row.
    s.apply_chunk_changes(holders[0], &[c], &[]).await.unwrap();
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()).len(), 3);
    // Queued for deletion there: not brought back.
    s.forget_replica(c, holders[1], 1, 0).await.unwrap();
    s.apply_chunk_changes(holders[1], &[c], &[]).await.unwrap();
    assert_eq!(replicas(s.get_chunks(f.ino, 0).await.unwrap()).len(), 2);
}

async fn bad_commits_change_nothing(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let commit = |chunk_id, index, valid_len, size, node_ids: Vec<u64>| {
        let chunks = vec![CommitChunk {
            index,
            chunk_id,
            stored_len: valid_len,
            crc32c: 1,
            valid_len,
            node_ids,
            base: None,
        }];
        async move {
            s.commit_write(f.ino, size, &chunks, None, Origin::NONE)
                .await
        }
    };
    assert_eq!(
        errno(commit(12345, 0, 10, 10, nodes.clone()).await.unwrap_err()),
        libc::EKEYEXPIRED,
        "unallocated id"
    );
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    assert_eq!(
        errno(
            commit(p.chunk_id, 0, 10, 5, nodes.clone())
                .await
                .unwrap_err()
        ),
        libc::EINVAL,
        "past size"
    );
    assert_eq!(
        errno(commit(p.chunk_id, 0, 10, 10, vec![]).await.unwrap_err()),
        libc::EINVAL,
        "no replicas"
    );
    assert_eq!(
        errno(
            commit(p.chunk_id, 0, 10, 10, vec![nodes[0], 777])
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno(
            commit(p.chunk_id, u64::MAX, 10, 10, nodes.clone())
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    assert_eq!(
        s.getattr(f.ino).await.unwrap().size,
        0,
        "failed commits left no trace"
    );
    assert_eq!(s.get_chunks(f.ino, 0).await.unwrap().chunks.len(), 0);
    commit(p.chunk_id, 0, 10, 10, nodes.clone()).await.unwrap();
    let g = s.create(file(ROOT_INO, "g"), Origin::NONE).await.unwrap();
    let again = vec![CommitChunk {
        index: 0,
        chunk_id: p.chunk_id,
        stored_len: 10,
        crc32c: 1,
        valid_len: 10,
        node_ids: nodes,
        base: None,
    }];
    assert_eq!(
        errno(
            s.commit_write(g.ino, 10, &again, None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EKEYEXPIRED,
        "chunk reuse"
    );
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(
            s.commit_write(d.ino, 0, &[], None, Origin::NONE)
                .await
                .unwrap_err()
        ),
        libc::EISDIR
    );
    assert_eq!(
        errno(s.place_chunk(0, 3, &[1, 2, 3], 0, 0).await.unwrap_err()),
        libc::ENOSPC
    );
}

async fn node_reconcile(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, _) = write_chunk(s, f.ino, 0, 10, 10).await;
    let pending = s.place_chunk(0, 3, &[], 0, 0).await.unwrap().chunk_id;
    // Node 1 comes back having lost chunk c, holding garbage 9999 and an in-flight chunk.
    let (id, del) = s
        .register_node(RegisterArgs {
            uuid: "uuid-0".into(),
            cert_name: None,
            addr: "127.0.0.1:7001".into(),
            zone: String::new(),
            capacity: 1 << 40,
            used: 0,
            chunk_ids: vec![9999, pending],
            listed_after_ms: i64::MAX,
        })
        .await
        .unwrap();
    assert_eq!(id, nodes[0], "same uuid, same node id");
    assert_eq!(del, vec![9999]);
    let map = s.get_chunks(f.ino, 0).await.unwrap();
    assert_eq!(map.chunks[0].replicas.len(), 2);
    // It finds chunk c again: the replica counts again.
    let (_, del) = s
        .register_node(RegisterArgs {
            uuid: "uuid-0".into(),
            cert_name: None,
            addr: "127.0.0.1:7001".into(),
            zone: String::new(),
            capacity: 1 << 40,
            used: 0,
            chunk_ids: vec![c],
            listed_after_ms: i64::MAX,
        })
        .await
        .unwrap();
    assert!(del.is_empty());
    assert_eq!(
        s.get_chunks(f.ino, 0).await.unwrap().chunks[0]
            .replicas
            .len(),
        3
    );
}

async fn under_replication_is_seen(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, _) = write_chunk(s, f.ino, 0, 10, 10).await;
    assert!(s.under_replicated(0, 100).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff = dfs_meta::store::now_ms();
    for n in &nodes[..2] {
        s.heartbeat(
            HeartbeatInfo {
                node_id: *n,
                capacity: 1 << 40,
                used: 0,
                chunk_count: 1,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    }
    let items = s.under_replicated(cutoff, 100).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].chunk_id, c);
    assert_eq!(items[0].live_holders.len(), 2);
    assert_eq!(items[0].down_holders, vec![nodes[2]]);
    let counts = s.cluster_counts(cutoff).await.unwrap();
    assert_eq!((counts.under_replicated, counts.lost), (1, 0));
    // Placement for repair avoids every holder; with three nodes there is no room.
    assert_eq!(
        errno(s.place_chunk(c, 1, &nodes, cutoff, 0).await.unwrap_err()),
        libc::ENOSPC
    );
    s.replica_added(c, &[nodes[0]]).await.unwrap();
    assert_eq!(
        s.get_chunks(f.ino, 0).await.unwrap().chunks[0]
            .replicas
            .len(),
        3,
        "no duplicate replica"
    );
}

async fn extra_replicas_are_trimmed(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let (fourth, _) = s
        .register_node(RegisterArgs {
            uuid: "uuid-3".into(),
            cert_name: None,
            addr: "127.0.0.1:7004".into(),
            zone: String::new(),
            capacity: 1 << 40,
            used: 1 << 39, // the fullest node
            chunk_ids: vec![],
            listed_after_ms: i64::MAX,
        })
        .await
        .unwrap();
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, _) = write_chunk(s, f.ino, 0, 10, 10).await;
    assert!(s.over_replicated(0, 100).await.unwrap().is_empty());
    s.replica_added(c, &[fourth]).await.unwrap();
    let items = s.over_replicated(0, 100).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].chunk_id, c);
    assert_eq!(items[0].live_holders.len(), 4);
    assert!(items[0]
        .live_holders
        .iter()
        .any(|(id, free)| *id == fourth && *free == 1 << 39));
    // A holder that is down does not count: with one of four down there is
    // nothing extra to drop.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff = dfs_meta::store::now_ms();
    for n in [nodes[0], nodes[1], fourth] {
        s.heartbeat(
            HeartbeatInfo {
                node_id: n,
                capacity: 1 << 40,
                used: 0,
                chunk_count: 1,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    }
    assert!(s.over_replicated(cutoff, 100).await.unwrap().is_empty());
    assert!(!s.drop_extra_replica(c, fourth, cutoff).await.unwrap());
    // All four up: one goes, and never a second.
    assert!(s.drop_extra_replica(c, fourth, 0).await.unwrap());
    let replicas = &s.get_chunks(f.ino, 0).await.unwrap().chunks[0].replicas;
    assert_eq!(replicas.len(), 3);
    assert!(replicas.iter().all(|r| r.0 != fourth));
    assert!(!s.drop_extra_replica(c, nodes[0], 0).await.unwrap());
    assert!(s.over_replicated(0, 100).await.unwrap().is_empty());
    // The dropped copy is garbage for its node.
    let garbage = s
        .heartbeat(
            HeartbeatInfo {
                node_id: fourth,
                capacity: 1 << 40,
                used: 0,
                chunk_count: 1,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(garbage, Some(vec![c]));
}

async fn reopen_keeps_everything(h: Handle) {
    let d = h
        .store
        .create(node(ROOT_INO, "keep", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    h.store
        .create(file(d.ino, "f"), Origin::NONE)
        .await
        .unwrap();
    h.store.close().await;
    let other = FormatOptions {
        chunk_size: 8 << 20,
        replication: 2,
    };
    let s = Store::open(&h.url, other).await.unwrap();
    assert_eq!(s.chunk_size(), CS, "format settings are kept");
    assert_eq!(s.replication(), 3);
    assert_eq!(
        s.resolve_path(b"/keep/f").await.unwrap().kind,
        FileKind::Regular
    );
}

async fn concurrent_creates_all_land(h: Handle) {
    let s = h.store.clone();
    let d = s
        .create(node(ROOT_INO, "c", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create(file(d.ino, &format!("f{i}")), Origin::NONE).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (entries, more) = s.readdir(d.ino, b"", 100).await.unwrap();
    assert_eq!(entries.len(), 24);
    assert!(!more);
    assert_eq!(s.getattr(d.ino).await.unwrap().nlink, 2);
}

/// Unlinks sent at once commit in shared transactions (`together.rs`), yet
/// each gets the answer it would get alone: a missing name or a directory
/// fails only its own unlink, a replayed request is answered from its
/// record, and each directory counts every name gone.
async fn unlinks_sent_at_once_commit_together_and_answer_alone(h: Handle) {
    let s = h.store.clone();
    let sid = s
        .open_session(&SessionArgs::default(), 60_000)
        .await
        .unwrap();
    let d = s
        .create(node(ROOT_INO, "u", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    s.create(node(d.ino, "sub", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let other = s
        .create(node(ROOT_INO, "v", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    // Even files in u, odd ones in v: batches span both directories.
    let dir_of = move |i: usize| {
        if i.is_multiple_of(2) {
            d.ino
        } else {
            other.ino
        }
    };
    let mut inos = Vec::new();
    for i in 0..120 {
        let made = s.create(file(dir_of(i), &format!("f{i}")), Origin::NONE);
        inos.push(made.await.unwrap().ino);
    }
    let batches = || s.metrics().batches.get_sample_count();
    let names_before = s.metrics().batches.get_sample_sum();
    let batches_before = batches();
    let statements_before = s.metrics().statements.get();
    // Request 1000 + i removes f{i}; two callers send request 1005 (a retry
    // racing its original); "missing" and "sub" must fail alone.
    let mut calls: Vec<(String, u64)> = (0..120).map(|i| (format!("f{i}"), 1000 + i)).collect();
    calls.insert(40, ("f5".into(), 1005));
    calls.insert(60, ("missing".into(), 2000));
    calls.insert(80, ("sub".into(), 2001));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(name, request)| {
            let s = s.clone();
            let parent = match name.strip_prefix('f').map(str::parse::<usize>) {
                Some(Ok(i)) => dir_of(i),
                _ => d.ino,
            };
            tokio::spawn(async move {
                let got = s
                    .unlink_if(parent, name.as_bytes(), None, None, from(sid, request))
                    .await;
                (name, got)
            })
        })
        .collect();
    // The latest state of each directory an answer carried.
    let mut last_seen: std::collections::HashMap<u64, Inode> = Default::default();
    for t in tasks {
        let (name, got) = t.await.unwrap();
        match name.as_str() {
            "missing" => assert_eq!(errno(got.unwrap_err()), libc::ENOENT),
            "sub" => assert_eq!(errno(got.unwrap_err()), libc::EISDIR),
            f => {
                let i: usize = f[1..].parse().unwrap();
                let got = got.unwrap();
                assert_eq!(got.done, inos[i], "{f} answered with its inode");
                if let Some(dir) = got.dir {
                    assert_eq!(dir.ino, dir_of(i), "{f}: its own directory");
                    let seen = last_seen.entry(dir.ino).or_insert_with(|| dir.clone());
                    if dir.ctime > seen.ctime {
                        *seen = dir;
                    }
                }
            }
        }
    }
    let statements = s.metrics().statements.get() - statements_before;
    for dir in [d.ino, other.ino] {
        assert_eq!(
            last_seen.get(&dir),
            Some(&s.getattr(dir).await.unwrap()),
            "the last unlink's answer shows the directory as it is now"
        );
    }
    let (entries, _) = s.readdir(d.ino, b"", 200).await.unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        vec![b"sub".to_vec()],
        "every file gone, the directory kept"
    );
    assert_eq!(s.getattr(d.ino).await.unwrap().nlink, 3);
    let (left, _) = s.readdir(other.ino, b"", 200).await.unwrap();
    assert!(left.is_empty(), "every file gone from the second directory");
    for ino in &inos {
        assert_eq!(errno(s.getattr(*ino).await.unwrap_err()), libc::ENOENT);
    }
    let names = s.metrics().batches.get_sample_sum() - names_before;
    let transactions = batches() - batches_before;
    assert!(names >= 123.0, "every unlink went through a batch: {names}");
    assert!(
        (transactions as f64) < names,
        "some unlinks committed together: {transactions} transactions for {names}"
    );
    if s.backend() == Backend::Postgres {
        // A run of unlinks reads once and writes once (`unlink_run.rs`);
        // one by one, each took a read and a write.
        assert!(
            (statements as f64) < names / 4.0,
            "{statements} statements for {names} unlinks in {transactions} transactions"
        );
    }
}

/// Numbered creates sent at once commit in shared transactions with the
/// unlinks in flight (`together.rs`), each answered as alone: a name taken
/// or a number taken fails only its own create, a replayed request is
/// answered from its record with the same file.
async fn creates_and_unlinks_sent_at_once_commit_together(h: Handle) {
    let s = h.store.clone();
    let sid = s
        .open_session(&SessionArgs::default(), 60_000)
        .await
        .unwrap();
    let d = s
        .create(node(ROOT_INO, "c", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let other = s
        .create(node(ROOT_INO, "w", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let dir_of = move |i: u64| {
        if i.is_multiple_of(2) {
            d.ino
        } else {
            other.ino
        }
    };
    let mut old = Vec::new();
    for i in 0..30 {
        let made = s.create(file(dir_of(i), &format!("old{i}")), Origin::NONE);
        old.push(made.await.unwrap().ino);
    }
    let (first, count) = s.take_inos(100).await.unwrap();
    assert_eq!(count, 100);
    let time = Timespec {
        sec: 1_700_000_000,
        nsec: 7,
    };
    let before = (
        s.metrics().batches.get_sample_count(),
        s.metrics().batches.get_sample_sum(),
    );
    enum Call {
        Create(&'static str, u64, String, u64),
        Unlink(u64),
    }
    // Request 3000 + i creates n{i} under first + i; request 3005 is sent
    // twice; n7 under another number and "x" under n3's number are refused;
    // request 5000 + i removes old{i}.
    let mut calls: Vec<Call> = (0..60)
        .map(|i| Call::Create("new", first + i, format!("n{i}"), 3000 + i))
        .collect();
    calls.insert(20, Call::Create("again", first + 5, "n5".into(), 3005));
    calls.insert(
        30,
        Call::Create("name taken", first + 80, "n7".into(), 4000),
    );
    calls.insert(
        40,
        Call::Create("number taken", first + 3, "x".into(), 4001),
    );
    for i in 0..30 {
        calls.insert(2 * i as usize + 1, Call::Unlink(i));
    }
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|call| {
            let s = s.clone();
            tokio::spawn(async move {
                match call {
                    Call::Create(what, ino, name, request) => {
                        let i: u64 = name[1..].parse().unwrap_or(3);
                        let made = s
                            .create_numbered(file(dir_of(i), &name), ino, time, from(sid, request))
                            .await;
                        (what, ino, made.map(|m| m.done.ino))
                    }
                    Call::Unlink(i) => {
                        let name = format!("old{i}");
                        let gone = s
                            .unlink_if(dir_of(i), name.as_bytes(), None, None, from(sid, 5000 + i))
                            .await;
                        ("unlink", i, gone.map(|g| g.done))
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            ("new" | "again", ino, made) => {
                assert_eq!(made.unwrap(), ino, "created under its number")
            }
            ("name taken" | "number taken", _, made) => {
                assert_eq!(errno(made.unwrap_err()), libc::EEXIST)
            }
            (_, i, gone) => assert_eq!(gone.unwrap(), old[i as usize], "old{i} removed"),
        }
    }
    for i in 0..60 {
        let found = s
            .lookup(dir_of(i), format!("n{i}").as_bytes())
            .await
            .unwrap();
        assert_eq!((found.ino, found.mtime), (first + i, time));
    }
    assert_eq!(
        errno(s.getattr(first + 80).await.unwrap_err()),
        libc::ENOENT
    );
    for dir in [d.ino, other.ino] {
        let (entries, _) = s.readdir(dir, b"", 200).await.unwrap();
        assert_eq!(entries.len(), 30, "30 new files, no old one");
        assert!(entries.iter().all(|e| e.name.starts_with(b"n")));
    }
    for ino in &old {
        assert_eq!(errno(s.getattr(*ino).await.unwrap_err()), libc::ENOENT);
    }
    let calls = s.metrics().batches.get_sample_sum() - before.1;
    let transactions = s.metrics().batches.get_sample_count() - before.0;
    assert!(calls >= 93.0, "every call went through a batch: {calls}");
    assert!(
        (transactions as f64) < calls,
        "some calls committed together: {transactions} transactions for {calls}"
    );
}

async fn resolve_path(h: Handle) {
    let s = &h.store;
    let a = s
        .create(node(ROOT_INO, "a", FileKind::Directory), Origin::NONE)
        .await
        .unwrap();
    let b = s.create(file(a.ino, "b"), Origin::NONE).await.unwrap();
    assert_eq!(s.resolve_path(b"/a/b").await.unwrap().ino, b.ino);
    assert_eq!(s.resolve_path(b"a//./b").await.unwrap().ino, b.ino);
    assert_eq!(s.resolve_path(b"/a/../a/b").await.unwrap().ino, b.ino);
    assert_eq!(s.resolve_path(b"/").await.unwrap().ino, ROOT_INO);
    assert_eq!(
        errno(s.resolve_path(b"/a/b/c").await.unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(s.resolve_path(b"/a/x").await.unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(s.resolve_path(&vec![b'a'; 5000]).await.unwrap_err()),
        libc::ENAMETOOLONG
    );
}

async fn open_files_survive_unlink_as_orphans(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (c, _) = write_chunk(s, f.ino, 0, 10, 10).await;
    s.unlink(ROOT_INO, b"f", Some(0), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(
        errno(s.lookup(ROOT_INO, b"f").await.unwrap_err()),
        libc::ENOENT,
        "the name is gone"
    );
    assert_eq!(s.getattr(f.ino).await.unwrap().nlink, 0, "the inode stays");
    assert_eq!(s.get_chunks(f.ino, 0).await.unwrap().chunks[0].chunk_id, c);
    write_chunk(s, f.ino, 1, 10, u64::from(CS) + 10).await;
    s.release_orphan(f.ino, 0).await.unwrap();
    let report = s.fsck(ROOT_INO, 0, 10).await.unwrap();
    assert_eq!(report.orphans, 0, "no longer an orphan once queued");
    assert_eq!(
        s.purge_deleted(100).await.unwrap(),
        1,
        "queued at its last close"
    );
    assert_eq!(errno(s.getattr(f.ino).await.unwrap_err()), libc::ENOENT);
    let del = s
        .heartbeat(
            HeartbeatInfo {
                node_id: nodes[0],
                capacity: 1 << 40,
                used: 0,
                chunk_count: 0,
            },
            i64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(del.unwrap().len(), 2, "both chunks collected");
    // Rename over an open file orphans the replaced one the same way.
    let a = s.create(file(ROOT_INO, "a"), Origin::NONE).await.unwrap();
    let b = s.create(file(ROOT_INO, "b"), Origin::NONE).await.unwrap();
    s.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0, Some(0), Origin::NONE)
        .await
        .unwrap();
    assert_eq!(s.getattr(b.ino).await.unwrap().nlink, 0);
    assert_eq!(s.lookup(ROOT_INO, b"b").await.unwrap().ino, a.ino);
    // Releasing a file that is not an orphan changes nothing.
    s.release_orphan(a.ino, 0).await.unwrap();
    assert_eq!(s.getattr(a.ino).await.unwrap().nlink, 1);
    // Orphans whose client never came back expire.
    assert_eq!(s.expire_orphans(0).await.unwrap(), 0, "not old enough");
    assert_eq!(s.expire_orphans(i64::MAX).await.unwrap(), 1);
    assert_eq!(errno(s.getattr(b.ino).await.unwrap_err()), libc::ENOENT);
}

fn from(session: u64, request: u64) -> Origin {
    Origin { session, request }
}

async fn retried_mutations_run_once(h: Handle) {
    let s = &h.store;
    let sid = s
        .open_session(&SessionArgs::default(), 60_000)
        .await
        .unwrap();
    // A create retried after a lost reply gets the same inode, not EEXIST.
    let a = s.create(file(ROOT_INO, "a"), from(sid, 1)).await.unwrap();
    let again = s.create(file(ROOT_INO, "a"), from(sid, 1)).await.unwrap();
    assert_eq!(again.ino, a.ino);
    // The same name under a new request id is a new create: EEXIST.
    assert_eq!(
        errno(
            s.create(file(ROOT_INO, "a"), from(sid, 2))
                .await
                .unwrap_err()
        ),
        libc::EEXIST
    );
    // Rename and unlink replayed: no ENOENT, and nothing happens twice.
    s.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0, None, from(sid, 3))
        .await
        .unwrap();
    s.create(file(ROOT_INO, "a"), from(sid, 4)).await.unwrap();
    s.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0, None, from(sid, 3))
        .await
        .unwrap();
    assert_eq!(
        s.lookup(ROOT_INO, b"b").await.unwrap().ino,
        a.ino,
        "not renamed twice"
    );
    s.unlink(ROOT_INO, b"b", None, from(sid, 5)).await.unwrap();
    s.unlink(ROOT_INO, b"b", None, from(sid, 5)).await.unwrap();
    let d = s
        .create(node(ROOT_INO, "d", FileKind::Directory), from(sid, 6))
        .await
        .unwrap();
    s.rmdir(ROOT_INO, b"d", from(sid, 7)).await.unwrap();
    s.rmdir(ROOT_INO, b"d", from(sid, 7)).await.unwrap();
    assert_eq!(errno(s.getattr(d.ino).await.unwrap_err()), libc::ENOENT);
    // A replay whose body would succeed again (a chmod) changes nothing.
    let m = s.create(file(ROOT_INO, "m"), from(sid, 9)).await.unwrap();
    let chmod = |mode: u32| SetAttrArgs {
        mode: Some(mode),
        ..Default::default()
    };
    s.setattr(m.ino, chmod(0o600), from(sid, 10)).await.unwrap();
    s.setattr(m.ino, chmod(0o640), from(sid, 11)).await.unwrap();
    s.setattr(m.ino, chmod(0o600), from(sid, 10)).await.unwrap();
    assert_eq!(
        s.getattr(m.ino).await.unwrap().mode & 0o7777,
        0o640,
        "a replayed chmod did not run again"
    );
    // A failed mutation records nothing: its retry runs (and fails) again.
    assert_eq!(
        errno(
            s.unlink(ROOT_INO, b"zz", None, from(sid, 8))
                .await
                .unwrap_err()
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno(
            s.unlink(ROOT_INO, b"zz", None, from(sid, 8))
                .await
                .unwrap_err()
        ),
        libc::ENOENT
    );
    // Renewal forgets records below what the client says was answered.
    s.renew_session(sid, 0, 100, 60_000).await.unwrap().unwrap();
    let a2 = s.lookup(ROOT_INO, b"a").await.unwrap();
    s.unlink(ROOT_INO, b"a", None, from(sid, 5)).await.unwrap();
    assert_eq!(
        errno(s.getattr(a2.ino).await.unwrap_err()),
        libc::ENOENT,
        "an id reused after its record went runs anew"
    );
}

async fn sessions_hold_orphans_allocations_and_locks(h: Handle) {
    let s = &h.store;
    three_nodes(s).await;
    let args = mount_session();
    let a = s.open_session(&args, 60_000).await.unwrap();
    let b = s.open_session(&args, 60_000).await.unwrap();
    // Session a holds an unlinked open file, a lock and a chunk allocation.
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    s.unlink(ROOT_INO, b"f", Some(a), from(a, 1)).await.unwrap();
    let lock = LockSpec {
        ino: f.ino,
        session: a,
        owner: 9,
        flock: false,
        kind: LockKind::Write,
        range: LockRange {
            start: 0,
            end: i64::MAX,
        },
        pid: 1,
    };
    assert_eq!(s.lock(&lock, false).await.unwrap().0, LockOutcome::Granted);
    let p = s.place_chunk(0, 3, &[], 0, a).await.unwrap();
    let listed = s.list_sessions().await.unwrap();
    let rec = listed.iter().find(|r| r.id == a).unwrap();
    assert_eq!((rec.locks, rec.orphans), (1, 1));
    assert_eq!(rec.args.mountpoint, "/mnt/a");
    // Age alone never takes a live session's allocation or orphan.
    assert_eq!(s.expire_orphans(i64::MAX).await.unwrap(), 0);
    // Session b renews; a does not, and expires.
    let now = dfs_meta::store::now_ms();
    assert!(s.renew_session(b, 3, 1, 120_000).await.unwrap().is_some());
    assert_eq!(s.expire_sessions(now + 90_000).await.unwrap(), vec![a]);
    assert!(
        s.renew_session(a, 0, 1, 60_000).await.unwrap().is_none(),
        "a is gone"
    );
    assert_eq!(
        errno(s.getattr(f.ino).await.unwrap_err()),
        libc::ENOENT,
        "orphan released"
    );
    let other = LockSpec {
        session: b,
        owner: 1,
        ..lock.clone()
    };
    assert_eq!(
        s.lock(&other, false).await.unwrap().0,
        LockOutcome::Granted,
        "lock released"
    );
    let g = s.create(file(ROOT_INO, "g"), Origin::NONE).await.unwrap();
    let commit = s
        .commit_write(
            g.ino,
            10,
            &[CommitChunk {
                index: 0,
                chunk_id: p.chunk_id,
                stored_len: 10,
                crc32c: 1,
                valid_len: 10,
                node_ids: p.targets.iter().map(|n| n.id).collect(),
                base: None,
            }],
            None,
            Origin::NONE,
        )
        .await;
    assert_eq!(
        errno(commit.unwrap_err()),
        libc::EKEYEXPIRED,
        "allocation released"
    );
    // An orphan two sessions hold goes only when both let go.
    let f2 = s.create(file(ROOT_INO, "f2"), Origin::NONE).await.unwrap();
    let c = s.open_session(&args, 60_000).await.unwrap();
    s.link(f2.ino, ROOT_INO, b"f3", Origin::NONE).await.unwrap();
    s.unlink(ROOT_INO, b"f2", Some(b), Origin::NONE)
        .await
        .unwrap();
    s.unlink(ROOT_INO, b"f3", Some(c), Origin::NONE)
        .await
        .unwrap();
    s.release_orphan(f2.ino, b).await.unwrap();
    assert_eq!(
        s.getattr(f2.ino).await.unwrap().nlink,
        0,
        "c still holds it"
    );
    s.close_session(c).await.unwrap();
    assert_eq!(errno(s.getattr(f2.ino).await.unwrap_err()), libc::ENOENT);
    // A restart moves leases forward by the downtime.
    let before = s.list_sessions().await.unwrap()[0].expires_ms;
    let gap = s
        .carry_over_restart(dfs_meta::store::now_ms() + 5_000)
        .await
        .unwrap();
    assert!(gap >= 5_000);
    assert_eq!(s.list_sessions().await.unwrap()[0].expires_ms, before + gap);
}

async fn locks_exclude_split_and_release(h: Handle) {
    let s = &h.store;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let spec = |session: u64, owner: u64, kind: LockKind, start: i64, end: i64| LockSpec {
        ino: f.ino,
        session,
        owner,
        flock: false,
        kind,
        range: LockRange { start, end },
        pid: owner as u32,
    };
    let granted = |o: (LockOutcome, bool)| o.0 == LockOutcome::Granted;
    // Two sessions, same owner number: still different owners.
    assert!(granted(
        s.lock(&spec(1, 7, LockKind::Write, 0, 99), false)
            .await
            .unwrap()
    ));
    let blocked = s
        .lock(&spec(2, 7, LockKind::Read, 50, 50), false)
        .await
        .unwrap()
        .0;
    match blocked {
        LockOutcome::Conflict(held) => {
            assert_eq!(
                (held.session, held.range),
                (1, LockRange { start: 0, end: 99 })
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Unlocking the middle splits the lock: the middle is free, the ends not.
    let (out, released) = s
        .lock(&spec(1, 7, LockKind::Unlock, 40, 59), false)
        .await
        .unwrap();
    assert!(out == LockOutcome::Granted && released);
    assert!(granted(
        s.lock(&spec(2, 7, LockKind::Write, 45, 55), false)
            .await
            .unwrap()
    ));
    assert!(!granted(
        s.lock(&spec(2, 7, LockKind::Read, 30, 30), true)
            .await
            .unwrap()
    ));
    assert!(!granted(
        s.lock(&spec(2, 7, LockKind::Read, 60, 60), true)
            .await
            .unwrap()
    ));
    // Readers share.
    assert!(granted(
        s.lock(&spec(3, 1, LockKind::Read, 200, 300), false)
            .await
            .unwrap()
    ));
    assert!(granted(
        s.lock(&spec(4, 1, LockKind::Read, 250, 260), false)
            .await
            .unwrap()
    ));
    assert!(!granted(
        s.lock(&spec(1, 7, LockKind::Write, 255, 255), true)
            .await
            .unwrap()
    ));
    // flock and fcntl locks do not meet.
    let mut fl = spec(5, 1, LockKind::Write, 0, i64::MAX);
    fl.flock = true;
    assert!(granted(s.lock(&fl, false).await.unwrap()));
    let mut fl2 = spec(6, 1, LockKind::Read, 0, i64::MAX);
    fl2.flock = true;
    assert!(!granted(s.lock(&fl2, false).await.unwrap()));
    // Deleting the file drops its locks.
    s.unlink(ROOT_INO, b"f", None, Origin::NONE).await.unwrap();
    assert!(s.list_sessions().await.unwrap().is_empty());
}

async fn placements_come_in_batches_held_by_the_session(h: Handle) {
    let s = &h.store;
    three_nodes(s).await;
    let args = mount_session();
    let a = s.open_session(&args, 60_000).await.unwrap();
    let p = s.place_chunks(0, 3, &[], 0, a, 8).await.unwrap();
    let mut ids: Vec<u64> = std::iter::once(p.chunk_id)
        .chain(p.more_ids.clone())
        .collect();
    assert_eq!(ids.len(), 8);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "distinct ids");
    assert_eq!(p.targets.len(), 3);
    // A batch beyond the limit is cut to it; an existing chunk gets no more ids.
    let big = s.place_chunks(0, 3, &[], 0, a, 10_000).await.unwrap();
    assert_eq!(
        big.more_ids.len() as u32 + 1,
        dfs_meta::store::MAX_PLACE_BATCH
    );
    let again = s.place_chunks(p.chunk_id, 1, &[], 0, a, 8).await.unwrap();
    assert_eq!((again.chunk_id, again.more_ids.len()), (p.chunk_id, 0));
    // Any id of the batch commits once; the session's end releases the rest.
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let commit = |id: u64, ino: u64| {
        let targets: Vec<u64> = p.targets.iter().map(|n| n.id).collect();
        async move {
            s.commit_write(
                ino,
                10,
                &[CommitChunk {
                    index: 0,
                    chunk_id: id,
                    stored_len: 10,
                    crc32c: 1,
                    valid_len: 10,
                    node_ids: targets,
                    base: None,
                }],
                None,
                Origin::NONE,
            )
            .await
        }
    };
    commit(p.more_ids[3], f.ino).await.unwrap();
    s.close_session(a).await.unwrap();
    let g = s.create(file(ROOT_INO, "g"), Origin::NONE).await.unwrap();
    assert_eq!(
        errno(commit(p.more_ids[4], g.ino).await.unwrap_err()),
        libc::EKEYEXPIRED,
        "the closed session's unused ids are released"
    );
}

async fn a_node_is_bound_to_its_first_certificate(h: Handle) {
    let s = &h.store;
    let args = |cert: Option<&str>| RegisterArgs {
        uuid: "bound-node".into(),
        cert_name: cert.map(str::to_string),
        addr: "127.0.0.1:1".into(),
        zone: String::new(),
        capacity: 1 << 30,
        used: 0,
        chunk_ids: vec![],
        listed_after_ms: i64::MAX,
    };
    let (id, _) = s.register_node(args(Some("node-a"))).await.unwrap();
    // The same certificate registers it again; another may not take its uuid.
    assert_eq!(s.register_node(args(Some("node-a"))).await.unwrap().0, id);
    let err = s.register_node(args(Some("node-b"))).await.unwrap_err();
    assert_eq!(errno(err), libc::EPERM);
    assert!(s.check_node_certificate(id, "node-a").await.is_ok());
    let err = s.check_node_certificate(id, "node-b").await.unwrap_err();
    assert_eq!(errno(err), libc::EPERM);
    // Nothing about the node changed by the refused registration.
    let nodes = s.list_nodes().await.unwrap();
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n.record.uuid == "bound-node")
            .count(),
        1
    );
}

/// A commit of several chunks, one of them over an existing chunk, lands
/// whole; one whose base changed meanwhile changes nothing.
async fn one_commit_of_several_chunks(h: Handle) {
    let s = &h.store;
    three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let (old, _) = write_chunk(s, f.ino, 1, 10, u64::from(CS) + 10).await;
    let size = 2 * u64::from(CS) + 100;
    let mut chunks = Vec::new();
    for (index, base) in [(0, None), (1, Some(old)), (2, None)] {
        let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
        chunks.push(CommitChunk {
            index,
            chunk_id: p.chunk_id,
            stored_len: if index == 2 { 100 } else { u64::from(CS) },
            crc32c: 7,
            valid_len: if index == 2 { 100 } else { u64::from(CS) },
            node_ids: p.targets.iter().map(|n| n.id).collect(),
            base: Some(base),
        });
    }
    let stale = chunks.clone();
    let commit = |chunks| CommitArgs {
        ino: f.ino,
        size,
        chunks,
        mtime: None,
        attrs: OwnerChanges::NONE,
    };
    let after = s.commit(commit(&chunks), Origin::NONE).await.unwrap();
    assert_eq!(after.inode.size, size);
    let map = s.get_chunks(f.ino, 0).await.unwrap();
    let ids: Vec<u64> = map.chunks.iter().map(|c| c.chunk_id).collect();
    let want: Vec<u64> = chunks.iter().map(|c| c.chunk_id).collect();
    assert_eq!(ids, want, "every chunk in place, the old one replaced");
    assert!(map.chunks.iter().all(|c| c.replicas.len() == 3));
    assert_eq!(
        after.chunks.as_ref(),
        Some(&map.chunks),
        "the commit wrote the whole map, and answers it as a read would"
    );
    // The same commit again: its base for index 1 is gone (and its ids are
    // committed): refused, and the map stays.
    assert!(s
        .commit_write(f.ino, size, &stale, None, Origin::NONE)
        .await
        .is_err());
    let again = s.get_chunks(f.ino, 0).await.unwrap();
    assert_eq!(
        again.chunks.iter().map(|c| c.chunk_id).collect::<Vec<_>>(),
        want
    );
    // A commit of one chunk of three: the map is not all its own.
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let one = [CommitChunk {
        chunk_id: p.chunk_id,
        node_ids: p.targets.iter().map(|n| n.id).collect(),
        base: Some(Some(chunks[2].chunk_id)),
        ..chunks[2].clone()
    }];
    let partial = s.commit(commit(&one), Origin::NONE).await.unwrap();
    assert!(partial.chunks.is_none(), "two chunks it did not write");
}

/// The statements (round trips on PostgreSQL) a small file's calls send: a
/// guard on what session 9 cut (about 12 for a create and 30 for a commit).
async fn small_file_calls_take_few_statements(h: Handle) {
    let s = &h.store;
    let nodes = three_nodes(s).await;
    let sid = s
        .open_session(&SessionArgs::default(), 60_000)
        .await
        .unwrap();
    // The first create also takes a block of inode ids.
    s.create(file(ROOT_INO, "warm"), from(sid, 1))
        .await
        .unwrap();
    let sent = || s.metrics().statements.get();
    let mut before = sent();
    let mut took = |what: &str, at_most_pg: u64| {
        let now = sent();
        let n = now - before;
        before = now;
        if s.backend() == Backend::Postgres {
            assert!(
                n <= at_most_pg,
                "{what}: {n} statements, expected at most {at_most_pg}"
            );
        }
        assert!(n > 0, "{what} sent nothing");
    };
    let f = s.create(file(ROOT_INO, "f"), from(sid, 2)).await.unwrap();
    took("create", 4);
    let p = s.place_chunk(0, 3, &[], 0, sid).await.unwrap();
    took("place", 7); // the first also takes a block of chunk ids
    s.commit_write(
        f.ino,
        4096,
        &[CommitChunk {
            index: 0,
            chunk_id: p.chunk_id,
            stored_len: 4096,
            crc32c: 42,
            valid_len: 4096,
            node_ids: nodes,
            base: Some(None),
        }],
        None,
        from(sid, 3),
    )
    .await
    .unwrap();
    took("commit", 4);
    assert_eq!(s.get_chunks(f.ino, 0).await.unwrap().chunks.len(), 1);
    took("chunk map", 1);
    s.lookup(ROOT_INO, b"f").await.unwrap();
    took("lookup", 1);
    s.unlink(ROOT_INO, b"f", None, from(sid, 4)).await.unwrap();
    took("unlink", 4);
    // A new small file's close: its create and first commit together.
    let (ino, _) = s.take_inos(8).await.unwrap();
    let p = s.place_chunk(0, 3, &[], 0, sid).await.unwrap();
    took("numbers and a place", 20);
    let chunk = CommitChunk {
        index: 0,
        chunk_id: p.chunk_id,
        stored_len: 4096,
        crc32c: 42,
        valid_len: 4096,
        node_ids: p.targets.iter().map(|n| n.id).collect(),
        base: Some(None),
    };
    let made = s
        .create_and_commit(
            (file(ROOT_INO, "g"), ino, Timespec::now()),
            CommitArgs {
                ino,
                size: 4096,
                chunks: &[chunk],
                mtime: None,
                attrs: OwnerChanges::NONE,
            },
            from(sid, 5),
        )
        .await
        .unwrap();
    // One read, the writes together, and the commit itself.
    took("create and commit", 4);
    assert!(made.done.chunks.is_some(), "no read of the map after it");
}

async fn stale_statistics_are_refreshed(h: Handle) {
    let s = &h.store;
    if s.backend() == Backend::Postgres {
        // Autovacuum, busy with the suite's other databases, must not
        // analyze these two first.
        psql(
            &h.url,
            "ALTER TABLE inodes SET (autovacuum_enabled = off); \
             ALTER TABLE dentries SET (autovacuum_enabled = off)",
        );
    }
    for i in 0..600 {
        s.create(file(ROOT_INO, &format!("s{i}")), Origin::NONE)
            .await
            .unwrap();
    }
    if s.backend() == Backend::Sqlite {
        assert_eq!(s.refresh_statistics().await.unwrap(), 0, "nothing to do");
        return;
    }
    // A backend reports its activity counters after a second, or after 10 s
    // of idleness.
    let mut analyzed = 0;
    for _ in 0..150 {
        analyzed += s.refresh_statistics().await.unwrap();
        if analyzed >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        analyzed >= 2,
        "inodes and dentries grew by 600 rows: {analyzed}"
    );
}

async fn nul_bytes_are_refused_in_symlink_targets_and_xattr_names(h: Handle) {
    let s = &h.store;
    let mut link = node(ROOT_INO, "l", FileKind::Symlink);
    link.symlink_target = b"a\0b".to_vec();
    let err = s.create(link, Origin::NONE).await.unwrap_err();
    assert_eq!(errno(err), libc::EINVAL);
    assert!(
        s.lookup(ROOT_INO, b"l").await.is_err(),
        "nothing was created"
    );
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let err = s
        .set_xattr(f.ino, b"user.a\0b", b"v", 0, Origin::NONE)
        .await
        .unwrap_err();
    assert_eq!(errno(err), libc::EINVAL);
    assert!(s.list_xattr(f.ino).await.unwrap().is_empty());
}

/// A commit applies the chmod, chown and atime its writer held back, with
/// SetAttr's rules, in the same transaction as the data.
async fn commits_carry_attribute_changes(h: Handle) {
    let s = &h.store;
    three_nodes(s).await;
    let f = s.create(file(ROOT_INO, "f"), Origin::NONE).await.unwrap();
    let chunk = |p: &dfs_meta::store::Placement| CommitChunk {
        index: 0,
        chunk_id: p.chunk_id,
        stored_len: 10,
        crc32c: 42,
        valid_len: 10,
        node_ids: p.targets.iter().map(|n| n.id).collect(),
        base: None,
    };
    let at = |sec| Timespec { sec, nsec: 7 };
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let attrs = OwnerChanges {
        mode: Some(0o4755),
        uid: Some(f.uid),
        gid: Some(f.gid),
        atime: Some(at(1_000)),
    };
    let done = s
        .commit_write_with(
            f.ino,
            10,
            &[chunk(&p)],
            Some(at(2_000)),
            attrs,
            Origin::NONE,
        )
        .await
        .unwrap();
    let now = s.getattr(f.ino).await.unwrap();
    assert_eq!((now.mode, now.uid, now.size), (0o4755, f.uid, 10));
    assert_eq!((now.atime, now.mtime), (at(1_000), at(2_000)));
    assert_eq!(done.mode, now.mode, "the reply shows them");
    // A chown to another owner clears setuid, as SetAttr's does.
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let chown = OwnerChanges {
        uid: Some(f.uid + 1),
        ..OwnerChanges::NONE
    };
    s.commit_write_with(f.ino, 10, &[chunk(&p)], None, chown, Origin::NONE)
        .await
        .unwrap();
    let now = s.getattr(f.ino).await.unwrap();
    assert_eq!((now.mode, now.uid), (0o755, f.uid + 1));
    // Not on a pinned file: nothing of the commit lands.
    s.setattr(
        f.ino,
        SetAttrArgs {
            flags: Some(dfs_proto::inode_flags::APPEND),
            ..Default::default()
        },
        Origin::NONE,
    )
    .await
    .unwrap();
    let p = s.place_chunk(0, 3, &[], 0, 0).await.unwrap();
    let mut grow = chunk(&p);
    grow.index = 1;
    let chmod = OwnerChanges {
        mode: Some(0o600),
        ..OwnerChanges::NONE
    };
    let e = s
        .commit_write_with(
            f.ino,
            u64::from(CS) + 10,
            &[grow],
            None,
            chmod,
            Origin::NONE,
        )
        .await
        .unwrap_err();
    assert_eq!(errno(e), libc::EPERM);
    let now = s.getattr(f.ino).await.unwrap();
    assert_eq!((now.mode, now.size), (0o755, 10));
}
