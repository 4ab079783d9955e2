-- How a release's rollout ended: deploying, deployed, rolled_back, paused, failed.
ALTER TABLE releases ADD COLUMN status TEXT NOT NULL DEFAULT 'deployed';
ALTER TABLE releases ADD COLUMN message TEXT;
