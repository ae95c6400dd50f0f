-- tower-reissue PostgresStore, schema version 1.
--
-- `PostgresStore::migrate()` runs this file (with the configured table name
-- in place of `tower_reissue_records`) and records its version in
-- `tower_reissue_records_schema`. Teams that run their own migrations apply
-- it themselves, then insert version 1 into that table.

CREATE TABLE IF NOT EXISTS tower_reissue_records_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Fencing tokens: every claim takes the next value, so a token is never
-- handed out twice.
CREATE SEQUENCE IF NOT EXISTS tower_reissue_records_token;

CREATE TABLE IF NOT EXISTS tower_reissue_records (
    principal text NOT NULL,
    key text NOT NULL,
    -- The request's fingerprint, 32 bytes.
    fingerprint bytea NOT NULL,
    -- The fencing token of the claim that holds or completed the record.
    token bigint NOT NULL,
    completed boolean NOT NULL DEFAULT false,
    -- While in flight, the end of the lease; once completed, the end of the
    -- time to live. A record is live while this is later than the
    -- database's clock_timestamp().
    expires_at timestamptz NOT NULL,
    -- The stored outcome (`StoredOutcome::to_bytes`), once completed.
    outcome bytea,
    PRIMARY KEY (principal, key)
)
-- Room on each page for a record's completion: with no index on the
-- columns it changes, the update stays on its page (a HOT update) and
-- writes no index entry. That is also why `expires_at` has no index:
-- `purge_expired()` scans the table, a rare cost, rather than every
-- completion paying for one.
WITH (fillfactor = 90);
