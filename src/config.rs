//! Command line and environment configuration, read only here. Every
//! setting has a flag and an environment variable; flags win.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `TROUPE_BIND` | `127.0.0.1:8080` | HTTP listen address (port 0 picks a free port) |
//! | `DATABASE_URL` | `./troupe.db` | SQLite file path, or a `postgres://` URL |
//! | `TROUPE_DB_POOL_SIZE` | 5 | connections in the pool: one per worker and a spare |
//! | `TROUPE_DB_WORKERS` | 4 | `DbWorker` threads, at most the pool size |
//! | `TROUPE_DB_CONNECT_TIMEOUT_MS` | 5000 | wait for a pooled connection |
//! | `TROUPE_SQLITE_BUSY_TIMEOUT_MS` | 5000 | SQLite wait for another writer |
//! | `TROUPE_PG_STATEMENT_TIMEOUT_MS` | 5000 | PostgreSQL `statement_timeout` |
//! | `TROUPE_REQUEST_TIMEOUT_MS` | 10000 | budget of one request's database work |
//! | `TROUPE_DB_QUEUE_CAPACITY` | 256 | requests admitted to the database at once |
//! | `TROUPE_DB_QUEUE_WAIT_MS` | 100 | wait for admission before a 503 |
//! | `TROUPE_SHUTDOWN_TIMEOUT_SECS` | 30 | time in-flight requests get at shutdown |
//! | `TROUPE_SHUTDOWN_DELAY_MS` | 0 | time between readiness off and closing the listener |
//! | `TROUPE_DB_WORKER_PING_BUDGET_MS` | 15000 | a worker that does not answer a ping in this time is replaced |
//! | `TROUPE_BODY_LIMIT_BYTES` | 65536 | largest accepted request body |
//! | `TROUPE_CLIENT_TIMEOUT_MS` | 5000 | time to send the headers, then the body |
//! | `TROUPE_CACHE_CAPACITY` | 10000 | users kept in the user-store cache; 0 turns it off |
//! | `TROUPE_WRITE_BATCH_MAX` | 64 | user or post writes committed in one transaction; 1 turns batching off |
//! | `TROUPE_HTTP_WORKERS` | cores | HTTP worker threads |
//! | `TROUPE_LOG_FORMAT` | `pretty` | `pretty` or `json` |
//! | `TROUPE_LOG` | `info` | level or `target=level` directives |

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::{DatabaseUrl, PoolSettings};

pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_DATABASE_URL: &str = "./troupe.db";
pub const DEFAULT_DB_POOL_SIZE: u32 = 5;
pub const DEFAULT_DB_WORKERS: u32 = 4;
pub const DEFAULT_DB_CONNECT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_SQLITE_BUSY_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_PG_STATEMENT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_DB_QUEUE_CAPACITY: u32 = 256;
pub const DEFAULT_DB_QUEUE_WAIT_MS: u64 = 100;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_SHUTDOWN_DELAY_MS: u64 = 0;
pub const DEFAULT_DB_WORKER_PING_BUDGET_MS: u64 = 15_000;
pub const DEFAULT_BODY_LIMIT_BYTES: u64 = 64 * 1024;
pub const DEFAULT_CLIENT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_CACHE_CAPACITY: u32 = 10_000;
pub const DEFAULT_WRITE_BATCH_MAX: u32 = 64;

/// troupe: an actor-based users-and-posts REST service.
#[derive(Debug, Parser)]
// Negative numbers reach the value parsers, so `-1` is reported as an
// invalid value of its setting instead of as an unknown flag.
#[command(name = "troupe", version, about, allow_negative_numbers = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The `serve` settings, so that a bare `troupe --bind ...` serves.
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations and serve HTTP (the default).
    #[command(allow_negative_numbers = true)]
    Serve(ServeArgs),
    /// Manage the database schema.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
}

#[derive(Debug, Clone, Copy, Subcommand, PartialEq, Eq)]
pub enum MigrateAction {
    /// Apply every pending migration (the default).
    Run,
    /// Revert the most recently applied migration.
    Revert,
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database: an SQLite file path (created if missing; `sqlite://` prefix
    /// optional) or a `postgres://` / `postgresql://` URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true,
          hide_env_values = true)]
    database_url: String,
}

impl DatabaseArgs {
    /// Validates the URL. Unlike a clap value parser, the error never echoes
    /// the value, which may hold a password.
    pub fn url(&self) -> Result<DatabaseUrl, String> {
        DatabaseUrl::parse(&self.database_url)
            .map_err(|error| format!("invalid --database-url (DATABASE_URL): {error}"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log output format.
    #[arg(long, env = "TROUPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,

    /// Log level (`off`, `error`, `warn`, `info`, `debug`, `trace`) or
    /// comma-separated `target=level` directives such as
    /// `info,troupe::actors=debug`.
    #[arg(long, env = "TROUPE_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "TROUPE_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Database connections in the pool (at least the worker count).
    #[arg(long, env = "TROUPE_DB_POOL_SIZE", default_value_t = DEFAULT_DB_POOL_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub db_pool_size: u32,

    /// Database worker threads, each holding one pooled connection
    /// (default: 4 on PostgreSQL; on SQLite one per CPU core, from 2 to 4).
    #[arg(long, env = "TROUPE_DB_WORKERS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub db_workers: Option<u32>,

    /// Milliseconds to wait for a database connection before failing.
    #[arg(long, env = "TROUPE_DB_CONNECT_TIMEOUT_MS", default_value_t = DEFAULT_DB_CONNECT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub db_connect_timeout_ms: u64,

    /// Milliseconds an SQLite connection waits for another writer's lock.
    #[arg(long, env = "TROUPE_SQLITE_BUSY_TIMEOUT_MS", default_value_t = DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub sqlite_busy_timeout_ms: u64,

    /// Milliseconds one PostgreSQL statement may run (`statement_timeout`);
    /// must be less than the request timeout.
    #[arg(long, env = "TROUPE_PG_STATEMENT_TIMEOUT_MS", default_value_t = DEFAULT_PG_STATEMENT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub pg_statement_timeout_ms: u64,

    /// Milliseconds a request may wait for its database work to start;
    /// after that it gets 503 and nothing is applied.
    #[arg(long, env = "TROUPE_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// Requests admitted to the database workers at once, queued or
    /// running; more wait up to --db-queue-wait-ms, then get 503.
    #[arg(long, env = "TROUPE_DB_QUEUE_CAPACITY", default_value_t = DEFAULT_DB_QUEUE_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub db_queue_capacity: u32,

    /// Milliseconds a request waits for room in the database queue.
    #[arg(long, env = "TROUPE_DB_QUEUE_WAIT_MS", default_value_t = DEFAULT_DB_QUEUE_WAIT_MS,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub db_queue_wait_ms: u64,

    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "TROUPE_SHUTDOWN_TIMEOUT_SECS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout_secs: u64,

    /// Milliseconds between SIGTERM or SIGINT turning readiness off and the
    /// listener closing. Requests are still served meanwhile, so a load
    /// balancer that polls /readyz can take the instance out first.
    #[arg(long, env = "TROUPE_SHUTDOWN_DELAY_MS", default_value_t = DEFAULT_SHUTDOWN_DELAY_MS,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_delay_ms: u64,

    /// Milliseconds a database worker has to answer a health ping, which
    /// waits for the work queued before it; a worker that misses it is
    /// replaced. Must exceed the request timeout.
    #[arg(long, env = "TROUPE_DB_WORKER_PING_BUDGET_MS", default_value_t = DEFAULT_DB_WORKER_PING_BUDGET_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub db_worker_ping_budget_ms: u64,

    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, env = "TROUPE_BODY_LIMIT_BYTES", default_value_t = DEFAULT_BODY_LIMIT_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=67_108_864))]
    pub body_limit_bytes: u64,

    /// Milliseconds a client has to send its request headers, and again its
    /// body; a slower client gets 408 and its connection is closed.
    #[arg(long, env = "TROUPE_CLIENT_TIMEOUT_MS", default_value_t = DEFAULT_CLIENT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub client_timeout_ms: u64,

    /// Users kept in the user-store cache and in each HTTP worker's cache
    /// replica, at most 10 000 000; 0 turns both off. Each cache sets its
    /// table aside for the whole capacity at start.
    #[arg(long, env = "TROUPE_CACHE_CAPACITY", default_value_t = DEFAULT_CACHE_CAPACITY,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub cache_capacity: u32,

    /// User or post writes committed together in one transaction; 1 commits
    /// every write on its own.
    #[arg(long, env = "TROUPE_WRITE_BATCH_MAX", default_value_t = DEFAULT_WRITE_BATCH_MAX,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub write_batch_max: u32,

    /// HTTP worker threads (default: one per CPU core).
    #[arg(long, env = "TROUPE_HTTP_WORKERS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub http_workers: Option<u32>,
}

impl Default for ServeArgs {
    /// Returns the documented defaults, the same values that clap applies.
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            db_pool_size: DEFAULT_DB_POOL_SIZE,
            db_workers: None,
            db_connect_timeout_ms: DEFAULT_DB_CONNECT_TIMEOUT_MS,
            sqlite_busy_timeout_ms: DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
            pg_statement_timeout_ms: DEFAULT_PG_STATEMENT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            db_queue_capacity: DEFAULT_DB_QUEUE_CAPACITY,
            db_queue_wait_ms: DEFAULT_DB_QUEUE_WAIT_MS,
            shutdown_timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
            shutdown_delay_ms: DEFAULT_SHUTDOWN_DELAY_MS,
            db_worker_ping_budget_ms: DEFAULT_DB_WORKER_PING_BUDGET_MS,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            client_timeout_ms: DEFAULT_CLIENT_TIMEOUT_MS,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            write_batch_max: DEFAULT_WRITE_BATCH_MAX,
            http_workers: None,
        }
    }
}

/// Validated settings of the `serve` command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: DatabaseUrl,
    pub pool: PoolSettings,
    pub db_workers: usize,
    pub request_timeout: Duration,
    pub queue: QueueSettings,
    pub shutdown_timeout: Duration,
    pub shutdown_delay: Duration,
    /// Time a database worker has to answer a health ping.
    pub ping_budget: Duration,
    pub body_limit: usize,
    pub client_timeout: Duration,
    /// `None` turns the user-store cache off.
    pub cache_capacity: Option<NonZeroUsize>,
    pub write_batch_max: usize,
    pub http_workers: Option<usize>,
}

/// Admission to the database workers.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub capacity: usize,
    pub wait: Duration,
}

/// A combination of settings that cannot work together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--db-workers (TROUPE_DB_WORKERS) is {workers}{} but --db-pool-size \
         (TROUPE_DB_POOL_SIZE) is {pool}; each worker holds one connection, \
         so the pool must be at least as large",
        if *.defaulted { ", its default for this database and machine," } else { "" }
    )]
    PoolSmallerThanWorkers {
        workers: u32,
        pool: u32,
        /// Whether `workers` is the default, because the option was not given.
        defaulted: bool,
    },
    #[error(
        "{setting} is {value} ms but --request-timeout-ms (TROUPE_REQUEST_TIMEOUT_MS) \
         is {budget} ms; a database wait must end within the request budget, so \
         lower {setting} or raise the request timeout"
    )]
    WaitExceedsBudget {
        setting: &'static str,
        value: u64,
        budget: u64,
    },
    #[error(
        "--db-worker-ping-budget-ms (TROUPE_DB_WORKER_PING_BUDGET_MS) is {ping} ms but \
         --request-timeout-ms (TROUPE_REQUEST_TIMEOUT_MS) is {budget} ms; a worker busy \
         with work that is still within its deadline must not count as stuck, so raise \
         the ping budget above the request timeout"
    )]
    PingBudgetTooShort { ping: u64, budget: u64 },
}

impl Settings {
    pub fn new(database_url: DatabaseUrl, serve: &ServeArgs) -> Result<Self, ConfigError> {
        let db_workers = serve
            .db_workers
            .unwrap_or_else(|| default_db_workers(&database_url));
        if db_workers > serve.db_pool_size {
            return Err(ConfigError::PoolSmallerThanWorkers {
                workers: db_workers,
                pool: serve.db_pool_size,
                defaulted: serve.db_workers.is_none(),
            });
        }
        // Only the wait of the configured backend applies.
        let (setting, value) = match database_url {
            DatabaseUrl::Sqlite(_) => (
                "--sqlite-busy-timeout-ms (TROUPE_SQLITE_BUSY_TIMEOUT_MS)",
                serve.sqlite_busy_timeout_ms,
            ),
            DatabaseUrl::Postgres(_) => (
                "--pg-statement-timeout-ms (TROUPE_PG_STATEMENT_TIMEOUT_MS)",
                serve.pg_statement_timeout_ms,
            ),
        };
        if value >= serve.request_timeout_ms {
            return Err(ConfigError::WaitExceedsBudget {
                setting,
                value,
                budget: serve.request_timeout_ms,
            });
        }

        if serve.db_worker_ping_budget_ms <= serve.request_timeout_ms {
            return Err(ConfigError::PingBudgetTooShort {
                ping: serve.db_worker_ping_budget_ms,
                budget: serve.request_timeout_ms,
            });
        }

        Ok(Self {
            bind: serve.bind,
            database_url,
            pool: PoolSettings {
                max_size: serve.db_pool_size,
                // One per worker; the spares open only for a replacement.
                min_idle: Some(db_workers),
                connection_timeout: Duration::from_millis(serve.db_connect_timeout_ms),
                sqlite_busy_timeout: Duration::from_millis(serve.sqlite_busy_timeout_ms),
                pg_statement_timeout: Duration::from_millis(serve.pg_statement_timeout_ms),
            },
            db_workers: db_workers as usize,
            request_timeout: Duration::from_millis(serve.request_timeout_ms),
            queue: QueueSettings {
                capacity: serve.db_queue_capacity as usize,
                wait: Duration::from_millis(serve.db_queue_wait_ms),
            },
            shutdown_timeout: Duration::from_secs(serve.shutdown_timeout_secs),
            shutdown_delay: Duration::from_millis(serve.shutdown_delay_ms),
            ping_budget: Duration::from_millis(serve.db_worker_ping_budget_ms),
            body_limit: serve.body_limit_bytes as usize,
            client_timeout: Duration::from_millis(serve.client_timeout_ms),
            cache_capacity: NonZeroUsize::new(serve.cache_capacity as usize),
            write_batch_max: serve.write_batch_max as usize,
            http_workers: serve.http_workers.map(|n| n as usize),
        })
    }
}

/// Returns the number of database workers when `--db-workers` is not
/// given. A PostgreSQL worker spends most of a query waiting for the
/// server, so 4 keep several queries in flight. An SQLite worker runs its
/// query on its own thread, so workers beyond the CPU cores only add a page
/// cache each. SQLite gets one per core, at least 2 so that one slow
/// listing leaves a worker for other reads, and at most 4.
fn default_db_workers(url: &DatabaseUrl) -> u32 {
    match url {
        DatabaseUrl::Postgres(_) => DEFAULT_DB_WORKERS,
        DatabaseUrl::Sqlite(_) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            u32::try_from(cores)
                .unwrap_or(u32::MAX)
                .clamp(2, DEFAULT_DB_WORKERS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("troupe").chain(args.iter().copied()))
    }

    #[test]
    fn default_matches_clap_defaults() {
        let Ok(Cli {
            command: Some(Command::Serve(parsed)),
            ..
        }) = parse(&["serve"])
        else {
            panic!("`troupe serve` should parse");
        };
        let default = ServeArgs::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        assert_eq!(default.bind.to_string(), DEFAULT_BIND);
    }

    #[test]
    fn bare_command_takes_serve_flags() {
        let cli = parse(&["--bind", "127.0.0.1:0", "--db-workers", "2"]).expect("flags parse");
        assert!(cli.command.is_none(), "no subcommand means serve");
        assert_eq!(cli.serve.bind.port(), 0);
        assert_eq!(cli.serve.db_workers, Some(2));
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let cases = [
            (vec!["serve", "--db-pool-size", "0"], "--db-pool-size"),
            (vec!["serve", "--bind", "nowhere"], "--bind"),
            (
                vec!["serve", "--request-timeout-ms", "soon"],
                "--request-timeout-ms",
            ),
            (vec!["--log-format", "xml"], "--log-format"),
            (
                vec!["serve", "--db-queue-wait-ms", "-1"],
                "--db-queue-wait-ms",
            ),
            (vec!["--cache-capacity", "-5"], "--cache-capacity"),
        ];
        for (args, setting) in cases {
            let error = parse(&args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(setting), "{args:?}: {error}");
        }
    }

    #[test]
    fn database_waits_fit_budget() {
        let sqlite = DatabaseUrl::Sqlite("x.db".into());
        let postgres = DatabaseUrl::Postgres("postgres://localhost/x".into());
        let cases = [
            (
                &sqlite,
                "TROUPE_SQLITE_BUSY_TIMEOUT_MS",
                ServeArgs {
                    sqlite_busy_timeout_ms: 10_000,
                    ..ServeArgs::default()
                },
            ),
            (
                &postgres,
                "TROUPE_PG_STATEMENT_TIMEOUT_MS",
                ServeArgs {
                    pg_statement_timeout_ms: 20_000,
                    ..ServeArgs::default()
                },
            ),
            (
                &sqlite,
                "TROUPE_DB_WORKER_PING_BUDGET_MS",
                ServeArgs {
                    db_worker_ping_budget_ms: 10_000,
                    ..ServeArgs::default()
                },
            ),
        ];
        for (url, setting, serve) in cases {
            let error = Settings::new(url.clone(), &serve)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(setting), "{setting}: {error}");
        }
    }

    #[test]
    fn other_backends_wait_is_not_checked() {
        let short_budget = |serve: ServeArgs| ServeArgs {
            request_timeout_ms: 2_000,
            ..serve
        };
        let postgres = DatabaseUrl::Postgres("postgres://localhost/x".into());
        let sqlite = DatabaseUrl::Sqlite("x.db".into());
        let long_busy = short_budget(ServeArgs {
            sqlite_busy_timeout_ms: 5_000,
            pg_statement_timeout_ms: 1_000,
            ..ServeArgs::default()
        });
        let long_statement = short_budget(ServeArgs {
            sqlite_busy_timeout_ms: 1_000,
            pg_statement_timeout_ms: 5_000,
            ..ServeArgs::default()
        });

        assert!(
            Settings::new(postgres, &long_busy).is_ok(),
            "PostgreSQL ignores the busy timeout"
        );
        assert!(
            Settings::new(sqlite, &long_statement).is_ok(),
            "SQLite ignores the statement timeout"
        );
    }

    #[test]
    fn default_workers_depend_on_backend() {
        let postgres = DatabaseUrl::Postgres("postgres://localhost/x".into());
        let sqlite = DatabaseUrl::Sqlite("x.db".into());
        let defaults = ServeArgs::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

        let settings = Settings::new(postgres, &defaults).expect("defaults are valid");
        assert_eq!(settings.db_workers, 4);
        let settings = Settings::new(sqlite.clone(), &defaults).expect("defaults are valid");
        assert_eq!(settings.db_workers, cores.clamp(2, 4));
        assert_eq!(settings.pool.min_idle, Some(cores.clamp(2, 4) as u32));

        let chosen = ServeArgs {
            db_workers: Some(5),
            ..defaults
        };
        let settings = Settings::new(sqlite, &chosen).expect("5 workers fit the pool of 5");
        assert_eq!(settings.db_workers, 5);
    }

    #[test]
    fn pool_must_cover_workers() {
        let serve = ServeArgs {
            db_workers: Some(8),
            db_pool_size: 4,
            ..ServeArgs::default()
        };
        let url = DatabaseUrl::Sqlite("x.db".into());
        let error = Settings::new(url, &serve)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("TROUPE_DB_WORKERS"), "{error}");
        assert!(!error.contains("default"), "{error}");

        // The default count is named as such, since the user never gave it.
        let serve = ServeArgs {
            db_pool_size: 1,
            ..ServeArgs::default()
        };
        let url = DatabaseUrl::Postgres("postgres://u@h/db".into());
        let error = Settings::new(url, &serve)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("is 4, its default for this database and machine, but"),
            "{error}"
        );
    }
}
