-- Inodes whose last name is gone while a client still has them open.
CREATE TABLE orphans (ino BIGINT PRIMARY KEY, since_ms BIGINT NOT NULL);
