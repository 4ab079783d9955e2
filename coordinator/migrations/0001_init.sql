-- Cluster-wide key/value facts (cluster id, schema notes).
CREATE TABLE cluster_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- API tokens for the team: only the SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Join tokens: only the SHA-256 of the secret is kept.
CREATE TABLE join_tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    uses_allowed BIGINT NOT NULL,
    uses         BIGINT NOT NULL DEFAULT 0,
    revoked_at   BIGINT
);

-- Nodes. A removed node keeps its row (removed_at set): its id is denied forever.
CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    labels          TEXT NOT NULL,
    facts           TEXT NOT NULL,
    agent_version   TEXT NOT NULL,
    remote_addr     TEXT,
    joined_at       BIGINT NOT NULL,
    last_seen_at    BIGINT,
    cert_serial     TEXT NOT NULL,
    cert_not_after  BIGINT NOT NULL,
    plan_generation BIGINT,
    plan_error      TEXT,
    removed_at      BIGINT
);
CREATE UNIQUE INDEX nodes_live_name ON nodes (name) WHERE removed_at IS NULL;
