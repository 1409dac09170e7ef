//! The embedded migrations on both backends: applying, reverting, what the
//! schema looks like after each, and the constraints the database enforces.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use diesel::pg::PgConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError, QueryResult};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use troupe::db::migrations::{self, MigrationStatus};
use troupe::db::DatabaseUrl;

use crate::helpers::{Backend, TestDb};

crate::on_both_backends!(
    up_down_up_keeps_data,
    down_reverses_up,
    email_index_ignores_case,
    email_index_ignores_deleted_users,
    live_count_follows_every_change,
    live_count_starts_from_existing_users,
    concurrent_runs_apply_once,
);

/// A plain connection for inspecting the database, outside troupe's code.
enum Raw {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Note {
    #[diesel(sql_type = Nullable<Text>)]
    note: Option<String>,
}

/// Tables, indexes, views, sequences and functions of the public schema,
/// without diesel's own bookkeeping table and its index.
const PG_OBJECTS: &str = "
    SELECT name FROM (
        SELECT ('table:' || tablename)::text AS name FROM pg_tables WHERE schemaname = 'public'
        UNION ALL
        SELECT ('index:' || indexname)::text FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL
        SELECT ('view:' || viewname)::text FROM pg_views WHERE schemaname = 'public'
        UNION ALL
        SELECT ('sequence:' || sequencename)::text FROM pg_sequences WHERE schemaname = 'public'
        UNION ALL
        SELECT ('function:' || p.proname)::text FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
    ) AS objects
    WHERE strpos(name, '__diesel_schema_migrations') = 0";

/// Tables, indexes, views and triggers, without diesel's bookkeeping table
/// and the index SQLite creates for that table's primary key. SQLite's own
/// `sqlite_sequence` is left out too: SQLite creates it for AUTOINCREMENT
/// and does not allow dropping it, but it deletes a table's row in it when
/// the table is dropped.
const SQLITE_OBJECTS: &str = "
    SELECT type || ':' || name AS name FROM sqlite_master
    WHERE type IN ('table', 'index', 'view', 'trigger')
      AND instr(name, '__diesel_schema_migrations') = 0
      AND name != 'sqlite_sequence'";

impl Raw {
    fn connect(url: &DatabaseUrl) -> Self {
        match url {
            DatabaseUrl::Postgres(raw) => Self::Pg(PgConnection::establish(raw).unwrap()),
            DatabaseUrl::Sqlite(_) => {
                Self::Sqlite(SqliteConnection::establish(&url.connection_string()).unwrap())
            }
        }
    }

    fn execute(&mut self, sql: &str) -> QueryResult<usize> {
        match self {
            Self::Pg(c) => diesel::sql_query(sql).execute(c),
            Self::Sqlite(c) => diesel::sql_query(sql).execute(c),
        }
    }

    fn count(&mut self, sql: &str) -> i64 {
        let row: Count = match self {
            Self::Pg(c) => diesel::sql_query(sql).get_result(c),
            Self::Sqlite(c) => diesel::sql_query(sql).get_result(c),
        }
        .unwrap();
        row.n
    }

    fn schema_objects(&mut self) -> BTreeSet<String> {
        let names: Vec<Name> = match self {
            Self::Pg(c) => diesel::sql_query(PG_OBJECTS).load(c),
            Self::Sqlite(c) => diesel::sql_query(SQLITE_OBJECTS).load(c),
        }
        .unwrap();
        names.into_iter().map(|row| row.name).collect()
    }

    fn has_table(&mut self, table: &str) -> bool {
        self.schema_objects().contains(&format!("table:{table}"))
    }

    fn kept_note(&mut self) -> Option<String> {
        let sql = "SELECT note FROM keep_me WHERE id = 1";
        let rows: QueryResult<Vec<Note>> = match self {
            Self::Pg(c) => diesel::sql_query(sql).load(c),
            Self::Sqlite(c) => diesel::sql_query(sql).load(c),
        };
        rows.ok()?.into_iter().next()?.note
    }

    /// Inserts a user row with plain SQL, with `deleted_at` set when `deleted`
    /// is true.
    fn insert_user(&mut self, email: &str, deleted: bool) -> QueryResult<usize> {
        let deleted_at = if deleted { "CURRENT_TIMESTAMP" } else { "NULL" };
        self.execute(&format!(
            "INSERT INTO users (name, email, created_at, updated_at, deleted_at) \
             VALUES ('Ada', '{email}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, {deleted_at})"
        ))
    }
}

/// Creates a test database with every migration applied and opens a raw
/// connection to it, or returns `None` when `backend` is not available.
fn migrated(backend: Backend) -> Option<(TestDb, Raw)> {
    let db = TestDb::create(backend)?;
    migrations::run_pending(&db.url).unwrap();
    let raw = Raw::connect(&db.url);
    Some((db, raw))
}

fn versions(statuses: &[MigrationStatus]) -> Vec<String> {
    statuses.iter().map(|s| s.version.clone()).collect()
}

fn is_unique_violation(result: &QueryResult<usize>) -> bool {
    matches!(
        result,
        Err(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            _
        ))
    )
}

async fn up_down_up_keeps_data(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let mut raw = Raw::connect(&db.url);
    raw.execute("CREATE TABLE keep_me (id INTEGER PRIMARY KEY, note TEXT)")
        .unwrap();
    raw.execute("INSERT INTO keep_me (id, note) VALUES (1, 'kept')")
        .unwrap();

    let applied = migrations::run_pending(&db.url).unwrap().applied;
    let after_up = migrations::status(&db.url).unwrap();
    let users_after_up = raw.has_table("users");
    let note_after_up = raw.kept_note();

    let reverted: Vec<String> = after_up
        .iter()
        .map(|_| migrations::revert_last(&db.url).unwrap())
        .collect();
    let after_down = migrations::status(&db.url).unwrap();
    let users_after_down = raw.has_table("users");
    let note_after_down = raw.kept_note();

    let reapplied = migrations::run_pending(&db.url).unwrap().applied;
    let after_reapply = migrations::status(&db.url).unwrap();
    let users_after_reapply = raw.has_table("users");
    let note_after_reapply = raw.kept_note();

    let all = versions(&after_up);
    let mut newest_first = all.clone();
    newest_first.reverse();
    assert!(!all.is_empty(), "troupe embeds migrations");
    assert_eq!(applied, all, "the first run applies every migration");
    assert!(
        after_up.iter().all(|s| s.applied),
        "status after the run shows all applied: {after_up:?}"
    );
    assert!(users_after_up, "the users table exists after the run");
    assert_eq!(
        reverted, newest_first,
        "each revert takes the newest applied migration"
    );
    assert!(
        after_down.iter().all(|s| !s.applied),
        "status after reverting shows all pending: {after_down:?}"
    );
    assert!(!users_after_down, "the users table is gone after reverting");
    assert_eq!(
        reapplied, all,
        "the second run applies every migration again"
    );
    assert!(
        after_reapply.iter().all(|s| s.applied),
        "status after the second run shows all applied: {after_reapply:?}"
    );
    assert!(
        users_after_reapply,
        "the users table exists after the second run"
    );
    assert_eq!(
        note_after_up.as_deref(),
        Some("kept"),
        "other data survives up"
    );
    assert_eq!(
        note_after_down.as_deref(),
        Some("kept"),
        "other data survives down"
    );
    assert_eq!(
        note_after_reapply.as_deref(),
        Some("kept"),
        "other data survives up again"
    );
}

async fn down_reverses_up(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let mut raw = Raw::connect(&db.url);
    let before = raw.schema_objects();

    let applied = migrations::run_pending(&db.url).unwrap().applied;
    let mut snapshots = vec![raw.schema_objects()];
    for _ in &applied {
        migrations::revert_last(&db.url).unwrap();
        snapshots.push(raw.schema_objects());
    }

    for (step, pair) in snapshots.windows(2).enumerate() {
        assert_ne!(
            pair[0], pair[1],
            "revert {step} changes the schema: {:?}",
            pair[0]
        );
    }
    assert_eq!(
        snapshots.last(),
        Some(&before),
        "reverting every migration restores the schema from before"
    );
}

async fn email_index_ignores_case(backend: Backend) {
    let Some((_db, mut raw)) = migrated(backend) else {
        return;
    };

    let first = raw.insert_user("Ada@Example.com", false);
    let second = raw.insert_user("ada@example.COM", false);

    assert!(first.is_ok(), "the first live user is stored: {first:?}");
    assert!(
        is_unique_violation(&second),
        "a second live user with the email in other case is a unique violation: {second:?}"
    );
}

async fn email_index_ignores_deleted_users(backend: Backend) {
    let Some((_db, mut raw)) = migrated(backend) else {
        return;
    };

    let deleted = raw.insert_user("ada@example.com", true);
    let live = raw.insert_user("ADA@example.com", false);
    let deleted_again = raw.insert_user("Ada@example.com", true);
    let soft_delete =
        raw.execute("UPDATE users SET deleted_at = CURRENT_TIMESTAMP WHERE deleted_at IS NULL");
    let live_again = raw.insert_user("ada@EXAMPLE.com", false);

    assert!(deleted.is_ok(), "a deleted user is stored: {deleted:?}");
    assert!(
        live.is_ok(),
        "a deleted user does not block a live one: {live:?}"
    );
    assert!(
        deleted_again.is_ok(),
        "a live user does not block a deleted one: {deleted_again:?}"
    );
    assert_eq!(soft_delete.ok(), Some(1), "the live user is soft-deleted");
    assert!(
        live_again.is_ok(),
        "a soft-deleted user frees the email: {live_again:?}"
    );
    assert_eq!(
        raw.count("SELECT COUNT(*) AS n FROM users"),
        4,
        "all four rows are stored"
    );
}

const LIVE_COUNT: &str = "SELECT CAST(COALESCE(SUM(live), 0) AS BIGINT) AS n FROM live_user_counts";
const LIVE_USERS: &str = "SELECT COUNT(*) AS n FROM users WHERE deleted_at IS NULL";

/// Checks that the triggers keep the live count equal to a count of the
/// table through inserts, soft deletes, restores, hard deletes and other
/// updates, made with plain SQL as an operator would.
async fn live_count_follows_every_change(backend: Backend) {
    let Some((_db, mut raw)) = migrated(backend) else {
        return;
    };
    assert_eq!(raw.count(LIVE_COUNT), 0, "an empty table counts none");

    let mut steps = vec![
        "INSERT INTO users (name, email, created_at, updated_at) VALUES \
         ('A', 'a@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), \
         ('B', 'b@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), \
         ('C', 'c@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO users (name, email, created_at, updated_at, deleted_at) VALUES \
         ('D', 'd@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "UPDATE users SET deleted_at = CURRENT_TIMESTAMP WHERE email = 'a@example.com'",
        "UPDATE users SET deleted_at = CURRENT_TIMESTAMP WHERE email = 'a@example.com'",
        "UPDATE users SET name = 'Bea', version = version + 1 WHERE email = 'b@example.com'",
        "UPDATE users SET deleted_at = NULL WHERE email = 'd@example.com'",
        "DELETE FROM users WHERE email = 'c@example.com'",
        "DELETE FROM users WHERE email = 'a@example.com'",
    ];
    if backend == Backend::Postgres {
        steps.push("SELECT fold_live_user_counts()");
        steps.push("TRUNCATE users CASCADE");
        steps.push(
            "INSERT INTO users (name, email, created_at, updated_at) \
             VALUES ('E', 'e@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        );
    }
    for step in steps {
        raw.execute(step).unwrap();
        assert_eq!(
            raw.count(LIVE_COUNT),
            raw.count(LIVE_USERS),
            "the live count matches the table after: {step}"
        );
    }
    assert!(raw.count(LIVE_COUNT) > 0, "the steps leave live users");
}

/// The triggers write to the count next to `users`, whatever the search
/// path of the session that writes: pg_dump's restores empty it, and a
/// schema earlier in the path may hold a table of the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_count_ignores_search_path() {
    let Some((_db, mut raw)) = migrated(Backend::Postgres) else {
        return;
    };
    raw.execute("CREATE SCHEMA decoy").unwrap();
    raw.execute(
        "CREATE TABLE decoy.live_user_counts (slot INTEGER PRIMARY KEY, live BIGINT NOT NULL)",
    )
    .unwrap();

    raw.execute("SET search_path = decoy, public").unwrap();
    raw.insert_user("a@example.com", false).unwrap();
    raw.execute("SET search_path = pg_catalog").unwrap();
    let empty_path = raw.execute(
        "INSERT INTO public.users (name, email, created_at, updated_at) \
         VALUES ('B', 'b@example.com', now(), now())",
    );
    raw.execute("SET search_path = public").unwrap();

    assert!(
        empty_path.is_ok(),
        "a write with no usable path succeeds: {empty_path:?}"
    );
    assert_eq!(raw.count(LIVE_COUNT), 2, "both users are counted");
    assert_eq!(
        raw.count("SELECT COUNT(*) AS n FROM decoy.live_user_counts"),
        0,
        "the decoy table is left alone"
    );
}

/// A role that may write `users` but has no grant on the count still
/// writes, and is counted: the trigger functions run as their owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_count_needs_no_grant() {
    let Some((_db, mut raw)) = migrated(Backend::Postgres) else {
        return;
    };
    let role = format!("troupe_test_writer_{}", std::process::id());
    raw.execute(&format!("CREATE ROLE {role} NOLOGIN")).unwrap();
    raw.execute(&format!("GRANT SELECT, INSERT, UPDATE ON users TO {role}"))
        .unwrap();
    raw.execute(&format!("GRANT USAGE ON SEQUENCE users_id_seq TO {role}"))
        .unwrap();

    raw.execute(&format!("SET ROLE {role}")).unwrap();
    let inserted = raw.insert_user("a@example.com", false);
    let deleted = raw.execute("UPDATE users SET deleted_at = now() WHERE email = 'a@example.com'");
    let inserted_again = raw.insert_user("b@example.com", false);
    raw.execute("RESET ROLE").unwrap();
    let live = raw.count(LIVE_COUNT);
    raw.execute(&format!("DROP OWNED BY {role}")).unwrap();
    raw.execute(&format!("DROP ROLE {role}")).unwrap();

    assert!(inserted.is_ok(), "the role inserts: {inserted:?}");
    assert_eq!(deleted.ok(), Some(1), "the role soft-deletes");
    assert!(
        inserted_again.is_ok(),
        "the role inserts again: {inserted_again:?}"
    );
    assert_eq!(live, 1, "the role's writes are counted");
}

/// The migration that adds the count waits for write transactions that are
/// open when it starts, so a user they add is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_count_waits_for_open_writes() {
    let Some((db, mut raw)) = migrated(Backend::Postgres) else {
        return;
    };
    while raw.has_table("live_user_counts") {
        migrations::revert_last(&db.url).unwrap();
    }
    raw.execute("BEGIN").unwrap();
    raw.insert_user("open@example.com", false).unwrap();

    let url = db.url.clone();
    let migrating = std::thread::spawn(move || migrations::run_pending(&url));
    let mut watcher = Raw::connect(&db.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let waiting = "SELECT COUNT(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                   WHERE c.relname = 'users' AND NOT l.granted";
    while watcher.count(waiting) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the migration waits for the open transaction"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    raw.execute("COMMIT").unwrap();
    let applied = migrating.join().unwrap();

    assert!(applied.is_ok(), "the migration completes: {applied:?}");
    assert_eq!(
        raw.count(LIVE_COUNT),
        1,
        "the open transaction's user is counted"
    );
}

/// Applied to a database that already has users, the migration that adds
/// the live count starts it from them.
async fn live_count_starts_from_existing_users(backend: Backend) {
    let Some((db, mut raw)) = migrated(backend) else {
        return;
    };
    while raw.has_table("live_user_counts") {
        migrations::revert_last(&db.url).unwrap();
    }
    for (email, deleted) in [
        ("a@example.com", false),
        ("b@example.com", true),
        ("c@example.com", false),
    ] {
        raw.insert_user(email, deleted).unwrap();
    }

    migrations::run_pending(&db.url).unwrap();

    assert_eq!(raw.count(LIVE_COUNT), 2, "the two live users are counted");
    raw.insert_user("d@example.com", false).unwrap();
    assert_eq!(raw.count(LIVE_COUNT), 3, "a later insert adds to them");
}

/// Two instances that start at once on a fresh database both succeed, and
/// each migration is applied once.
async fn concurrent_runs_apply_once(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let start = Arc::new(Barrier::new(2));

    let runs: Vec<_> = (0..2)
        .map(|_| {
            let url = db.url.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                migrations::run_pending(&url)
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|run| run.join().unwrap()).collect();
    let status = migrations::status(&db.url).unwrap();
    let mut raw = Raw::connect(&db.url);
    let recorded = raw.count("SELECT COUNT(*) AS n FROM __diesel_schema_migrations");

    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "run {i} succeeds: {result:?}");
    }
    let mut applied: Vec<String> = results
        .into_iter()
        .flat_map(|result| result.unwrap().applied)
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        versions(&status),
        "each migration is applied by exactly one of the runs"
    );
    assert!(
        status.iter().all(|s| s.applied),
        "status shows all applied: {status:?}"
    );
    assert_eq!(
        recorded,
        i64::try_from(status.len()).unwrap(),
        "diesel records each migration once"
    );
}
