-- The cluster's container policy: what an admin allowed a stack's
-- containers to do beyond the defaults (privileged, the host's
-- namespaces, capabilities, devices, security options, bind mounts of
-- protected paths), one row per setting, normalized as `skiff policy
-- allow` takes it (`privileged`, `cap-add:NET_ADMIN`,
-- `bind:/var/run/docker.sock`). No row: refused.
CREATE TABLE policy_allowances (
    stack      TEXT NOT NULL,
    setting    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (stack, setting)
);
