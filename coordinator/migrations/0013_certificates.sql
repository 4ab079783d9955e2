-- TLS certificates served by edge hosts for HTTP routes: uploaded by an
-- admin or obtained by ACME. The chain is public; the private key is
-- stored only sealed with the cluster's secrets.key (as stack secrets
-- are), under the context 'certificate/<id>'. Domains are a JSON array.
-- Times are Unix milliseconds.
CREATE TABLE certificates (
    id          TEXT PRIMARY KEY,
    domains     TEXT NOT NULL,
    chain_pem   TEXT NOT NULL,
    key_sealed  TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('upload', 'acme')),
    created_at  BIGINT NOT NULL
);

-- The ACME account of each directory: its credentials (key and account
-- URL) sealed under the context 'acme-account/<directory>'.
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    sealed      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
