-- Files whose last name and last holder are gone, waiting for the purge
-- that deletes their rows, chunks and replicas in batches (an unlink then
-- writes two rows instead of a dozen).
CREATE TABLE deleted_inodes (ino INTEGER PRIMARY KEY, since_ms INTEGER NOT NULL);
