-- When a replica was queued for deletion (ms): nodes delete it only after a
-- grace period, and once the change that made it garbage is durable on meta.
ALTER TABLE gc_replicas ADD COLUMN queued_ms BIGINT NOT NULL DEFAULT 0;
