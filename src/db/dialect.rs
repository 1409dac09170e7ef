//! The few operations whose SQL differs between the backends.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::models::{PostRow, UserRow};
use super::schema::{posts, users};

/// Write transactions and row locks, as each backend does them.
pub trait Dialect: Connection + Sized {
    /// Runs `f` in a transaction that holds the write lock from its start.
    /// SQLite needs `BEGIN IMMEDIATE` for that: a deferred transaction that
    /// reads first fails with "database is locked" when it tries to write
    /// while another connection writes, instead of waiting.
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>;

    /// Reads a user that is not deleted and locks it until the transaction
    /// ends, so concurrent writers of that user run one after another.
    fn lock_live_user(&mut self, id: i64) -> QueryResult<Option<UserRow>>;

    /// Reads a post that is not deleted and locks it like `lock_live_user`.
    fn lock_live_post(&mut self, id: i64) -> QueryResult<Option<PostRow>>;
}

impl Dialect for PgConnection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.transaction(f)
    }

    fn lock_live_user(&mut self, id: i64) -> QueryResult<Option<UserRow>> {
        users::table
            .find(id)
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .for_update()
            .first(self)
            .optional()
    }

    fn lock_live_post(&mut self, id: i64) -> QueryResult<Option<PostRow>> {
        posts::table
            .find(id)
            .filter(posts::deleted_at.is_null())
            .select(PostRow::as_select())
            .for_update()
            .first(self)
            .optional()
    }
}

/// In SQLite the immediate transaction already holds the database's single
/// write lock, so plain reads are enough.
impl Dialect for SqliteConnection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.immediate_transaction(f)
    }

    fn lock_live_user(&mut self, id: i64) -> QueryResult<Option<UserRow>> {
        users::table
            .find(id)
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .first(self)
            .optional()
    }

    fn lock_live_post(&mut self, id: i64) -> QueryResult<Option<PostRow>> {
        posts::table
            .find(id)
            .filter(posts::deleted_at.is_null())
            .select(PostRow::as_select())
            .first(self)
            .optional()
    }
}
