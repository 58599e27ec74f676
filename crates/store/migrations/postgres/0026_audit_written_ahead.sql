-- A mutating call's audit row is written before the call runs (status 0) and given the call's
-- status once it answers. That one change stays possible; any other edit, and deleting, do not.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = 0 AND NEW.status <> 0
       AND (NEW.id, NEW.at, NEW.tenant_id, NEW.key_prefix, NEW.method, NEW.path, NEW.remote)
         = (OLD.id, OLD.at, OLD.tenant_id, OLD.key_prefix, OLD.method, OLD.path, OLD.remote) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
