-- Ferry schema, version 3 (SQLite): workload log lines. `id` is the SSE event id: it only grows.
CREATE TABLE log_lines (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id  TEXT NOT NULL,
    agent_id       TEXT NOT NULL,
    replica        BIGINT NOT NULL,
    source         TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    ts_ms          BIGINT NOT NULL,
    stream         TEXT NOT NULL,
    line           TEXT NOT NULL,
    UNIQUE (source, seq)
);
CREATE INDEX log_lines_deployment ON log_lines (deployment_id, id);
