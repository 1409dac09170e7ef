//! The queries that actors send to the `DbWorker` pool, one type per `db`
//! function. Each is a plain value, so tests can inspect what was sent.

pub mod posts;
pub mod users;

use super::DbQuery;
use crate::db::{self, DbConn, DbError};

/// Checks that the database responds, every migration is applied, the
/// tables still have the columns, unique index and triggers that troupe
/// relies on, and an SQLite file is still where troupe opened it.
#[derive(Debug, Clone)]
pub struct CheckReady;

/// The outcome of [`CheckReady`].
#[derive(Debug)]
pub enum Readiness {
    Ready,
    PendingMigrations,
    /// Every migration is applied, but the schema was changed by hand since.
    SchemaMismatch(SchemaMismatch),
    /// The SQLite file was deleted, renamed or replaced while troupe runs,
    /// or its write-ahead log was deleted.
    FileMoved,
}

/// A difference between the schema and what the migrations made.
#[derive(Debug, thiserror::Error)]
pub enum SchemaMismatch {
    #[error("a table or column that troupe reads cannot be read")]
    Unreadable(#[source] DbError),
    #[error("missing, not unique or not enabled on users: {}", .0.join(", "))]
    MissingObjects(Vec<&'static str>),
}

impl DbQuery for CheckReady {
    type Output = Readiness;
    const NAME: &'static str = "migrations.check";

    fn run(self, conn: &mut DbConn) -> Result<Readiness, DbError> {
        if conn.file_moved() {
            return Ok(Readiness::FileMoved);
        }
        // A query error means a table or column is missing. Any other error,
        // such as a lost connection, comes from the database, not the schema.
        let unreadable = |error| match error {
            DbError::Query(_) => Ok(Readiness::SchemaMismatch(SchemaMismatch::Unreadable(error))),
            other => Err(other),
        };
        match db::migrations::all_applied(conn) {
            Ok(true) => {}
            Ok(false) => return Ok(Readiness::PendingMigrations),
            Err(error) => return unreadable(error),
        }
        if let Err(error) = db::migrations::tables_readable(conn) {
            return unreadable(error);
        }
        let missing = db::migrations::missing_objects(conn)?;
        if !missing.is_empty() {
            return Ok(Readiness::SchemaMismatch(SchemaMismatch::MissingObjects(
                missing,
            )));
        }
        Ok(Readiness::Ready)
    }
}

/// Returns the timestamp for a write, taken when the worker runs it.
fn now() -> chrono::NaiveDateTime {
    crate::domain::now().naive_utc()
}
