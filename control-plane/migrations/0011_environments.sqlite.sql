-- Ferry schema, version 11: environments in full — the promotion chain, variables merged into
-- every deployment's env, resource limits and the running totals of what deployments hold.
-- Same dialect rules as 0001 (this file and its PostgreSQL twin differ only in how they read a
-- JSON field).

-- The next environment in the promotion chain, by name (NULL: the end of a chain). The default
-- chain is development → staging → production.
ALTER TABLE environments ADD COLUMN promotes_to TEXT;
-- A JSON object of variables (name → value) merged under the env of every deployment here.
ALTER TABLE environments ADD COLUMN variables TEXT NOT NULL DEFAULT '{}';
-- The limits document (resources.rs `Limits`: cpuMillis, memoryBytes, replicas, pods).
ALTER TABLE environments ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
UPDATE environments SET promotes_to = 'staging'
    WHERE name = 'development' AND EXISTS (SELECT 1 FROM environments WHERE name = 'staging');
UPDATE environments SET promotes_to = 'production'
    WHERE name = 'staging' AND EXISTS (SELECT 1 FROM environments WHERE name = 'production');

-- What the live deployments of each environment hold together (running replicas, and their
-- CPU and memory requests), adjusted by every write of a deployment in its own transaction.
-- One row per environment, kept apart from the environment's row so that allocating (the last
-- lock a deployment write takes) never waits behind a change of the environment's
-- configuration.
CREATE TABLE environment_usage (
    environment   TEXT PRIMARY KEY,
    pods          BIGINT NOT NULL,
    cpu_millis    BIGINT NOT NULL,
    memory_bytes  BIGINT NOT NULL
);
-- Deployments before this version have no CPU or memory requests.
INSERT INTO environment_usage (environment, pods, cpu_millis, memory_bytes)
SELECT e.name,
       COALESCE(SUM(CASE WHEN d.desired_state = 'running'
                         THEN CAST(json_extract(d.spec, '$.replicas') AS BIGINT) ELSE 0 END), 0),
       0, 0
FROM environments e
LEFT JOIN deployments d ON d.environment = e.name AND d.deleted_at IS NULL
GROUP BY e.name;
