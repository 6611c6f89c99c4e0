-- dfs metadata schema (SQLite). Names are BLOBs: Linux names are bytes, and
-- byte order gives stable readdir paging.
CREATE TABLE meta_config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    nlink INTEGER NOT NULL,
    atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
    mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB
);
CREATE TABLE dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
);
CREATE INDEX dentries_by_ino ON dentries (ino);
CREATE TABLE xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
);
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    addr TEXT NOT NULL,
    zone TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    used INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    last_heartbeat_ms INTEGER NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    stored_len INTEGER NOT NULL,
    crc32c INTEGER NOT NULL
);
CREATE TABLE file_chunks (
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL UNIQUE,
    valid_len INTEGER NOT NULL,
    PRIMARY KEY (ino, idx)
);
CREATE TABLE replicas (
    chunk_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    PRIMARY KEY (chunk_id, node_id)
);
CREATE INDEX replicas_by_node ON replicas (node_id);
-- Chunk ids handed out for writes not yet committed: a node's report of such a
-- chunk is not garbage.
CREATE TABLE chunk_allocations (id INTEGER PRIMARY KEY, allocated_ms INTEGER NOT NULL);
-- Replicas of chunks no file references any more, to be deleted on their node.
CREATE TABLE gc_replicas (
    chunk_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    PRIMARY KEY (chunk_id, node_id)
);
CREATE INDEX gc_replicas_by_node ON gc_replicas (node_id);
