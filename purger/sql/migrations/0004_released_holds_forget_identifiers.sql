-- 0004: a released hold keeps no identifiers. Its subject_keys served only to
-- decide coverage, which ends with the release; what remains is how many of
-- each kind there were ({"msisdn": 2}). The audit trail keeps the digest of the
-- scope as it was placed.
ALTER TABLE purger.legal_holds ADD COLUMN released_selectors jsonb;

-- A hold on everything must still be asked for explicitly; a released hold may
-- have lost its subject keys.
ALTER TABLE purger.legal_holds DROP CONSTRAINT legal_holds_check1;
ALTER TABLE purger.legal_holds ADD CONSTRAINT legal_holds_scope_check
    CHECK (subject_keys IS NOT NULL OR tenant IS NOT NULL OR all_records
           OR released_selectors IS NOT NULL);
ALTER TABLE purger.legal_holds ADD CONSTRAINT legal_holds_released_selectors_check
    CHECK (released_selectors IS NULL OR (released_at IS NOT NULL AND subject_keys IS NULL));

-- Identifiers per selector type of a hold's subject keys (NULL when it has none).
CREATE FUNCTION purger.selector_counts(subject_keys text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT jsonb_object_agg(kind, n)
    FROM (SELECT split_part(k, ':', 1) AS kind, count(*) AS n
          FROM unnest(subject_keys) AS k GROUP BY 1) AS per_kind
$$;

-- A hold is never deleted and its scope never changes; the only update is its
-- release, once, which also replaces its identifiers by their counts: a released
-- hold is never reactivated (place a new one).
CREATE OR REPLACE FUNCTION purger.legal_holds_guard() RETURNS trigger
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
           NEW.tenant, NEW.occurred_from, NEW.occurred_to, NEW.all_records)
          IS DISTINCT FROM
          (OLD.id, OLD.case_ref, OLD.reason, OLD.placed_by, OLD.placed_at, OLD.categories,
           OLD.tenant, OLD.occurred_from, OLD.occurred_to, OLD.all_records)
       OR NEW.subject_keys IS NOT NULL
       OR NEW.released_selectors IS DISTINCT FROM purger.selector_counts(OLD.subject_keys)
    THEN
        RAISE EXCEPTION 'legal hold %: only its release may be recorded', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

-- Holds released before this migration forget their identifiers now (the one
-- change to a released hold there will ever be, so the guard steps aside for it).
ALTER TABLE purger.legal_holds DISABLE TRIGGER legal_holds_guard;
UPDATE purger.legal_holds
SET released_selectors = purger.selector_counts(subject_keys), subject_keys = NULL
WHERE released_at IS NOT NULL AND subject_keys IS NOT NULL;
ALTER TABLE purger.legal_holds ENABLE TRIGGER legal_holds_guard;
