-- A mutating call's audit row is written before the call runs (status 0) and given the call's
-- status once it answers. That one change stays possible; any other edit, and deleting, do not.
DROP TRIGGER audit_log_append_only_u;
CREATE TRIGGER audit_log_append_only_u BEFORE UPDATE ON audit_log
WHEN NOT (OLD.status = 0 AND NEW.status <> 0 AND NEW.id = OLD.id AND NEW.at = OLD.at
          AND NEW.tenant_id = OLD.tenant_id AND NEW.key_prefix = OLD.key_prefix
          AND NEW.method = OLD.method AND NEW.path = OLD.path AND NEW.remote = OLD.remote)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
