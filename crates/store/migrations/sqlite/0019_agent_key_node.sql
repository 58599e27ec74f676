-- The node an agent key speaks for: set when an operator mints it with --node NAME, or by the
-- key's first registration. NULL for every other key, and for an agent key not yet used.
ALTER TABLE api_keys ADD COLUMN node_name TEXT;
-- The node an instance last ran on, kept when node_id is cleared (stopped, lost): output its
-- agent ships after the stop is accepted from that node only.
ALTER TABLE instances ADD COLUMN ran_on TEXT;
-- The secret a tenant's webhook requests are signed with (HMAC-SHA256), made with the webhook.
ALTER TABLE tenant_billing ADD COLUMN webhook_secret TEXT;
