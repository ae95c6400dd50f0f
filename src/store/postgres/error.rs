use std::error::Error as StdError;
use std::fmt;

/// Why a [`PostgresStore`](super::PostgresStore) could not be set up.
///
/// ```
/// use tower_reissue::idempotency::store::PostgresStore;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let err = PostgresStore::builder("postgres://localhost/app")
///     .table("Records; DROP TABLE users")
///     .connect()
///     .await
///     .unwrap_err();
/// assert!(err.to_string().contains("table name"));
/// # });
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PostgresError {
    /// The table name is not a plain lowercase identifier of at most 52
    /// bytes (letters, digits and `_`, not starting with a digit).
    InvalidTableName(String),
    /// The database URL could not be parsed.
    InvalidUrl(sqlx::Error),
    /// The database could not be reached, or a statement failed.
    Database(sqlx::Error),
    /// The database holds a newer schema than this release knows: a newer
    /// release migrated it.
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// The newest version this release knows.
        known: i32,
    },
}

impl fmt::Display for PostgresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostgresError::InvalidTableName(name) => write!(
                f,
                "invalid table name {name:?}: use lowercase letters, digits and `_`, at most 52 bytes, not starting with a digit"
            ),
            PostgresError::InvalidUrl(_) => f.write_str("invalid PostgreSQL URL"),
            PostgresError::Database(_) => {
                f.write_str("PostgreSQL could not be reached, or a statement failed")
            }
            PostgresError::SchemaTooNew { found, known } => write!(
                f,
                "the idempotency table has schema version {found}, newer than version {known} this release knows"
            ),
        }
    }
}

impl StdError for PostgresError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PostgresError::InvalidUrl(err) | PostgresError::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for PostgresError {
    fn from(err: sqlx::Error) -> Self {
        PostgresError::Database(err)
    }
}
