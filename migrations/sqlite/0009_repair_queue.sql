-- Copies the leader planned, waiting for their source node's next heartbeat:
-- in the store, so whichever meta the node reports to hands them over.
-- targets: "node_id@addr" separated by commas.
CREATE TABLE repair_commands (
    node_id INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL,
    targets TEXT NOT NULL,
    stored_len INTEGER NOT NULL,
    crc32c INTEGER NOT NULL,
    queued_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, chunk_id)
);
