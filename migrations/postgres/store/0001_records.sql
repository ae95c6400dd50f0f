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
);

-- For `purge_expired()`.
CREATE INDEX IF NOT EXISTS tower_reissue_records_expires_at
    ON tower_reissue_records (expires_at);
