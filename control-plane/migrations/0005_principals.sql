-- Ferry schema, version 5: principals (users, their login sessions, API keys) with role
-- bindings, and the environments' restrictions and lock holder. Same dialect rules as 0001.
-- Role bindings are JSON lists of {"role", "workspace"?}; secrets are stored only as hashes
-- (argon2id for passwords, SHA-256 for random tokens and keys).

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    roles          TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE user_sessions (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    roles       TEXT NOT NULL,
    -- The principal that created the key (its audit name); a user's keys die with the user.
    owner       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_owner ON api_keys (owner);

ALTER TABLE environments ADD COLUMN required_roles TEXT NOT NULL DEFAULT '[]';
ALTER TABLE environments ADD COLUMN approval_required BIGINT NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN locked_by TEXT;
ALTER TABLE environments ADD COLUMN locked_reason TEXT;
ALTER TABLE environments ADD COLUMN locked_at BIGINT;

-- The seed's environmentRestrictions for the environment types it names.
UPDATE environments SET required_roles = '["deployment_admin","release_manager"]', approval_required = 1
    WHERE type = 'production';
UPDATE environments SET required_roles = '["devops_engineer","release_manager"]' WHERE type = 'staging';
UPDATE environments SET required_roles = '["developer","devops_engineer"]' WHERE type = 'development';
