-- Ferry schema, version 2: environments, deployments (desired state), operations, per-agent
-- intent and observed state. Same dialect rules as 0001.

CREATE TABLE environments (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    description  TEXT NOT NULL,
    locked       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Desired state: what users asked for. `spec` and `target` are JSON documents.
CREATE TABLE deployments (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    environment       TEXT NOT NULL,
    active_version    TEXT NOT NULL,
    spec              TEXT NOT NULL,
    target            TEXT NOT NULL,
    desired_state     TEXT NOT NULL,
    restart_nonce     BIGINT NOT NULL,
    resource_version  BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    last_deployed_at  BIGINT NOT NULL,
    deleted_at        BIGINT
);
CREATE UNIQUE INDEX deployments_env_name ON deployments (environment, name) WHERE deleted_at IS NULL;

-- Long-running requests answer 202 with one of these to poll.
CREATE TABLE operations (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    deployment_id  TEXT NOT NULL,
    status         TEXT NOT NULL,
    message        TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    finished_at    BIGINT
);
CREATE INDEX operations_deployment ON operations (deployment_id, status);

-- Intent: the complete assignment of each agent, generation only grows.
CREATE TABLE agent_intents (
    agent_id    TEXT PRIMARY KEY,
    generation  BIGINT NOT NULL,
    workloads   TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Observed: what each agent last reported per workload, with the generation it acted on.
CREATE TABLE agent_observed (
    agent_id     TEXT NOT NULL,
    workload_id  TEXT NOT NULL,
    generation   BIGINT NOT NULL,
    replicas     TEXT NOT NULL,
    reported_at  BIGINT NOT NULL,
    PRIMARY KEY (agent_id, workload_id)
);

-- The last generation each agent acknowledged (applied, stale or rejected).
ALTER TABLE agents ADD COLUMN acked_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN ack_error TEXT;
