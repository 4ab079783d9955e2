-- The cluster network: an id and a subnet of the cluster range for every
-- stack network that has containers somewhere, the pieces of that subnet
-- it leases on every host where it has containers (a subnet or a lease is
-- never handed out twice), and each host's address on the mesh with its
-- WireGuard public key and the MTU of its underlay. The range itself is in meta ('network.range'),
-- fixed when the cluster is created.
CREATE TABLE cluster_networks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stack      TEXT NOT NULL,
    name       TEXT NOT NULL,
    subnet     TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    UNIQUE (stack, name)
);

CREATE TABLE subnet_leases (
    subnet     TEXT PRIMARY KEY,
    network_id INTEGER NOT NULL REFERENCES cluster_networks (id),
    node_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX subnet_leases_by_network ON subnet_leases (network_id, node_id);

CREATE TABLE mesh_hosts (
    node_id    TEXT PRIMARY KEY,
    address    TEXT NOT NULL UNIQUE,
    public_key TEXT,
    underlay_mtu INTEGER,
    updated_at BIGINT NOT NULL
);
