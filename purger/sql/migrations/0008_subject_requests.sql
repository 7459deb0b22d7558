-- 0008: the register of data-subject requests (GDPR Art. 15 access, Art. 17
-- erasure, Art. 18 restriction), each with its deadline (Art. 12(3): one month
-- from receipt, extendable once by two further months with a recorded reason).
--
-- An open request keeps the subject's look-up keys (msisdn:+316..., the same
-- form as the records' subject_keys) and a random key of its own that makes its
-- audited HMAC checkable. Closing it forgets both, as releasing a hold does
-- (0004, 0005): what remains is how many identifiers of each kind it had. The
-- guard below makes that the only way a request can end, and refuses deleting
-- one, so the register proves which requests were received and answered when.
CREATE TABLE purger.subject_requests (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_type     text NOT NULL CHECK (request_type IN ('erasure', 'restriction', 'access')),
    ref              text NOT NULL CHECK (btrim(ref) <> ''),
    received_on      date NOT NULL,
    due_on           date NOT NULL,
    opened_by        text NOT NULL CHECK (btrim(opened_by) <> ''),
    opened_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    subject_keys     text[] CHECK (cardinality(subject_keys) > 0
                                   AND array_position(subject_keys, NULL) IS NULL),
    hmac_key         bytea CHECK (octet_length(hmac_key) = 32),
    extended_due_on  date,
    extension_reason text,
    extended_by      text,
    extended_at      timestamptz,
    -- Erasure only: the instant of the erasure. Records of the subject dated at or
    -- before it are erased by every pass until the request is closed.
    erased_at        timestamptz,
    closed_at        timestamptz,
    closed_by        text,
    close_reason     text,
    closed_selectors jsonb,
    CHECK (due_on > received_on),
    CHECK (erased_at IS NULL OR request_type = 'erasure'),
    -- Open: the identifiers and the key; closed: neither, only their counts.
    CHECK ((closed_at IS NULL AND subject_keys IS NOT NULL AND hmac_key IS NOT NULL
            AND closed_by IS NULL AND close_reason IS NULL AND closed_selectors IS NULL)
        OR (closed_at IS NOT NULL AND subject_keys IS NULL AND hmac_key IS NULL
            AND btrim(closed_by) <> '' AND btrim(close_reason) <> ''
            AND closed_selectors IS NOT NULL)),
    CHECK ((extended_due_on IS NULL AND extension_reason IS NULL AND extended_by IS NULL
            AND extended_at IS NULL)
        OR (extended_due_on > due_on AND btrim(extension_reason) <> ''
            AND btrim(extended_by) <> '' AND extended_at IS NOT NULL))
);
CREATE INDEX subject_requests_open_idx ON purger.subject_requests (request_type)
    WHERE closed_at IS NULL;

-- A request is never deleted. While open, only its extension (once) and the
-- instant of its erasure (once) may be recorded; closing it (once) replaces its
-- identifiers by their counts and destroys its key, whatever the UPDATE says.
CREATE FUNCTION purger.subject_requests_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'purger.subject_requests keeps every request: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.closed_at IS NOT NULL THEN
        RAISE EXCEPTION 'subject request % is closed and cannot change', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.id, NEW.request_type, NEW.ref, NEW.received_on, NEW.due_on, NEW.opened_by,
        NEW.opened_at)
       IS DISTINCT FROM
       (OLD.id, OLD.request_type, OLD.ref, OLD.received_on, OLD.due_on, OLD.opened_by,
        OLD.opened_at)
       OR (OLD.extended_due_on IS NOT NULL
           AND (NEW.extended_due_on, NEW.extension_reason, NEW.extended_by, NEW.extended_at)
               IS DISTINCT FROM
               (OLD.extended_due_on, OLD.extension_reason, OLD.extended_by, OLD.extended_at))
       OR (OLD.erased_at IS NOT NULL AND NEW.erased_at IS DISTINCT FROM OLD.erased_at)
    THEN
        RAISE EXCEPTION 'subject request %: only its extension, erasure or closing may be recorded',
            OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.closed_at IS NULL THEN
        IF NEW.subject_keys IS DISTINCT FROM OLD.subject_keys
           OR NEW.hmac_key IS DISTINCT FROM OLD.hmac_key THEN
            RAISE EXCEPTION 'subject request %: an open request keeps its subject', OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF NEW.subject_keys IS NOT NULL
          OR NEW.closed_selectors IS DISTINCT FROM purger.selector_counts(OLD.subject_keys) THEN
        RAISE EXCEPTION 'subject request %: closing must forget its identifiers', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    ELSE
        NEW.hmac_key := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER subject_requests_guard
    BEFORE UPDATE OR DELETE ON purger.subject_requests
    FOR EACH ROW EXECUTE FUNCTION purger.subject_requests_guard();

CREATE TRIGGER subject_requests_no_truncate
    BEFORE TRUNCATE ON purger.subject_requests
    FOR EACH STATEMENT EXECUTE FUNCTION purger.subject_requests_guard();

-- UPDATE: extension, erasure instant, closing (the guard allows nothing else).
GRANT SELECT, INSERT, UPDATE ON purger.subject_requests TO purger_runtime;
