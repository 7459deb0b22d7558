-- 0006: least privilege. The role that runs the migrations (the owner) keeps
-- owning the schema, the registry, the audit trail and the holds; everything the
-- consumers, the scheduler and the operator commands need is granted to the
-- NOLOGIN group role purger_runtime, of which their login role is made a member
-- (`purger migrate` with PURGER_DATABASE_RUNTIME_USER, or GRANT purger_runtime TO ...).
--
-- purger_runtime owns the data tables (category parents, their partitions, held
-- storage): creating a partition, DETACH ... CONCURRENTLY, DROP and VACUUM need
-- the owner of the table, and DETACH CONCURRENTLY cannot run inside a function.
-- It may only read and append to purger.audit_log (no UPDATE, DELETE or TRUNCATE),
-- and, not owning it, it can neither drop, alter nor disable its triggers; it may
-- move the chain head only forward, to an entry that exists (the guard below).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'purger_runtime') THEN
        CREATE ROLE purger_runtime NOLOGIN;
    END IF;
END
$$;

-- The owner hands category tables over to purger_runtime (ALTER ... OWNER TO
-- needs membership of the new owner).
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role(current_user, 'purger_runtime', 'MEMBER') THEN
        EXECUTE format('GRANT purger_runtime TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE, CREATE ON SCHEMA purger TO purger_runtime;
GRANT SELECT ON purger.schema_migrations TO purger_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON purger.categories, purger.partitions TO purger_runtime;
GRANT SELECT, INSERT ON purger.audit_log TO purger_runtime;
GRANT SELECT, INSERT, UPDATE ON purger.audit_head TO purger_runtime;
-- UPDATE: a hold's release (the guard allows nothing else); SHARE locks need it too.
GRANT SELECT, INSERT, UPDATE ON purger.legal_holds TO purger_runtime;

-- The chain head only moves forward, to an entry of the trail, and is never removed.
CREATE FUNCTION purger.audit_head_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        RAISE EXCEPTION 'purger.audit_head keeps the chain head: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.seq < OLD.seq THEN
        RAISE EXCEPTION 'the audit chain head cannot move back from % to %', OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM purger.audit_log l WHERE l.seq = NEW.seq AND l.hash = NEW.hash)
    THEN
        RAISE EXCEPTION 'the audit chain head must name an entry of the trail (seq %)', NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_head_guard
    BEFORE INSERT OR UPDATE OR DELETE ON purger.audit_head
    FOR EACH ROW EXECUTE FUNCTION purger.audit_head_guard();

CREATE TRIGGER audit_head_no_truncate
    BEFORE TRUNCATE ON purger.audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION purger.audit_head_guard();

-- Category tables created before this migration go to purger_runtime.
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'purger'::regnamespace AND c.relkind IN ('r', 'p')
          AND (c.relname IN (SELECT parent_table FROM purger.categories)
               OR c.relname IN (SELECT 'held_' || name FROM purger.categories)
               OR c.relname IN (SELECT partition_name FROM purger.partitions))
    LOOP
        EXECUTE format('ALTER TABLE purger.%I OWNER TO purger_runtime', t);
    END LOOP;
END
$$;
