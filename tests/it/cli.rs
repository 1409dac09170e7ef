//! The real `troupe` binary: its migrate commands, how it rejects invalid
//! settings, its help text and what it logs at start.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use troupe::db::{migrations, DatabaseUrl, DbConn, DbPool};

use crate::helpers::{stderr_lines, test_settings, troupe_command as troupe, Backend, TestDb};

crate::on_both_backends!(
    migrate_commands_report_status,
    unknown_migration_reported_not_fatal
);

/// How long one run of the binary may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A child process that is killed and reaped when the test lets go of it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the command to its end, failing the test if it outlives `DEADLINE`.
fn run(command: &mut Command) -> Finished {
    let mut child = Running(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (done_tx, done_rx) = mpsc::channel();
    for (stream, pipe) in [
        (
            0,
            Box::new(child.0.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (1, Box::new(child.0.stderr.take().unwrap())),
    ] {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut pipe = pipe;
            let _ = pipe.read_to_string(&mut text);
            let _ = done_tx.send((stream, text));
        });
    }

    let deadline = Instant::now() + DEADLINE;
    let mut output = [String::new(), String::new()];
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (stream, text) = done_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("troupe {command:?} did not finish in {DEADLINE:?}"));
        output[stream] = text;
    }
    let status = child.0.wait().unwrap();
    let [stdout, stderr] = output;
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// Starts the server, kills it once it logs that it is listening, and
/// returns everything it wrote to stderr.
fn log_until_listening(command: &mut Command) -> String {
    let mut child = Running(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let line_rx = stderr_lines(&mut child.0);

    let deadline = Instant::now() + DEADLINE;
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening") {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("troupe did not log \"listening\" in {DEADLINE:?}; log so far:\n{log}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("troupe exited before it was listening; log:\n{log}")
            }
        }
    }
    drop(child);
    // The pipe closes when the killed process is gone, so this loop ends.
    for line in line_rx {
        log.push_str(&line);
        log.push('\n');
    }
    log
}

/// Serve arguments that keep a test server small and on a free port.
const SMALL_SERVER: [&str; 9] = [
    "serve",
    "--bind",
    "127.0.0.1:0",
    "--db-pool-size",
    "1",
    "--db-workers",
    "1",
    "--http-workers",
    "1",
];

/// Builds the lines `troupe migrate status` prints when the first `applied`
/// migrations are applied and the rest are pending.
fn expected_status(versions: &[String], applied: usize) -> Vec<String> {
    versions
        .iter()
        .enumerate()
        .map(|(i, version)| {
            let state = if i < applied { "applied" } else { "pending" };
            format!("{state}\t{version}")
        })
        .collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

async fn migrate_commands_report_status(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let url = db.url.connection_string();
    let migrate = |action: &str| run(troupe().args(["--database-url", &url, "migrate", action]));

    // Status only reads, so it neither creates an SQLite file nor the
    // migrations table of a new PostgreSQL database.
    let status_before_run = migrate("status");
    match &db.url {
        DatabaseUrl::Sqlite(path) => {
            assert!(
                !status_before_run.status.success(),
                "migrate status fails for a missing file: {}",
                status_before_run.stdout
            );
            assert!(
                status_before_run.stderr.contains("does not exist"),
                "migrate status names the missing file: {}",
                status_before_run.stderr
            );
            assert!(!path.exists(), "migrate status created {}", path.display());
            let reverted = migrate("revert");
            assert!(!reverted.status.success(), "migrate revert without a file");
            assert!(!path.exists(), "migrate revert created {}", path.display());
        }
        DatabaseUrl::Postgres(_) => {
            assert!(
                status_before_run.status.success(),
                "migrate status succeeds: {}",
                status_before_run.stderr
            );
            let mut conn = PgConnection::establish(&url).unwrap();
            let present: Vec<String> = diesel::dsl::sql::<diesel::sql_types::Text>(
                "SELECT tablename::text FROM pg_tables \
                 WHERE tablename = '__diesel_schema_migrations'",
            )
            .load(&mut conn)
            .unwrap();
            assert!(present.is_empty(), "migrate status created the table");
        }
    }

    let ran = migrate("run");
    let versions: Vec<String> = migrations::status(&db.url)
        .unwrap()
        .into_iter()
        .map(|s| s.version)
        .collect();
    let status_after_run = migrate("status");
    let reverted = migrate("revert");
    let status_after_revert = migrate("status");

    assert!(ran.status.success(), "migrate run succeeds: {}", ran.stderr);
    if matches!(db.url, DatabaseUrl::Postgres(_)) {
        assert_eq!(
            lines(&status_before_run.stdout),
            expected_status(&versions, 0),
            "status before run prints every migration as pending"
        );
    }
    assert!(
        status_after_run.status.success(),
        "migrate status succeeds: {}",
        status_after_run.stderr
    );
    assert_eq!(
        lines(&status_after_run.stdout),
        expected_status(&versions, versions.len()),
        "status after run prints every migration as applied"
    );
    assert!(
        reverted.status.success(),
        "migrate revert succeeds: {}",
        reverted.stderr
    );
    assert_eq!(
        lines(&status_after_revert.stdout),
        expected_status(&versions, versions.len() - 1),
        "status after revert prints the newest migration as pending"
    );
}

/// Records `version` as applied in Diesel's migrations table, as a newer
/// troupe with one more migration would.
fn record_migration(url: &DatabaseUrl, version: &str) {
    let pool = DbPool::connect(url, &test_settings(url.clone()).pool).unwrap();
    let insert = format!("INSERT INTO __diesel_schema_migrations (version) VALUES ('{version}')");
    let inserted = match &mut pool.get().unwrap() {
        DbConn::Pg(conn) => diesel::sql_query(&insert).execute(&mut **conn),
        DbConn::Sqlite(conn) => diesel::sql_query(&insert).execute(&mut **conn),
    };
    assert_eq!(inserted.unwrap(), 1, "the version row was inserted");
}

/// A database migrated by a newer troupe lists the migration this binary
/// lacks as unknown, and the server warns about it but still starts.
async fn unknown_migration_reported_not_fatal(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let url = db.url.connection_string();
    let ran = run(troupe().args(["--database-url", &url, "migrate", "run"]));
    assert!(ran.status.success(), "migrate run succeeds: {}", ran.stderr);
    let newer = "99991231000000";
    record_migration(&db.url, newer);

    let status = run(troupe().args(["--database-url", &url, "migrate", "status"]));
    let log = log_until_listening(troupe().args(["--database-url", &url]).args(SMALL_SERVER));

    assert!(status.status.success(), "migrate status: {}", status.stderr);
    let printed = lines(&status.stdout);
    assert_eq!(
        printed.last(),
        Some(&format!("unknown\t{newer}")),
        "the newer version is listed last as unknown:\n{}",
        status.stdout
    );
    assert!(
        printed[..printed.len() - 1]
            .iter()
            .all(|line| line.starts_with("applied\t")),
        "every embedded migration is applied:\n{}",
        status.stdout
    );
    assert!(
        log.contains("does not contain") && log.contains(newer),
        "the start warns about the unknown version:\n{log}"
    );
}

/// A start that must fail: the arguments, an environment variable, the
/// setting the message must name, and why the start is invalid.
struct BadStart<'a> {
    args: Vec<&'a str>,
    env: Option<(&'a str, &'a str)>,
    setting: &'a str,
    reason: &'a str,
}

#[test]
fn cli_invalid_settings_fail_start() {
    let dir = tempfile::tempdir().unwrap();
    let x_db = dir.path().join("x.db");
    let db = x_db.to_str().unwrap();
    let bind = "127.0.0.1:0";
    let cases = [
        BadStart {
            args: vec!["--database-url", ":memory:", "serve", "--bind", bind],
            env: None,
            setting: "--database-url",
            reason: "in-memory SQLite given as a flag",
        },
        BadStart {
            args: vec!["serve", "--bind", bind],
            env: Some(("DATABASE_URL", ":memory:")),
            setting: "DATABASE_URL",
            reason: "in-memory SQLite given in the environment",
        },
        BadStart {
            args: vec![
                "--database-url",
                db,
                "serve",
                "--bind",
                bind,
                "--db-pool-size",
                "0",
            ],
            env: None,
            setting: "--db-pool-size",
            reason: "a pool of no connections",
        },
        BadStart {
            args: vec!["--database-url", db, "serve", "--bind", bind],
            env: Some(("TROUPE_DB_POOL_SIZE", "0")),
            setting: "--db-pool-size",
            reason: "a pool of no connections given in the environment",
        },
        BadStart {
            args: vec![
                "--database-url",
                db,
                "serve",
                "--bind",
                bind,
                "--db-workers",
                "8",
                "--db-pool-size",
                "2",
            ],
            env: None,
            setting: "--db-workers",
            reason: "more workers than connections",
        },
        BadStart {
            args: vec!["--database-url", db, "serve", "--bind", "nowhere"],
            env: None,
            setting: "--bind",
            reason: "an address without host and port",
        },
        BadStart {
            args: vec!["--database-url", db, "serve"],
            env: Some(("TROUPE_BIND", "nowhere")),
            setting: "--bind",
            reason: "an address without host and port given in the environment",
        },
        BadStart {
            args: vec![
                "--database-url",
                db,
                "--log-format",
                "xml",
                "serve",
                "--bind",
                bind,
            ],
            env: None,
            setting: "--log-format",
            reason: "an unknown log format",
        },
        BadStart {
            args: vec!["--database-url", db, "serve", "--bind", bind],
            env: Some(("TROUPE_CACHE_CAPACITY", "10000001")),
            setting: "--cache-capacity",
            reason: "a cache larger than the largest allowed",
        },
        BadStart {
            args: vec![
                "--database-url",
                db,
                "serve",
                "--bind",
                bind,
                "--cache-capacity",
                "18446744073709551615",
            ],
            env: None,
            setting: "--cache-capacity",
            reason: "a cache whose table would overflow",
        },
    ];

    for case in cases {
        let mut command = troupe();
        command.current_dir(dir.path()).args(&case.args);
        if let Some((key, value)) = case.env {
            command.env(key, value);
        }
        let finished = run(&mut command);

        assert!(
            !finished.status.success(),
            "{}: troupe {:?} exits with failure, got {}",
            case.reason,
            case.args,
            finished.status
        );
        assert!(
            finished.stderr.contains(case.setting),
            "{}: the message names {}: {}",
            case.reason,
            case.setting,
            finished.stderr
        );
    }
}

/// Returns the lines of `--help` output that describe `flag`: its own line
/// and the indented lines after it, up to the next option.
fn help_section<'a>(help: &'a str, flag: &str) -> Vec<&'a str> {
    let mut section = Vec::new();
    for line in help.lines() {
        let option = line.trim_start().starts_with('-') && line.contains("--");
        if section.is_empty() {
            if option && line.split_whitespace().any(|word| word == flag) {
                section.push(line);
            }
        } else if option || !line.starts_with(' ') && !line.is_empty() {
            break;
        } else {
            section.push(line);
        }
    }
    section
}

#[test]
fn cli_serve_help_names_units() {
    let help = run(troupe().args(["serve", "--help"]));
    let cases = [
        ("--db-connect-timeout-ms", "Milliseconds"),
        ("--sqlite-busy-timeout-ms", "Milliseconds"),
        ("--request-timeout-ms", "Milliseconds"),
        ("--body-limit-bytes", "bytes"),
        ("--db-pool-size", "connections"),
        ("--db-workers", "threads"),
        ("--http-workers", "threads"),
        ("--cache-capacity", "Users"),
        ("--request-timeout-ms", "TROUPE_REQUEST_TIMEOUT_MS"),
        ("--body-limit-bytes", "TROUPE_BODY_LIMIT_BYTES"),
        ("--database-url", "DATABASE_URL"),
    ];

    assert!(help.status.success(), "serve --help succeeds");
    for (flag, word) in cases {
        let section = help_section(&help.stdout, flag).join("\n");
        assert!(
            section.contains(word),
            "the help of {flag} mentions {word:?}:\n{section}"
        );
    }
}

/// Puts `password` into the user part of a `postgres://user@host/db` URL.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, host) = rest.split_once('@').unwrap();
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!("{scheme}://{user}:{password}@{host}")
}

#[test]
fn cli_postgres_log_hides_password() {
    let Some(db) = TestDb::create(Backend::Postgres) else {
        return;
    };
    let url = db.url.connection_string();
    let secret_url = with_password(&url, "s3cr3tpw");

    let log = log_until_listening(troupe().env("DATABASE_URL", &secret_url).args(SMALL_SERVER));

    assert!(
        !log.contains("s3cr3tpw"),
        "the password never appears in the log:\n{log}"
    );
    assert!(
        log.contains(&with_password(&url, "***")),
        "the log shows the URL with the password as ***:\n{log}"
    );
}

/// troupe checks that the `-wal` file of an SQLite database exists, so it
/// does not start on a VFS that cannot run in WAL mode, and a `file:` URI
/// gets the same read-write, never-create opening as a plain path.
#[test]
fn cli_sqlite_uri_needs_wal_and_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let no_wal = format!("file:{}?vfs=unix-none", dir.path().join("a.db").display());
    let started = run(troupe()
        .args(["--database-url", &no_wal])
        .args(SMALL_SERVER));
    assert!(!started.status.success(), "started without WAL");
    assert!(
        started.stderr.contains("instead of WAL"),
        "the error names the journal mode: {}",
        started.stderr
    );

    let missing = dir.path().join("b.db");
    let uri = format!("file:{}", missing.display());
    let status = run(troupe().args(["--database-url", &uri, "migrate", "status"]));
    assert!(!status.status.success(), "listed a missing database");
    assert!(!missing.exists(), "migrate status created the file");
}

/// A port already in use fails the start before troupe creates or migrates
/// the database, so nothing is left behind.
#[test]
fn cli_busy_port_fails_before_database() {
    let occupant = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = occupant.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.db");

    let started = run(troupe().args([
        "--database-url",
        path.to_str().unwrap(),
        "serve",
        "--bind",
        &addr,
    ]));

    assert!(!started.status.success(), "started on a busy port");
    assert!(
        started.stderr.contains(&format!("binding {addr} failed")),
        "the error names the address: {}",
        started.stderr
    );
    assert!(!path.exists(), "the failed start created the database file");
}

#[test]
fn cli_sqlite_log_names_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();

    let log = log_until_listening(
        troupe()
            .current_dir(&cwd)
            .args(["--database-url", "relative.db"])
            .args(SMALL_SERVER),
    );

    let expected = format!("sqlite://{}", cwd.join("relative.db").display());
    assert!(
        log.contains(&expected),
        "the log names the database as {expected}:\n{log}"
    );
    assert!(
        cwd.join("relative.db").exists(),
        "the database file is created in the working directory"
    );
    for setting in ["database.workers=1", "database.pool_size=1"] {
        assert!(log.contains(setting), "the log shows {setting}:\n{log}");
    }
    assert!(
        log.contains("no spare connection"),
        "the log warns that one connection per worker leaves none spare:\n{log}"
    );
}

/// A PostgreSQL URL with a password, on a loopback port where nothing
/// listens.
const UNREACHABLE_SECRET_URL: &str = "postgres://postgres:s3cr3tpw@127.0.0.1:1/troupe";

#[test]
fn cli_help_hides_database_url() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let help = run(troupe()
            .env("DATABASE_URL", UNREACHABLE_SECRET_URL)
            .args(args));

        assert!(help.status.success(), "troupe {args:?} succeeds");
        assert!(
            !help.stdout.contains("s3cr3tpw"),
            "troupe {args:?} does not print the password from DATABASE_URL:\n{}",
            help.stdout
        );
    }
}

#[test]
fn cli_failed_start_hides_password() {
    let finished = run(troupe().env("DATABASE_URL", UNREACHABLE_SECRET_URL).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--db-connect-timeout-ms",
        "1000",
    ]));

    assert!(
        !finished.status.success(),
        "a start without a database fails"
    );
    assert!(
        !finished.stderr.contains("s3cr3tpw"),
        "the password never appears in the log:\n{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("postgres://postgres:***@127.0.0.1:1/troupe"),
        "the log shows the URL with the password as ***:\n{}",
        finished.stderr
    );
}

/// Invalid URLs that carry a password: clap used to echo the value, a
/// libpq key=value string was taken as an SQLite path and logged, and
/// libpq's error for a malformed URL repeats the URL.
#[test]
fn cli_invalid_urls_hide_password() {
    let urls = [
        "mysql://root:s3cr3tpw@127.0.0.1:3306/troupe",
        "host=127.0.0.1 user=postgres password=s3cr3tpw dbname=troupe",
        "postgres://postgres:s3cr3tpw@[::1:5432/troupe",
    ];
    for url in urls {
        for via_flag in [false, true] {
            let mut command = troupe();
            if via_flag {
                command.args(["--database-url", url]);
            } else {
                command.env("DATABASE_URL", url);
            }
            let finished = run(command.args(["serve", "--bind", "127.0.0.1:0"]));

            assert!(!finished.status.success(), "{url} does not start");
            assert!(
                !finished.stderr.contains("s3cr3tpw"),
                "{url} (flag: {via_flag}): the password is not printed:\n{}",
                finished.stderr
            );
        }
    }
}

/// A log filter that leaves out troupe's own errors does not hide why the
/// process stopped: the message then goes to stderr as plain text.
#[test]
fn cli_failed_start_reported_under_any_filter() {
    let dir = tempfile::tempdir().unwrap();
    let x_db = dir.path().join("x.db");
    let db = x_db.to_str().unwrap();
    for filter in ["off", "troupe::actors=debug"] {
        let bad_url = run(troupe().args([
            "--log-level",
            filter,
            "--database-url",
            ":memory:",
            "migrate",
            "status",
        ]));
        assert!(
            !bad_url.status.success(),
            "{filter}: an in-memory URL fails"
        );
        assert!(
            bad_url.stderr.contains("--database-url"),
            "{filter}: the message names the setting:\n{}",
            bad_url.stderr
        );

        let too_few = run(troupe().current_dir(dir.path()).args([
            "--log-level",
            filter,
            "--database-url",
            db,
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--db-workers",
            "9",
            "--db-pool-size",
            "5",
        ]));
        assert!(
            !too_few.status.success(),
            "{filter}: more workers than connections fail"
        );
        assert!(
            too_few.stderr.contains("--db-workers"),
            "{filter}: the message names the setting:\n{}",
            too_few.stderr
        );
    }
}

/// `tracing` read an unknown level such as `verbose` as a target name and
/// logged nothing at all, errors included.
#[test]
fn cli_unknown_log_level_fails() {
    let finished = run(troupe().args(["--log-level", "verbose", "migrate", "status"]));

    assert!(
        !finished.status.success(),
        "an unknown level stops the start"
    );
    assert!(
        finished.stderr.contains("--log-level"),
        "the message names the setting:\n{}",
        finished.stderr
    );
}
