-- Stacks and their numbered releases. A release records the compose file
-- as deployed and the resolved services (image, environment, placement
-- rules), so a rollback restores it exactly.
CREATE TABLE stacks (
    name            TEXT PRIMARY KEY,
    current_release BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    removed_at      BIGINT
);

CREATE TABLE releases (
    stack      TEXT NOT NULL,
    number     BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    compose    TEXT NOT NULL,
    services   TEXT NOT NULL,
    PRIMARY KEY (stack, number)
);
