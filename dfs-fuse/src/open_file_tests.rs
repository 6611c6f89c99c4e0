//! The open-file state machine against an in-memory cluster that fails on
//! purpose (`crate::fake`): buffering, upload, put-back on failure, commit,
//! conflicts with other writers, lost replies, released ids, vanished
//! chunks, fsync replacing a replica, and read planning.

use super::*;
use crate::fake::{FakeCluster, Fault, Op, CHUNK_SIZE};

const INO: u64 = 7;
const CS: usize = CHUNK_SIZE as usize;

/// A byte pattern that differs per writer and offset.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

async fn open(io: &Io) -> OpenFile {
    OpenFile::load(io, INO).await.expect("open")
}

/// What a fresh open reads back through the data path (plan, then fetch).
async fn read_back(io: &Io, len: usize) -> Vec<u8> {
    let mut file = open(io).await;
    let plan = file.plan_read(io, 0, len as u32 + 100);
    io.complete_read(plan).await.expect("read").to_vec()
}

fn cluster() -> (FakeCluster, Io) {
    let cluster = FakeCluster::default();
    cluster.create(INO);
    let io = cluster.io();
    (cluster, io)
}

#[tokio::test]
async fn written_bytes_are_committed_and_read_back() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let data = pattern(1, 3 * CS + 100);
    file.write(&io, 0, &data).await.unwrap();
    // Three full chunks went up in the background; nothing is committed
    // before the flush.
    assert!(file.has_changes());
    file.flush(&io, false).await.unwrap();
    assert!(!file.has_changes());
    assert_eq!(cluster.content(INO), data);
    assert_eq!(read_back(&io, data.len()).await, data);
    assert_eq!(io.metrics.dirty_bytes.get(), 0, "buffers are released");
}

#[tokio::test]
async fn reads_see_buffered_bytes_over_committed_ones_and_zeros_in_holes() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    file.write(&io, 0, &pattern(1, CS)).await.unwrap();
    file.flush(&io, false).await.unwrap();
    // Not flushed: a write in the middle of chunk 0 and one past a hole.
    file.write(&io, 10, b"hello").await.unwrap();
    file.write(&io, 3 * CS as u64, b"end").await.unwrap();
    let plan = file.plan_read(&io, 0, 4 * CS as u32);
    let out = io.complete_read(plan).await.unwrap().to_vec();
    let mut want = pattern(1, CS);
    want[10..15].copy_from_slice(b"hello");
    want.resize(3 * CS, 0);
    want.extend_from_slice(b"end");
    assert_eq!(out, want);
    // The cluster still has only what was flushed.
    assert_eq!(cluster.content(INO), pattern(1, CS));
}

#[tokio::test]
async fn a_random_read_is_served_from_blocks_in_order() {
    let (_cluster, io) = cluster();
    let mut file = open(&io).await;
    let data = pattern(4, 5 * CS + 100);
    file.write(&io, 0, &data).await.unwrap();
    file.flush(&io, false).await.unwrap();
    let mut reader = open(&io).await;
    // Not at 0 and not after a previous read: a random read, fetched as the
    // blocks it touches, across chunk boundaries.
    let (from, len) = (CS + CS / 3, 2 * CS);
    let plan = reader.plan_read(&io, from as u64, len as u32);
    assert!(!plan.sequential);
    let out = io.complete_read(plan).await.unwrap();
    assert_eq!(out.to_vec(), data[from..from + len]);
    // A read running past the end stops at the end.
    let tail = data.len() - 10;
    let plan = reader.plan_read(&io, tail as u64, CS as u32);
    assert_eq!(io.complete_read(plan).await.unwrap().to_vec(), data[tail..]);
}

#[tokio::test]
async fn a_failed_upload_keeps_the_bytes_and_the_next_flush_commits_them() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let data = pattern(2, 2 * CS + 7);
    cluster.fail_next(Op::Upload, Fault::NoSpace);
    file.write(&io, 0, &data).await.unwrap();
    let err = file.flush(&io, false).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    // Nothing was committed over the missing chunk, and the bytes are still here.
    assert!(cluster.content(INO).is_empty());
    assert!(file.has_changes());
    let plan = file.plan_read(&io, 0, data.len() as u32);
    assert_eq!(io.complete_read(plan).await.unwrap().to_vec(), data);
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.content(INO), data);
}

#[tokio::test]
async fn stalled_nodes_read_as_eio_not_enospc() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    cluster.fail_next(Op::Upload, Fault::NodesFailed);
    file.write(&io, 0, &pattern(3, 100)).await.unwrap();
    let err = file.flush(&io, false).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.content(INO), pattern(3, 100));
}

#[tokio::test]
async fn a_commit_whose_reply_was_lost_is_committed_again_correctly() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    file.write(&io, 0, &pattern(4, CS)).await.unwrap();
    file.flush(&io, false).await.unwrap();
    let data = pattern(5, CS + 50);
    file.write(&io, 0, &data).await.unwrap();
    // Meta committed, the reply never came back: the mount cannot tell.
    cluster.fail_next(Op::Commit, Fault::LostReply);
    assert!(file.flush(&io, false).await.is_err());
    // The next flush finds its own commit in place (a stale base to meta)
    // and merges its bytes onto it: the content is what was written.
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.content(INO), data);
    assert_eq!(read_back(&io, data.len()).await, data);
}

#[tokio::test]
async fn a_commit_that_timed_out_is_tried_again_by_the_next_flush() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let data = pattern(6, 2 * CS);
    file.write(&io, 0, &data).await.unwrap();
    cluster.fail_next(Op::Commit, Fault::Timeout);
    let err = file.flush(&io, false).await.unwrap_err();
    assert_eq!(err.errno(), libc::ETIMEDOUT);
    assert!(cluster.content(INO).is_empty());
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.content(INO), data);
}

#[tokio::test]
async fn another_writers_bytes_in_the_same_chunk_survive_a_conflict() {
    let (cluster, io_a) = cluster();
    let io_b = cluster.io();
    let mut a = open(&io_a).await;
    a.write(&io_a, 0, &pattern(7, CS)).await.unwrap();
    a.flush(&io_a, false).await.unwrap();
    // Two mounts open the same file and change different bytes of chunk 0.
    let mut b = open(&io_b).await;
    a.write(&io_a, 0, b"AAAA").await.unwrap();
    b.write(&io_b, 100, b"BBBB").await.unwrap();
    a.flush(&io_a, false).await.unwrap();
    b.flush(&io_b, false).await.unwrap();
    let mut want = pattern(7, CS);
    want[0..4].copy_from_slice(b"AAAA");
    want[100..104].copy_from_slice(b"BBBB");
    assert_eq!(cluster.content(INO), want);
}

#[tokio::test]
async fn released_ids_are_uploaded_again_under_fresh_ones() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let data = pattern(8, 2 * CS + 1);
    file.write(&io, 0, &data).await.unwrap();
    let uploads_before = cluster.calls("upload");
    // The session expired while the mount was cut off: meta released the
    // ids of every chunk uploaded but not committed.
    cluster.fail_next(Op::Commit, Fault::IdsReleased);
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.content(INO), data);
    // The last chunk's first upload, then all three again.
    assert_eq!(cluster.calls("upload"), uploads_before + 1 + 3);
}

#[tokio::test]
async fn a_vanished_chunk_is_read_from_the_new_map() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    file.write(&io, 0, &pattern(9, CS)).await.unwrap();
    file.flush(&io, false).await.unwrap();
    // A reader on another mount (its cache does not have the chunk).
    let io_r = cluster.io();
    let mut reader = open(&io_r).await;
    // Another mount replaces chunk 0; the old chunk is deleted from the nodes.
    cluster.vanish(INO, 0);
    cluster.write_elsewhere(INO, 0, &pattern(10, CS));
    // The read with the old map finds the chunk gone (not an I/O error)...
    let plan = reader.plan_read(&io_r, 0, CS as u32);
    let err = io_r.complete_read(plan).await.unwrap_err();
    assert!(err.is_chunk_gone(), "{err}");
    // ...and a partial write into it starts from the new chunk's bytes.
    reader.write(&io_r, 5, b"xyz").await.unwrap();
    reader.flush(&io_r, false).await.unwrap();
    let mut want = pattern(10, CS);
    want[5..8].copy_from_slice(b"xyz");
    assert_eq!(cluster.content(INO), want);
}

#[tokio::test]
async fn fsync_replaces_a_replica_that_cannot_sync() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    file.write(&io, 0, &pattern(11, 100)).await.unwrap();
    cluster.unsyncable("node2");
    file.flush(&io, true).await.unwrap();
    let chunk_id = open(&io).await.committed[&0].chunk_id;
    // A new durable copy on node 4, and meta forgets node 2's.
    assert_eq!(cluster.added(), vec![(chunk_id, vec![4])]);
    assert_eq!(cluster.forgotten(), vec![(chunk_id, 2)]);
}

#[tokio::test]
async fn fsync_fails_when_meta_will_not_forget_an_unsynced_replica() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    file.write(&io, 0, &pattern(12, 100)).await.unwrap();
    cluster.unsyncable("node1");
    // Meta refuses (it would leave the chunk short of durable copies).
    cluster.fail_next(Op::ForgetReplica, Fault::Refused);
    let err = file.flush(&io, true).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
}

#[tokio::test]
async fn zero_range_punches_whole_chunks_and_zeroes_edges() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let data = pattern(13, 3 * CS);
    file.write(&io, 0, &data).await.unwrap();
    file.flush(&io, false).await.unwrap();
    // From the middle of chunk 0 to the middle of chunk 2.
    let (from, len) = (CS as u64 / 2, 2 * CS as u64);
    file.zero_range(&io, from, len).await.unwrap();
    let mut want = data.clone();
    want[from as usize..(from + len) as usize].fill(0);
    assert_eq!(cluster.content(INO), want);
    let map = open(&io).await;
    assert!(!map.committed.contains_key(&1), "chunk 1 became a hole");
    assert_eq!(file.seek_data_or_hole(0, true).unwrap(), CS as u64);
}

fn at(sec: i64) -> pb::Timespec {
    pb::Timespec { sec, nsec: 0 }
}

#[tokio::test]
async fn attributes_held_while_new_data_is_pending_arrive_with_its_commit() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let created = cluster.attr(INO);
    file.write(&io, 0, b"content").await.unwrap();
    // tar x: futimens, fchown to the same owner, fchmod, then close.
    let change = AttrChange {
        mode: Some(0o100644),
        uid: Some(created.uid),
        gid: Some(created.gid),
        atime: Some(at(1_000)),
        mtime: Some(at(2_000)),
    };
    assert!(file.hold_attrs(&created, change));
    // This mount already shows them; meta does not have them yet.
    let mut shown = created;
    file.overlay(&mut shown);
    assert_eq!(
        (shown.mode, shown.mtime, shown.atime),
        (0o644, Some(at(2_000)), Some(at(1_000)))
    );
    assert_ne!(cluster.attr(INO).mode, 0o644);
    file.flush(&io, false).await.unwrap();
    let committed = cluster.attr(INO);
    assert_eq!(committed.mode, 0o644, "the mode went with the commit");
    assert_eq!(
        committed.mtime,
        Some(at(2_000)),
        "the commit kept the set mtime"
    );
    assert_eq!(cluster.content(INO), b"content");
}

#[tokio::test]
async fn attributes_go_to_meta_at_once_when_holding_them_could_be_seen() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    let attr = cluster.attr(INO);
    let chmod = AttrChange {
        mode: Some(0o600),
        ..Default::default()
    };
    // Nothing pending: no commit would carry them.
    assert!(!file.hold_attrs(&attr, chmod));
    file.write(&io, 0, b"first").await.unwrap();
    // A chown to another owner: meta's export rules decide it.
    let chown = AttrChange {
        uid: Some(attr.uid + 1),
        ..Default::default()
    };
    assert!(!file.hold_attrs(&attr, chown));
    file.flush(&io, false).await.unwrap();
    // Content others can read already: a chmod must reach them now.
    file.write(&io, 5, b" more").await.unwrap();
    assert!(!file.hold_attrs(&cluster.attr(INO), chmod));
}

#[tokio::test]
async fn an_mtime_set_by_meta_while_writes_are_pending_is_the_one_committed() {
    let (cluster, io) = cluster();
    let mut file = open(&io).await;
    file.write(&io, 0, b"data").await.unwrap();
    file.set_mtime(at(3_000));
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.attr(INO).mtime, Some(at(3_000)));
    // A later write moves it again.
    file.write(&io, 4, b"more").await.unwrap();
    file.flush(&io, false).await.unwrap();
    assert_ne!(cluster.attr(INO).mtime, Some(at(3_000)));
}

#[tokio::test]
async fn a_file_created_early_uploads_before_meta_has_it_and_commits_after() {
    let (cluster, io) = cluster();
    let attr = cluster.attr(INO);
    let (lander, landing) = crate::deferred::landing();
    let mut file = OpenFile::created(&io, &attr, CHUNK_SIZE, Some(landing));
    file.write(&io, 0, b"small").await.unwrap();
    let close = tokio::spawn(async move { file.flush(&io, false).await.map_err(|e| e.errno()) });
    // The data goes to the nodes while the create is on its way...
    for _ in 0..200 {
        if cluster.calls("upload") > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(cluster.calls("upload"), 1, "uploaded before meta answered");
    assert_eq!(cluster.calls("commit_write"), 0, "not committed before");
    assert!(!close.is_finished());
    // ...and is committed once meta has the file.
    lander.landed(Ok(()));
    assert_eq!(close.await.unwrap(), Ok(()));
    assert_eq!(cluster.content(INO), b"small");

    // Refused: nothing is committed, and the close fails.
    let (cluster, io) = self::cluster();
    let (lander, landing) = crate::deferred::landing();
    let mut file = OpenFile::created(&io, &cluster.attr(INO), CHUNK_SIZE, Some(landing));
    file.write(&io, 0, b"never").await.unwrap();
    lander.landed(Err("refused".into()));
    assert_eq!(
        file.flush(&io, false).await.map_err(|e| e.errno()),
        Err(libc::EIO)
    );
    assert_eq!(cluster.calls("commit_write"), 0);
    assert!(cluster.content(INO).is_empty());
}

/// A file created early whose create is held for its first commit, with
/// what meta's answer to the create was (through the mount's bookkeeping).
async fn held_file(
    io: &Io,
    cluster: &FakeCluster,
) -> (
    OpenFile,
    Arc<crate::deferred::HeldCreate>,
    Arc<std::sync::Mutex<Vec<Result<u64, i32>>>>,
) {
    let deferred = crate::deferred::Deferred::new(true, true);
    let in_flight = deferred.begin(INO, 1, b"new").await;
    let (lander, landing) = crate::deferred::landing();
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = answers.clone();
    let request = pb::CreateRequest {
        parent: 1,
        name: b"new".to_vec(),
        ino: INO,
        ..Default::default()
    };
    let on_answer: crate::deferred::OnAnswer = Box::new(move |_, _, answer| {
        let answer = answer.map(|(grant, _)| grant).map_err(|e| e.errno());
        told.lock().unwrap().push(answer);
        answer.map(|_| ()).map_err(|e| format!("errno {e}"))
    });
    let held = crate::deferred::HeldCreate::new(request, lander, on_answer, in_flight);
    let file = OpenFile::created(io, &cluster.attr(INO), CHUNK_SIZE, Some(landing))
        .with_held_create(held.clone());
    (file, held, answers)
}

#[tokio::test]
async fn a_held_create_rides_with_the_files_first_commit() {
    let cluster = FakeCluster::default();
    let io = cluster.io();
    let (mut file, held, answers) = held_file(&io, &cluster).await;
    let (kicks_tx, kicks) = tokio::sync::watch::channel(0u64);
    let alone = tokio::spawn({
        let held = held.clone();
        async move { held.wait(kicks).await.is_some() }
    });
    file.write(&io, 0, b"small").await.unwrap();
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.calls("commit_write"), 1, "one call at close");
    assert_eq!(cluster.calls("carried_create"), 1, "carrying the create");
    assert_eq!(cluster.content(INO), b"small");
    assert_eq!(
        *answers.lock().unwrap(),
        vec![Ok(0)],
        "the create was answered once"
    );
    assert!(!alone.await.unwrap(), "nothing goes alone");
    drop(kicks_tx);
    // Later commits carry nothing.
    file.write(&io, 5, b" more").await.unwrap();
    file.flush(&io, false).await.unwrap();
    assert_eq!(cluster.calls("carried_create"), 1);
    assert_eq!(cluster.content(INO), b"small more");
}

#[tokio::test]
async fn a_create_whose_carrying_commit_fails_goes_alone_and_decides_the_close() {
    for create_lands in [true, false] {
        let cluster = FakeCluster::default();
        let io = cluster.io();
        let (mut file, held, answers) = held_file(&io, &cluster).await;
        let (_kicks_tx, kicks) = tokio::sync::watch::channel(0u64);
        // The carrying commit gets no answer.
        cluster.fail_next(Op::Commit, Fault::Timeout);
        let sender = tokio::spawn({
            let (held, cluster) = (held.clone(), cluster.clone());
            async move {
                // What `DfsFs::create_later` does, meta answering as told.
                let create = held.wait(kicks).await.expect("the create goes alone");
                let answer = if create_lands {
                    cluster.create(INO);
                    Ok((7, None))
                } else {
                    Err(crate::error::FsError::new(libc::EEXIST, "name taken"))
                };
                create.answered(std::time::Instant::now(), answer);
            }
        });
        file.write(&io, 0, b"small").await.unwrap();
        let closed = file.flush(&io, false).await.map_err(|e| e.errno());
        sender.await.unwrap();
        if create_lands {
            assert_eq!(closed, Ok(()), "committed after the create landed");
            assert_eq!(cluster.content(INO), b"small");
            assert_eq!(*answers.lock().unwrap(), vec![Ok(7)]);
            assert_eq!(cluster.calls("commit_write"), 2, "carried, then alone");
        } else {
            assert_eq!(
                closed,
                Err(libc::EIO),
                "the create failed: so does the close"
            );
            assert_eq!(*answers.lock().unwrap(), vec![Err(libc::EEXIST)]);
            assert_eq!(cluster.calls("commit_write"), 1, "nothing committed after");
        }
    }
}

#[tokio::test]
async fn a_held_create_goes_alone_when_nothing_carries_it() {
    // Closed with nothing written: it goes at the close.
    let cluster = FakeCluster::default();
    let io = cluster.io();
    let (mut file, held, _) = held_file(&io, &cluster).await;
    let (_kicks_tx, kicks) = tokio::sync::watch::channel(0u64);
    let alone = tokio::spawn({
        let held = held.clone();
        async move { held.wait(kicks).await.is_some() }
    });
    file.flush(&io, false).await.unwrap();
    let went = tokio::time::timeout(std::time::Duration::from_millis(50), alone)
        .await
        .expect("at once, not after the hold");
    assert!(went.unwrap());

    // A settle elsewhere kicks it.
    let (_file, held, _) = held_file(&io, &cluster).await;
    let (kicks_tx, kicks) = tokio::sync::watch::channel(0u64);
    let alone = tokio::spawn({
        let held = held.clone();
        async move { held.wait(kicks).await.is_some() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    assert!(!alone.is_finished(), "held while its file is open");
    kicks_tx.send_modify(|k| *k += 1);
    let went = tokio::time::timeout(std::time::Duration::from_millis(50), alone)
        .await
        .expect("kicked");
    assert!(went.unwrap());

    // Left alone, it goes after the hold.
    let (_file, held, _) = held_file(&io, &cluster).await;
    let (_kicks_tx, kicks) = tokio::sync::watch::channel(0u64);
    let went = tokio::time::timeout(crate::deferred::HOLD_CREATE * 10, held.wait(kicks))
        .await
        .expect("after the hold");
    assert!(went.is_some());
    assert!(held.carry().is_none(), "no commit carries it then");
}
