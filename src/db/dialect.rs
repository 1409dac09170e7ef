//! The few operations whose SQL differs between the backends.

use std::cell::Cell;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sqlite::SqliteConnection;

use super::models::{PostRow, UserRow};
use super::schema::{posts, users};

thread_local! {
    /// Whether write transactions on this thread run straight in the
    /// transaction that is open, without a savepoint each.
    static WITHOUT_SAVEPOINTS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, in which every `write_transaction` runs straight in the
/// transaction that the caller has open. A write that fails then leaves its
/// changes in that transaction, so on any failure the caller must roll the
/// whole transaction back. This saves a savepoint and its release, two round
/// trips to PostgreSQL, per write.
pub fn without_savepoints<T>(f: impl FnOnce() -> T) -> T {
    /// Resets the flag on return and on panic.
    struct Reset;

    impl Drop for Reset {
        fn drop(&mut self) {
            WITHOUT_SAVEPOINTS.set(false);
        }
    }

    WITHOUT_SAVEPOINTS.set(true);
    let _reset = Reset;
    f()
}

/// Write transactions and row locks, as each backend does them.
pub trait Dialect: Connection + Sized {
    /// Opens a transaction that holds the write lock from its start, or a
    /// savepoint when a transaction is open already. SQLite needs
    /// `BEGIN IMMEDIATE` for that: a deferred transaction that reads first
    /// fails with "database is locked" when it tries to write while another
    /// connection writes, instead of waiting.
    fn begin_write(&mut self) -> QueryResult<()>;

    /// Commits what `begin_write` opened. On SQLite, the outermost
    /// transaction is rolled back instead when the database file is no
    /// longer at its path, so that no write to a deleted file is
    /// acknowledged.
    fn commit_write(&mut self) -> QueryResult<()>;

    /// Runs `f` between `begin_write` and a commit, or a rollback when `f`
    /// fails. Inside an open transaction, `f` runs in a savepoint, so its
    /// failure undoes only its own changes.
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>;

    /// Runs `f` in a read-only transaction whose statements all see one
    /// snapshot, so that a count and the page it describes agree.
    /// PostgreSQL needs `REPEATABLE READ` for that, while an SQLite
    /// transaction reads one snapshot from its first read to its end.
    fn snapshot_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>;

    /// Reads a user that is not deleted and locks it until the transaction
    /// ends, so concurrent writers of that user run one after another.
    fn lock_live_user(&mut self, id: i64) -> QueryResult<Option<UserRow>>;

    /// Locks the users among `ids` that are not deleted, in id order, and
    /// returns how many there are.
    fn lock_live_users(&mut self, ids: &[i64]) -> QueryResult<usize>;

    /// Reads a post that is not deleted and locks it like `lock_live_user`.
    fn lock_live_post(&mut self, id: i64) -> QueryResult<Option<PostRow>>;
}

impl Dialect for PgConnection {
    fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction(self)
    }

    fn commit_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::commit_transaction(self)
    }

    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>,
    {
        if WITHOUT_SAVEPOINTS.get() {
            return f(self);
        }
        self.transaction(f)
    }

    fn snapshot_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>,
    {
        self.build_transaction()
            .repeatable_read()
            .read_only()
            .run(f)
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

    fn lock_live_users(&mut self, ids: &[i64]) -> QueryResult<usize> {
        let locked: Vec<i64> = users::table
            .filter(users::id.eq_any(ids))
            .filter(users::deleted_at.is_null())
            .order(users::id)
            .select(users::id)
            .for_update()
            .load(self)?;
        Ok(locked.len())
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
    fn begin_write(&mut self) -> QueryResult<()> {
        match AnsiTransactionManager::begin_transaction_sql(self, "BEGIN IMMEDIATE") {
            Err(Error::AlreadyInTransaction) => AnsiTransactionManager::begin_transaction(self),
            other => other,
        }
    }

    fn commit_write(&mut self) -> QueryResult<()> {
        let depth = AnsiTransactionManager::transaction_manager_status_mut(self)
            .transaction_depth()?
            .map(std::num::NonZeroU32::get);
        if depth != Some(1) {
            return AnsiTransactionManager::commit_transaction(self);
        }
        // The transaction holds the write lock, so a rollback here leaves
        // nothing behind, and the 503 that follows is true.
        if sqlite_file_moved(self) {
            AnsiTransactionManager::rollback_transaction(self)?;
            return Err(file_moved_error());
        }
        AnsiTransactionManager::commit_transaction(self)?;
        // Moved while the commit ran: the write is in the moved file, so
        // the caller must neither acknowledge it nor report that nothing changed.
        if sqlite_file_moved(self) {
            return Err(moved_during_commit_error());
        }
        Ok(())
    }

    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>,
    {
        if WITHOUT_SAVEPOINTS.get() {
            return f(self);
        }
        self.begin_write()?;
        match f(self) {
            Ok(value) => {
                self.commit_write()?;
                Ok(value)
            }
            Err(error) => match AnsiTransactionManager::rollback_transaction(self) {
                Ok(()) | Err(Error::BrokenTransactionManager) => Err(error),
                Err(rollback) => Err(rollback.into()),
            },
        }
    }

    fn snapshot_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>,
    {
        self.transaction(f)
    }

    fn lock_live_user(&mut self, id: i64) -> QueryResult<Option<UserRow>> {
        users::table
            .find(id)
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .first(self)
            .optional()
    }

    fn lock_live_users(&mut self, ids: &[i64]) -> QueryResult<usize> {
        let live: i64 = users::table
            .filter(users::id.eq_any(ids))
            .filter(users::deleted_at.is_null())
            .count()
            .get_result(self)?;
        Ok(usize::try_from(live).unwrap_or(0))
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

/// Tells whether the file `conn` opened is no longer the one at its path,
/// or its write-ahead log is gone. SQLite checks the first. The log exists
/// while any connection has the database open in WAL mode, which troupe
/// always uses, so a missing log was deleted by hand, and with it the
/// writes it held.
///
/// A failed file control, as for an in-memory database (which troupe never
/// opens), counts as not moved.
pub(super) fn sqlite_file_moved(conn: &mut SqliteConnection) -> bool {
    use libsqlite3_sys as ffi;
    use std::os::unix::ffi::OsStrExt;

    let mut moved: std::ffi::c_int = 0;
    // SAFETY: the handle stays open and owned by `conn` for the call. The
    // file control only writes one int through the pointer given, and the
    // file names SQLite returns live as long as the connection.
    unsafe {
        conn.with_raw_connection(|db| {
            let status = ffi::sqlite3_file_control(
                db,
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_HAS_MOVED,
                (&raw mut moved).cast(),
            );
            if status == ffi::SQLITE_OK && moved != 0 {
                return true;
            }
            let file = ffi::sqlite3_db_filename(db, c"main".as_ptr());
            if file.is_null() {
                return false;
            }
            let wal = ffi::sqlite3_filename_wal(file);
            if wal.is_null() {
                return false;
            }
            let wal = std::ffi::CStr::from_ptr(wal);
            let found = std::fs::metadata(std::ffi::OsStr::from_bytes(wal.to_bytes()));
            matches!(found, Err(error) if error.kind() == std::io::ErrorKind::NotFound)
        })
    }
}

/// Builds the error of a write rolled back because its connection's file
/// was moved. It counts as a lost connection, so the write is rejected with
/// 503. The connection goes back to the pool still on the moved file, and
/// its later writes fail the same way until that file is back at its path.
fn file_moved_error() -> Error {
    Error::DatabaseError(
        diesel::result::DatabaseErrorKind::ClosedConnection,
        Box::new(String::from(
            "the SQLite database file or its -wal file was moved or deleted after troupe opened it",
        )),
    )
}

/// Builds the error of a write committed while its file was being moved.
/// It is an unexpected query error, so the request fails with 500, which
/// does not claim that nothing changed.
fn moved_during_commit_error() -> Error {
    Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(String::from(
            "the SQLite database file or its -wal file was moved or deleted while a \
             transaction committed, so the transaction is in that file",
        )),
    )
}
