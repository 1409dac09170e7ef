//! The Diesel layer: the schema, row types, connection pools,
//! migrations, the query functions and the mapping of Diesel errors.
//!
//! Query functions take a `&mut DbConn` and are written once: `with_conn!`
//! expands their body for each backend, so each copy is type-checked against
//! its own backend and can use what that backend offers.

mod dialect;
mod error;
mod locks;
pub mod migrations;
mod models;
pub mod posts;
mod schema;
mod url;
pub mod users;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;

pub use dialect::without_savepoints;
pub use error::DbError;
pub use locks::{lock_rows, RowLock};
pub use url::{DatabaseUrl, InvalidDatabaseUrl};

/// Runs `$body` with `$c` bound to the concrete connection of either backend.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConn::Pg(pooled) => {
                let $c: &mut diesel::pg::PgConnection = &mut *pooled;
                $body
            }
            $crate::db::DbConn::Sqlite(pooled) => {
                let $c: &mut diesel::sqlite::SqliteConnection = &mut *pooled;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

/// A connection checked out of the pool, for either backend.
pub enum DbConn {
    Pg(PooledConnection<ConnectionManager<PgConnection>>),
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
}

impl DbConn {
    /// Runs `f` in one write transaction. The writes `f` makes through the
    /// query functions of this module each run in their own savepoint, so
    /// one that fails is undone alone and `f` can go on with the next
    /// (unless `f` runs them in `without_savepoints`). The transaction is
    /// rolled back when `f` fails and committed otherwise.
    pub fn write_transaction<T, E>(
        &mut self,
        f: impl FnOnce(&mut DbConn) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError>,
    {
        use dialect::Dialect;
        use diesel::connection::{AnsiTransactionManager, TransactionManager};

        let db_error = |error| E::from(DbError::from(error));
        with_conn!(&mut *self, c => c.begin_write()).map_err(db_error)?;
        match f(self) {
            Ok(value) => {
                with_conn!(&mut *self, c => c.commit_write()).map_err(db_error)?;
                Ok(value)
            }
            Err(error) => {
                match with_conn!(&mut *self, c => AnsiTransactionManager::rollback_transaction(c)) {
                    Ok(()) => Err(error),
                    // The connection may still be inside the transaction, so
                    // the rollback's error makes the caller drop it.
                    Err(rollback) => Err(db_error(rollback)),
                }
            }
        }
    }
}

impl DbConn {
    /// Tells whether the SQLite file this connection opened is no longer at
    /// its path (deleted, renamed, or replaced by another file) or its
    /// write-ahead log was deleted. Such a connection's writes would be lost
    /// at the next start. Always false on PostgreSQL.
    pub fn file_moved(&mut self) -> bool {
        match self {
            Self::Pg(_) => false,
            Self::Sqlite(conn) => dialect::sqlite_file_moved(conn),
        }
    }

    /// Frees the memory this connection caches but does not need now: the
    /// unused part of SQLite's page cache, which a busy connection fills up
    /// to its limit. Returns whether there was such a cache. PostgreSQL
    /// connections cache nothing of note on this side.
    pub fn release_memory(&mut self) -> Result<bool, DbError> {
        match self {
            Self::Pg(_) => Ok(false),
            Self::Sqlite(conn) => {
                conn.batch_execute("PRAGMA shrink_memory")?;
                Ok(true)
            }
        }
    }

    /// Copies every write in SQLite's write-ahead log into the database file
    /// and empties the log, so the file holds them on its own. Returns
    /// whether there was a log. PostgreSQL has none of its own to merge.
    pub fn checkpoint(&mut self) -> Result<bool, DbError> {
        match self {
            Self::Pg(_) => Ok(false),
            Self::Sqlite(conn) => {
                conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
                Ok(true)
            }
        }
    }

    /// Brings the live-user count up to date at start. On PostgreSQL it
    /// folds the rows of ended sessions into one, because every session that
    /// writes users adds a row of its own. On SQLite it counts the users
    /// again in one statement, which repairs the drift a `REPLACE` leaves
    /// when run with `recursive_triggers` off.
    pub fn refresh_live_user_count(&mut self) -> Result<(), DbError> {
        match self {
            Self::Pg(conn) => Ok(conn.batch_execute("SELECT fold_live_user_counts()")?),
            Self::Sqlite(conn) => Ok(conn.batch_execute(
                "UPDATE live_user_counts \
                 SET live = (SELECT count(*) FROM users WHERE deleted_at IS NULL) \
                 WHERE slot = 0",
            )?),
        }
    }
}

/// Connection pool settings, all validated by the configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: u32,
    /// Connections opened at start and kept open when idle; `None` keeps
    /// `max_size`. The others open on demand.
    pub min_idle: Option<u32>,
    pub connection_timeout: Duration,
    /// How long an SQLite connection waits for another writer's lock.
    pub sqlite_busy_timeout: Duration,
    /// How long one PostgreSQL statement may run before the server cancels
    /// it and rolls its transaction back.
    pub pg_statement_timeout: Duration,
}

/// The r2d2 pool of one backend. Cloning shares the pool.
#[derive(Clone)]
pub enum DbPool {
    Pg(Pool<ConnectionManager<PgConnection>>),
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
}

impl DbPool {
    /// Builds the pool and opens its first connections, so a database that
    /// cannot be reached fails start-up instead of the first request.
    pub fn connect(url: &DatabaseUrl, settings: &PoolSettings) -> Result<Self, r2d2::Error> {
        match url {
            DatabaseUrl::Postgres(raw) => {
                let pool = pool_builder(settings)
                    .connection_customizer(Box::new(PgSession {
                        statement_timeout: settings.pg_statement_timeout,
                    }))
                    .build(ConnectionManager::new(raw))?;
                Ok(Self::Pg(pool))
            }
            DatabaseUrl::Sqlite(_) => {
                let pool = pool_builder(settings)
                    .connection_customizer(Box::new(SqliteSession {
                        busy_timeout: settings.sqlite_busy_timeout,
                    }))
                    .build(ConnectionManager::new(url.pool_connection_string()))?;
                Ok(Self::Sqlite(pool))
            }
        }
    }

    /// Takes a connection, waiting at most the pool's connection timeout.
    pub fn get(&self) -> Result<DbConn, DbError> {
        match self {
            Self::Pg(pool) => Ok(DbConn::Pg(pool.get()?)),
            Self::Sqlite(pool) => Ok(DbConn::Sqlite(pool.get()?)),
        }
    }

    /// Connections open in the pool and how many of them are idle.
    pub fn state(&self) -> r2d2::State {
        match self {
            Self::Pg(pool) => pool.state(),
            Self::Sqlite(pool) => pool.state(),
        }
    }
}

fn pool_builder<C>(settings: &PoolSettings) -> r2d2::Builder<ConnectionManager<C>>
where
    C: diesel::r2d2::R2D2Connection + 'static,
{
    Pool::builder()
        .max_size(settings.max_size)
        .min_idle(settings.min_idle.map(|idle| idle.min(settings.max_size)))
        .connection_timeout(settings.connection_timeout)
}

/// Session settings for every PostgreSQL connection. Timestamps are bound as
/// `timestamp` values in UTC and stored in `timestamptz` columns. The
/// conversion uses the session time zone, so it must be UTC. The statement
/// timeout keeps one slow statement from outliving its request's budget.
#[derive(Debug)]
struct PgSession {
    statement_timeout: Duration,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        let settings = format!(
            "SET TIME ZONE 'UTC'; SET statement_timeout = {}",
            self.statement_timeout.as_millis()
        );
        conn.batch_execute(&settings)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Pragmas for every SQLite connection: foreign keys on, a busy timeout so
/// writers queue instead of failing, WAL so readers never block the writer,
/// full fsync on commit so an acknowledged write survives power loss,
/// temporary files (such as a statement's undo record) kept in memory, and
/// recursive triggers, without which a `REPLACE` skips delete triggers.
#[derive(Debug)]
struct SqliteSession {
    busy_timeout: Duration,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSession {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        let pragmas = format!(
            "PRAGMA busy_timeout = {}; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = MEMORY; PRAGMA recursive_triggers = ON;",
            self.busy_timeout.as_millis()
        );
        conn.batch_execute(&pragmas)
            .and_then(|()| use_wal(conn, self.busy_timeout))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(diesel::QueryableByName)]
struct JournalMode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    journal_mode: String,
}

/// Switches the database file to WAL unless it already is. The mode is
/// stored in the file, so usually only the first connection ever switches
/// it. When another process switches at the same moment, SQLite fails the
/// switch with "database is locked" at once, without its busy handler, so
/// the switch is retried for up to `wait`.
pub(crate) fn use_wal(conn: &mut SqliteConnection, wait: Duration) -> diesel::QueryResult<()> {
    use diesel::RunQueryDsl;

    let deadline = std::time::Instant::now() + wait;
    loop {
        let switched = diesel::sql_query("PRAGMA journal_mode")
            .get_result::<JournalMode>(conn)
            .and_then(|mode| match mode.journal_mode.eq_ignore_ascii_case("wal") {
                true => Ok(()),
                false => diesel::sql_query("PRAGMA journal_mode = WAL")
                    .get_result::<JournalMode>(conn)
                    .and_then(require_wal),
            });
        match switched {
            Err(error) if is_locked(&error) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Fails unless SQLite switched to WAL. It keeps the old mode without an
/// error when the VFS has no shared memory (such as `vfs=unix-none` in a
/// `file:` URI), and troupe's checks of the `-wal` file rely on WAL.
fn require_wal(mode: JournalMode) -> diesel::QueryResult<()> {
    if mode.journal_mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let message = format!(
        "SQLite kept journal mode {:?} instead of WAL, which troupe needs; \
         use the default VFS",
        mode.journal_mode
    );
    Err(diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(message),
    ))
}

fn is_locked(error: &diesel::result::Error) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(_, info) if info.message().contains("locked"))
}
