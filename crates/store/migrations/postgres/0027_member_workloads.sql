-- What every member of a cluster or warm pool runs in besides its command: an image, its
-- environment (secrets by reference only, `secret:NAME`) and the ports it serves on.
ALTER TABLE clusters ADD COLUMN image TEXT;
ALTER TABLE clusters ADD COLUMN env TEXT;
ALTER TABLE clusters ADD COLUMN ports TEXT;
ALTER TABLE warm_pools ADD COLUMN image TEXT;
ALTER TABLE warm_pools ADD COLUMN env TEXT;
ALTER TABLE warm_pools ADD COLUMN ports TEXT;
