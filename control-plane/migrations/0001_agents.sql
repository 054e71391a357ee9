-- Ferry schema, version 1: admin credentials, bootstrap tokens, agents, audit log.
-- One dialect for SQLite and PostgreSQL: TEXT and BIGINT only, timestamps as Unix milliseconds,
-- JSON documents as TEXT.

CREATE TABLE admin_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE bootstrap_tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    description  TEXT NOT NULL,
    labels       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    used_by      TEXT
);

CREATE TABLE agents (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    labels              TEXT NOT NULL,
    token_labels        TEXT NOT NULL,
    version             TEXT NOT NULL,
    enrolled_at         BIGINT NOT NULL,
    cert_serial         TEXT NOT NULL,
    cert_not_after      BIGINT NOT NULL,
    session_id          TEXT,
    session_started_at  BIGINT,
    last_heartbeat      BIGINT,
    revoked_at          BIGINT
);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    details     TEXT NOT NULL
);

CREATE INDEX audit_log_target ON audit_log (target, at);
