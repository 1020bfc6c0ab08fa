-- One row per delivery attempt per recipient, hash-chained by `seq`.
-- Portable SQL: the same file runs on SQLite and PostgreSQL. `seq` is
-- assigned by the audit writer (max + 1 inside the append transaction), not by
-- the database, because the chain hash covers it.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    message_id TEXT,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    outcome TEXT NOT NULL,
    method TEXT NOT NULL,
    tls_requirement TEXT NOT NULL,
    policy_rule TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    remote_host TEXT,
    remote_ip TEXT,
    tls_version TEXT,
    tls_cipher TEXT,
    smtp_reply TEXT,
    body_sha256 TEXT,
    evidence TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL
);

CREATE INDEX audit_log_queue_id ON audit_log (queue_id);
CREATE INDEX audit_log_recipient ON audit_log (recipient);
CREATE INDEX audit_log_ts ON audit_log (ts);
