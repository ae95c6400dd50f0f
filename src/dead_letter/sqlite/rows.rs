//! Reading and writing entries: the row codec and the statements the
//! operations share.

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use rusqlite::{Connection, Row, params};

use super::{now_ms, unavailable};
use crate::dead_letter::{
    AttemptOutcome, DeadLetter, DeadLetterId, DeadLetterState, FailedRequest, KeptBody, Lease,
    LeaseToken, QueueError, StateKind, decode_headers, decode_history, encode_headers, from_millis,
    to_millis,
};
use crate::error::Corrupt;

pub(super) const COLUMNS: &str = "id, at_ms, method, uri, headers, body, body_not_kept, idempotency_key, \
     reason, attempts, last_status, last_error, state, state_until_ms, replayed_status, history";

/// Reads one row selected with [`COLUMNS`].
pub(super) fn read_row(row: &Row<'_>) -> rusqlite::Result<Result<DeadLetter, QueueError>> {
    let id: i64 = row.get(0)?;
    let at: i64 = row.get(1)?;
    let method: String = row.get(2)?;
    let uri: String = row.get(3)?;
    let headers: Vec<u8> = row.get(4)?;
    let body: Option<Vec<u8>> = row.get(5)?;
    let not_kept: Option<String> = row.get(6)?;
    let key: Option<String> = row.get(7)?;
    let reason: String = row.get(8)?;
    let attempts: i64 = row.get(9)?;
    let last_status: Option<i64> = row.get(10)?;
    let last_error: Option<String> = row.get(11)?;
    let state: String = row.get(12)?;
    let until: Option<i64> = row.get(13)?;
    let replayed: Option<i64> = row.get(14)?;
    let history: String = row.get(15)?;
    Ok((|| {
        let status = |code: i64| {
            u16::try_from(code)
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| QueueError::corrupt(format!("invalid status {code}")))
        };
        let until = || {
            until
                .map(from_millis)
                .ok_or_else(|| QueueError::corrupt("no state time"))
        };
        let state = match state.parse::<StateKind>()? {
            StateKind::Pending => DeadLetterState::Pending,
            StateKind::Leased => DeadLetterState::Leased { until: until()? },
            StateKind::FailedAgain => DeadLetterState::FailedAgain { retry_at: until()? },
            StateKind::Discarded => DeadLetterState::Discarded,
            StateKind::Replayed => DeadLetterState::Replayed {
                status: status(replayed.ok_or_else(|| QueueError::corrupt("no replay status"))?)?,
            },
        };
        let last = match (last_status, last_error) {
            (Some(code), _) => AttemptOutcome::Status(status(code)?),
            (None, Some(text)) => AttemptOutcome::Error(text),
            (None, None) => return Err(QueueError::corrupt("no last outcome")),
        };
        let body = match (body, not_kept) {
            (Some(bytes), _) => KeptBody::Kept(Bytes::from(bytes)),
            (None, Some(why)) => KeptBody::NotKept(why),
            (None, None) => {
                return Err(QueueError::corrupt(
                    "neither a body nor why it was not kept",
                ));
            }
        };
        Ok(DeadLetter {
            id: DeadLetterId::new(
                u64::try_from(id).map_err(|_| QueueError::corrupt("negative id"))?,
            ),
            request: FailedRequest {
                at: from_millis(at),
                method: Method::from_bytes(method.as_bytes())
                    .map_err(|_| QueueError::corrupt("invalid method"))?,
                uri: uri
                    .parse::<Uri>()
                    .map_err(|_| QueueError::corrupt("invalid URI"))?,
                headers: decode_headers(&headers)?,
                body,
                idempotency_key: key,
                reason,
                attempts: u32::try_from(attempts)
                    .map_err(|_| QueueError::corrupt("invalid attempts"))?,
                last,
            },
            state,
            history: decode_history(&history)?,
        })
    })())
}

/// Leases entry `id` until `until` with a fresh token, inside the caller's
/// write transaction.
pub(super) fn take_lease(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    until: i64,
) -> Result<Lease, QueueError> {
    let token: i64 = tx
        .prepare_cached("UPDATE lease_tokens SET last = last + 1 RETURNING last")
        .and_then(|mut s| s.query_row([], |row| row.get(0)))
        .map_err(unavailable)?;
    tx.prepare_cached(
        "UPDATE dead_letters SET state = 'leased', state_until_ms = ?1, \
         lease_token = ?2 WHERE id = ?3",
    )
    .and_then(|mut s| s.execute(params![until, token, id]))
    .map_err(unavailable)?;
    let letter = select_letters(
        tx,
        &format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"),
        &[&id],
    )?
    .pop()
    .ok_or_else(|| QueueError::corrupt("a leased entry vanished"))?;
    Ok(Lease {
        letter,
        token: LeaseToken::new(token as u64),
    })
}

pub(super) fn sql_id(id: DeadLetterId) -> i64 {
    // Ids come from SQLite's rowids, which are below i64::MAX; a larger one
    // matches no row.
    i64::try_from(id.get()).unwrap_or(i64::MAX)
}

pub(super) fn sql_token(token: LeaseToken) -> i64 {
    i64::try_from(token.get()).unwrap_or(-1)
}

pub(super) fn select_letters(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut statement = conn.prepare_cached(sql).map_err(unavailable)?;
    let rows = statement.query_map(params, read_row).map_err(unavailable)?;
    let mut letters = Vec::new();
    for row in rows {
        letters.push(row.map_err(unavailable)??);
    }
    Ok(letters)
}

/// Appends a replay to the history and ends the lease held with `token`, in
/// one statement; `set` gives the new state's columns.
pub(super) fn finish_lease(
    conn: &Connection,
    id: DeadLetterId,
    token: LeaseToken,
    set: &str,
    record: (&str, &dyn rusqlite::ToSql),
    state_params: &[&dyn rusqlite::ToSql],
) -> Result<(), QueueError> {
    let sql = format!(
        "UPDATE dead_letters SET {set}, lease_token = NULL, \
         history = json_insert(history, '$[#]', json_object('at_ms', ?1, '{}', ?2)) \
         WHERE id = ?3 AND state = 'leased' AND lease_token = ?4",
        record.0
    );
    let mut all: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(4 + state_params.len());
    let now = now_ms();
    let id = sql_id(id);
    let token = sql_token(token);
    all.extend([&now as &dyn rusqlite::ToSql, record.1, &id, &token]);
    all.extend_from_slice(state_params);
    let changed = conn
        .prepare_cached(&sql)
        .and_then(|mut statement| statement.execute(all.as_slice()))
        .map_err(unavailable)?;
    if changed == 0 {
        return Err(QueueError::LeaseLost);
    }
    Ok(())
}

pub(super) fn insert(
    conn: &Connection,
    request: &FailedRequest,
) -> Result<DeadLetterId, QueueError> {
    let (body, not_kept) = match &request.body {
        KeptBody::Kept(bytes) => (Some(bytes.as_ref()), None),
        KeptBody::NotKept(why) => (None, Some(why.as_str())),
    };
    let (last_status, last_error) = match &request.last {
        AttemptOutcome::Status(status) => (Some(status.as_u16()), None),
        AttemptOutcome::Error(text) => (None, Some(text.as_str())),
    };
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO dead_letters (at_ms, method, uri, host, headers, body, \
             body_not_kept, idempotency_key, reason, attempts, last_status, last_error, \
             state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending')",
        )
        .map_err(unavailable)?;
    statement
        .execute(params![
            to_millis(request.at),
            request.method.as_str(),
            request.uri.to_string(),
            request.host(),
            encode_headers(&request.headers).as_ref(),
            body,
            not_kept,
            request.idempotency_key,
            request.reason,
            request.attempts,
            last_status,
            last_error,
        ])
        .map_err(unavailable)?;
    let id = conn.last_insert_rowid();
    Ok(DeadLetterId::new(
        u64::try_from(id).map_err(|_| QueueError::corrupt("negative id"))?,
    ))
}

/// The number of entries per value of `column` (an indexed one).
pub(super) fn count_by(conn: &Connection, column: &str) -> Result<Vec<(String, u64)>, QueueError> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {column}, COUNT(*) FROM dead_letters GROUP BY {column}"
        ))
        .map_err(unavailable)?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
        })
        .map_err(unavailable)?;
    rows.collect::<rusqlite::Result<_>>().map_err(unavailable)
}
