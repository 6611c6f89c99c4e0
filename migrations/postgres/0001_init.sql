-- dfs metadata schema (PostgreSQL). Names are BYTEAs: Linux names are bytes, and
-- byte order gives stable readdir paging.
CREATE TABLE meta_config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE inodes (
    ino BIGINT PRIMARY KEY,
    kind BIGINT NOT NULL,
    mode BIGINT NOT NULL,
    uid BIGINT NOT NULL,
    gid BIGINT NOT NULL,
    size BIGINT NOT NULL DEFAULT 0,
    nlink BIGINT NOT NULL,
    atime_s BIGINT NOT NULL, atime_ns BIGINT NOT NULL,
    mtime_s BIGINT NOT NULL, mtime_ns BIGINT NOT NULL,
    ctime_s BIGINT NOT NULL, ctime_ns BIGINT NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    rdev BIGINT NOT NULL DEFAULT 0,
    target BYTEA
);
CREATE TABLE dentries (
    parent BIGINT NOT NULL,
    name BYTEA NOT NULL,
    ino BIGINT NOT NULL,
    PRIMARY KEY (parent, name)
);
CREATE INDEX dentries_by_ino ON dentries (ino);
CREATE TABLE xattrs (
    ino BIGINT NOT NULL,
    name BYTEA NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (ino, name)
);
CREATE TABLE nodes (
    id BIGINT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    addr TEXT NOT NULL,
    zone TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    used BIGINT NOT NULL,
    chunk_count BIGINT NOT NULL DEFAULT 0,
    last_heartbeat_ms BIGINT NOT NULL
);
CREATE TABLE chunks (
    id BIGINT PRIMARY KEY,
    stored_len BIGINT NOT NULL,
    crc32c BIGINT NOT NULL
);
CREATE TABLE file_chunks (
    ino BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    chunk_id BIGINT NOT NULL UNIQUE,
    valid_len BIGINT NOT NULL,
    PRIMARY KEY (ino, idx)
);
CREATE TABLE replicas (
    chunk_id BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    PRIMARY KEY (chunk_id, node_id)
);
CREATE INDEX replicas_by_node ON replicas (node_id);
-- Chunk ids handed out for writes not yet committed: a node's report of such a
-- chunk is not garbage.
CREATE TABLE chunk_allocations (id BIGINT PRIMARY KEY, allocated_ms BIGINT NOT NULL);
-- Replicas of chunks no file references any more, to be deleted on their node.
CREATE TABLE gc_replicas (
    chunk_id BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    PRIMARY KEY (chunk_id, node_id)
);
CREATE INDEX gc_replicas_by_node ON gc_replicas (node_id);
