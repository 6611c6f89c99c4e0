//! The mount's own cache of entries and attributes, answered without a round
//! trip to meta: what lookups and getattrs returned, what this mount's own
//! changes made (meta returns the directories' new attributes with them), and
//! directories whose every name is known ("complete": made here, or listed
//! whole), in which a name not known is answered "no such file" at once.
//!
//! Chunk maps of small files ride along: an open of a file whose map is here
//! (with its attributes, at the same content version) needs no GetChunks.
//!
//! It is only as good as meta's invalidations: `coherence.rs` keeps it only
//! while the watch stream is live, empties it whenever the stream breaks, and
//! drops what each invalidation names. Nothing in it is older than
//! `cache_timeout`, the bound on anything an invalidation could miss.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_proto::pb;
use lru::LruCache;

/// Entries and attributes kept (each).
const ITEMS: usize = 256 * 1024;
/// Complete directories kept, and the names they may hold together.
const COMPLETE_DIRS: usize = 4096;
const COMPLETE_NAMES: usize = 1 << 20;
/// Chunk maps kept, of files of at most `MAP_CHUNKS` chunks: small files are
/// those whose open a round trip costs most.
const MAPS: usize = 32 * 1024;
const MAP_CHUNKS: usize = 4;
/// A map is not used past this age, however fresh its file's attributes:
/// its read tokens expire (10 minutes after meta issued them).
const MAP_MAX_AGE: Duration = Duration::from_secs(300);

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
    /// A file's chunk map and attributes as meta last gave them.
    maps: LruCache<u64, (Arc<pb::GetChunksReply>, Instant)>,
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
            maps: lru(MAPS),
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
        self.maps.clear();
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

    /// Every name in `dir` with its attributes, ordered by name as meta
    /// lists them, if the cache knows them all (a directory made here or
    /// listed whole, and each of its names' inode and attributes).
    pub fn listing(&mut self, dir: u64) -> Option<Vec<(Vec<u8>, pb::Attr)>> {
        let max_age = self.max_age;
        let mut names: Vec<Vec<u8>> = match self.complete.get(&dir) {
            Some((names, t)) if t.elapsed() < max_age => names.iter().cloned().collect(),
            _ => return None,
        };
        names.sort_unstable();
        let mut listed = Vec::with_capacity(names.len());
        for name in names {
            let ino = self.ino_of(dir, &name)?;
            let attr = self.attr(ino)?;
            listed.push((name, attr));
        }
        Some(listed)
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
        self.maps.pop(&ino);
    }

    /// `ino` is gone (a removed directory): its listing too.
    pub fn forget_inode(&mut self, ino: u64) {
        self.forget_attr(ino);
        self.forget_complete(ino);
    }

    /// Keeps a small file's chunk map, and its attributes as the map's.
    pub fn put_map(&mut self, map: &pb::GetChunksReply) {
        let Some(attr) = &map.attr else { return };
        self.put_attr(attr);
        if map.chunks.len() > MAP_CHUNKS {
            self.maps.pop(&attr.ino);
        } else {
            self.maps
                .put(attr.ino, (Arc::new(map.clone()), Instant::now()));
        }
    }

    /// The chunk map of `ino` with its current attributes, if those are
    /// fresh and describe the map's content (a later change of the content,
    /// here or anywhere, left other attributes or none; one of only the
    /// mode, owner, times or flags, made here, left these). Fresh attributes
    /// of the same content version vouch for an older map: every change of
    /// the content moves the version.
    pub fn map(&mut self, ino: u64) -> Option<(Arc<pb::GetChunksReply>, pb::Attr)> {
        let attr = self.attr(ino)?;
        let (map, t) = self.maps.get(&ino)?;
        let same = map
            .attr
            .as_ref()
            .is_some_and(|a| (a.version, a.size) == (attr.version, attr.size));
        (same && t.elapsed() < MAP_MAX_AGE).then(|| (map.clone(), attr))
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
    fn a_complete_directory_lists_its_names_in_order_while_each_is_known() {
        let mut c = MetaCache::new(Duration::from_secs(30));
        assert_eq!(c.listing(7), None, "never listed");
        c.put_complete(7, HashSet::new());
        assert_eq!(c.listing(7), Some(vec![]), "made here: empty");
        c.put_entry(7, b"b", Some(&attr(9)));
        c.put_entry(7, b"a", Some(&attr(8)));
        c.put_entry(7, b"c", Some(&attr(10)));
        c.put_entry(7, b"c", None);
        assert_eq!(
            c.listing(7),
            Some(vec![(b"a".to_vec(), attr(8)), (b"b".to_vec(), attr(9))]),
            "by name, as meta lists; the removed name gone"
        );
        c.forget_attr(9);
        assert_eq!(c.listing(7), None, "an entry's attributes went: ask meta");
        c.put_attr(&attr(9));
        c.put_unknown_entry(7, b"d");
        assert_eq!(c.listing(7), None, "a name whose inode is not known");
        let mut aging = MetaCache::new(Duration::from_millis(1));
        aging.put_complete(7, HashSet::new());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(aging.listing(7), None, "older than cache_timeout");
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

    fn map(ino: u64, version: u64, chunks: usize) -> pb::GetChunksReply {
        pb::GetChunksReply {
            attr: Some(pb::Attr {
                version,
                size: 10,
                ..attr(ino)
            }),
            chunk_size: 1 << 22,
            chunks: (0..chunks as u64)
                .map(|index| pb::ChunkRef {
                    index,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_map_serves_only_the_content_its_attributes_describe() {
        let mut c = MetaCache::new(Duration::from_secs(30));
        c.put_map(&map(5, 3, 1));
        assert_eq!(c.map(5).map(|(m, _)| m.chunks.len()), Some(1));
        assert_eq!(c.attr(5).map(|a| a.version), Some(3), "its attributes too");
        // A chmod made here: the map stands, with the new mode.
        c.put_attr(&pb::Attr {
            version: 3,
            size: 10,
            mode: 0o600,
            ctime: Some(pb::Timespec { sec: 1, nsec: 0 }),
            ..attr(5)
        });
        assert_eq!(c.map(5).map(|(_, a)| a.mode), Some(0o600));
        // The content changed (a later version's attributes came in).
        c.put_attr(&pb::Attr {
            version: 4,
            size: 10,
            ctime: Some(pb::Timespec { sec: 2, nsec: 0 }),
            ..attr(5)
        });
        assert!(c.map(5).is_none(), "a map of an older version");
        // An invalidation drops it with the attributes.
        c.put_map(&map(5, 4, 1));
        assert!(c.map(5).is_some());
        c.forget_attr(5);
        assert!(c.map(5).is_none());
        // Large files' maps are not kept (their attributes are).
        c.put_map(&map(6, 1, MAP_CHUNKS + 1));
        assert!(c.map(6).is_none());
        assert!(c.attr(6).is_some());
        c.put_map(&map(7, 1, 1));
        c.clear();
        assert!(c.map(7).is_none());
    }
}
