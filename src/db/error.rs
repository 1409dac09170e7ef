//! The one place where Diesel and r2d2 errors become domain outcomes.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// The reason a database operation did not produce its value.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no such resource")]
    NotFound,
    /// The only unique index besides the primary keys is the one on the
    /// email of users that are not deleted.
    #[error("email already taken")]
    EmailTaken,
    #[error("entity tag does not match the current version")]
    PreconditionFailed,
    /// The database could not be reached, or a connection could not be taken
    /// from the pool within the connection timeout.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database is locked or could not serialize the transaction; the
    /// transaction was rolled back, so retrying is safe.
    #[error("database busy")]
    Busy(#[source] DieselError),
    #[error("query failed")]
    Query(#[source] DieselError),
}

impl DbError {
    /// Tells whether the connection that produced this error must not be
    /// used again. Besides a lost connection, any unexpected error counts:
    /// a fresh connection costs little and cannot carry a broken state on.
    pub fn breaks_connection(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Query(_))
    }

    /// Tells whether PostgreSQL chose this statement to break a deadlock or
    /// could not serialize it. Another transaction went ahead instead, so
    /// running the statement again soon is likely to succeed, where a
    /// timeout would only wait as long again.
    pub fn is_deadlock(&self) -> bool {
        match self {
            Self::Busy(DieselError::DatabaseError(kind, info)) => {
                matches!(kind, DatabaseErrorKind::SerializationFailure)
                    || info.message().contains("deadlock detected")
            }
            _ => false,
        }
    }
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::NotFound => Self::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Self::EmailTaken,
            // A row that a foreign key points at was hard-deleted meanwhile.
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => Self::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                Self::Unavailable(Box::new(error))
            }
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                Self::Busy(error)
            }
            DieselError::DatabaseError(_, ref info) if is_busy(info.message()) => Self::Busy(error),
            DieselError::DatabaseError(_, ref info) if is_connection_lost(info.message()) => {
                Self::Unavailable(Box::new(error))
            }
            DieselError::BrokenTransactionManager => Self::Unavailable(Box::new(error)),
            other => Self::Query(other),
        }
    }
}

impl From<r2d2::Error> for DbError {
    fn from(error: r2d2::Error) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

/// Tells whether a database error means "try again later": SQLite's
/// SQLITE_BUSY and SQLITE_LOCKED, PostgreSQL's cancellation by
/// `statement_timeout` or `lock_timeout`, and a PostgreSQL deadlock, which
/// concurrent batches that insert the same emails in opposite orders can
/// cause. Diesel exposes neither backend's error code, so the message is
/// matched.
fn is_busy(message: &str) -> bool {
    message.contains("database is locked")
        || message.contains("database table is locked")
        || message.contains("canceling statement due to statement timeout")
        || message.contains("canceling statement due to lock timeout")
        || message.contains("deadlock detected")
}

/// Tells whether libpq reports a lost or refused connection, which Diesel
/// does not always classify as `ClosedConnection`.
fn is_connection_lost(message: &str) -> bool {
    [
        "server closed the connection",
        "terminating connection",
        "connection to server",
        "no connection to the server",
        "could not receive data from server",
        "could not send data to server",
        "SSL SYSCALL error",
    ]
    .iter()
    .any(|pattern| message.contains(pattern))
}
