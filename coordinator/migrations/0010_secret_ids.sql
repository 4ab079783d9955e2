-- Secret versions are known by a random id, not by the SHA-256 of their
-- value (which let a weak value be guessed offline from what hosts and
-- plans showed). `value_mac` is an HMAC-SHA256 of the value keyed with a
-- key derived from secrets.key (the "same value as the latest version?"
-- check); `value_check` the HMAC-SHA256 of the value keyed with the id,
-- which plans carry and agents verify. Neither can be computed here: the
-- coordinator fills them in at its next start, opening each version.
ALTER TABLE secrets ADD COLUMN id TEXT;
ALTER TABLE secrets ADD COLUMN value_mac TEXT;
ALTER TABLE secrets ADD COLUMN value_check TEXT;
UPDATE secrets SET id = lower(hex(randomblob(16)));
ALTER TABLE secrets DROP COLUMN digest;
CREATE UNIQUE INDEX secrets_id ON secrets (id);
