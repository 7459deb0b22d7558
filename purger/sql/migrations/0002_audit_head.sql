-- 0002: the chain head, so that removing the newest entries is noticed too.
CREATE TABLE purger.audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL,
    hash      text NOT NULL
);
