//! The FUSE mount end to end: a real cluster, a real kernel mount made by the
//! real `dfs-fuse`, and ordinary tools (cp, diff, tar, git, rsync...) on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use dfs_tests::{sh, Cluster, Options};

const CS: usize = 1 << 20;

fn cluster() -> Cluster {
    Cluster::start(Options {
        chunk_size: CS as u32,
        ..Options::default()
    })
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// A local tree with the sizes that matter around chunk boundaries, and one big file.
fn make_tree(root: &Path) {
    use rand::RngCore;
    let sizes = [0, 1, CS - 1, CS, CS + 1, 3 * CS + 17, 100 << 20];
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for (i, size) in sizes.iter().enumerate() {
        let mut data = vec![0u8; *size];
        rand::thread_rng().fill_bytes(&mut data);
        let dir = if i % 2 == 0 {
            root.to_path_buf()
        } else {
            root.join("sub/deeper")
        };
        std::fs::write(dir.join(format!("f{i}-{size}")), data).unwrap();
    }
    std::fs::write(root.join("sub/text.txt"), "hello dfs\n").unwrap();
}

#[test]
fn cp_tree_in_and_out_is_identical() {
    let c = cluster();
    let m = c.mount("mnt");
    let work = c.dir.path();
    make_tree(&work.join("tree"));
    sh(
        work,
        &format!("cp -r tree {0}/ && diff -r tree {0}/tree", m.path.display()),
    );
    sh(
        work,
        &format!("cp -r {}/tree out && diff -r tree out", m.path.display()),
    );
    let listing = sh(&m.path, "ls -l tree tree/sub/deeper");
    assert!(listing.contains(&format!("{}", 100 << 20)), "{listing}");
    // Another mount sees the same bytes after the copy closed its files.
    let m2 = c.mount("mnt2");
    sh(work, &format!("diff -r tree {}/tree", m2.path.display()));
}

#[test]
fn shell_tools_behave() {
    let c = cluster();
    let m = c.mount("mnt");
    sh(&m.path, "echo hello > a && cat a | grep -qx hello");
    sh(
        &m.path,
        "mkdir -p d/e && mv a d/e/b && test ! -e a && test -f d/e/b",
    );
    sh(&m.path, "ln d/e/b hard && ln -s d/e/b soft && test \"$(readlink soft)\" = d/e/b && cat soft | grep -qx hello");
    assert_eq!(std::fs::metadata(m.join("hard")).unwrap().nlink(), 2);
    sh(&m.path, "touch -d '2120-01-02 03:04:05.123456789' d/e/b");
    let mtime = std::fs::metadata(m.join("d/e/b")).unwrap();
    assert_eq!(
        (mtime.mtime(), mtime.mtime_nsec()),
        (4_733_607_845, 123_456_789),
        "ns times past 2106"
    );
    sh(&m.path, "chmod 640 d/e/b");
    assert_eq!(
        std::fs::metadata(m.join("d/e/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    // truncate up reads zeros; truncate down cuts.
    sh(
        &m.path,
        "printf 0123456789 > t && truncate -s 3000000 t && truncate -s 4 t && truncate -s 8 t",
    );
    assert_eq!(std::fs::read(m.join("t")).unwrap(), b"0123\0\0\0\0");
    // Sparse file: a write far past the end leaves a hole of zeros.
    sh(
        &m.path,
        "dd if=/dev/urandom of=sparse bs=1k count=1 seek=5000 status=none",
    );
    let sparse = std::fs::read(m.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 5001 * 1024);
    assert!(sparse[..5000 * 1024].iter().all(|&b| b == 0));
    sh(
        &m.path,
        "rm -r d && test ! -e d && rm hard soft t sparse && test -z \"$(ls -A)\"",
    );
}

#[test]
fn errnos_are_the_posix_ones() {
    let c = cluster();
    let m = c.mount("mnt");
    std::fs::create_dir(m.join("d")).unwrap();
    std::fs::write(m.join("d/f"), b"x").unwrap();
    assert_eq!(errno_of(std::fs::create_dir(m.join("d"))), libc::EEXIST);
    assert_eq!(errno_of(std::fs::remove_dir(m.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(std::fs::File::open(m.join("nope"))), libc::ENOENT);
    // Past the largest file dfs stores (8 PiB): EFBIG, and nothing changes.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("d/f"))
        .unwrap();
    assert_eq!(errno_of(f.set_len(999_999_999_999_999_999)), libc::EFBIG);
    assert_eq!(
        errno_of(std::os::unix::fs::FileExt::write_at(&f, b"y", 1 << 53)),
        libc::EFBIG
    );
    drop(f);
    assert_eq!(std::fs::read(m.join("d/f")).unwrap(), b"x");
    assert_eq!(
        errno_of(std::fs::write(m.join(&"x".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(std::fs::rename(m.join("d"), m.join("d/inside"))),
        libc::EINVAL
    );
    assert_eq!(errno_of(std::fs::remove_file(m.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(std::fs::remove_dir(m.join("d/f"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(std::fs::hard_link(m.join("d"), m.join("dl"))),
        libc::EPERM
    );
    assert_eq!(
        errno_of(std::fs::create_dir(m.join("d/f/g"))),
        libc::ENOTDIR
    );
    let excl = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("d/f"));
    assert_eq!(errno_of(excl), libc::EEXIST);
    assert_eq!(
        std::fs::read(m.join("d/f")).unwrap(),
        b"x",
        "failed calls changed nothing"
    );
}

#[test]
fn open_modes_fsync_and_shared_handles() {
    let c = cluster();
    let m = c.mount("mnt");
    let p = m.join("f");
    std::fs::write(&p, b"abc").unwrap();
    let mut app = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    app.write_all(b"def").unwrap();
    app.sync_all().unwrap();
    drop(app);
    assert_eq!(std::fs::read(&p).unwrap(), b"abcdef");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0, "O_TRUNC");
    // Two descriptors on one file: the reader sees the writer's bytes before close.
    let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let mut r = std::fs::File::open(&p).unwrap();
    w.write_all(&vec![7u8; CS + 10]).unwrap();
    w.seek(SeekFrom::Start(CS as u64 - 2)).unwrap();
    w.write_all(b"XYZW").unwrap();
    let mut buf = vec![0u8; 6];
    r.seek(SeekFrom::Start(CS as u64 - 3)).unwrap();
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, &[7, b'X', b'Y', b'Z', b'W', 7]);
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), CS as u64 + 10);
}

#[test]
fn xattrs_through_the_mount() {
    let c = cluster();
    let m = c.mount("mnt");
    sh(
        &m.path,
        "touch f && setfattr -n user.color -v blue f && setfattr -n user.n -v 1 f",
    );
    let got = sh(&m.path, "getfattr --only-values -n user.color f");
    assert_eq!(got, "blue");
    let all = sh(&m.path, "getfattr -d f");
    assert!(
        all.contains("user.color=\"blue\"") && all.contains("user.n=\"1\""),
        "{all}"
    );
    sh(
        &m.path,
        "setfattr -x user.n f && ! getfattr -n user.n f 2>/dev/null",
    );
}

#[test]
fn tar_git_and_rsync_work_inside() {
    let c = cluster();
    let m = c.mount("mnt");
    let work = c.dir.path();
    std::fs::create_dir_all(work.join("src/a/b")).unwrap();
    for i in 0..40 {
        std::fs::write(
            work.join(format!("src/a/b/file{i}.txt")),
            format!("line {i}\n").repeat(i * 100),
        )
        .unwrap();
    }
    sh(work, &format!("tar -C src -cf {}/src.tar . && mkdir {0}/x && tar -C {0}/x -xf {0}/src.tar && diff -r src {0}/x", m.path.display()));
    sh(work, &format!("tar -C {}/x -cf back.tar . && mkdir back && tar -C back -xf back.tar && diff -r src back", m.path.display()));
    sh(
        work,
        &format!(
            "rsync -a src/ {}/r/ && diff -r src {0}/r && rsync -a {0}/r/ r2/ && diff -r src r2",
            m.path.display()
        ),
    );
    sh(
        &m.path,
        "mkdir repo && cd repo && git init -q && git config user.email t@t && git config user.name t \
         && cp -r ../x/a . && git add -A && git commit -qm one && echo more >> a/b/file1.txt \
         && git commit -qam two && git fsck --strict && test \"$(git log --oneline | wc -l)\" = 2",
    );
}

/// chmod, chown and utimes made on a new file before its first close (as
/// `tar x` and `cp -p` do) are answered by the mount and travel with the
/// file's commit: they must show at once, stay after the close (not be
/// overwritten by the write's own time), and reach other mounts with the data.
/// On a file whose content others can already read, a chmod reaches them
/// before the close.
#[test]
fn attributes_set_on_a_file_being_written_stick() {
    use std::fs::{File, FileTimes, OpenOptions, Permissions};
    use std::time::{SystemTime, UNIX_EPOCH};
    let c = cluster();
    let a = c.mount("a");
    let b = c.mount("b");
    let work = c.dir.path();
    let src = work.join("src");
    std::fs::create_dir(&src).unwrap();
    let old = |days: u64| UNIX_EPOCH + Duration::from_secs(1_500_000_000 + days * 86_400);
    for (i, mode) in [0o640, 0o755, 0o600, 0o444].iter().enumerate() {
        let path = src.join(format!("f{i}"));
        std::fs::write(&path, format!("content {i}\n").repeat(i * 50 + 1)).unwrap();
        let f = File::open(&path).unwrap();
        f.set_times(
            FileTimes::new()
                .set_modified(old(i as u64))
                .set_accessed(old(9)),
        )
        .unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(*mode)).unwrap();
    }
    sh(
        work,
        &format!(
            "tar -C src -cf t.tar . && mkdir {0}/x && tar -C {0}/x -xf t.tar",
            a.path.display()
        ),
    );
    let shown = |root: &Path, i: usize| {
        let m = std::fs::metadata(root.join(format!("f{i}"))).unwrap();
        (
            m.mode() & 0o7777,
            m.mtime(),
            std::fs::read(root.join(format!("f{i}"))).unwrap(),
        )
    };
    for i in 0..4 {
        let want = shown(&src, i);
        assert_eq!(
            shown(&a.join("x"), i),
            want,
            "f{i} on the mount that extracted it"
        );
        assert_eq!(shown(&b.join("x"), i), want, "f{i} on another mount");
    }

    // The same by hand: the open file shows them at once, and they stay.
    let path = a.join("by-hand");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"some bytes").unwrap();
    f.set_permissions(Permissions::from_mode(0o751)).unwrap();
    f.set_times(FileTimes::new().set_modified(old(3))).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.modified().unwrap()),
        (0o751, old(3))
    );
    drop(f);
    for m in [&a, &b] {
        let meta = std::fs::metadata(m.join("by-hand")).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.modified().unwrap(), meta.len()),
            (0o751, old(3), 10)
        );
    }
    // A write after the utimes moves mtime again.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.set_times(FileTimes::new().set_modified(old(4))).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    let after = std::fs::metadata(b.join("by-hand"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        after > SystemTime::now() - Duration::from_secs(60),
        "mtime of the last write"
    );

    // A chown to another group after a held chmod: its setuid clearing lands last.
    let mut f = File::create(a.join("setuid")).unwrap();
    f.write_all(b"#!/bin/sh\n").unwrap();
    f.set_permissions(Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::fchown(&f, None, Some(1)).unwrap();
    assert_eq!(
        f.metadata().unwrap().mode() & 0o7777,
        0o755,
        "chown cleared setuid"
    );
    drop(f);
    for m in [&a, &b] {
        let meta = std::fs::metadata(m.join("setuid")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o755, 1));
    }

    // Content others can read: a chmod reaches them while the writer still has it open.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"?").unwrap();
    f.set_permissions(Permissions::from_mode(0o600)).unwrap();
    c.wait_until(
        "the chmod reaches the other mount",
        Duration::from_secs(10),
        |_| std::fs::metadata(b.join("by-hand")).unwrap().mode() & 0o7777 == 0o600,
    );
    drop(f);
    assert_eq!(std::fs::read(b.join("by-hand")).unwrap(), b"some bytes!?");
}

#[test]
fn a_node_killed_during_a_large_copy_loses_nothing() {
    let mut c = cluster();
    let m = c.mount("mnt");
    let src = c.random_file("big", 120 << 20);
    let dst = m.join("big");
    let copy = {
        let (src, dst) = (src.clone(), dst.clone());
        std::thread::spawn(move || {
            std::process::Command::new("cp")
                .arg(&src)
                .arg(&dst)
                .status()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    c.kill_node(1);
    assert!(
        copy.join().unwrap().success(),
        "cp failed after a node died"
    );
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap(),
        "copy differs"
    );
    let m2 = c.mount("again");
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(m2.join("big")).unwrap(),
        "a fresh mount reads the same"
    );
}

/// What stands at a path without following it: a link's target, a file's
/// identity, or nothing.
fn path_state(p: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    Some(match std::fs::read_link(p) {
        Ok(target) => format!("link {}", target.display()),
        Err(_) => format!("file {} {}", meta.ino(), meta.len()),
    })
}

#[test]
fn mount_command_and_umount() {
    let c = cluster();
    // mount(8) runs /sbin/mount.fuse.dfs for type fuse.dfs (what `make
    // install` installs). The test must run its own build without touching
    // the system's helper: in a private mount namespace, a folder holding
    // only our helper is mounted over the helper's folder, and everything
    // that uses the mount happens inside that namespace.
    let helper = Path::new("/sbin/mount.fuse.dfs");
    let before = path_state(helper);
    let helper_dir = std::fs::canonicalize("/sbin").unwrap();
    let ours = dfs_tests::bin_dir().join("dfs-fuse");
    let fake_sbin = c.dir.path().join("sbin");
    std::fs::create_dir(&fake_sbin).unwrap();
    std::os::unix::fs::symlink(&ours, fake_sbin.join("mount.fuse.dfs")).unwrap();
    let mnt = c.dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let log = c.dir.path().join("fuse-m.log");
    let script = format!(
        r#"set -u
mount --bind {fake} {sbin}
mount -t fuse.dfs {meta} {mnt} -o rw,_netdev,allow_other,cache_size=32M,log={log},{tls} || exit 10
cd {mnt} && echo via-mount > f && grep -qx via-mount f || exit 11
cd / && umount {mnt} || exit 12
mountpoint -q {mnt} && exit 13
mount -t fuse.dfs 127.0.0.1:1 {mnt} -o {tls} 2>&1 && exit 14
mount -t fuse.dfs {meta} /nonexistent-dfs -o {tls} 2>/dev/null && exit 15
echo all-done"#,
        fake = fake_sbin.display(),
        sbin = helper_dir.display(),
        meta = c.meta_addr,
        mnt = mnt.display(),
        log = log.display(),
        tls = c.tls_mount_options("client"),
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all-done"),
        "step {:?} failed:\n{stdout}\n{}\nmount log: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Bad input: an unreachable meta fails with a message.
    assert!(stdout.contains("cannot reach"), "{stdout}");
    assert_eq!(
        path_state(helper),
        before,
        "the system's helper is as it was"
    );
    assert!(!dfs_tests::is_mounted(&mnt));
}

#[test]
fn unlinked_open_files_live_until_the_last_close() {
    let c = cluster();
    let m = c.mount("mnt");
    let p = m.join("tmp");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(&vec![5u8; 3 * CS]).unwrap();
    f.sync_all().unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(
        errno_of(std::fs::metadata(&p)),
        libc::ENOENT,
        "the name is gone"
    );
    // Still readable and writable through the descriptor.
    f.write_all(b"tail").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 3 * CS + 4);
    assert!(all[..3 * CS].iter().all(|&b| b == 5) && &all[3 * CS..] == b"tail");
    // Replacing an open file by rename keeps the old contents for its reader.
    std::fs::write(m.join("old"), b"old contents").unwrap();
    let mut reader = std::fs::File::open(m.join("old")).unwrap();
    std::fs::write(m.join("new"), b"new").unwrap();
    std::fs::rename(m.join("new"), m.join("old")).unwrap();
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "old contents");
    assert_eq!(std::fs::read(m.join("old")).unwrap(), b"new");
    drop(reader);
    drop(f);
    // After the last close both orphans are gone, data included.
    c.wait_until("orphans deleted", Duration::from_secs(10), |c| {
        c.status_field("files").starts_with("1 ")
    });
    // Deleted on the nodes after meta's grace period (10 s).
    c.wait_until("their chunks collected", Duration::from_secs(40), |c| {
        c.status_field("chunks").starts_with("1 ")
            && c.status_field("replicas awaiting deletion") == "0"
    });
}

/// renameat2(2) through the kernel, via Python's ctypes (the test crate has no unsafe code).
fn renameat2(dir: &Path, from: &str, to: &str, flags: u32) -> i32 {
    let script = format!(
        "import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         r = libc.renameat2(-100, b'{from}', -100, b'{to}', {flags})\n\
         sys.exit(0 if r == 0 else ctypes.get_errno())"
    );
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    status.code().unwrap()
}

#[test]
fn special_files_rename_flags_and_permissions() {
    let c = cluster();
    let m = c.mount("mnt");
    // FIFOs and sockets through mknod.
    sh(&m.path, "mkfifo pipe && test -p pipe");
    sh(
        &m.path,
        "python3 -c \"import os, stat; os.mknod('sock', stat.S_IFSOCK | 0o644)\" && test -S sock",
    );
    // RENAME_EXCHANGE swaps; RENAME_NOREPLACE refuses to replace.
    std::fs::write(m.join("a"), b"A").unwrap();
    std::fs::create_dir(m.join("d")).unwrap();
    assert_eq!(renameat2(&m.path, "a", "d", 2), 0, "exchange");
    assert!(std::fs::metadata(m.join("a")).unwrap().is_dir());
    assert_eq!(std::fs::read(m.join("d")).unwrap(), b"A");
    assert_eq!(renameat2(&m.path, "d", "a", 1), libc::EEXIST, "noreplace");
    assert_eq!(renameat2(&m.path, "d", "fresh", 1), 0);
    // chown clears setuid.
    sh(&m.path, "touch su && chmod 4755 su && chown 1:1 su");
    assert_eq!(
        std::fs::metadata(m.join("su"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    // Permissions are the kernel's (default_permissions), for other users too.
    sh(
        &m.path,
        "mkdir private && chmod 700 private && mkdir -m 1777 shared",
    );
    let as_user = |user: &str, cmd: &str| {
        std::process::Command::new("su")
            .args(["-s", "/bin/sh", user, "-c", cmd])
            .current_dir(&m.path)
            .output()
            .unwrap()
    };
    let denied = as_user("nobody", "ls private");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    assert!(
        as_user("nobody", "echo mine > shared/n").status.success(),
        "anyone writes in a 1777 dir"
    );
    let sticky = as_user("daemon", "rm -f shared/n");
    assert!(
        !sticky.status.success(),
        "sticky bit: another user cannot delete it"
    );
    assert!(m.join("shared/n").exists());
    assert!(
        as_user("nobody", "rm shared/n").status.success(),
        "the owner can"
    );
}

#[test]
fn large_directories_list_every_entry_once() {
    let c = cluster();
    let m = c.mount("mnt");
    std::fs::create_dir(m.join("big")).unwrap();
    let n = 3000; // three pages of meta's readdir (1,000 each), several kernel buffers
    for i in 0..n {
        std::fs::File::create(m.join(&format!("big/entry-{i:05}"))).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(m.join("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..n).map(|i| format!("entry-{i:05}")).collect();
    assert_eq!(names, expected, "every entry exactly once");
    let listing = sh(&m.join("big"), "ls -l | tail -n +2 | wc -l");
    assert_eq!(listing.trim(), n.to_string());
    // Removing entries in the middle of a listing keeps the rest consistent.
    for i in (0..n).step_by(2) {
        std::fs::remove_file(m.join(&format!("big/entry-{i:05}"))).unwrap();
    }
    assert_eq!(std::fs::read_dir(m.join("big")).unwrap().count(), n / 2);
}

/// Creates `n` empty files named `entry-NNNNNN` in directory `parent` over gRPC,
/// 16 at a time (the mount is not what this measures; its listing is).
fn create_entries_over_grpc(c: &Cluster, parent: u64, n: usize) {
    use dfs_proto::pb;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = c
            .grpc_channel(&c.meta_addr, dfs_auth::Role::Meta, Some("client"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let mut meta = pb::meta_client::MetaClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                for i in (worker..n).step_by(16) {
                    meta.create(pb::CreateRequest {
                        parent,
                        name: format!("entry-{i:06}").into_bytes(),
                        kind: pb::FileKind::Regular as i32,
                        mode: 0o644,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn a_100k_entry_directory_lists_in_pages() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("mnt");
    std::fs::create_dir(m.join("huge")).unwrap();
    let ino = std::fs::metadata(m.join("huge")).unwrap().ino();
    let n = 100_000;
    let started = std::time::Instant::now();
    create_entries_over_grpc(&c, ino, n);
    eprintln!("created {n} entries in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let meta_metrics = c.meta_metrics.clone().unwrap();
    let readdirs = |page: &str| {
        dfs_tests::metric_or_zero(
            page,
            "dfs_meta_rpc_duration_seconds_count{method=\"ReadDir\"}",
        )
    };
    let before = readdirs(&dfs_tests::http_get(&meta_metrics, "/metrics"));
    let mut names: Vec<String> = std::fs::read_dir(m.join("huge"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let after = readdirs(&dfs_tests::http_get(&meta_metrics, "/metrics"));
    eprintln!("listed them in {:?}", started.elapsed());
    assert_eq!(names.len(), n, "every entry once");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "no entry twice");
    assert_eq!(names[0], "entry-000000");
    assert_eq!(names[n - 1], format!("entry-{:06}", n - 1));
    // Paged: meta served the listing in many bounded requests, never all at once.
    assert!(
        after - before >= (n / 1000) as f64,
        "{} ReadDir calls for {n} entries",
        after - before
    );
    // ls -l (readdirplus, stat of every entry) sees them all too.
    let count = sh(&m.join("huge"), "ls -l | tail -n +2 | wc -l");
    assert_eq!(count.trim(), n.to_string());
    let one = std::fs::metadata(m.join("huge/entry-054321")).unwrap();
    assert_eq!(one.len(), 0);
}

#[test]
fn flock_and_fcntl_locks_within_one_mount() {
    let c = cluster();
    let m = c.mount("mnt");
    let file = m.join("locked");
    std::fs::write(&file, b"0123456789").unwrap();
    // A holder process takes an exclusive flock and a POSIX write lock on bytes
    // 0..5, says so, and keeps them until its stdin closes.
    let holder_script = r#"
import fcntl, os, sys
f = open(sys.argv[1], "r+")
fcntl.flock(f, fcntl.LOCK_EX)
g = open(sys.argv[1], "r+")
fcntl.lockf(g, fcntl.LOCK_EX, 5, 0)
print("locked", flush=True)
sys.stdin.read()
"#;
    let mut holder = std::process::Command::new("python3")
        .args(["-c", holder_script, file.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let probe_script = r#"
import errno, fcntl, os, struct, sys
f = open(sys.argv[1], "r+")
out = []
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    out.append("flock:acquired")
except OSError as e:
    out.append("flock:" + errno.errorcode[e.errno])
def setlk(start, length):
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
        return "acquired"
    except OSError as e:
        return errno.errorcode[e.errno]
out.append("lock0-5:" + setlk(0, 5))
out.append("lock5-10:" + setlk(5, 5))
# F_GETLK names the holder of the conflicting lock.
req = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 5, 0)
res = struct.unpack("hhqqi", fcntl.fcntl(f, fcntl.F_GETLK, req))
out.append("getlk:" + ("unlck" if res[0] == fcntl.F_UNLCK else "pid%d" % res[4]))
print(" ".join(out))
"#;
    let probe = |_: ()| {
        sh(
            c.dir.path(),
            &format!("python3 -c '{probe_script}' {}", file.display()),
        )
    };
    let held = probe(());
    assert_eq!(
        held.trim(),
        format!(
            "flock:EWOULDBLOCK lock0-5:EAGAIN lock5-10:acquired getlk:pid{}",
            holder.id()
        )
        .replace("EWOULDBLOCK", "EAGAIN"),
        "while held"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let free = probe(());
    assert_eq!(
        free.trim(),
        "flock:acquired lock0-5:acquired lock5-10:acquired getlk:unlck",
        "after the holder exits"
    );
}

#[test]
fn one_memory_bound_covers_cache_and_write_buffers() {
    let c = Cluster::start(Options {
        chunk_size: CS as u32,
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("mnt"); // cache_size=64M
    let metrics = m.metrics.clone().unwrap();
    let limit = 64.0 * CS as f64;
    // Sample the mount's own accounting while files are written.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, metrics) = (stop.clone(), metrics.clone());
        std::thread::spawn(move || {
            let (mut max_total, mut max_dirty) = (0f64, 0f64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let page = dfs_tests::http_get(&metrics, "/metrics");
                let dirty = dfs_tests::metric_value(&page, "dfs_fuse_dirty_bytes");
                let cached = dfs_tests::metric_value(&page, "dfs_fuse_cache_bytes");
                max_total = max_total.max(dirty + cached);
                max_dirty = max_dirty.max(dirty);
                std::thread::sleep(Duration::from_millis(20));
            }
            (max_total, max_dirty)
        })
    };
    // 16 files open at once, none closed until the end. Each first gets 3/4 of
    // four chunks (partial chunks stay buffered: 48 MiB in all, over the write
    // share of 32 MiB), then the rest of them, then 8 more whole chunks.
    let script = r#"
import os, sys
d, cs = sys.argv[1], 1 << 20
fds = [os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(16)]
def fill(i, chunk):
    return bytes([(i * 13 + chunk) % 256]) * cs
for part in (slice(0, 3 * cs // 4), slice(3 * cs // 4, cs)):
    for chunk in range(4):
        for i, fd in enumerate(fds):
            os.pwrite(fd, fill(i, chunk)[part], chunk * cs + part.start)
for chunk in range(4, 12):
    for i, fd in enumerate(fds):
        os.pwrite(fd, fill(i, chunk), chunk * cs)
for fd in fds:
    os.close(fd)
"#;
    sh(
        c.dir.path(),
        &format!("python3 -c '{script}' {}", m.path.display()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_total, max_dirty) = sampler.join().unwrap();
    eprintln!("peak buffered {max_dirty}, peak buffered + cached {max_total}");
    // Write buffers keep to half the bound, plus the chunk being written.
    assert!(
        max_dirty <= limit / 2.0 + 2.0 * CS as f64,
        "write buffers peaked at {max_dirty}"
    );
    assert!(
        max_total <= limit + 2.0 * CS as f64,
        "cache + buffers peaked at {max_total}"
    );
    assert!(max_dirty > 0.0, "the sampler saw the writes");
    for i in 0..16u8 {
        let data = std::fs::read(m.join(&format!("f{i}"))).unwrap();
        assert_eq!(data.len(), 12 * CS);
        for step in 0..12 {
            let expected = ((u32::from(i) * 13 + step) % 256) as u8; // fill(i, chunk)
            let piece = &data[step as usize * CS..(step as usize + 1) * CS];
            assert!(piece.iter().all(|b| *b == expected), "file {i} step {step}");
        }
    }
}

#[test]
fn kernel_page_cache_is_kept_only_while_content_is_unchanged() {
    let c = Cluster::start(Options {
        chunk_size: CS as u32,
        metrics: true,
        ..Options::default()
    });
    let (a, b) = (c.mount("a"), c.mount("b"));
    let reads = |m: &dfs_tests::Mount| {
        let page = dfs_tests::http_get(m.metrics.as_ref().unwrap(), "/metrics");
        dfs_tests::metric_or_zero(&page, "dfs_fuse_requests_total{op=\"read\"}")
    };
    let v1 = vec![1u8; 3 * CS / 2];
    std::fs::write(a.join("f"), &v1).unwrap();
    assert_eq!(std::fs::read(b.join("f")).unwrap(), v1);
    // Unchanged: B's second open keeps its cached pages, no read reaches the daemon.
    let before = reads(&b);
    assert_eq!(std::fs::read(b.join("f")).unwrap(), v1);
    assert_eq!(reads(&b), before, "pages kept for unchanged content");
    // Rewritten in place on A, same size: B's next open must drop its pages.
    let mut v2 = v1.clone();
    v2[10] = 2;
    v2[CS + 5] = 3;
    std::fs::OpenOptions::new()
        .write(true)
        .open(a.join("f"))
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(10))?;
            f.write_all(&[2])?;
            f.seek(SeekFrom::Start(CS as u64 + 5))?;
            f.write_all(&[3])
        })
        .unwrap();
    assert_eq!(
        std::fs::read(b.join("f")).unwrap(),
        v2,
        "B sees A's rewrite"
    );
    // Truncated and regrown to the same size on A: zeros, not stale pages.
    std::fs::OpenOptions::new()
        .write(true)
        .open(a.join("f"))
        .and_then(|f| {
            f.set_len(100)?;
            f.set_len(v1.len() as u64)
        })
        .unwrap();
    let mut v3 = v2[..100].to_vec();
    v3.resize(v1.len(), 0);
    assert_eq!(
        std::fs::read(b.join("f")).unwrap(),
        v3,
        "B sees A's truncate"
    );
    // B's own write, then A's read and B's reread agree.
    std::fs::OpenOptions::new()
        .write(true)
        .open(b.join("f"))
        .and_then(|mut f| f.write_all(&[9]))
        .unwrap();
    v3[0] = 9;
    assert_eq!(std::fs::read(a.join("f")).unwrap(), v3);
    assert_eq!(std::fs::read(b.join("f")).unwrap(), v3);
}

#[test]
fn writeback_cache_coalesces_writes_and_keeps_close_to_open() {
    let c = Cluster::start(Options {
        chunk_size: CS as u32,
        metrics: true,
        ..Options::default()
    });
    let w = c.mount_with("wb", "cache_size=64M,writeback_cache");
    let other = c.mount("other");
    let writes = |m: &dfs_tests::Mount| {
        let page = dfs_tests::http_get(m.metrics.as_ref().unwrap(), "/metrics");
        dfs_tests::metric_or_zero(&page, "dfs_fuse_requests_total{op=\"write\"}")
    };
    // 2,000 writes of 100 bytes reach the daemon as a few page-sized ones.
    let mut expected = Vec::new();
    {
        let mut f = std::fs::File::create(w.join("log")).unwrap();
        for i in 0..2000u32 {
            let line = format!("{i:099}\n");
            f.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        f.sync_all().unwrap();
    }
    // fsync also made meta sync its log (the Sync RPC).
    let meta_page = dfs_tests::http_get(c.meta_metrics.as_ref().unwrap(), "/metrics");
    assert!(
        dfs_tests::metric_or_zero(
            &meta_page,
            "dfs_meta_rpc_duration_seconds_count{method=\"Sync\"}"
        ) > 0.0,
        "fsync reached meta's Sync"
    );
    let requests = writes(&w);
    assert!(
        requests > 0.0 && requests < 200.0,
        "{requests} FUSE writes for 2,000 small ones"
    );
    // Closed on the writeback mount, whole on another. (The other direction is
    // not promised: with the writeback cache the kernel trusts its own file
    // size, so this mount misses size changes made elsewhere; see the README.)
    let same = |got: Vec<u8>, want: &[u8]| got.len() == want.len() && got == want;
    assert!(same(std::fs::read(other.join("log")).unwrap(), &expected));
    // O_APPEND and a partial-page overwrite through the writeback cache.
    std::fs::OpenOptions::new()
        .append(true)
        .open(w.join("log"))
        .and_then(|mut f| f.write_all(b"more\n"))
        .unwrap();
    expected.extend_from_slice(b"more\n");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(w.join("log"))
        .unwrap();
    f.seek(SeekFrom::Start(5000)).unwrap();
    f.write_all(b"XY").unwrap();
    drop(f);
    expected[5000..5002].copy_from_slice(b"XY");
    assert!(same(std::fs::read(w.join("log")).unwrap(), &expected));
    assert!(same(std::fs::read(other.join("log")).unwrap(), &expected));
    assert_eq!(
        std::fs::metadata(other.join("log")).unwrap().len(),
        expected.len() as u64
    );
}

/// (mtime, ctime) of a path, in nanoseconds, without following symlinks.
fn times(p: &Path) -> (i128, i128) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))
}

#[test]
fn ctime_and_mtime_change_exactly_when_posix_says() {
    let c = cluster();
    let m = c.mount("mnt");
    let f = m.join("f");
    let d = m.join("d");
    std::fs::write(&f, b"hello").unwrap();
    std::fs::create_dir(&d).unwrap();
    let tick = || std::thread::sleep(Duration::from_millis(20));
    // Each step: what it does, and whether mtime / ctime of the path must change.
    type Step<'a> = (&'a str, &'a Path, Box<dyn Fn() + 'a>, bool, bool);
    let steps: Vec<Step> = vec![
        (
            "read",
            &f,
            Box::new(|| drop(std::fs::read(&f).unwrap())),
            false,
            false,
        ),
        (
            "write",
            &f,
            Box::new(|| std::fs::write(&f, b"world").unwrap()),
            true,
            true,
        ),
        (
            "chmod",
            &f,
            Box::new(|| {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap()
            }),
            false,
            true,
        ),
        (
            "chown",
            &f,
            Box::new(|| std::os::unix::fs::chown(&f, Some(1234), Some(1234)).unwrap()),
            false,
            true,
        ),
        (
            "link",
            &f,
            Box::new(|| std::fs::hard_link(&f, m.join("g")).unwrap()),
            false,
            true,
        ),
        (
            "unlink other name",
            &f,
            Box::new(|| std::fs::remove_file(m.join("g")).unwrap()),
            false,
            true,
        ),
        (
            "setxattr",
            &f,
            Box::new(|| {
                sh(&m.path, "setfattr -n user.k -v v f");
            }),
            false,
            true,
        ),
        (
            "truncate",
            &f,
            Box::new(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(2)
                    .unwrap()
            }),
            true,
            true,
        ),
        (
            "open O_TRUNC",
            &f,
            Box::new(|| {
                drop(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&f)
                        .unwrap(),
                )
            }),
            true,
            true,
        ),
        (
            "create in dir",
            &d,
            Box::new(|| std::fs::write(d.join("x"), b"").unwrap()),
            true,
            true,
        ),
        (
            "stat in dir",
            &d,
            Box::new(|| assert!(std::fs::metadata(d.join("x")).is_ok())),
            false,
            false,
        ),
        (
            "rename in dir",
            &d,
            Box::new(|| std::fs::rename(d.join("x"), d.join("y")).unwrap()),
            true,
            true,
        ),
        (
            "unlink in dir",
            &d,
            Box::new(|| std::fs::remove_file(d.join("y")).unwrap()),
            true,
            true,
        ),
        (
            "mkdir in dir",
            &d,
            Box::new(|| std::fs::create_dir(d.join("s")).unwrap()),
            true,
            true,
        ),
        (
            "rmdir in dir",
            &d,
            Box::new(|| std::fs::remove_dir(d.join("s")).unwrap()),
            true,
            true,
        ),
    ];
    for (what, path, step, mtime_moves, ctime_moves) in steps {
        let before = times(path);
        tick();
        step();
        let after = times(path);
        assert_eq!(
            after.0 != before.0,
            mtime_moves,
            "{what}: mtime {before:?} -> {after:?}"
        );
        assert_eq!(
            after.1 != before.1,
            ctime_moves,
            "{what}: ctime {before:?} -> {after:?}"
        );
        assert!(
            after.1 >= after.0 || !ctime_moves,
            "{what}: ctime older than mtime"
        );
    }
    // rename changes the renamed inode's ctime (Linux does; POSIX allows it).
    let before = times(&f);
    tick();
    std::fs::rename(&f, m.join("f2")).unwrap();
    assert_ne!(
        times(&m.join("f2")).1,
        before.1,
        "rename: ctime of the file"
    );
    // utimens sets mtime as asked and ctime to now.
    sh(&m.path, "touch -m -d '2001-02-03 04:05:06.789' f2");
    let (mtime, ctime) = times(&m.join("f2"));
    assert_eq!(mtime, 981_173_106_789_000_000, "mtime as set");
    assert!(ctime > mtime, "ctime is now, not the set mtime");
}

#[test]
fn setgid_directories_device_nodes_and_fallocate() {
    let c = cluster();
    let m = c.mount("mnt");
    // A setgid directory: new entries take its group, subdirectories its setgid bit.
    let d = m.join("shared");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(4321)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::write(d.join("file"), b"x").unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(std::fs::metadata(d.join("file")).unwrap().gid(), 4321);
    let sub = std::fs::metadata(d.join("sub")).unwrap();
    assert_eq!(sub.gid(), 4321);
    assert_ne!(sub.mode() & 0o2000, 0, "subdirectory inherits setgid");
    // Device nodes, as root: type and device number are kept.
    sh(
        &m.path,
        "mknod cdev c 1 3 && mknod bdev b 7 0 && test -c cdev && test -b bdev",
    );
    let rdev = std::fs::metadata(m.join("cdev")).unwrap().rdev();
    assert_eq!((libc::major(rdev), libc::minor(rdev)), (1, 3));
    // fallocate mode 0 extends with zeros (the other modes: tests/posix.rs).
    sh(&m.path, "printf abc > fa && fallocate -l 3M fa");
    let data = std::fs::read(m.join("fa")).unwrap();
    assert_eq!(data.len(), 3 << 20);
    assert_eq!(&data[..3], b"abc");
    assert!(data[3..].iter().all(|b| *b == 0));
}

#[test]
fn statfs_reports_the_clusters_capacity() {
    let c = cluster();
    let m = c.mount("mnt");
    for i in 0..5 {
        std::fs::write(m.join(&format!("f{i}")), b"x").unwrap();
    }
    let field = |dir: &Path, format: &str| -> u64 {
        sh(dir, &format!("stat -f -c '{format}' ."))
            .trim()
            .parse()
            .unwrap()
    };
    // A node's capacity is its chunks plus the space it may still use. Three
    // nodes on one local disk, three replicas: the mount shows that disk's
    // available space (the chunks here are tiny).
    let local_avail = field(c.dir.path(), "%S") * field(c.dir.path(), "%a");
    let total = field(&m.path, "%S") * field(&m.path, "%b");
    let free = field(&m.path, "%S") * field(&m.path, "%f");
    assert!(
        total.abs_diff(local_avail) <= local_avail / 20,
        "mount {total} bytes, disk has {local_avail} available"
    );
    assert!(free > 0 && free <= total);
    assert!(field(&m.path, "%c") >= 6, "inodes: root and 5 files");
    assert_eq!(field(&m.path, "%l"), 255, "name length limit");
}

/// Closes `file` and returns close(2)'s errno, 0 on success (dropping a File
/// ignores close's result, which is what the mount reports failures through).
fn close_errno(file: std::fs::File) -> i32 {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    #[allow(unsafe_code)]
    // SAFETY: `fd` came from a File that gave up ownership; closed once.
    let rc = unsafe { libc::close(fd) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn cluster_failures_reach_the_application_as_errors() {
    let mut c = cluster();
    let m = c.mount("mnt");
    std::fs::write(m.join("kept"), vec![5u8; CS + 7]).unwrap();
    // Data buffered before the nodes die cannot be made durable: close says so.
    let mut pending = std::fs::File::create(m.join("pending")).unwrap();
    pending.write_all(&vec![1u8; 1000]).unwrap();
    for i in 0..3 {
        c.kill_node(i);
    }
    let errno = close_errno(pending);
    assert_ne!(errno, 0, "close reported success with every node down");
    assert!(
        [libc::EIO, libc::ENOSPC, libc::ETIMEDOUT].contains(&errno),
        "close: errno {errno}"
    );
    // fsync of new data fails too, and nothing half-written becomes visible.
    let mut f = std::fs::File::create(m.join("synced")).unwrap();
    f.write_all(b"data").unwrap();
    let e = f.sync_all().unwrap_err().raw_os_error().unwrap_or(0);
    assert!(
        [libc::EIO, libc::ENOSPC, libc::ETIMEDOUT].contains(&e),
        "fsync: errno {e}"
    );
    // The bytes stay buffered: close tries again and fails again.
    assert_ne!(
        close_errno(f),
        0,
        "close after a failed fsync reported success"
    );
    // Reading data whose every replica is gone is EIO, not zeros or a short read.
    let c2 = c.mount("fresh"); // no cached chunks
    let e = std::fs::read(c2.join("kept")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // The namespace is still served: stat, ls and mkdir work. The files whose
    // data never reached a node kept no size over missing bytes.
    assert_eq!(
        std::fs::metadata(c2.join("kept")).unwrap().len(),
        CS as u64 + 7
    );
    assert_eq!(std::fs::metadata(c2.join("pending")).unwrap().len(), 0);
    assert_eq!(std::fs::metadata(c2.join("synced")).unwrap().len(), 0);
    std::fs::create_dir(c2.join("still")).unwrap();
}

#[test]
fn owner_only_operations_are_eperm_for_others() {
    let c = cluster();
    let m = c.mount("mnt");
    sh(
        &m.path,
        "touch rootfile && chmod 666 rootfile && mkdir -m 1777 shared && touch shared/rootowned && chmod 666 shared/rootowned",
    );
    // Each command runs as `nobody` and must fail with EPERM (not EACCES, not success).
    let errno_as_nobody = |code: &str| -> String {
        let script = format!(
            "import errno, os, sys\ntry:\n    {code}\n    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
        );
        let out = std::process::Command::new("su")
            .args(["-s", "/bin/sh", "nobody", "-c"])
            .arg(format!("python3 -c \"{script}\""))
            .current_dir(&m.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        errno_as_nobody("os.chmod('rootfile', 0o777)"),
        "EPERM",
        "chmod"
    );
    assert_eq!(
        errno_as_nobody("os.chown('rootfile', 65534, 65534)"),
        "EPERM",
        "chown"
    );
    assert_eq!(
        errno_as_nobody("os.utime('rootfile', (1, 1))"),
        "EPERM",
        "explicit times"
    );
    assert_eq!(
        errno_as_nobody("os.utime('rootfile', None)"),
        "ok",
        "'now' needs only write access"
    );
    assert_eq!(
        errno_as_nobody("os.unlink('shared/rootowned')"),
        "EPERM",
        "sticky directory"
    );
    assert_eq!(
        errno_as_nobody("os.setxattr('rootfile', 'trusted.x', b'1')"),
        "EPERM",
        "trusted xattrs"
    );
}

/// dfs keeps no SELinux labels: a file without one answers EOPNOTSUPP (not
/// ENODATA), so `ls -l`, which asks every file, stops asking on this mount;
/// one stored is returned. Other missing attributes stay ENODATA.
#[test]
fn a_missing_selinux_label_is_unsupported_and_ls_stops_asking() {
    let c = Cluster::start(Options {
        metrics: true,
        ..Options::default()
    });
    let m = c.mount("mnt");
    let out = sh(
        &m.path,
        "mkdir d && for i in $(seq 1 40); do : > d/f$i; done && python3 -c \"
import errno, os
def err(name):
    try:
        os.getxattr('d/f1', name)
    except OSError as e:
        return errno.errorcode[e.errno]
    return 'none'
print(err('security.selinux'), err('user.absent'), err('system.posix_acl_access'))
os.setxattr('d/f2', 'security.selinux', b'label')
print(os.getxattr('d/f2', 'security.selinux').decode())
\"",
    );
    // (Python names EOPNOTSUPP, the same number on Linux, ENOTSUP.)
    assert_eq!(out.trim(), "ENOTSUP ENODATA ENODATA\nlabel");
    let getxattrs = || {
        let page = dfs_tests::http_get(m.metrics.as_ref().unwrap(), "/metrics");
        dfs_tests::metric_or_zero(&page, "dfs_fuse_requests_total{op=\"getxattr\"}")
    };
    dfs_tests::drop_kernel_caches();
    let before = getxattrs();
    let listed = sh(&m.path, "ls -l d | wc -l");
    assert_eq!(listed.trim(), "41");
    let asked = getxattrs() - before;
    assert!(
        asked <= 40.0 + 3.0,
        "ls -l asked {asked} xattrs of 40 files: the label once, then only ACLs"
    );
}
