//! The queries that actors send to the `DbWorker` pool, one type per `db`
//! function. Each is a plain value, so tests can inspect what was sent.

pub mod posts;
pub mod users;

use super::DbQuery;
use crate::db::{self, DbConn, DbError};

/// Checks that the database responds, every migration is applied and the
/// tables still have the columns that troupe reads.
#[derive(Debug, Clone)]
pub struct CheckReady;

/// The outcome of [`CheckReady`].
#[derive(Debug)]
pub enum Readiness {
    Ready,
    PendingMigrations,
    /// Every migration is applied, but a table or column that troupe reads
    /// is missing, as after a change to the schema by hand. Carries the
    /// database's error.
    SchemaMismatch(DbError),
}

impl DbQuery for CheckReady {
    type Output = Readiness;
    const NAME: &'static str = "migrations.check";

    fn run(self, conn: &mut DbConn) -> Result<Readiness, DbError> {
        if !db::migrations::all_applied(conn).map_err(DbError::Unavailable)? {
            return Ok(Readiness::PendingMigrations);
        }
        match db::migrations::tables_readable(conn) {
            Ok(()) => Ok(Readiness::Ready),
            Err(error @ DbError::Query(_)) => Ok(Readiness::SchemaMismatch(error)),
            Err(other) => Err(other),
        }
    }
}

/// Returns the timestamp for a write, taken when the worker runs it.
fn now() -> chrono::NaiveDateTime {
    crate::domain::now().naive_utc()
}
