-- Inode flags (chattr): immutable, append-only, nodump, noatime.
ALTER TABLE inodes ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
