-- The desired containers of each node, as last decided. The generation
-- increases with every change; agents refuse plans older than what they hold.
CREATE TABLE node_plans (
    node_id    TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    containers TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
