//! The store's statements, written once per table name.

use super::error::PostgresError;

/// The table name the plain SQL under `migrations/` uses; [`Statements`]
/// puts the configured name in its place.
pub(super) const SHIPPED_TABLE: &str = "tower_reissue_records";

/// The schema versions, oldest first: the files under
/// `migrations/postgres/store/`.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    include_str!("../../../migrations/postgres/store/0001_records.sql"),
)];

/// Every statement of the store, for one table.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) table: String,
    pub(super) claim: String,
    pub(super) fingerprint: String,
    pub(super) renew: String,
    pub(super) complete: String,
    pub(super) commit: String,
    pub(super) release: String,
    pub(super) purge: String,
    pub(super) version: String,
}

/// Checks a table name: an identifier that can be written into statements
/// unquoted. Not schema-qualified (an index takes its table's schema and
/// its name cannot be qualified): choose the schema with the connection's
/// `search_path`.
pub(super) fn check_table(name: &str) -> Result<(), PostgresError> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        // Room for the suffixes of its sequence and schema table (`_token`,
        // `_schema`) in PostgreSQL's 63-byte identifiers, with some to spare.
        && name.len() <= 52;
    if valid {
        Ok(())
    } else {
        Err(PostgresError::InvalidTableName(name.to_owned()))
    }
}

impl Statements {
    pub(super) fn new(table: &str) -> Self {
        let t = table;
        // A record is live while `expires_at` is later than the database's
        // clock: `clock_timestamp()`, not `now()`, which is the start of the
        // transaction and would stand still in a long one.
        let live = "r.expires_at > clock_timestamp()";
        let ms = |param: &str| format!("clock_timestamp() + {param} * interval '1 millisecond'");
        Self {
            table: t.to_owned(),
            // One statement, one round trip: take the key when no live
            // record holds it, else read the record that does. A claim
            // never changes a live record (the conflict's `WHERE` is
            // false), though it locks its row for the statement: a
            // duplicate that arrives while a completion is being committed
            // waits for that commit (up to `lock_timeout`). Its read still
            // sees the record from before (the statement's snapshot), so
            // `claim` asks once more when it reads a record in flight.
            claim: format!(
                "WITH claimed AS (
                    INSERT INTO {t} AS r (principal, key, fingerprint, token, completed, expires_at)
                    VALUES ($1, $2, $3, nextval('{t}_token'), false, {lease})
                    ON CONFLICT (principal, key) DO UPDATE
                        SET fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token,
                            completed = false, expires_at = EXCLUDED.expires_at, outcome = NULL
                        WHERE NOT ({live})
                    RETURNING token
                )
                SELECT true, token, NULL::bytea, false, NULL::bytea FROM claimed
                UNION ALL
                SELECT false, r.token, r.fingerprint, r.completed, r.outcome FROM {t} r
                    WHERE r.principal = $1 AND r.key = $2 AND {live}
                    AND NOT EXISTS (SELECT 1 FROM claimed)",
                lease = ms("$4")
            ),
            // A read without a lock, for a claim that timed out on one.
            fingerprint: format!(
                "SELECT r.fingerprint FROM {t} r WHERE r.principal = $1 AND r.key = $2"
            ),
            renew: format!(
                "UPDATE {t} r SET expires_at = {lease}
                    WHERE r.principal = $1 AND r.key = $2 AND r.token = $3
                    AND NOT r.completed AND {live}",
                lease = ms("$4")
            ),
            complete: format!(
                "UPDATE {t} r SET completed = true, outcome = $4, expires_at = {ttl}
                    WHERE r.principal = $1 AND r.key = $2 AND r.token = $3
                    AND NOT r.completed AND {live}",
                ttl = ms("$5")
            ),
            // Inside the work's transaction. Fenced by token and state
            // only: a lease that ran out without anyone taking over changed
            // nothing, and one that was taken over changed the token. The
            // row lock this takes orders the commit against a takeover.
            commit: format!(
                "UPDATE {t} r SET completed = true, outcome = $4, expires_at = {ttl}
                    WHERE r.principal = $1 AND r.key = $2 AND r.token = $3 AND NOT r.completed",
                ttl = ms("$5")
            ),
            release: format!(
                "DELETE FROM {t} r WHERE r.principal = $1 AND r.key = $2 AND r.token = $3
                    AND NOT r.completed AND {live}"
            ),
            // In batches, so that a purge of a large backlog holds no long
            // transaction.
            purge: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {t} WHERE expires_at <= clock_timestamp() LIMIT $1))"
            ),
            version: format!("SELECT max(version) FROM {t}_schema"),
        }
    }

    /// The migration `sql` for this table.
    pub(super) fn migration(&self, sql: &str) -> String {
        sql.replace(SHIPPED_TABLE, &self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(check_table("tower_reissue_records").is_ok());
        assert!(check_table("idempotency_2").is_ok());
        for bad in [
            "",
            "Records",
            "records; DROP TABLE users",
            "billing.keys",
            "1records",
            "\"quoted\"",
            &"x".repeat(53),
        ] {
            let err = check_table(bad).unwrap_err();
            assert!(err.to_string().contains("table name"), "{err}");
        }
    }

    #[test]
    fn the_migration_names_the_configured_table() {
        let statements = Statements::new("billing_keys");
        let sql = statements.migration(MIGRATIONS[0].1);
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS billing_keys ("));
        assert!(sql.contains("CREATE SEQUENCE IF NOT EXISTS billing_keys_token"));
        assert!(!sql.contains(SHIPPED_TABLE));
    }
}
