-- Ferry schema, version 7: workspaces, projects and AI zones; deployments belong to a workspace
-- and may name a project and an AI zone. Same dialect rules as 0001.

-- A team's share of the platform. Role bindings, deployments and projects name a workspace by
-- its `name`, which therefore never changes. `default` is created at every start unless it
-- exists (like the three built-in environments), and existing deployments belong to it.
CREATE TABLE workspaces (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL,
    owner        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Projects group deployments inside one workspace; deployments name them by id.
CREATE TABLE projects (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    workspace    TEXT NOT NULL,
    description  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX projects_workspace_name ON projects (workspace, name);

-- Where AI workloads run: a named pool of capacity. `workspace` is NULL for a zone shared by
-- every workspace, else the one workspace whose deployments may use it. `labels` is a JSON object
-- of string labels (agent label rules), e.g. {"accelerator": "nvidia-a100", "gpus": "8"};
-- `provider` and `region` are free labels too ('' when not given).
CREATE TABLE ai_zones (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    workspace    TEXT,
    description  TEXT NOT NULL,
    provider     TEXT NOT NULL,
    region       TEXT NOT NULL,
    labels       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX ai_zones_workspace ON ai_zones (workspace);

ALTER TABLE deployments ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE deployments ADD COLUMN project_id TEXT;
ALTER TABLE deployments ADD COLUMN ai_zone_id TEXT;

-- Names are unique per (workspace, environment): one team's names neither collide with nor
-- reveal another's.
DROP INDEX deployments_env_name;
CREATE UNIQUE INDEX deployments_ws_env_name ON deployments (workspace, environment, name) WHERE deleted_at IS NULL;
-- Listing by workspace walks this in page order; `environment` rides along so the visibility
-- filter ((workspace, environment) pairs the caller may read) is answered from the index alone.
CREATE INDEX deployments_live_ws ON deployments (workspace, created_at, id, environment) WHERE deleted_at IS NULL;
CREATE INDEX deployments_live_project ON deployments (project_id, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX deployments_live_zone ON deployments (ai_zone_id, created_at, id) WHERE deleted_at IS NULL;
