-- Ferry schema, version 8 (SQLite): a durable audit trail and deployment events.
-- Same dialect rules as 0001; only the table rebuild (for an ever-growing `seq`) and the
-- immutability triggers differ from the PostgreSQL text.

-- Audit records gain where the request came from, how it ended, the kind of object it concerns
-- and a before/after document of what changed (secret-looking fields masked before storing).
-- `seq` orders records written within one millisecond; it is never reused (AUTOINCREMENT).
CREATE TABLE audit_log_v8 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    object_type  TEXT NOT NULL,
    target       TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    source       TEXT,
    outcome      TEXT NOT NULL,
    changes      TEXT,
    details      TEXT NOT NULL
);
INSERT INTO audit_log_v8 (id, at, actor, action, object_type, target, request_id, source, outcome, changes, details)
    SELECT id, at, actor, action,
           CASE WHEN instr(action, '.') > 0 THEN substr(action, 1, instr(action, '.') - 1) ELSE action END,
           target, request_id, NULL, 'success', NULL, details
    FROM audit_log ORDER BY at, id;
DROP TABLE audit_log;
ALTER TABLE audit_log_v8 RENAME TO audit_log;
CREATE INDEX audit_log_at ON audit_log (at, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, at, seq);
CREATE INDEX audit_log_target ON audit_log (target, at, seq);
CREATE INDEX audit_log_action ON audit_log (action, at, seq);

-- Audit records are immutable: no statement may change or remove one.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit records are immutable: UPDATE refused');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit records are immutable: DELETE refused');
END;

-- Each revision names the audit record of the change that created it (who, when, request id).
ALTER TABLE deployment_revisions ADD COLUMN audit_id TEXT;
UPDATE deployment_revisions SET audit_id = (
    SELECT a.id FROM audit_log a WHERE a.target = deployment_revisions.deployment_id
        AND a.action = 'deployment.create' ORDER BY a.at, a.seq LIMIT 1)
    WHERE revision = 1;

-- Status transitions seen from agents: one row each time a deployment's stored status changes,
-- numbered per deployment (`deployment_status.event_seq` is the last number used). Bounded: the
-- reconciler drops all but the newest 1,000 of a deployment every 100 transitions.
CREATE TABLE deployment_events (
    deployment_id  TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    from_status    TEXT,
    to_status      TEXT NOT NULL,
    reasons        TEXT NOT NULL,
    message        TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
ALTER TABLE deployment_status ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
