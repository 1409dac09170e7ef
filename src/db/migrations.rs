//! Embedded migrations, one directory per backend, in the diesel CLI's
//! format, so `diesel migration run` and troupe apply the same files.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::RunQueryDsl;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{with_conn, DatabaseUrl, DbConn, DbError};

pub const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
pub const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Key of the PostgreSQL advisory lock that serialises migrations, so
/// several instances can start at once. The bytes spell "troupemi".
const MIGRATION_LOCK_KEY: i64 = 0x7472_6f75_7065_6d69;

/// How long a migration waits for another process's SQLite write lock.
const SQLITE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed migration step, with the cause.
#[derive(Debug, thiserror::Error)]
#[error("{action} failed")]
pub struct MigrationError {
    action: &'static str,
    #[source]
    source: BoxError,
}

impl MigrationError {
    fn new(action: &'static str) -> impl FnOnce(BoxError) -> Self {
        move |source| Self { action, source }
    }
}

/// The state of one migration: whether it was applied, and whether this
/// binary embeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: String,
    pub applied: bool,
    /// False for a version recorded as applied that this binary does not
    /// embed, as after a newer troupe migrated the database.
    pub embedded: bool,
}

/// A connection used only for migrations, outside the pool.
enum MigrationConn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// What a migration connection is for, which decides how it opens SQLite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Applying: a missing file is created, and the file switched to WAL.
    Apply,
    /// Reverting: only an existing file opens, and it is switched to WAL.
    Revert,
    /// Reporting: only an existing file opens, and nothing is changed.
    Inspect,
}

fn establish(url: &DatabaseUrl, access: Access) -> Result<MigrationConn, MigrationError> {
    let connect = MigrationError::new("connecting to the database");
    match url {
        DatabaseUrl::Postgres(raw) => PgConnection::establish(raw)
            .map(MigrationConn::Pg)
            .map_err(|e| connect(Box::new(e))),
        DatabaseUrl::Sqlite(_) => {
            let target = match access {
                Access::Apply => url.connection_string(),
                Access::Revert | Access::Inspect => {
                    if let Some(path) = url.sqlite_file().filter(|path| !path.exists()) {
                        let missing = format!(
                            "the SQLite file {} does not exist; `troupe migrate run` creates it",
                            path.display()
                        );
                        return Err(connect(missing.into()));
                    }
                    url.pool_connection_string()
                }
            };
            let mut conn =
                SqliteConnection::establish(&target).map_err(|e| connect(Box::new(e)))?;
            let busy_timeout = format!("PRAGMA busy_timeout = {}", SQLITE_LOCK_WAIT.as_millis());
            conn.batch_execute(&busy_timeout)
                .and_then(|()| match access {
                    Access::Apply | Access::Revert => super::use_wal(&mut conn, SQLITE_LOCK_WAIT),
                    Access::Inspect => Ok(()),
                })
                .map_err(|e| {
                    MigrationError::new("configuring the SQLite connection")(Box::new(e))
                })?;
            Ok(MigrationConn::Sqlite(conn))
        }
    }
}

/// Holds SQLite's write lock while `f` runs, so that a second process that
/// migrates the same file waits and then finds nothing pending.
fn with_sqlite_lock<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    conn.immediate_transaction(f)
}

/// Holds the advisory lock while `f` runs on PostgreSQL.
fn with_pg_lock<T>(
    conn: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")).execute(conn)?;
    let result = f(conn);
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")).execute(conn)?;
    result
}

/// The outcome of `run_pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The versions this run applied.
    pub applied: Vec<String>,
    /// Versions recorded as applied that this binary does not embed, as
    /// after a newer troupe migrated the database.
    pub unknown: Vec<String>,
}

/// Applies every pending migration, then reads on the same connection which
/// recorded versions this binary does not embed.
pub fn run_pending(url: &DatabaseUrl) -> Result<Migrated, MigrationError> {
    let mut conn = establish(url, Access::Apply)?;
    let applied = match &mut conn {
        MigrationConn::Pg(conn) => with_pg_lock(conn, |conn| {
            let versions = conn.run_pending_migrations(POSTGRES)?;
            Ok(versions.iter().map(ToString::to_string).collect())
        }),
        MigrationConn::Sqlite(conn) => with_sqlite_lock(conn, |conn| {
            let versions = conn.run_pending_migrations(SQLITE)?;
            Ok(versions.iter().map(ToString::to_string).collect())
        }),
    };
    let applied = applied.map_err(MigrationError::new("applying migrations"))?;
    let unknown = read_statuses(&mut conn)?
        .into_iter()
        .filter(|status| !status.embedded)
        .map(|status| status.version)
        .collect();
    Ok(Migrated { applied, unknown })
}

/// Reverts the most recently applied migration and returns its version.
pub fn revert_last(url: &DatabaseUrl) -> Result<String, MigrationError> {
    let reverted = match establish(url, Access::Revert)? {
        MigrationConn::Pg(mut conn) => with_pg_lock(&mut conn, |conn| {
            Ok(conn.revert_last_migration(POSTGRES)?.to_string())
        }),
        MigrationConn::Sqlite(mut conn) => with_sqlite_lock(&mut conn, |conn| {
            Ok(conn.revert_last_migration(SQLITE)?.to_string())
        }),
    };
    reverted.map_err(MigrationError::new("reverting the last migration"))
}

/// Lists every embedded migration with whether it has been applied, and
/// every version recorded as applied that this binary does not embed. It
/// only reads, so an SQLite file that does not exist is an error, and a database
/// without the migrations table has none applied.
pub fn status(url: &DatabaseUrl) -> Result<Vec<MigrationStatus>, MigrationError> {
    read_statuses(&mut establish(url, Access::Inspect)?)
}

/// Reads the status of every migration on `conn`, as `status` lists it.
fn read_statuses(conn: &mut MigrationConn) -> Result<Vec<MigrationStatus>, MigrationError> {
    let applied = recorded_versions(conn)
        .map_err(|e| MigrationError::new("reading migration status")(Box::new(e)))?;
    let statuses = match conn {
        MigrationConn::Pg(_) => statuses::<Pg>(POSTGRES, &applied),
        MigrationConn::Sqlite(_) => statuses::<Sqlite>(SQLITE, &applied),
    };
    statuses.map_err(MigrationError::new("reading migration status"))
}

#[derive(diesel::QueryableByName)]
struct TablePresent {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    present: bool,
}

/// Reads the versions recorded as applied, or none when the migrations
/// table does not exist, without creating it.
fn recorded_versions(conn: &mut MigrationConn) -> QueryResult<Vec<String>> {
    use recorded::__diesel_schema_migrations::dsl::{__diesel_schema_migrations, version};

    let table = match conn {
        MigrationConn::Pg(c) => diesel::sql_query(
            "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS present",
        )
        .get_result::<TablePresent>(c)?,
        MigrationConn::Sqlite(c) => diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = '__diesel_schema_migrations') AS present",
        )
        .get_result::<TablePresent>(c)?,
    };
    if !table.present {
        return Ok(Vec::new());
    }
    match conn {
        MigrationConn::Pg(c) => __diesel_schema_migrations.select(version).load(c),
        MigrationConn::Sqlite(c) => __diesel_schema_migrations.select(version).load(c),
    }
}

fn statuses<DB>(
    source: EmbeddedMigrations,
    applied: &[String],
) -> Result<Vec<MigrationStatus>, BoxError>
where
    DB: diesel::backend::Backend,
    EmbeddedMigrations: MigrationSource<DB>,
{
    let embedded = embedded_versions::<DB>(source)?;
    let unknown: Vec<MigrationStatus> = applied
        .iter()
        .filter(|version| !embedded.contains(version))
        .map(|version| MigrationStatus {
            version: version.clone(),
            applied: true,
            embedded: false,
        })
        .collect();
    let mut statuses: Vec<MigrationStatus> = embedded
        .into_iter()
        .map(|version| {
            let applied = applied.contains(&version);
            MigrationStatus {
                version,
                applied,
                embedded: true,
            }
        })
        .chain(unknown)
        .collect();
    statuses.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(statuses)
}

/// The table where Diesel records applied migrations. troupe reads it with
/// plain queries, because Diesel's harness creates it when it is missing.
mod recorded {
    diesel::table! {
        __diesel_schema_migrations (version) {
            version -> VarChar,
        }
    }
}

/// Tells whether every embedded migration is recorded as applied. Readiness
/// checks call this through a worker, on a pooled connection. It only
/// reads, so a database without the migrations table fails the query.
pub fn all_applied(conn: &mut DbConn) -> Result<bool, DbError> {
    use recorded::__diesel_schema_migrations::dsl::{__diesel_schema_migrations, version};

    let recorded: Vec<String> =
        with_conn!(&mut *conn, c => __diesel_schema_migrations.select(version).load(c))?;
    let embedded = match conn {
        DbConn::Pg(_) => embedded_versions::<Pg>(POSTGRES),
        DbConn::Sqlite(_) => embedded_versions::<Sqlite>(SQLITE),
    };
    let embedded = embedded.map_err(DbError::Unavailable)?;
    Ok(embedded.iter().all(|embedded| recorded.contains(embedded)))
}

fn embedded_versions<DB>(source: EmbeddedMigrations) -> Result<Vec<String>, BoxError>
where
    DB: diesel::backend::Backend,
    EmbeddedMigrations: MigrationSource<DB>,
{
    Ok(MigrationSource::<DB>::migrations(&source)?
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect())
}

/// The schema objects on `users` that troupe's responses depend on: the
/// unique index that keeps live emails unique, and the triggers that keep
/// the live-user count of listings.
const SQLITE_OBJECTS: &[&str] = &[
    "users_email_live_key",
    "users_count_insert",
    "users_count_update",
    "users_count_delete",
];
/// The same on PostgreSQL, which also counts after a `TRUNCATE`.
const POSTGRES_OBJECTS: &[&str] = &[
    "users_email_live_key",
    "users_count_insert",
    "users_count_update",
    "users_count_delete",
    "users_count_truncate",
];

#[derive(diesel::QueryableByName)]
struct ObjectName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// Returns the names of the schema objects troupe depends on that are
/// missing from `users`: a unique index dropped or made non-unique, or a
/// trigger dropped. On PostgreSQL a trigger also counts as missing when it
/// is disabled or fires only on replicas (`tgenabled` other than `O` or
/// `A`), because troupe's sessions are not replicas.
pub fn missing_objects(conn: &mut DbConn) -> Result<Vec<&'static str>, DbError> {
    let (expected, present) = match conn {
        DbConn::Pg(c) => {
            let present = diesel::sql_query(
                "SELECT tgname::text AS name FROM pg_trigger \
                 WHERE tgrelid = to_regclass('users') AND NOT tgisinternal AND tgenabled IN ('O', 'A') \
                 UNION ALL \
                 SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE i.indrelid = to_regclass('users') AND i.indisunique AND i.indisvalid",
            )
            .load::<ObjectName>(&mut **c)?;
            (POSTGRES_OBJECTS, present)
        }
        DbConn::Sqlite(c) => {
            let present = diesel::sql_query(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'users' \
                 UNION ALL \
                 SELECT name FROM pragma_index_list('users') WHERE \"unique\" = 1",
            )
            .load::<ObjectName>(&mut **c)?;
            (SQLITE_OBJECTS, present)
        }
    };
    Ok(expected
        .iter()
        .copied()
        .filter(|name| !present.iter().any(|object| object.name == *name))
        .collect())
}

/// Reads no rows, but names every column that troupe maps from its tables
/// or filters on (`deleted_at`), so a table or column that was renamed or
/// dropped by hand fails the query even though every migration is recorded
/// as applied.
pub fn tables_readable(conn: &mut DbConn) -> Result<(), DbError> {
    use super::models::{PostRow, UserRow};
    use super::schema::{live_user_counts, posts, users};

    with_conn!(conn, c => {
        users::table
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .limit(0)
            .load::<UserRow>(c)?;
        posts::table
            .filter(posts::deleted_at.is_null())
            .select(PostRow::as_select())
            .limit(0)
            .load::<PostRow>(c)?;
        live_user_counts::table
            .select((live_user_counts::slot, live_user_counts::live))
            .limit(0)
            .load::<(i32, i64)>(c)?;
        Ok(())
    })
}
