-- A draining node takes no new chunks; repair copies its chunks elsewhere.
ALTER TABLE nodes ADD COLUMN draining BIGINT NOT NULL DEFAULT 0;
