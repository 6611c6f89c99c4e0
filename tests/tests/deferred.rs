//! Unlinks and creates answered before meta has them
//! (`dfs-fuse/src/deferred.rs`): only in a directory no other mount looks at,
//! in order with everything else the mount asks of meta afterwards, landing
//! on meta even when meta stalled or crashed while the mount answered, a
//! create meta refuses failing the file's close, and on meta before another
//! mount is served anything in the directory (the recall).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use dfs_tests::{http_get, names, Cluster, Mount, Options};

/// A cluster with metrics, meta on `store` (None: SQLite).
fn cluster(store: Option<String>) -> Cluster {
    Cluster::start(Options {
        store,
        metrics: true,
        ..Options::default()
    })
}

/// The name of file `i` of a test directory.
fn file(i: usize) -> String {
    format!("f{i:02}")
}

/// Makes directory `name` on `m` with `files` small files in it.
fn filled(m: &Mount, name: &str, files: usize) -> PathBuf {
    let dir = m.join(name);
    std::fs::create_dir(&dir).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(file(i)), "x").unwrap();
    }
    dir
}

/// Unlinks the files numbered `which` in `dir`.
fn unlink(dir: &Path, which: Range<usize>) {
    for i in which {
        std::fs::remove_file(dir.join(file(i))).unwrap();
    }
}

/// `dfs_fuse_deferred_<what>_total{outcome}` of a mount.
fn counted(m: &Mount, what: &str, outcome: &str) -> f64 {
    let page = http_get(m.metrics.as_ref().unwrap(), "/metrics");
    let prefix = format!("dfs_fuse_deferred_{what}_total{{outcome=\"{outcome}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Unlinks answered early, by outcome on meta.
fn deferred(m: &Mount, outcome: &str) -> f64 {
    counted(m, "unlinks", outcome)
}

/// Creates answered early, by outcome on meta.
fn created(m: &Mount, outcome: &str) -> f64 {
    counted(m, "creates", outcome)
}

/// Creates empty files numbered `which` in `dir`.
fn create(dir: &Path, which: Range<usize>) {
    for i in which {
        std::fs::File::create(dir.join(file(i))).unwrap();
    }
}

/// Runs `calls` while meta is stopped: they must finish without it.
fn while_meta_stops(c: &Cluster, what: &str, calls: impl FnOnce() + Send + 'static) {
    let meta = c.meta_pid().expect("meta runs");
    dfs_tests::signal(meta, "STOP");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        calls();
        tx.send(()).unwrap();
    });
    let answered = rx.recv_timeout(Duration::from_secs(10));
    dfs_tests::signal(meta, "CONT");
    answered.unwrap_or_else(|_| panic!("{what} while meta was stopped"));
}

/// fsync(2) of a directory: the calls in it answered early are on meta.
fn fsync_dir(dir: &Path) {
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

#[test]
fn unlinks_in_a_private_directory_are_answered_while_meta_stalls_and_land_in_order() {
    let c = cluster(None);
    let m = c.mount("m");
    c.wait_watch(&m, true);
    // The creates' replies said no other mount looks at the directory, so
    // its first unlink is answered early too.
    let dir = filled(&m, "d", 40);
    unlink(&dir, 0..1);

    let gone = dir.clone();
    while_meta_stops(&c, "30 unlinks answered", move || unlink(&gone, 1..31));
    // This mount's own view has them gone at once.
    assert!(!dir.join(file(1)).exists());

    // An fsync of the directory waits for them, then makes them durable.
    fsync_dir(&dir);
    assert_eq!(deferred(&m, "done"), 31.0);
    assert_eq!(deferred(&m, "failed"), 0.0);
    let other = c.mount("other");
    let left: Vec<String> = (31..40).map(file).collect();
    assert_eq!(
        names(&other.join("d")),
        left,
        "another mount sees them gone"
    );

    // A name unlinked early can be made again at once; the directory,
    // emptied by unlinks answered early, can be removed at once.
    unlink(&dir, 31..32);
    std::fs::write(dir.join(file(31)), "again").unwrap();
    assert_eq!(
        std::fs::read_to_string(other.join("d").join(file(31))).unwrap(),
        "again"
    );
    for name in names(&dir) {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    std::fs::remove_dir(&dir).unwrap();
    assert!(!other.join("d").exists());
    // `other` read the last file: meta keeps it for `other` until that
    // mount's close (sent within 50 ms) reaches it.
    c.wait_until("no file left", std::time::Duration::from_secs(10), |c| {
        c.status_field("files").starts_with("0 ")
    });
    assert_eq!(deferred(&m, "failed"), 0.0);
}

#[test]
fn a_directory_another_mount_looks_at_is_changed_synchronously() {
    let c = cluster(None);
    let (a, b) = (c.mount("a"), c.mount("b"));
    c.wait_watch(&a, true);
    c.wait_watch(&b, true);
    let (shared, private) = (a.join("shared"), a.join("private"));
    // B makes one directory: meta sends B its changes.
    std::fs::create_dir(b.join("shared")).unwrap();
    std::fs::create_dir(&private).unwrap();
    create(&shared, 0..10);
    unlink(&shared, 0..5);
    assert_eq!(created(&a, "done"), 0.0, "B looks at `shared`");
    assert_eq!(deferred(&a, "done"), 0.0, "B looks at `shared`");
    create(&private, 0..10);
    fsync_dir(&private);
    unlink(&private, 0..5);
    fsync_dir(&private);
    assert_eq!(created(&a, "done"), 10.0, "every create in `private`");
    assert_eq!(deferred(&a, "done"), 5.0);
    let left: Vec<String> = (5..10).map(file).collect();
    assert_eq!(names(&b.join("shared")), left);
    assert_eq!(names(&b.join("private")), left);
}

#[test]
fn unlinks_in_flight_when_meta_crashes_land_on_the_restarted_meta() {
    let mut c = cluster(None);
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = filled(&m, "d", 20);
    unlink(&dir, 0..1);
    fsync_dir(&dir);
    let unlinked_early = deferred(&m, "done") + deferred(&m, "gone");
    let made_early = created(&m, "done");
    // Sent to a meta that never answers them: it stops, then dies.
    let meta = c.meta_pid().expect("meta runs");
    dfs_tests::signal(meta, "STOP");
    let in_dir = dir.clone();
    let calls = std::thread::spawn(move || {
        unlink(&in_dir, 1..15);
        create(&in_dir, 20..30);
    });
    // Answered early, they finish at once. On a machine so loaded that the
    // directory's grant (2 s from the last reply) ran out first, the rest
    // wait for meta; then they too are in flight when it dies.
    let start = std::time::Instant::now();
    while !calls.is_finished() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_early = calls.is_finished();
    c.kill_meta();
    c.start_meta();
    calls.join().expect("every unlink and create succeeds");
    // The directory's fsync waits for them, sent again to the new meta.
    fsync_dir(&dir);
    let unlinks = deferred(&m, "done") + deferred(&m, "gone") - unlinked_early;
    let creates = created(&m, "done") - made_early;
    assert_eq!(deferred(&m, "failed"), 0.0);
    assert_eq!(created(&m, "failed"), 0.0);
    if all_early {
        assert_eq!(
            (unlinks, creates),
            (14.0, 10.0),
            "answered while meta was stopped"
        );
    } else {
        assert!(unlinks >= 1.0, "the first unlink is answered early");
    }
    let other = c.mount("other");
    let left: Vec<String> = (15..30).map(file).collect();
    assert_eq!(names(&other.join("d")), left);
}

/// The first meta's `dfs_meta_alone`: 1 while it knows no other meta shares
/// its store, so it may grant directories.
fn alone(c: &Cluster) -> f64 {
    dfs_tests::metric_or_zero(
        &http_get(c.meta_metrics.as_ref().unwrap(), "/metrics"),
        "dfs_meta_alone",
    )
}

/// `dfs ls PATH` against the meta at `addr` only.
fn ls_via(c: &Cluster, addr: &str, path: &str) -> String {
    let out = std::process::Command::new(dfs_tests::bin_dir().join("dfs"))
        .args(c.tls_args("admin"))
        .args(["--meta", addr, "ls", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cluster with meta on a fresh PostgreSQL database, and a watching mount
/// "m", once meta knows it is alone on the store (None: no PostgreSQL here).
fn alone_on_postgres() -> Option<(Cluster, Mount)> {
    let admin = dfs_tests::postgres_admin_url()?;
    let c = cluster(Some(dfs_tests::fresh_postgres_db(&admin)));
    let m = c.mount("m");
    c.wait_watch(&m, true);
    c.wait_until("the meta knows it is alone", Duration::from_secs(30), |c| {
        alone(c) == 1.0
    });
    Some((c, m))
}

/// On PostgreSQL a meta alone on the store grants directories as on SQLite
/// (`dfs-meta/src/presence.rs`). Once a second meta joins the store the
/// first recalls its grants and gives no more: the second serves everything
/// the first's mount was told is done, and that mount's calls wait for meta.
#[test]
fn on_postgresql_a_meta_alone_grants_until_another_meta_joins() {
    let Some((mut c, m)) = alone_on_postgres() else {
        return;
    };
    let dir = filled(&m, "d", 20);
    unlink(&dir, 0..10);
    fsync_dir(&dir);
    assert!(deferred(&m, "done") > 0.0, "no unlink answered early");
    let made = m.join("e");
    std::fs::create_dir(&made).unwrap();
    create(&made, 0..10);
    fsync_dir(&made);
    assert!(created(&m, "done") > 0.0, "no create answered early");

    // Creates go on in "busy" while the second meta joins: the grant there
    // is live when the first meta recalls it.
    let busy = m.join("busy");
    std::fs::create_dir(&busy).unwrap();
    let (stop, stopped) = mpsc::channel::<()>();
    let creating = {
        let busy = busy.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while stopped.try_recv().is_err() {
                std::fs::File::create(busy.join(format!("b{n:05}"))).unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let second = c.add_meta();
    c.wait_until("the first meta gives way", Duration::from_secs(30), |c| {
        alone(c) == 0.0
    });
    stop.send(()).unwrap();
    let made_busy: usize = creating.join().unwrap();
    assert!(
        recalls(&c, "answered") >= 1.0,
        "the live grant was recalled, and the mount answered"
    );
    let log = std::fs::read_to_string(c.dir.path().join("meta.log")).unwrap();
    assert!(
        log.contains("another meta joins the store") && !log.contains("lost the presence hold"),
        "the first meta made room itself (not fenced off)"
    );
    let addr = c.extra_meta_addr(second).to_string();
    let listed = |path: &str| ls_via(&c, &addr, path);
    let d = listed("/d");
    for i in 0..20 {
        assert_eq!(
            d.contains(&file(i)),
            i >= 10,
            "{} on the second meta",
            file(i)
        );
    }
    let b = listed("/busy");
    assert!(
        (0..made_busy).all(|n| b.contains(&format!("b{n:05}"))),
        "the second meta lists every one of the {made_busy} files created meanwhile"
    );
    let e = listed("/e");
    assert!(
        (0..10).all(|i| e.contains(&file(i))),
        "the second meta lists {e}"
    );

    let (unlinks, creates) = (deferred(&m, "done"), created(&m, "done"));
    unlink(&dir, 10..20);
    create(&made, 10..20);
    fsync_dir(&dir);
    fsync_dir(&made);
    assert_eq!(deferred(&m, "done"), unlinks, "an unlink answered early");
    assert_eq!(created(&m, "done"), creates, "a create answered early");
    assert!(names(&dir).is_empty());
    assert!(
        !listed("/d").contains('f'),
        "the second meta still lists a file"
    );
}

/// A meta alone that stalls (SIGSTOP) cannot make room for a joining meta:
/// the newcomer ends its database connection and serves once the stalled
/// meta's grants have run out; resumed, the old one finds itself sharing the
/// store and grants nothing.
#[test]
fn a_stalled_meta_alone_is_fenced_off_by_a_joining_meta() {
    let Some((mut c, m)) = alone_on_postgres() else {
        return;
    };
    let dir = filled(&m, "d", 10);
    unlink(&dir, 0..5);
    fsync_dir(&dir);
    assert!(deferred(&m, "done") > 0.0, "no unlink answered early");

    let first = c.meta_pid().expect("meta runs");
    dfs_tests::signal(first, "STOP");
    let second = c.add_meta();
    let addr = c.extra_meta_addr(second).to_string();
    // Answered while the first meta is still stopped.
    let listed = ls_via(&c, &addr, "/d");
    dfs_tests::signal(first, "CONT");
    for i in 0..10 {
        assert_eq!(
            listed.contains(&file(i)),
            i >= 5,
            "{} on the second meta",
            file(i)
        );
    }

    c.wait_until(
        "the resumed meta shares the store",
        Duration::from_secs(30),
        |c| alone(c) == 0.0,
    );
    let unlinks = deferred(&m, "done");
    unlink(&dir, 5..10);
    assert_eq!(deferred(&m, "done"), unlinks, "an unlink answered early");
    assert!(names(&dir).is_empty());
}

#[test]
fn creates_in_a_private_directory_are_answered_while_meta_stalls_and_land_in_order() {
    let c = cluster(None);
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    // A setgid directory of another group: new files take its group.
    std::os::unix::fs::chown(&dir, None, Some(4321)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
    // The mount's first create waits for meta: its reply grants the mount
    // inode numbers. (The mkdir's reply said no other mount looks at `d`.)
    create(&dir, 0..1);
    assert_eq!(created(&m, "done"), 0.0);

    let made = dir.clone();
    while_meta_stops(&c, "20 empty files created and closed", move || {
        create(&made, 1..21)
    });
    // O_EXCL is answered early too (another mount's create of the name
    // would recall the directory first).
    fsync_dir(&dir);
    let before = created(&m, "done");
    assert_eq!(before, 20.0);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join("lock"))
        .unwrap();
    std::fs::remove_file(dir.join("lock")).unwrap();
    fsync_dir(&dir);
    assert_eq!(created(&m, "done"), before + 1.0, "the O_EXCL create");
    let here: Vec<std::fs::Metadata> = (0..21)
        .map(|i| std::fs::metadata(dir.join(file(i))).unwrap())
        .collect();

    // A new file's data waits for its create; names made and changed at
    // once land in order.
    std::fs::write(dir.join(file(5)), "five").unwrap();
    std::fs::write(dir.join("moved"), "m").unwrap();
    std::fs::rename(dir.join("moved"), dir.join(file(21))).unwrap();
    std::fs::write(dir.join("gone"), "g").unwrap();
    std::fs::remove_file(dir.join("gone")).unwrap();
    create(&dir, 22..23);
    unlink(&dir, 22..23);
    create(&dir, 22..23);
    fsync_dir(&dir);
    assert_eq!(created(&m, "failed"), 0.0);
    assert!(created(&m, "done") >= 22.0, "{}", created(&m, "done"));

    let other = c.mount("other");
    let d = other.join("d");
    let all: Vec<String> = (0..23).map(file).collect();
    assert_eq!(names(&d), all, "another mount sees every name");
    for (i, seen) in here.iter().enumerate() {
        let there = std::fs::metadata(d.join(file(i))).unwrap();
        let attrs = |a: &std::fs::Metadata| (a.ino(), a.mode(), a.uid(), a.gid(), a.nlink());
        assert_eq!(attrs(&there), attrs(seen), "{}", file(i));
        assert_eq!(there.gid(), 4321, "the setgid directory's group");
        if i != 5 {
            assert_eq!(
                (there.mtime(), there.mtime_nsec(), there.len()),
                (seen.mtime(), seen.mtime_nsec(), 0),
                "{}: the time this mount gave it",
                file(i)
            );
        }
    }
    assert_eq!(std::fs::read_to_string(d.join(file(5))).unwrap(), "five");
    assert_eq!(std::fs::read_to_string(d.join(file(21))).unwrap(), "m");
    assert_eq!(std::fs::metadata(d.join(file(22))).unwrap().len(), 0);
}

/// `dfs_meta_rpc_requests_total{code="Ok", method}`.
fn meta_calls(c: &Cluster, method: &str) -> f64 {
    let page = http_get(c.meta_metrics.as_ref().unwrap(), "/metrics");
    dfs_tests::metric_or_zero(
        &page,
        &format!("dfs_meta_rpc_requests_total{{code=\"Ok\",method=\"{method}\"}}"),
    )
}

#[test]
fn a_new_small_files_create_rides_with_its_first_commit() {
    let c = cluster(None);
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    create(&dir, 0..1);
    let (creates, commits) = (meta_calls(&c, "Create"), meta_calls(&c, "CommitWrite"));
    assert!(
        creates >= 2.0,
        "meta counted the mkdir and the first create"
    );
    for i in 1..31 {
        std::fs::write(dir.join(file(i)), format!("file {i}")).unwrap();
    }
    // Written for longer than the hold (or kept open): it goes alone.
    let mut slow = std::fs::File::create(dir.join("slow")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    slow.write_all(b"late").unwrap();
    drop(slow);
    fsync_dir(&dir);
    let carried = 30.0 - (meta_calls(&c, "Create") - creates - 1.0);
    assert!(
        carried >= 25.0,
        "most files' creates went with their commits: {carried} of 30"
    );
    assert_eq!(
        meta_calls(&c, "CommitWrite") - commits,
        31.0,
        "one commit each"
    );
    assert_eq!(created(&m, "done"), 31.0, "every create answered");
    assert_eq!(created(&m, "failed"), 0.0);

    let other = c.mount("other");
    let d = other.join("d");
    let mut all: Vec<String> = (0..31).map(file).collect();
    all.push("slow".into());
    assert_eq!(names(&d), all, "another mount sees every name");
    for i in 1..31 {
        let there = std::fs::read_to_string(d.join(file(i))).unwrap();
        assert_eq!(there, format!("file {i}"));
        let (here, there) = (
            std::fs::metadata(dir.join(file(i))).unwrap(),
            std::fs::metadata(d.join(file(i))).unwrap(),
        );
        assert_eq!(
            (here.ino(), here.mode(), here.mtime(), here.mtime_nsec()),
            (there.ino(), there.mode(), there.mtime(), there.mtime_nsec()),
            "{}",
            file(i)
        );
    }
    assert_eq!(std::fs::read_to_string(d.join("slow")).unwrap(), "late");
}

#[test]
fn a_create_meta_refuses_fails_the_files_close_and_its_name_goes() {
    let c = Cluster::start(Options {
        metrics: true,
        meta_env: vec![("DFS_META_FAILPOINTS".into(), "refuse_early_create=1".into())],
        ..Options::default()
    });
    let m = c.mount("m");
    c.wait_watch(&m, true);
    let dir = m.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(file(0)), "kept").unwrap();
    // Answered early, refused by meta: what was written is never
    // acknowledged, by fsync or by close. (When the refusal comes before
    // the open returns, the open fails, with EIO too: see below.)
    let refused = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(dir.join(file(1)))?;
        f.write_all(b"never acknowledged")?;
        f.sync_all()
    })();
    let err = refused.expect_err("fsync of a file meta refused");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // A refusal ends the early answers until meta's next word: this create
    // waits for it.
    std::fs::write(dir.join(file(2)), "kept too").unwrap();
    // close(2) itself (Rust's File drops its errors; Python's does not). On
    // a loaded machine meta's refusal may come before the open returns: the
    // open fails then, with EIO too (the kernel checks the new file's
    // attributes, which the refusal made stale).
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             try:\n    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n\
             except OSError as e:\n    print(e.errno)\n    sys.exit()\n\
             os.write(fd, b'never acknowledged')\n\
             try:\n    os.close(fd)\nexcept OSError as e:\n    print(e.errno)\n",
        )
        .arg(dir.join(file(3)))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        libc::EIO.to_string(),
        "open or close of a file meta refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(created(&m, "failed"), 2.0);
    // The names go from this mount as from every other.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dir.join(file(1)).exists() || dir.join(file(3)).exists() {
        assert!(std::time::Instant::now() < deadline, "the names stay");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(names(&dir), vec![file(0), file(2)]);
    let other = c.mount("other");
    assert_eq!(names(&other.join("d")), vec![file(0), file(2)]);
    assert_eq!(
        std::fs::read_to_string(other.join("d").join(file(0))).unwrap(),
        "kept"
    );
}

/// A cluster whose meta holds each create a mount answered early for a
/// second before making it, so another mount's calls come while it is in
/// flight.
fn slow_cluster() -> Cluster {
    Cluster::start(Options {
        metrics: true,
        meta_env: vec![("DFS_META_FAILPOINTS".into(), "slow_early_create=1".into())],
        ..Options::default()
    })
}

/// `dfs_meta_grant_recalls_total{outcome}`.
fn recalls(c: &Cluster, outcome: &str) -> f64 {
    let page = http_get(c.meta_metrics.as_ref().unwrap(), "/metrics");
    dfs_tests::metric_or_zero(
        &page,
        &format!("dfs_meta_grant_recalls_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Two watching mounts; A makes `d` and its first file there (a create
/// that waits for meta, whose reply grants A inode numbers and `d`).
fn a_holds_d(c: &Cluster) -> (Mount, Mount, PathBuf) {
    let (a, b) = (c.mount("a"), c.mount("b"));
    c.wait_watch(&a, true);
    c.wait_watch(&b, true);
    let dir = a.join("d");
    std::fs::create_dir(&dir).unwrap();
    create(&dir, 0..1);
    (a, b, dir)
}

#[test]
fn another_mount_sees_every_file_a_mount_created_early_as_soon_as_it_looks() {
    let c = slow_cluster();
    let (a, b, dir) = a_holds_d(&c);
    // Answered at once; meta makes them a second later.
    create(&dir, 1..6);
    assert_eq!(created(&a, "done"), 0.0, "still in flight");
    // B's first look into the directory waits until they are on meta.
    let all: Vec<String> = (0..6).map(file).collect();
    assert_eq!(names(&b.join("d")), all, "B sees every file A made");
    assert_eq!(created(&a, "done"), 5.0);
    assert_eq!(recalls(&c, "answered"), 1.0);
    // B looks at the directory now: A's next create there waits for meta.
    create(&dir, 6..7);
    assert_eq!(created(&a, "done"), 5.0, "synchronous now");
    assert_eq!(names(&b.join("d")).len(), 7);
    assert_eq!(created(&a, "failed"), 0.0);
}

#[test]
fn an_exclusive_create_answered_early_is_exclusive() {
    let c = slow_cluster();
    let (a, b, dir) = a_holds_d(&c);
    let exclusive = |path: PathBuf| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    // A takes the lock: answered at once, on meta a second later.
    let mut mine = exclusive(dir.join("lock")).expect("A makes the lock file");
    assert_eq!(created(&a, "done"), 0.0, "answered early");
    // B, meanwhile, must find it taken.
    let theirs = exclusive(b.join("d").join("lock"));
    assert_eq!(
        theirs.map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists,
        "B made a lock file A holds"
    );
    mine.write_all(b"held by a").unwrap();
    mine.sync_all().expect("A's lock file is on meta");
    drop(mine);
    assert_eq!((created(&a, "done"), created(&a, "failed")), (1.0, 0.0));
    assert_eq!(
        std::fs::read_to_string(b.join("d").join("lock")).unwrap(),
        "held by a"
    );
}

#[test]
fn a_stopped_mount_holding_a_directory_is_waited_out() {
    let c = cluster(None);
    let (a, b, dir) = a_holds_d(&c);
    // A holds `d` and cannot answer a recall.
    let pid = a.daemon_pid().expect("A's daemon runs");
    dfs_tests::signal(pid, "STOP");
    let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| names(&b.join("d"))));
    dfs_tests::signal(pid, "CONT");
    assert_eq!(listed.expect("B lists d"), vec![file(0)]);
    assert_eq!(recalls(&c, "ran_out"), 1.0, "A's grant was waited out");
    assert_eq!(recalls(&c, "answered"), 0.0);
    // Once it runs again, A's calls in `d` wait for meta: B looks at it.
    let before = created(&a, "done");
    create(&dir, 1..2);
    assert_eq!(created(&a, "done"), before);
    assert_eq!(names(&b.join("d")), vec![file(0), file(1)]);
}

#[test]
fn another_mount_cannot_remove_a_directory_whose_files_are_still_in_flight() {
    let c = slow_cluster();
    let (a, b, dir) = a_holds_d(&c);
    std::fs::remove_file(dir.join(file(0))).unwrap();
    fsync_dir(&dir);
    // Answered at once; on meta a second later.
    create(&dir, 1..3);
    assert_eq!(created(&a, "done"), 0.0, "still in flight");
    // B removes `d` by name from the root, which A does not hold: meta
    // recalls `d` itself first, so it is not empty.
    let err = std::fs::remove_dir(b.join("d")).expect_err("d holds A's files");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    assert_eq!(created(&a, "done"), 2.0);
    assert_eq!(names(&b.join("d")), vec![file(1), file(2)]);
}

/// UnlinkMany (how a mount sends the unlinks it answered early), called as
/// a client: each unlink is done and answered as its own Unlink, under its
/// own request id, so the same call sent again replays it.
#[test]
fn unlinks_sent_in_one_call_are_each_answered_as_alone() {
    use dfs_proto::pb::{self, meta_client::MetaClient};
    let c = cluster(None);
    let m = c.mount("m");
    let dir = filled(&m, "d", 4);
    std::fs::create_dir(dir.join("sub")).unwrap();
    let ino = |name: &str| std::fs::metadata(dir.join(name)).unwrap().ino();
    let (d, f0, f1, f2) = (
        std::fs::metadata(&dir).unwrap().ino(),
        ino(&file(0)),
        ino(&file(1)),
        ino(&file(2)),
    );
    let unlink = |name: &str, expect_ino: u64| pb::UnlinkRequest {
        parent: d,
        name: name.as_bytes().to_vec(),
        keep_open: false,
        expect_ino,
    };
    let batch = pb::UnlinkManyRequest {
        unlinks: vec![
            unlink(&file(0), f0),
            unlink("missing", 0),
            unlink("sub", 0),
            // Names another inode now: nothing is removed.
            unlink(&file(1), f2),
            unlink(&file(2), f2),
        ],
        request_ids: vec![11, 12, 13, 14, 15],
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (first, again, refused) = rt.block_on(async {
        let channel = c
            .grpc_channel(&c.meta_addr, dfs_auth::Role::Meta, Some("client"))
            .await
            .unwrap();
        let mut meta = MetaClient::new(channel);
        let session = meta
            .open_session(pb::OpenSessionRequest::default())
            .await
            .unwrap()
            .into_inner()
            .session_id;
        let in_session = |r: pb::UnlinkManyRequest| {
            let mut r = tonic::Request::new(r);
            let id = session.to_string().parse().unwrap();
            r.metadata_mut()
                .insert(dfs_proto::session::SESSION_HEADER, id);
            r
        };
        let first = meta.unlink_many(in_session(batch.clone())).await.unwrap();
        let again = meta.unlink_many(in_session(batch.clone())).await.unwrap();
        let too_many = pb::UnlinkManyRequest {
            unlinks: vec![unlink(&file(3), 0); dfs_proto::MAX_UNLINK_BATCH + 1],
            request_ids: (1..=dfs_proto::MAX_UNLINK_BATCH as u64 + 1).collect(),
        };
        let unnumbered = pb::UnlinkManyRequest {
            unlinks: vec![unlink(&file(3), 0)],
            request_ids: vec![0],
        };
        let refused = [
            meta.unlink_many(in_session(too_many))
                .await
                .unwrap_err()
                .code(),
            meta.unlink_many(in_session(unnumbered))
                .await
                .unwrap_err()
                .code(),
            meta.unlink_many(batch).await.unwrap_err().code(),
        ];
        (first.into_inner(), again.into_inner(), refused)
    });
    let summary = |r: &pb::UnlinkManyReply| -> Vec<(i32, u64)> {
        r.outcomes
            .iter()
            .map(|o| (o.errno, o.reply.as_ref().map_or(0, |r| r.ino)))
            .collect()
    };
    assert_eq!(
        summary(&first),
        vec![
            (0, f0),
            (libc::ENOENT, 0),
            (libc::EISDIR, 0),
            (libc::ENOENT, 0),
            (0, f2)
        ],
        "each as its own Unlink"
    );
    let parent = first.outcomes[4].reply.as_ref().and_then(|r| r.parent);
    assert_eq!(parent.map(|p| p.ino), Some(d), "with its directory");
    assert_eq!(summary(&again), summary(&first), "sent again: replayed");
    assert_eq!(
        refused,
        [
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition
        ],
        "too many, an unlink without its request id, no session"
    );
    let other = c.mount("other");
    assert_eq!(
        names(&other.join("d")),
        vec![file(1), file(3), "sub".to_string()],
        "the two done, and nothing else"
    );
    let kept = std::fs::metadata(other.join("d").join(file(1))).unwrap();
    assert_eq!(kept.ino(), f1, "the name that named another inode stays");
}

/// CreateMany (how a mount sends the creates it answered early and that go
/// without a commit), called as a client: each create is done and answered
/// as its own Create, under its own request id, so the same call sent again
/// replays it.
#[test]
fn creates_sent_in_one_call_are_each_answered_as_alone() {
    use dfs_proto::pb::{self, meta_client::MetaClient};
    let c = cluster(None);
    let m = c.mount("m");
    std::fs::create_dir(m.join("d")).unwrap();
    let d = std::fs::metadata(m.join("d")).unwrap().ino();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (grant, first, again, refused) = rt.block_on(async {
        let channel = c
            .grpc_channel(&c.meta_addr, dfs_auth::Role::Meta, Some("client"))
            .await
            .unwrap();
        let mut meta = MetaClient::new(channel);
        let session = meta
            .open_session(pb::OpenSessionRequest::default())
            .await
            .unwrap()
            .into_inner()
            .session_id;
        let in_session = |r: pb::CreateManyRequest| {
            let mut r = tonic::Request::new(r);
            let id = session.to_string().parse().unwrap();
            r.metadata_mut()
                .insert(dfs_proto::session::SESSION_HEADER, id);
            r
        };
        let create = |name: &str| pb::CreateRequest {
            parent: d,
            name: name.as_bytes().to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o640,
            ..Default::default()
        };
        // A plain create that asks for inode numbers of the client's own.
        let seed = pb::CreateRequest {
            want_inos: 8,
            ..create("seed")
        };
        let grant = meta.create(seed).await.unwrap().into_inner().inos.unwrap();
        let time = pb::Timespec {
            sec: 1_700_000_000,
            nsec: 5,
        };
        let numbered = |name: &str, ino: u64, grant: &pb::InoGrant| pb::CreateRequest {
            ino,
            grant: Some(grant.clone()),
            time: Some(time),
            ..create(name)
        };
        let forged = pb::InoGrant {
            token: vec![0; 32],
            ..grant.clone()
        };
        let batch = pb::CreateManyRequest {
            creates: vec![
                numbered("a", grant.first, &grant),
                numbered("b", grant.first + 1, &grant),
                // The name is taken (by `a`, earlier in the same call).
                numbered("a", grant.first + 2, &grant),
                create("plain"),
                numbered("forged", grant.first + 3, &forged),
                create("bad/name"),
            ],
            request_ids: vec![21, 22, 23, 24, 25, 26],
        };
        let first = meta.create_many(in_session(batch.clone())).await.unwrap();
        let again = meta.create_many(in_session(batch.clone())).await.unwrap();
        let too_many = pb::CreateManyRequest {
            creates: vec![create("x"); dfs_proto::MAX_CREATE_BATCH + 1],
            request_ids: (1..=dfs_proto::MAX_CREATE_BATCH as u64 + 1).collect(),
        };
        let unnumbered = pb::CreateManyRequest {
            creates: vec![create("x")],
            request_ids: vec![0],
        };
        let refused = [
            meta.create_many(in_session(too_many))
                .await
                .unwrap_err()
                .code(),
            meta.create_many(in_session(unnumbered))
                .await
                .unwrap_err()
                .code(),
            meta.create_many(batch).await.unwrap_err().code(),
        ];
        (grant, first.into_inner(), again.into_inner(), refused)
    });
    let summary = |r: &pb::CreateManyReply| -> Vec<(bool, u64)> {
        r.outcomes
            .iter()
            .map(|o| {
                let ino = o
                    .reply
                    .as_ref()
                    .and_then(|r| r.attr.as_ref())
                    .map_or(0, |a| a.ino);
                (o.errno == 0, ino)
            })
            .collect()
    };
    let made = summary(&first);
    assert_eq!(
        made[..3],
        [(true, grant.first), (true, grant.first + 1), (false, 0)],
        "each as its own Create, under the client's numbers"
    );
    assert_eq!(first.outcomes[2].errno, libc::EEXIST, "a taken name");
    assert!(made[3].0 && made[3].1 != 0, "a plain create: {made:?}");
    assert_eq!(
        made[4..],
        [(false, 0), (false, 0)],
        "a forged grant, a bad name"
    );
    assert_eq!(first.outcomes[5].errno, libc::EINVAL);
    let parent = first.outcomes[1].reply.as_ref().and_then(|r| r.parent);
    assert_eq!(parent.map(|p| p.ino), Some(d), "with its directory");
    assert_eq!(summary(&again), made, "sent again: replayed");
    assert_eq!(
        refused,
        [
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition
        ],
        "too many, a create without its request id, no session"
    );
    let other = c.mount("other");
    let dir = other.join("d");
    assert_eq!(
        names(&dir),
        vec!["a", "b", "plain", "seed"],
        "the three made, and nothing else"
    );
    let a = std::fs::metadata(dir.join("a")).unwrap();
    assert_eq!(
        (a.ino(), a.mode() & 0o7777, a.mtime()),
        (grant.first, 0o640, 1_700_000_000)
    );
}
