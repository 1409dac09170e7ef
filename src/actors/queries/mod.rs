//! The queries that actors send to the `DbWorker` pool, one type per `db`
//! function. Each is a plain value, so tests can inspect what was sent.

pub mod posts;
pub mod users;

use super::DbQuery;
use crate::db::{self, DbConn, DbError};

/// Checks that the database responds and every migration is applied.
#[derive(Debug, Clone)]
pub struct CheckReady;

impl DbQuery for CheckReady {
    type Output = bool;
    const NAME: &'static str = "migrations.check";

    fn run(self, conn: &mut DbConn) -> Result<bool, DbError> {
        db::migrations::all_applied(conn).map_err(DbError::Unavailable)
    }
}

/// Returns the timestamp for a write, taken when the worker runs it.
fn now() -> chrono::NaiveDateTime {
    crate::domain::now().naive_utc()
}
