-- Clients the cluster knows: a mount or a writing CLI process holds a session
-- and renews its lease; what it holds goes when the lease runs out.
CREATE TABLE sessions (
    id BIGINT PRIMARY KEY,
    host TEXT NOT NULL,
    mountpoint TEXT NOT NULL,
    pid BIGINT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    renewed_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    open_files BIGINT NOT NULL DEFAULT 0
);
-- Which sessions hold an orphan (unlinked while open) open; it is deleted
-- when the last of them releases it or goes.
CREATE TABLE orphan_holders (ino BIGINT NOT NULL, session_id BIGINT NOT NULL, PRIMARY KEY (ino, session_id));
-- The session whose write allocated a chunk id (0: none; kept an hour).
ALTER TABLE chunk_allocations ADD COLUMN session_id BIGINT NOT NULL DEFAULT 0;
-- Mutations done per session request id: a retry after a lost reply gets the
-- first outcome (result: the inode it made, or 0).
CREATE TABLE session_requests (
    session_id BIGINT NOT NULL,
    request_id BIGINT NOT NULL,
    result BIGINT NOT NULL,
    PRIMARY KEY (session_id, request_id)
);
-- fcntl (flock = 0) and flock (flock = 1) locks; byte range [start, end], inclusive.
CREATE TABLE locks (
    ino BIGINT NOT NULL,
    session_id BIGINT NOT NULL,
    owner BIGINT NOT NULL,
    flock BIGINT NOT NULL,
    exclusive BIGINT NOT NULL,
    range_start BIGINT NOT NULL,
    range_end BIGINT NOT NULL,
    pid BIGINT NOT NULL
);
CREATE INDEX locks_by_ino ON locks (ino);
CREATE INDEX locks_by_session ON locks (session_id);
INSERT INTO counters (name, value) VALUES ('session', 0);
