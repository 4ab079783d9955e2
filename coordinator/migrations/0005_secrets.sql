-- Stack secrets, encrypted at rest (AES-256-GCM with the data dir's
-- secrets.key). Every version is kept so a release can be restored exactly.
CREATE TABLE secrets (
    stack      TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    digest     TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    removed_at BIGINT,
    PRIMARY KEY (stack, name, version)
);
