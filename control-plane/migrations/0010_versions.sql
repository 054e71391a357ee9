-- Ferry schema, version 10: user-facing versions of a deployment. Same dialect rules as 0001.
--
-- A version is an immutable, named configuration (the template: what the processes run, without
-- the replica count and without what Ferry sets itself — pinned secrets and environment
-- variables; a Git `source` pin stays in it). Deploying one makes it the deployment's
-- `active_version` and writes a new internal revision (`deployment_revisions`) when the template
-- changes. `status` is `available`, `failed` (the operation that deployed it failed, or a
-- rollback marked it so) or `rolled_back`; automatic rollback targets skip the last two.
-- `seq` orders versions by creation within a deployment; `deployed_seq` orders their last
-- deploys (NULL: never deployed), `deploy_operation_id` names the operation of the last one.
-- The data step (`store/migrate.rs`) creates one version per existing (deployment, version
-- label) from the newest revision with that label.
CREATE TABLE deployment_versions (
    deployment_id        TEXT NOT NULL,
    version              TEXT NOT NULL,
    configuration        TEXT NOT NULL,
    description          TEXT NOT NULL,
    source               TEXT,
    created_at           BIGINT NOT NULL,
    created_by           TEXT NOT NULL,
    audit_id             TEXT,
    status               TEXT NOT NULL,
    status_reason        TEXT NOT NULL,
    status_changed_at    BIGINT,
    seq                  BIGINT NOT NULL,
    deployed_seq         BIGINT,
    deployed_at          BIGINT,
    deployed_by          TEXT,
    deploy_operation_id  TEXT,
    PRIMARY KEY (deployment_id, version)
);
CREATE UNIQUE INDEX deployment_versions_seq ON deployment_versions (deployment_id, seq);
CREATE INDEX deployment_versions_deployed ON deployment_versions (deployment_id, deployed_seq);
