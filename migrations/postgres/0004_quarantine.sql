-- Replicas whose node confirmed a checksum failure (moved aside there). Kept
-- until the chunk has its full count of good copies again, then deleted.
CREATE TABLE quarantined_replicas (chunk_id BIGINT NOT NULL, node_id BIGINT NOT NULL, since_ms BIGINT NOT NULL, PRIMARY KEY (chunk_id, node_id));
