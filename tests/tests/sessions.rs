//! Clients the cluster knows: sessions listed and ended, cluster-wide locks
//! between two mounts (including a killed holder and an interrupted waiter),
//! and applications that see no error while meta restarts or loses replies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dfs_tests::{python, Cluster, Options};

/// Starts a Python script that takes something (a lock, an open file) and
/// prints "held"; returns once it did, with the process still holding it.
fn hold(script: &str, args: &[&Path]) -> std::process::Child {
    use std::io::BufRead;
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "held\n");
    holder
}

fn sessions(c: &Cluster) -> Vec<serde_json::Value> {
    let out = c.dfs_ok(&["--json", "sessions"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn short_lease() -> Options {
    Options {
        meta_args: vec!["--session-lease-secs".into(), "2".into()],
        ..Options::default()
    }
}

#[test]
fn sessions_are_listed_and_end_with_their_mount() {
    let c = Cluster::start(Options::default());
    let a = c.mount("a");
    let b = c.mount("b");
    let list = sessions(&c);
    assert_eq!(list.len(), 2, "{list:?}");
    for (s, m) in list.iter().zip([&a, &b]) {
        assert_eq!(s["kind"], "mount");
        assert_eq!(s["mountpoint"], m.path.to_str().unwrap());
        assert_eq!(s["pid"].as_u64(), m.daemon_pid().map(u64::from));
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
        if c.pki.is_some() {
            assert_eq!(s["owner"], "client");
        }
    }
    // The table form names the mount points too.
    let table = c.dfs_ok(&["sessions"]);
    assert!(table.contains(a.path.to_str().unwrap()), "{table}");
    // A clean unmount closes the session (the daemon notices the unmount
    // within a moment), long before its lease would run out.
    assert!(b.unmount());
    c.wait_until("b's session closes", Duration::from_secs(5), |c| {
        sessions(c).len() == 1
    });
    assert_eq!(sessions(&c)[0]["mountpoint"], a.path.to_str().unwrap());
}

const LOCKS: &str = r#"
import fcntl, os, struct, sys, time, signal
a, b = sys.argv[1], sys.argv[2]
open(a, "w").write("x" * 100)
fa, fb = open(a, "r+"), open(b, "r+")

def refused(f, how):
    try:
        how(f)
    except OSError as e:
        return e.errno
    return 0

# An fcntl write lock on mount A excludes mount B, whole file and ranges.
fcntl.lockf(fa, fcntl.LOCK_EX, 10, 20)
assert refused(fb, lambda f: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 25)) == 11
assert refused(fb, lambda f: fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB, 0, 0)) == 11
fcntl.lockf(fb, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)  # [0, 10): free
fcntl.lockf(fb, fcntl.LOCK_UN, 10, 0)
# F_GETLK on mount B sees A's lock, with its range and type.
req = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
got = struct.unpack("hhqqi", fcntl.fcntl(fb, fcntl.F_GETLK, req))
assert got[0] == fcntl.F_WRLCK and got[2] == 20 and got[3] == 10, got
fcntl.lockf(fa, fcntl.LOCK_UN, 10, 20)
got = struct.unpack("hhqqi", fcntl.fcntl(fb, fcntl.F_GETLK, req))
assert got[0] == fcntl.F_UNLCK, got
# Readers share across mounts; a writer waits for both.
fcntl.lockf(fa, fcntl.LOCK_SH)
fcntl.lockf(fb, fcntl.LOCK_SH)
fcntl.lockf(fb, fcntl.LOCK_UN)
fcntl.lockf(fa, fcntl.LOCK_UN)
# flock(2) excludes across mounts too, and does not meet fcntl locks.
ga, gb = open(a), open(b)
fcntl.flock(ga, fcntl.LOCK_EX)
assert refused(gb, lambda f: fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)) == 11
fcntl.lockf(fb, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an fcntl lock beside A's flock
fcntl.lockf(fb, fcntl.LOCK_UN)
ga.close()  # the last close of the open file drops its flock lock (the
# kernel sends that release after close returns: wait for it)
fcntl.flock(gb, fcntl.LOCK_EX)
gb.close()

# F_SETLKW on B waits (no error, no busy failure) until A's close releases it.
fa.close()
fa = open(a, "r+")
fcntl.lockf(fa, fcntl.LOCK_EX)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    f = open(b, "r+")
    fcntl.lockf(f, fcntl.LOCK_EX)
    os.write(w, b"%f" % time.time())
    os._exit(0)
time.sleep(2)
released = time.time()
fa.close()  # close(2) releases the process's fcntl locks on the file
granted = float(os.read(r, 100))
os.waitpid(pid, 0)
assert granted >= released, (granted, released)
print("waited %.2f s after release" % (granted - released))

# A signal ends a waiting F_SETLKW with EINTR.
fa = open(a, "r+")
fcntl.lockf(fa, fcntl.LOCK_EX)
pid = os.fork()
if pid == 0:
    class Alarm(Exception):
        pass
    def ring(*_):
        raise Alarm()
    signal.signal(signal.SIGALRM, ring)
    signal.alarm(1)
    f = open(b, "r+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX)
        os._exit(3)
    except Alarm:
        os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, status
fa.close()
print("ok")
"#;

#[test]
fn locks_exclude_across_mounts() {
    let c = Cluster::start(Options::default());
    let a = c.mount("a");
    let b = c.mount("b");
    let out = python(LOCKS, &[&a.join("f"), &b.join("f")]);
    assert!(out.ends_with("ok\n"), "{out}");
    // Nothing is left locked: every lock went with its close.
    let held: u64 = sessions(&c)
        .iter()
        .map(|s| s["locks"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 0);
}

const HOLD: &str = r#"
import fcntl, os, sys, time
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX)
g = open(sys.argv[2], "w+")
g.write("orphan data" * 1000)
g.flush()
os.fsync(g.fileno())
os.unlink(sys.argv[2])
print("held", flush=True)
time.sleep(600)
"#;

#[test]
fn a_killed_mount_loses_its_locks_and_open_unlinked_files_within_the_lease() {
    let c = Cluster::start(short_lease());
    let a = c.mount("a");
    let b = c.mount("b");
    std::fs::write(a.join("f"), b"data").unwrap();
    let mut holder = hold(HOLD, &[&a.join("f"), &a.join("gone")]);
    let before = sessions(&c);
    let a_session = before
        .iter()
        .find(|s| s["mountpoint"] == a.path.to_str().unwrap())
        .unwrap()
        .clone();
    assert_eq!(a_session["locks"], 1);
    assert_eq!(a_session["orphans"], 1);
    // The lock excludes mount B while A lives.
    let busy = python(
        "import fcntl,sys\ntry:\n fcntl.lockf(open(sys.argv[1],'r+'), fcntl.LOCK_EX|fcntl.LOCK_NB); print('granted')\nexcept OSError as e: print(e.errno)",
        &[&b.join("f")],
    );
    assert_eq!(busy.trim(), "11");
    // kill -9 the daemon of mount A: its session is renewed no more.
    dfs_tests::signal(a.daemon_pid().unwrap(), "KILL");
    let start = Instant::now();
    let out = python(
        "import fcntl,sys\nfcntl.lockf(open(sys.argv[1],'r+'), fcntl.LOCK_EX)\nprint('granted')",
        &[&b.join("f")],
    );
    assert_eq!(out.trim(), "granted");
    eprintln!(
        "lock granted {:?} after the holder's mount died",
        start.elapsed()
    );
    c.wait_until(
        "the dead session and its orphan go",
        Duration::from_secs(30),
        |c| {
            let list = sessions(c);
            list.len() == 1 && list[0]["mountpoint"] == b.path.to_str().unwrap()
        },
    );
    let fsck: serde_json::Value = serde_json::from_str(&c.dfs_ok(&["--json", "fsck"])).unwrap();
    assert_eq!(fsck["orphans"], 0, "{fsck}");
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = Command::new("umount").arg("-l").arg(&a.path).status();
}

/// A workload through the mount: three writers create, overwrite, append,
/// truncate, rename, unlink, fsync and read back against a model of what
/// each file must hold; any error or mismatch is printed and counted.
const WORKLOAD: &str = r#"
import os, random, sys, time, threading
root, seconds = sys.argv[1], float(sys.argv[2])
errors, ops = [], [0]
def writer(w):
    rnd = random.Random(w)
    d = os.path.join(root, "w%d" % w)
    os.makedirs(d, exist_ok=True)
    model = {}
    end = time.time() + seconds
    while time.time() < end:
        name = "f%d" % rnd.randrange(12)
        p = os.path.join(d, name)
        op = rnd.choice(["create", "overwrite", "append", "truncate", "rename", "unlink", "fsync", "read"])
        try:
            if op == "create" or (op in ("overwrite", "append", "truncate", "fsync") and name not in model):
                data = os.urandom(rnd.randrange(1, 20000))
                with open(p, "wb") as f:
                    f.write(data)
                model[name] = data
            elif op == "overwrite":
                data = bytearray(model[name])
                at = rnd.randrange(len(data) + 1)
                new = os.urandom(rnd.randrange(1, 5000))
                data[at:at + len(new)] = new
                with open(p, "r+b") as f:
                    f.seek(at); f.write(new)
                model[name] = bytes(data)
            elif op == "append":
                new = os.urandom(rnd.randrange(1, 5000))
                with open(p, "ab") as f:
                    f.write(new)
                model[name] += new
            elif op == "truncate":
                n = rnd.randrange(len(model[name]) + 1)
                os.truncate(p, n)
                model[name] = model[name][:n]
            elif op == "fsync":
                with open(p, "r+b") as f:
                    f.write(model[name][:1]); os.fsync(f.fileno())
            elif op == "rename" and name in model:
                other = "f%d" % rnd.randrange(12)
                os.rename(p, os.path.join(d, other))
                model[other] = model.pop(name)
            elif op == "unlink" and name in model:
                os.unlink(p)
                del model[name]
            elif op == "read" and name in model:
                with open(p, "rb") as f:
                    got = f.read()
                if got != model[name]:
                    errors.append("%s: %d bytes, model %d" % (p, len(got), len(model[name])))
            ops[0] += 1
        except OSError as e:
            errors.append("%s %s: %s" % (op, p, e))
            time.sleep(0.2)
    for name, data in model.items():
        with open(os.path.join(d, name), "rb") as f:
            if f.read() != data:
                errors.append("final %s differs" % name)
    listed = sorted(os.listdir(d))
    if listed != sorted(model):
        errors.append("listing %s, model %s" % (listed, sorted(model)))
threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print("ops", ops[0], "errors", len(errors))
for e in errors[:20]:
    print(e)
"#;

fn run_workload(dir: &Path, seconds: u32) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(WORKLOAD)
        .arg(dir)
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn workload_result(child: std::process::Child) -> (u64, String) {
    let Output { stdout, status, .. } = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&stdout).into_owned();
    assert!(status.success(), "workload failed: {text}");
    let first = text.lines().next().unwrap_or_default().to_string();
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"ops"), "{text}");
    (fields[1].parse().unwrap(), text)
}

#[test]
fn meta_restarts_reach_no_application() {
    let mut c = Cluster::start(Options::default());
    let m = c.mount("m");
    let child = run_workload(&m.path, 24);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(3));
        c.kill_meta();
        std::thread::sleep(Duration::from_millis(1500));
        c.start_meta();
    }
    let (ops, text) = workload_result(child);
    eprintln!("{text}");
    assert!(
        text.contains(" errors 0"),
        "applications saw errors:\n{text}"
    );
    assert!(ops > 50, "the workload hardly ran: {text}");
}

#[test]
fn lost_replies_are_answered_by_the_first_run() {
    let c = Cluster::start(Options {
        meta_env: vec![("DFS_META_FAILPOINTS".into(), "drop_reply=0.3".into())],
        ..Options::default()
    });
    let m = c.mount("m");
    let child = run_workload(&m.path, 10);
    let (ops, text) = workload_result(child);
    eprintln!("{text}");
    assert!(
        text.contains(" errors 0"),
        "applications saw errors:\n{text}"
    );
    assert!(ops > 50, "{text}");
    // Namespace calls whose replies were lost: mkdir -p, ln, rmdir, xattrs.
    dfs_tests::sh(
        &m.path,
        "for i in $(seq 30); do mkdir -p t/$i/x; \
         touch t/$i/f; ln t/$i/f t/$i/g; setfattr -n user.k -v v$i t/$i/g; \
         setfattr -x user.k t/$i/f; rmdir t/$i/x; done",
    );
    let listing = dfs_tests::sh(&m.path, "ls t/7 && getfattr -d t/7/g 2>/dev/null | wc -l");
    assert_eq!(listing, "f\ng\n0\n");
    let log = std::fs::read_to_string(c.dir.path().join("meta.log")).unwrap();
    let dropped = log.matches("failpoint: reply dropped").count();
    assert!(dropped > 10, "the failpoint hardly fired ({dropped})");
}

#[test]
fn metas_sharing_postgres_fail_over_and_the_survivor_takes_the_lead() {
    let Some(admin) = dfs_tests::postgres_admin_url() else {
        return;
    };
    let mut c = Cluster::start(Options {
        store: Some(dfs_tests::fresh_postgres_db(&admin)),
        nodes: 4,
        ..Options::default()
    });
    // A second meta on the same database; nodes and the mount know both.
    let second = c.add_meta();
    for i in 0..4 {
        c.kill_node(i);
        c.restart_node(i);
    }
    c.wait_nodes_up(4);
    let m = c.mount("m");
    let child = run_workload(&m.path, 20);
    std::thread::sleep(Duration::from_secs(5));
    // The first meta (the leader: it started first) dies under load.
    c.kill_meta();
    std::thread::sleep(Duration::from_secs(4));
    // Background work goes on under the survivor: a node dies, and its
    // chunks are copied back to three by the new leader.
    c.kill_node(3);
    let (ops, text) = workload_result(child);
    eprintln!("{text}");
    assert!(
        text.contains(" errors 0"),
        "applications saw errors:\n{text}"
    );
    assert!(ops > 50, "{text}");
    c.wait_until(
        "the new leader repairs what the dead node held",
        Duration::from_secs(60),
        |c| {
            c.status_field("under-replicated chunks") == "0"
                && c.status_field("nodes") == "3 up, 1 down"
        },
    );
    let log = std::fs::read_to_string(c.dir.path().join("meta1.log")).unwrap();
    assert!(log.contains("leading"), "the second meta never led");
    // Every chunk is whole again, as the survivor sees it.
    c.dfs_ok(&["--meta", c.extra_meta_addr(second), "fsck"]);
}

/// A PostgreSQL primary with a synchronous standby (scripts/pg-pair.sh),
/// stopped when dropped.
struct PgPair {
    dir: tempfile::TempDir,
}

impl PgPair {
    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-pair.sh")
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(Self::script())
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-pair.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

#[test]
fn a_postgres_failover_to_its_standby_costs_clients_nothing() {
    // The same server binaries the other PostgreSQL tests use.
    if dfs_tests::postgres_admin_url().is_none() {
        return;
    }
    let pair = PgPair {
        dir: tempfile::tempdir().unwrap(),
    };
    let (primary, standby) = (dfs_tests::free_port(), dfs_tests::free_port());
    pair.run(&["start", &primary.to_string(), &standby.to_string()]);
    let c = Cluster::start(Options {
        store: Some(format!("postgres://dfs@127.0.0.1:{primary}/postgres")),
        ..Options::default()
    });
    let m = c.mount("m");
    std::fs::write(m.join("before"), b"committed before the failover").unwrap();
    let child = run_workload(&m.path, 20);
    std::thread::sleep(Duration::from_secs(6));
    // kill -9 the primary; the standby is promoted and takes its address.
    let start = Instant::now();
    pair.run(&["fail-over", &primary.to_string()]);
    eprintln!("PostgreSQL failed over in {:?}", start.elapsed());
    let (ops, text) = workload_result(child);
    eprintln!("{text}");
    assert!(
        text.contains(" errors 0"),
        "applications saw errors:\n{text}"
    );
    assert!(ops > 50, "{text}");
    assert_eq!(
        std::fs::read(m.join("before")).unwrap(),
        b"committed before the failover"
    );
    // The promoted server is the store now: meta works on it.
    c.dfs_ok(&["fsck"]);
}

#[test]
fn a_mount_cut_off_past_its_lease_is_told_and_gets_a_new_session() {
    let c = Cluster::start(short_lease());
    let a = c.mount("a");
    let b = c.mount("b");
    std::fs::write(a.join("f"), b"data").unwrap();
    let mut holder = hold(
        "import fcntl,sys,time\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(600)",
        &[&a.join("f")],
    );
    // A writer on A has a chunk uploaded (its id allocated to A's session)
    // but not committed: it closes only after A comes back.
    let chunk = Options::default().chunk_size as usize;
    let data: Vec<u8> = (0..2 * chunk + 1000).map(|i| (i % 251) as u8).collect();
    let source = c.local("source");
    std::fs::write(&source, &data).unwrap();
    let go = c.local("go");
    let writer = hold(
        "import os,sys,time\nf=open(sys.argv[2],'wb')\nf.write(open(sys.argv[1],'rb').read())\nf.flush()\nprint('held',flush=True)\nwhile not os.path.exists(sys.argv[3]): time.sleep(0.05)\nf.close()\nprint('closed',flush=True)",
        &[&source, &a.join("w"), &go],
    );
    std::thread::sleep(Duration::from_secs(1));
    let old: Vec<u64> = sessions(&c)
        .iter()
        .filter(|s| s["mountpoint"] == a.path.to_str().unwrap())
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    // Cut mount A off (a stopped daemon renews nothing) for longer than the
    // 2 s lease: meta expires its session and releases its lock.
    let pid = a.daemon_pid().unwrap();
    dfs_tests::signal(pid, "STOP");
    c.wait_until("A's session expires", Duration::from_secs(30), |c| {
        sessions(c).len() == 1
    });
    let taken = python(
        "import fcntl,sys\nfcntl.lockf(open(sys.argv[1],'r+'), fcntl.LOCK_EX|fcntl.LOCK_NB)\nprint('granted')",
        &[&b.join("f")],
    );
    assert_eq!(taken.trim(), "granted");
    dfs_tests::signal(pid, "CONT");
    // A's next call learns it and goes on under a new session.
    assert_eq!(std::fs::read(a.join("f")).unwrap(), b"data");
    c.wait_until("A opens a new session", Duration::from_secs(30), |c| {
        sessions(c).iter().any(|s| {
            s["mountpoint"] == a.path.to_str().unwrap() && !old.contains(&s["id"].as_u64().unwrap())
        })
    });
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("meta expired this client's session"),
        "the mount did not say it lost its session"
    );
    // The writer's close succeeds: the chunks whose ids went with the old
    // session are uploaded again, and every byte is there.
    std::fs::write(&go, b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer's close failed");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    assert!(
        std::fs::read(b.join("w")).unwrap() == data,
        "the written data is whole"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn files_appended_then_removed_leave_no_orphan_behind() {
    let c = Cluster::start(Options::default());
    let m = c.mount("mnt");
    // An append takes the file's append lock and gives it back a moment
    // later, from a task that holds the file meanwhile: the file's last
    // close and its removal must still release it on meta.
    for i in 0..10 {
        let path = m.join(&format!("f{i}"));
        std::fs::write(&path, b"start").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b" and more").unwrap();
        drop(f);
        std::fs::remove_file(&path).unwrap();
    }
    c.wait_until(
        "every removed file is released",
        Duration::from_secs(30),
        |c| c.orphans() == 0,
    );
    assert!(c.dfs_ok(&["--json", "status"]).contains("\"files\":0"));
}
