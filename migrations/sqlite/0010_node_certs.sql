-- The name (CN) of the certificate a node first registered with: later
-- registrations and heartbeats of that node must come from the same name.
ALTER TABLE nodes ADD COLUMN cert_name TEXT;
