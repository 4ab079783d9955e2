-- The node labels a join token grants: a host that joins with it gets
-- them, and may ask for no label the token does not grant. JSON object.
ALTER TABLE join_tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
