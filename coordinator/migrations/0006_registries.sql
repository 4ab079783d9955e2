-- Registry credentials for image pulls, one row per registry host
-- (normalized: lower case, Docker Hub as docker.io). The password is
-- sealed (AES-256-GCM with the data dir's secrets.key, bound to the host
-- and username); it is never stored in the clear.
CREATE TABLE registries (
    host       TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
