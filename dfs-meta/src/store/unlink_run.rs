//! A run of unlinks of one batch (`together.rs`) with one read for all of
//! them. Done one after another, each call's read of its directory and
//! entry must first send the writes of the calls before it (a read sees
//! them), so on PostgreSQL each call cost two round trips. Here every
//! call's directory and entry are read at once; each call is then checked
//! against that read and what the calls before it did, exactly as
//! `unlink_in` checks it alone, and its writes wait to go with the others
//! (each directory touched once, at the end).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::db::DbConn;
use super::namespace::{self, KeepOpen, NameChange};
use super::rows::{FileKind, Inode, Timespec};
use super::{Result, StoreError};

/// One unlink of a run: `name` in `parent`, of inode `expect` if given.
pub(super) struct RunCall<'a> {
    pub parent: u64,
    pub name: &'a [u8],
    pub expect: Option<u64>,
    pub keep: KeepOpen<'a>,
}

/// Does `calls` in order in transaction `tx`: `Err` when the database
/// failed (the run must not commit), else each call's own answer. A refused
/// call wrote nothing.
pub(super) async fn unlink_run(
    tx: &mut DbConn,
    calls: &[RunCall<'_>],
) -> Result<Vec<Result<NameChange<u64>>>> {
    let names: Vec<(u64, &[u8])> = calls.iter().map(|c| (c.parent, c.name)).collect();
    let read = namespace::dirs_and_entries(tx, &names).await?;
    let now = Timespec::now();
    let mut done = Done::default();
    let mut answers = Vec::with_capacity(calls.len());
    for (c, read) in calls.iter().zip(read) {
        let answer = match checked(c, read, &done) {
            Ok((dir, inode)) => {
                namespace::delete_entry(tx, c.parent, c.name).await?;
                namespace::drop_link(tx, &inode, now, c.keep).await?;
                done.note(c, inode.ino);
                Ok(NameChange {
                    done: inode.ino,
                    dir: Some(namespace::touched(dir, 0, now)),
                })
            }
            Err(e @ StoreError::Db(_)) => return Err(e),
            Err(refused) => Err(refused),
        };
        answers.push(answer);
    }
    for dir in done.dirs {
        namespace::touch_dir(tx, dir, 0, now).await?;
    }
    Ok(answers)
}

/// What the calls of a run did so far.
#[derive(Default)]
struct Done {
    /// Entries removed.
    removed: HashSet<(u64, Vec<u8>)>,
    /// Links dropped, by inode.
    unlinked: HashMap<u64, u32>,
    /// Directories changed.
    dirs: BTreeSet<u64>,
}

impl Done {
    fn note(&mut self, c: &RunCall<'_>, ino: u64) {
        self.removed.insert((c.parent, c.name.to_vec()));
        *self.unlinked.entry(ino).or_default() += 1;
        self.dirs.insert(c.parent);
    }
}

/// `unlink_in`'s checks of call `c` on the run's `read` of its directory
/// and entry, as the calls before it (`done`) left them: the directory and
/// the inode to unlink, its link count as they left it.
fn checked(
    c: &RunCall<'_>,
    read: Result<(Inode, Option<Inode>)>,
    done: &Done,
) -> Result<(Inode, Inode)> {
    let (dir, entry) = read?;
    dir.require_unpinned("unlink")?;
    let gone = || done.removed.contains(&(c.parent, c.name.to_vec()));
    let mut inode = entry
        .filter(|i| !gone() && c.expect.is_none_or(|e| e == i.ino))
        .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(c.name).into_owned()))?;
    if inode.kind == FileKind::Directory {
        return Err(StoreError::IsDir);
    }
    inode.require_unpinned("unlink")?;
    let dropped = done.unlinked.get(&inode.ino).copied().unwrap_or(0);
    inode.nlink = inode.nlink.saturating_sub(dropped);
    // (Unlinking changes the inode's ctime, never what these checks read.)
    Ok((dir, inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::namespace::CreateArgs;
    use crate::store::tables::Origin;
    use crate::store::{FormatOptions, Store};
    use dfs_proto::ROOT_INO;

    fn file(name: &str) -> CreateArgs {
        CreateArgs {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            kind: FileKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            symlink_target: Vec::new(),
        }
    }

    /// A run answers every call as one by one would: names removed by an
    /// earlier call are gone, a second name of an inode finds one link
    /// left, a wrong inode or a directory is refused and removes nothing.
    #[tokio::test]
    async fn a_run_answers_each_call_as_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/meta.db", dir.path().display());
        let s = Store::open(&url, FormatOptions::default()).await.unwrap();
        let a = s.create(file("a"), Origin::NONE).await.unwrap();
        s.link(a.ino, ROOT_INO, b"a2", Origin::NONE).await.unwrap();
        let b = s.create(file("b"), Origin::NONE).await.unwrap();
        let c = s.create(file("c"), Origin::NONE).await.unwrap();
        let mut sub = file("sub");
        sub.kind = FileKind::Directory;
        s.create(sub, Origin::NONE).await.unwrap();
        let keep = s.keep_open(None, Origin::NONE);
        let call = |name: &'static str, expect: Option<u64>| RunCall {
            parent: ROOT_INO,
            name: name.as_bytes(),
            expect,
            keep,
        };
        let calls = [
            call("a", None),
            call("b", None),
            call("b", None),
            call("a2", None),
            call("c", Some(b.ino)),
            call("sub", None),
            call("none", None),
        ];
        let mut tx = s.begin().await.unwrap();
        let answers = unlink_run(&mut tx, &calls).await.unwrap();
        tx.commit().await.unwrap();
        let got: Vec<std::result::Result<u64, i32>> = answers
            .iter()
            .map(|a| a.as_ref().map(|d| d.done).map_err(|e| e.errno()))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok(a.ino),
                Ok(b.ino),
                Err(libc::ENOENT),
                Ok(a.ino),
                Err(libc::ENOENT),
                Err(libc::EISDIR),
                Err(libc::ENOENT),
            ]
        );
        let now = answers[0].as_ref().unwrap().dir.clone().unwrap();
        assert_eq!(
            s.getattr(ROOT_INO).await.unwrap(),
            now,
            "touched once, as answered"
        );
        assert_eq!(s.getattr(a.ino).await.unwrap_err().errno(), libc::ENOENT);
        assert_eq!(s.getattr(b.ino).await.unwrap_err().errno(), libc::ENOENT);
        assert_eq!(s.lookup(ROOT_INO, b"c").await.unwrap().ino, c.ino);
        assert_eq!(
            s.lookup(ROOT_INO, b"sub").await.unwrap().kind,
            FileKind::Directory
        );
    }
}
