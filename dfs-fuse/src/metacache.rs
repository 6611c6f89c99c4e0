//! The mount's own cache of entries and attributes, answered without a round
//! trip to meta: what lookups and getattrs returned, what this mount's own
//! changes made (meta returns the directories' new attributes with them), and
//! directories whose every name is known ("complete": made here, or listed
//! whole), in which a name not known is answered "no such file" at once.
//!
//! It is only as good as meta's invalidations: `coherence.rs` keeps it only
//! while the watch stream is live, empties it whenever the stream breaks, and
//! drops what each invalidation names. Nothing in it is older than
//! `cache_timeout`, the bound on anything an invalidation could miss.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use dfs_proto::pb;
use lru::LruCache;

/// Entries and attributes kept (each).
const ITEMS: usize = 256 * 1024;
/// Complete directories kept, and the names they may hold together.
const COMPLETE_DIRS: usize = 4096;
const COMPLETE_NAMES: usize = 1 << 20;

/// What the cache knows about a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    Missing,
    Found(pb::Attr),
}

pub struct MetaCache {
    max_age: Duration,
    /// (parent, name) -> the inode it names, or None: no such name.
    entries: LruCache<(u64, Vec<u8>), (Option<u64>, Instant)>,
    attrs: LruCache<u64, (pb::Attr, Instant)>,
    complete: LruCache<u64, (HashSet<Vec<u8>>, Instant)>,
    complete_names: usize,
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> LruCache<K, V> {
    LruCache::new(NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN))
}

impl MetaCache {
    pub fn new(max_age: Duration) -> MetaCache {
        MetaCache {
            max_age,
            entries: lru(ITEMS),
            attrs: lru(ITEMS),
            complete: lru(COMPLETE_DIRS),
            complete_names: 0,
        }
    }

    fn fresh(&self, t: Instant) -> bool {
        t.elapsed() < self.max_age
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.attrs.clear();
        self.complete.clear();
        self.complete_names = 0;
    }

    pub fn attr(&mut self, ino: u64) -> Option<pb::Attr> {
        let max_age = self.max_age;
        match self.attrs.get(&ino) {
            Some((a, t)) if t.elapsed() < max_age => Some(*a),
            _ => None,
        }
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Option<Known> {
        let key = (parent, name.to_vec());
        if let Some((ino, t)) = self.entries.get(&key).copied() {
            if self.fresh(t) {
                return match ino {
                    None => Some(Known::Missing),
                    Some(ino) => self.attr(ino).map(Known::Found),
                };
            }
        }
        let max_age = self.max_age;
        match self.complete.get(&parent) {
            Some((names, t)) if t.elapsed() < max_age && !names.contains(name) => {
                Some(Known::Missing)
            }
            _ => None,
        }
    }

    /// The inode `name` in `parent` names, if known.
    pub fn ino_of(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let max_age = self.max_age;
        match self.entries.get(&(parent, name.to_vec())) {
            Some((Some(ino), t)) if t.elapsed() < max_age => Some(*ino),
            _ => None,
        }
    }

    /// Keeps `attr` unless the cache holds a later change of the inode (by
    /// ctime: replies to concurrent changes may come back out of order).
    pub fn put_attr(&mut self, attr: &pb::Attr) {
        let key = |a: &pb::Attr| a.ctime.map(|t| (t.sec, t.nsec));
        if let Some((held, _)) = self.attrs.peek(&attr.ino) {
            if key(held) > key(attr) {
                return;
            }
        }
        self.attrs.put(attr.ino, (*attr, Instant::now()));
    }

    /// `name` in `parent` now names `attr` (None: nothing).
    pub fn put_entry(&mut self, parent: u64, name: &[u8], attr: Option<&pb::Attr>) {
        self.entries.put(
            (parent, name.to_vec()),
            (attr.map(|a| a.ino), Instant::now()),
        );
        match attr {
            Some(a) => {
                self.put_attr(a);
                self.add_name(parent, name);
            }
            None => {
                if let Some((names, _)) = self.complete.get_mut(&parent) {
                    if names.remove(name) {
                        self.complete_names -= 1;
                    }
                }
            }
        }
    }

    /// `name` exists in `parent`: a complete listing of it gains the name.
    fn add_name(&mut self, parent: u64, name: &[u8]) {
        let grew = match self.complete.get_mut(&parent) {
            Some((names, _)) => names.insert(name.to_vec()),
            None => false,
        };
        if grew {
            self.complete_names += 1;
            self.bound_complete();
        }
    }

    /// `name` in `parent` now names something whose inode is not known here
    /// (a rename's target).
    pub fn put_unknown_entry(&mut self, parent: u64, name: &[u8]) {
        self.entries.pop(&(parent, name.to_vec()));
        self.add_name(parent, name);
    }

    /// `dir` holds exactly `names` (it was just made, or listed whole).
    pub fn put_complete(&mut self, dir: u64, names: HashSet<Vec<u8>>) {
        self.forget_complete(dir);
        self.complete_names += names.len();
        if let Some((_, (old, _))) = self.complete.push(dir, (names, Instant::now())) {
            self.complete_names -= old.len();
        }
        self.bound_complete();
    }

    fn bound_complete(&mut self) {
        while self.complete_names > COMPLETE_NAMES {
            match self.complete.pop_lru() {
                Some((_, (names, _))) => self.complete_names -= names.len(),
                None => break,
            }
        }
    }

    fn forget_complete(&mut self, dir: u64) {
        if let Some((names, _)) = self.complete.pop(&dir) {
            self.complete_names -= names.len();
        }
    }

    /// What `name` in `parent` names is not known any more (and so not
    /// every name of `parent`).
    pub fn forget_entry(&mut self, parent: u64, name: &[u8]) {
        self.entries.pop(&(parent, name.to_vec()));
        self.forget_complete(parent);
    }

    /// Sets the cached attributes' mtime and ctime (a change made here).
    pub fn touch(&mut self, ino: u64, at: pb::Timespec) {
        if let Some((attr, _)) = self.attrs.peek_mut(&ino) {
            attr.mtime = Some(at);
            attr.ctime = Some(at);
        }
    }

    pub fn forget_attr(&mut self, ino: u64) {
        self.attrs.pop(&ino);
    }

    /// `ino` is gone (a removed directory): its listing too.
    pub fn forget_inode(&mut self, ino: u64) {
        self.attrs.pop(&ino);
        self.forget_complete(ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64) -> pb::Attr {
        pb::Attr {
            ino,
            ..Default::default()
        }
    }

    #[test]
    fn entries_attrs_and_misses() {
        let mut c = MetaCache::new(Duration::from_secs(30));
        assert_eq!(c.lookup(1, b"a"), None);
        c.put_entry(1, b"a", Some(&attr(5)));
        assert_eq!(c.lookup(1, b"a"), Some(Known::Found(attr(5))));
        c.put_entry(1, b"b", None);
        assert_eq!(c.lookup(1, b"b"), Some(Known::Missing));
        // An entry whose attributes went answers nothing.
        c.forget_attr(5);
        assert_eq!(c.lookup(1, b"a"), None);
    }

    #[test]
    fn a_complete_directory_answers_misses() {
        let mut c = MetaCache::new(Duration::from_secs(30));
        c.put_complete(7, HashSet::new());
        assert_eq!(c.lookup(7, b"x"), Some(Known::Missing));
        c.put_entry(7, b"x", Some(&attr(8)));
        assert_eq!(c.lookup(7, b"x"), Some(Known::Found(attr(8))));
        // Known to exist, attributes gone: ask meta, never "missing".
        c.forget_attr(8);
        c.entries.pop(&(7, b"x".to_vec()));
        assert_eq!(c.lookup(7, b"x"), None);
        // Someone else changed a name in it: no longer complete.
        c.forget_entry(7, b"y");
        assert_eq!(c.lookup(7, b"z"), None);
        assert_eq!(c.complete_names, 0);
    }

    #[test]
    fn nothing_outlives_the_max_age() {
        let mut c = MetaCache::new(Duration::from_millis(1));
        c.put_entry(1, b"a", Some(&attr(5)));
        c.put_complete(2, HashSet::new());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.lookup(1, b"a"), None);
        assert_eq!(c.lookup(2, b"a"), None);
        assert_eq!(c.attr(5), None);
    }
}
