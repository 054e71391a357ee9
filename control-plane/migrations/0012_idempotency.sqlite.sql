-- Ferry schema, version 12 (SQLite): idempotency keys. Same dialect rules as 0001; only the type
-- of `body` (raw bytes) differs from the PostgreSQL text.

-- One row per (caller identity, Idempotency-Key) of a POST: the request it was first used for
-- (a SHA-256 fingerprint of method, path, query and body), whether that request is still
-- running (`in_flight`, held by the claim `owner` until `lease_until`) or answered (`done`),
-- and the answer to replay: status, the headers worth replaying (JSON list of [name, value])
-- and the body (NULL when it is not kept: too large, or a credential shown once). A claim is one
-- conditional INSERT, so on any number of replicas one request wins a key.
CREATE TABLE idempotency_keys (
    identity     TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    request      TEXT NOT NULL,
    owner        TEXT NOT NULL,
    state        TEXT NOT NULL,
    status       BIGINT,
    headers      TEXT,
    body         BLOB,
    request_id   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (identity, idem_key)
);
-- The sweep: keys past their expiry, oldest first, in bounded batches.
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
