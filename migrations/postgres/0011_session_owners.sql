-- The name (CN) of the certificate that opened a session: only that
-- certificate (or an admin) may act in it, renew it or close it.
ALTER TABLE sessions ADD COLUMN cert_name TEXT NOT NULL DEFAULT '';
