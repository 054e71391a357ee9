-- Ferry schema, version 6: pending changes (a change of what runs that waits for a second
-- person's approval, or for its environment's change window), the environments' change windows,
-- and each operation's pending change. Same dialect rules as 0001.

-- One row per pending change, whatever became of it. `request` is the exact change as the
-- requester sent it (JSON); the requester's role bindings are kept as they were when asking.
-- `status`: pending | scheduled | applied | rejected | expired | failed. Every transition is a
-- compare-and-set on `status`, so a change is applied, rejected or expired exactly once.
CREATE TABLE approvals (
    id                  TEXT PRIMARY KEY,
    environment         TEXT NOT NULL,
    workspace           TEXT NOT NULL,
    deployment_id       TEXT NOT NULL,
    deployment_name     TEXT NOT NULL,
    action              TEXT NOT NULL,
    permission          TEXT NOT NULL,
    request             TEXT NOT NULL,
    requester           TEXT NOT NULL,
    requester_id        TEXT NOT NULL,
    requester_identity  TEXT NOT NULL,
    requester_roles     TEXT NOT NULL,
    request_id          TEXT NOT NULL,
    operation_id        TEXT NOT NULL,
    status              TEXT NOT NULL,
    approval_required   BIGINT NOT NULL,
    wait_for_window     BIGINT NOT NULL,
    message             TEXT NOT NULL,
    decided_by          TEXT,
    decision_comment    TEXT,
    decided_at          BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL
);
-- The sweep: open changes past their expiry, and scheduled changes.
CREATE INDEX approvals_status_expires ON approvals (status, expires_at);
-- The listing: by status, oldest first.
CREATE INDEX approvals_status_created ON approvals (status, created_at);

ALTER TABLE operations ADD COLUMN approval_id TEXT;
-- When the change started to apply (an operation may wait for approval first); NULL before,
-- and for operations older than this schema (they started when created).
ALTER TABLE operations ADD COLUMN started_at BIGINT;

-- The change windows document (see change_windows.rs); NULL: open at all times.
ALTER TABLE environments ADD COLUMN change_windows TEXT;
