-- Ferry schema, version 13: webhooks, per-request callbacks and their deliveries (an outbox).
-- Same dialect rules as 0001. Signing secrets are stored sealed like secrets (0009): AES-256-GCM
-- under the master key, hex ciphertext + nonce + the sealing key's id; never a clear value.

-- A subscription to events. `events` is the JSON list as accepted (`["*"]` or event names).
CREATE TABLE webhooks (
    id                 TEXT PRIMARY KEY,
    url                TEXT NOT NULL,
    events             TEXT NOT NULL,
    description        TEXT NOT NULL,
    secret_ciphertext  TEXT NOT NULL,
    secret_nonce       TEXT NOT NULL,
    secret_key_id      TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    created_at         BIGINT NOT NULL
);

-- One row per (event type, webhook), `*` for every type: queuing an event reads only the rows
-- of its type and `*` (the primary key's prefix), so its cost is the number of subscribers.
CREATE TABLE webhook_subscriptions (
    event_type  TEXT NOT NULL,
    webhook_id  TEXT NOT NULL,
    PRIMARY KEY (event_type, webhook_id)
);

-- The callback a request asked for (`Ferry-Callback-Url`, `Ferry-Callback-Secret`), stored with
-- its operation in the operation's transaction. The secret is sealed for `callback_id`.
CREATE TABLE operation_callbacks (
    operation_id       TEXT PRIMARY KEY,
    callback_id        TEXT NOT NULL,
    url                TEXT NOT NULL,
    secret_ciphertext  TEXT,
    secret_nonce       TEXT,
    secret_key_id      TEXT,
    created_at         BIGINT NOT NULL
);

-- The outbox: one row per (event, receiver), inserted in the transaction of the change the event
-- reports. `webhook_id` names the webhook, or is NULL for a callback (then `operation_id` names
-- the operation whose callback it is). `status`: pending | delivered | failed. A claim increments
-- `attempts`, records the claimer in `claimed_by` and moves `next_attempt_at` to the end of its
-- lease, so a row is sent by one replica at a time and again if that replica dies mid-attempt.
-- Once finished, `next_attempt_at` is the time it finished (what the retention sweep reads).
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT,
    operation_id     TEXT,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    claimed_by       TEXT,
    last_status      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_of_webhook ON webhook_deliveries (webhook_id, created_at);
