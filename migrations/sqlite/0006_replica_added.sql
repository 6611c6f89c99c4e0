-- When meta recorded each replica (ms): a node's full report forgets only
-- replicas recorded before the node began listing its chunks.
ALTER TABLE replicas ADD COLUMN added_ms INTEGER NOT NULL DEFAULT 0;
