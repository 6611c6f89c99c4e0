-- Inodes whose last name is gone while a client still has them open.
CREATE TABLE orphans (ino INTEGER PRIMARY KEY, since_ms INTEGER NOT NULL);
