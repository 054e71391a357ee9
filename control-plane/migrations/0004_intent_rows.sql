-- Ferry schema, version 4: a write costs what changed, not what exists.
-- Same dialect rules as 0001.

-- Desired state keeps every revision of a deployment's template (spec + version), immutable once
-- written; `deployments.revision` names the current one. A workload is one revision of one
-- deployment, so two revisions can run side by side.
ALTER TABLE deployments ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
CREATE TABLE deployment_revisions (
    deployment_id  TEXT NOT NULL,
    revision       BIGINT NOT NULL,
    version        TEXT NOT NULL,
    spec           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, revision)
);
INSERT INTO deployment_revisions (deployment_id, revision, version, spec, created_at)
    SELECT id, 1, active_version, spec, updated_at FROM deployments;
-- Listing pages walk these (covering: the page's ids come from the index alone).
CREATE INDEX deployments_live ON deployments (created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX deployments_live_env ON deployments (environment, created_at, id) WHERE deleted_at IS NULL;

-- Intent, one row per (agent, workload): changing one workload writes one row. `generation` is
-- the agent's generation at which the row last changed, so "what changed since generation g" is
-- an index range. A removed workload stays as a tombstone (removed = 1) until the agent has
-- acknowledged a generation past it; `agent_intents.floor` says up to where tombstones are gone
-- (an agent holding an older generation gets a full resync).
CREATE TABLE intent_workloads (
    agent_id       TEXT NOT NULL,
    workload_id    TEXT NOT NULL,
    deployment_id  TEXT NOT NULL,
    revision       BIGINT NOT NULL,
    replicas       BIGINT NOT NULL,
    restart_nonce  BIGINT NOT NULL,
    generation     BIGINT NOT NULL,
    removed        BIGINT NOT NULL,
    PRIMARY KEY (agent_id, workload_id)
);
CREATE INDEX intent_workloads_deployment ON intent_workloads (deployment_id);
CREATE INDEX intent_workloads_agent_generation ON intent_workloads (agent_id, generation);
ALTER TABLE agent_intents ADD COLUMN floor BIGINT NOT NULL DEFAULT 0;

-- Observed: per-workload rows change only when that workload's replicas change; the generation
-- an agent acts on is one column of the agent.
ALTER TABLE agent_observed ADD COLUMN deployment_id TEXT NOT NULL DEFAULT '';
UPDATE agent_observed SET deployment_id = workload_id;
CREATE INDEX agent_observed_deployment ON agent_observed (deployment_id);
ALTER TABLE agents ADD COLUMN observed_generation BIGINT NOT NULL DEFAULT 0;
UPDATE agents SET observed_generation = COALESCE(
    (SELECT MAX(o.generation) FROM agent_observed o WHERE o.agent_id = agents.id), 0);

-- What an agent can run (`runtime:process`, …), as it declared in its last Hello.
ALTER TABLE agents ADD COLUMN capabilities TEXT NOT NULL DEFAULT '["runtime:process"]';

-- The derived status of each deployment, kept current by the reconciler whenever intent or
-- observed state changes, so listing and filtering by status is one indexed query.
CREATE TABLE deployment_status (
    deployment_id  TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    desired        BIGINT NOT NULL,
    current_count  BIGINT NOT NULL,
    ready          BIGINT NOT NULL,
    reasons        TEXT NOT NULL,
    running_since  BIGINT,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX deployment_status_status ON deployment_status (status);
