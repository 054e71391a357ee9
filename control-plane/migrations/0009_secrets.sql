-- Ferry schema, version 9: secrets of deployments and environments, encrypted at rest.
-- Same dialect rules as 0001. No column ever holds a clear value: `ciphertext` is AES-256-GCM
-- (hex, tag included) under a master key kept outside the database, with a random `nonce` per
-- value and associated data naming the row (scope, scope_id, name, version); `key_id` says which
-- master key sealed it.
CREATE TABLE secrets (
    scope       TEXT NOT NULL,
    scope_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id, name)
);
