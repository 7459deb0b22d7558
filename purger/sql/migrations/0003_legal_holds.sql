-- 0003: legal holds. A hold keeps the records in its scope past their expiry
-- until it is released; held records of a dropped partition live on in
-- purger.held_<category> (created with the category table).
CREATE TABLE purger.legal_holds (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    case_ref       text NOT NULL CHECK (btrim(case_ref) <> ''),
    reason         text NOT NULL CHECK (btrim(reason) <> ''),
    placed_by      text NOT NULL CHECK (btrim(placed_by) <> ''),
    placed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Scope. NULL means "any": all categories, any subject, any tenant, an open
    -- window end. subject_keys are normalised look-up keys (msisdn:+316...), the
    -- same as the records' subject_keys, so that matching is an index look-up.
    categories     text[] CHECK (cardinality(categories) > 0
                                 AND array_position(categories, NULL) IS NULL),
    subject_keys   text[] CHECK (cardinality(subject_keys) > 0
                                 AND array_position(subject_keys, NULL) IS NULL),
    tenant         text CHECK (btrim(tenant) <> ''),
    occurred_from  timestamptz,
    occurred_to    timestamptz,
    all_records    boolean NOT NULL DEFAULT false,
    released_at    timestamptz,
    released_by    text,
    release_reason text,
    CHECK (occurred_from IS NULL OR occurred_to IS NULL OR occurred_from <= occurred_to),
    -- A hold on everything must be asked for explicitly.
    CHECK (subject_keys IS NOT NULL OR tenant IS NOT NULL OR all_records),
    CHECK ((released_at IS NULL AND released_by IS NULL AND release_reason IS NULL)
        OR (released_at IS NOT NULL AND btrim(released_by) <> '' AND btrim(release_reason) <> ''))
);
CREATE INDEX legal_holds_active_idx ON purger.legal_holds (id) WHERE released_at IS NULL;

-- The one definition of "hold covers record", used by every query that moves,
-- keeps, counts or exports records. A plain SQL expression so that the planner
-- inlines it. Both window ends are inclusive: a hold errs on the side of keeping.
CREATE FUNCTION purger.hold_covers(
    hold_categories    text[],
    hold_subject_keys  text[],
    hold_tenant        text,
    hold_occurred_from timestamptz,
    hold_occurred_to   timestamptz,
    category           text,
    tenant             text,
    occurred_at        timestamptz,
    subject_keys       text[]
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (hold_categories IS NULL OR category = ANY (hold_categories))
       AND (hold_subject_keys IS NULL OR subject_keys && hold_subject_keys)
       AND (hold_tenant IS NULL OR tenant = hold_tenant)
       AND (hold_occurred_from IS NULL OR occurred_at >= hold_occurred_from)
       AND (hold_occurred_to IS NULL OR occurred_at <= hold_occurred_to)
$$;

-- A hold is never deleted and its scope never changes; the only update is its
-- release, once: a released hold is never reactivated (place a new one).
CREATE FUNCTION purger.legal_holds_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'purger.legal_holds keeps every hold: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.released_at IS NOT NULL THEN
        RAISE EXCEPTION 'legal hold % is released and cannot change', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.released_at IS NULL
       OR (NEW.id, NEW.case_ref, NEW.reason, NEW.placed_by, NEW.placed_at, NEW.categories,
           NEW.subject_keys, NEW.tenant, NEW.occurred_from, NEW.occurred_to, NEW.all_records)
          IS DISTINCT FROM
          (OLD.id, OLD.case_ref, OLD.reason, OLD.placed_by, OLD.placed_at, OLD.categories,
           OLD.subject_keys, OLD.tenant, OLD.occurred_from, OLD.occurred_to, OLD.all_records)
    THEN
        RAISE EXCEPTION 'legal hold %: only its release may be recorded', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER legal_holds_guard
    BEFORE UPDATE OR DELETE ON purger.legal_holds
    FOR EACH ROW EXECUTE FUNCTION purger.legal_holds_guard();

CREATE TRIGGER legal_holds_no_truncate
    BEFORE TRUNCATE ON purger.legal_holds
    FOR EACH STATEMENT EXECUTE FUNCTION purger.legal_holds_guard();
