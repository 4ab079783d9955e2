-- Each node's plan is sent as sections (containers, networks, ...), each
-- with the generation it last changed at. They are built from the node's
-- containers and kept here so a section's generation survives a restart.
ALTER TABLE node_plans ADD COLUMN sections TEXT NOT NULL DEFAULT '{}';
