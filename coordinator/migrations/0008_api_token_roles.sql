-- API tokens get what they may do: the role (already stored, now read),
-- the stacks they are limited to (JSON list, empty for all), an optional
-- expiry, and when they were last used (within a minute).
ALTER TABLE api_tokens ADD COLUMN stacks TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN last_used_at BIGINT;
