-- Copies the leader planned, waiting for their source node's next heartbeat:
-- in the store, so whichever meta the node reports to hands them over.
-- targets: "node_id@addr" separated by commas.
CREATE TABLE repair_commands (
    node_id BIGINT NOT NULL,
    chunk_id BIGINT NOT NULL,
    targets TEXT NOT NULL,
    stored_len BIGINT NOT NULL,
    crc32c BIGINT NOT NULL,
    queued_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, chunk_id)
);
