-- A draining node takes no new chunks; repair copies its chunks elsewhere.
ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
