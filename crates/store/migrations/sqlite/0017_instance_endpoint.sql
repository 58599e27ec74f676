-- Where a running instance serves: its node's address and the port its agent gave it
-- (GPUCLOUD_PORT), as "host:port". NULL until the agent reports the port.
ALTER TABLE instances ADD COLUMN endpoint TEXT;
