//! The file's schema, and opening a file: WAL mode, full sync, and the
//! schema created or checked.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::unavailable;
use crate::dead_letter::QueueError;

/// The schema this version writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE dead_letters (
    -- AUTOINCREMENT: an id is never given twice, even after a purge.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    uri TEXT NOT NULL,
    host TEXT,
    headers BLOB NOT NULL,
    -- NULL when no copy was kept; body_not_kept then says why.
    body BLOB,
    body_not_kept TEXT,
    idempotency_key TEXT,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    state TEXT NOT NULL,
    -- The lease end (leased) or retry_at (failed_again).
    state_until_ms INTEGER,
    replayed_status INTEGER,
    lease_token INTEGER,
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE lease_tokens (last INTEGER NOT NULL);
INSERT INTO lease_tokens (last) VALUES (0);
CREATE INDEX dead_letters_leasable ON dead_letters (id)
    WHERE state IN ('pending', 'leased', 'failed_again');
CREATE INDEX dead_letters_by_state ON dead_letters (state, id);
CREATE INDEX dead_letters_by_reason ON dead_letters (reason, id);
CREATE INDEX dead_letters_by_host ON dead_letters (host, id);
CREATE INDEX dead_letters_finished ON dead_letters (at_ms)
    WHERE state IN ('replayed', 'discarded');
";
pub(super) fn open_connection(path: &Path) -> Result<Connection, QueueError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    // Other processes sharing the file hold the write lock only briefly.
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(unavailable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::unavailable(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(unavailable)?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .or_else(|error| {
                // Another process may have created the schema first.
                let _ = conn.execute_batch("ROLLBACK");
                let now: i64 = conn
                    .query_row("PRAGMA user_version", [], |row| row.get(0))
                    .map_err(unavailable)?;
                if now == SCHEMA_VERSION {
                    Ok(())
                } else {
                    Err(unavailable(error))
                }
            })?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(QueueError::Corrupt(format!(
                "the SQLite file has dead-letter schema version {other}; this version knows {SCHEMA_VERSION}"
            )));
        }
    }
    Ok(conn)
}
