//! Start-up: bind, migrate, connect, start the actors and serve. Tests use
//! the same path with port 0.

use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::actors::queries::posts;
use crate::actors::{
    Admission, BatchStats, CacheReplica, Checkpoint, Escalation, MemoryReleaser, PoolStats,
    RestartPolicy, StoreStats, UserDb, UserStore, WorkerPool, WorkerStats, WriteBatcher,
};
use crate::config::Settings;
use crate::db::migrations::{self, MigrationError};
use crate::db::{DatabaseUrl, DbPool, PoolSettings};
use crate::http::{self, AppState};
use crate::metrics::{self, Metrics, Sources};

/// Seconds between the shutdown timeout, when requests still running log
/// that they are cut off, and the closing of their connections.
const CUT_OFF_GRACE_SECS: u64 = 1;

/// How often the `MemoryReleaser` looks for a quiet period. Memory goes
/// back to the system between one and two intervals after the last request.
const QUIET_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Used only if the app state is missing, which the app factory prevents.
pub const FALLBACK_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const FALLBACK_BODY_LIMIT: usize = 64 * 1024;
pub const FALLBACK_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure to start the service.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database migration failed")]
    Migration(#[from] MigrationError),
    #[error("connecting the database pool failed")]
    Pool(#[from] r2d2::Error),
    #[error("listening for SIGTERM and SIGINT failed")]
    Signals(#[source] std::io::Error),
    #[error("registering metrics failed")]
    Metrics(#[from] prometheus::Error),
    #[error("the blocking thread pool is gone")]
    Blocking(#[from] actix_web::error::BlockingError),
    #[error("binding {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Stops a running `Application`: the HTTP server first, then the user store.
#[derive(Clone)]
pub struct StopHandle {
    server: ServerHandle,
    writer: Addr<WorkerPool>,
    store_arbiter: ArbiterHandle,
}

impl StopHandle {
    /// Asks the server to stop; `graceful` lets in-flight requests finish.
    /// The user store stops once the server has, and the log is merged.
    pub async fn stop(&self, graceful: bool) {
        self.server.stop(graceful).await;
        merge_log(&self.writer).await;
        self.store_arbiter.stop();
    }
}

/// Merges SQLite's write-ahead log into the database file through the
/// writer, after the writes queued before. The process may exit before the
/// workers close their connections, and SQLite merges the log only when the
/// last one closes. Merged here, the file contains every acknowledged write
/// on its own.
async fn merge_log(writer: &Addr<WorkerPool>) {
    if !writer.connected() {
        return;
    }
    if let Err(error) = writer.send(Checkpoint).await {
        tracing::warn!(%error, "merging the write-ahead log at shutdown failed");
    }
}

/// Starts the worker that runs every write. SQLite allows one writer at a
/// time, and writers that compete for its lock wait in its busy handler,
/// which sleeps and retries in no order: under load some writes then wait
/// for seconds or time out. One writer worker with its own connection makes
/// writes queue in its mailbox instead, while reads keep the other workers.
/// PostgreSQL handles concurrent writers itself, so there every worker
/// writes.
async fn start_writer(
    settings: &Settings,
    readers: &Addr<WorkerPool>,
    arbiter: &ArbiterHandle,
    stats: (&Arc<WorkerStats>, &Arc<PoolStats>),
) -> Result<Addr<WorkerPool>, StartupError> {
    if !matches!(settings.database_url, DatabaseUrl::Sqlite(_)) {
        return Ok(readers.clone());
    }
    let url = settings.database_url.clone();
    // A second connection lets a replacement writer start while a stuck one
    // still holds the first.
    let pool_settings = PoolSettings {
        max_size: 2,
        min_idle: Some(1),
        ..settings.pool.clone()
    };
    let pool = web::block(move || DbPool::connect(&url, &pool_settings)).await??;
    let writer = WorkerPool::new(
        1,
        pool,
        Arc::clone(stats.0),
        Arc::clone(stats.1),
        settings.ping_budget,
    );
    Ok(Actor::start_in_arbiter(arbiter, move |_| writer))
}

/// Returns how many batches of user writes may be in the database at once.
/// SQLite has one writer, so a second batch would only wait for the first
/// and make both smaller. PostgreSQL runs batches side by side: two in
/// flight carried about a third more creates than one in `bench/run`. The
/// other half of the workers stays free for reads.
/// Warns when the database records migrations that this binary does not
/// contain, as after a newer troupe migrated it. troupe still starts, so
/// that an older instance keeps serving during a rolling update.
pub fn warn_unknown_migrations(unknown: &[String]) {
    if !unknown.is_empty() {
        tracing::warn!(
            migrations = ?unknown,
            "the database has applied migrations that this troupe does not contain, \
             as after a newer version migrated it; check that this version works with \
             that schema"
        );
    }
}

fn batches_in_flight(settings: &Settings) -> usize {
    match settings.database_url {
        DatabaseUrl::Sqlite(_) => 1,
        DatabaseUrl::Postgres(_) => settings.db_workers.div_ceil(2),
    }
}

/// SIGTERM and SIGINT listeners. They are registered before the server
/// logs that it listens, so a signal that arrives right after start-up is
/// handled instead of killing the process.
struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    fn register() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal and returns its name.
    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// A running service: the HTTP server and the actors behind it.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    store: Addr<UserStore>,
    db: Addr<WorkerPool>,
    /// The pool that runs every write; the same as `db` on PostgreSQL.
    writer: Addr<WorkerPool>,
    store_arbiter: Arbiter,
    pub worker_stats: Arc<WorkerStats>,
    pub store_stats: Arc<StoreStats>,
    /// Set once shutdown starts, so that `/readyz` returns 503.
    shutting_down: Arc<AtomicBool>,
    signals: ShutdownSignals,
    /// Triggered when the user store restarts too often.
    escalation: Arc<Escalation>,
    /// Tells in-flight requests that the shutdown timeout has passed.
    cut_off: watch::Sender<bool>,
    shutdown_timeout: Duration,
    /// Time between readiness turning off and the listener closing.
    shutdown_delay: Duration,
}

impl Application {
    /// Binds the listener, migrates the database and starts the actors. The
    /// server runs once `run` is awaited or the server is spawned.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let url = settings.database_url.clone();
        tracing::info!(
            database.url = %url,
            database.backend = url.backend_name(),
            database.workers = settings.db_workers,
            database.pool_size = settings.pool.max_size,
            "using database"
        );
        if settings.pool.max_size as usize <= settings.db_workers {
            tracing::warn!(
                database.workers = settings.db_workers,
                database.pool_size = settings.pool.max_size,
                "the database pool has no spare connection, so a stuck worker cannot be \
                 replaced until its query returns; raise --db-pool-size above --db-workers"
            );
        }

        // Bind first: a busy port then fails the start before it creates or
        // migrates a database. Connections that arrive meanwhile wait in the
        // listen backlog until the server runs.
        let listener = TcpListener::bind(settings.bind).map_err(|source| StartupError::Bind {
            addr: settings.bind,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.bind,
            source,
        })?;

        let migrated = web::block(move || migrations::run_pending(&url)).await??;
        if !migrated.applied.is_empty() {
            tracing::info!(migrations = ?migrated.applied, "applied migrations");
        }
        warn_unknown_migrations(&migrated.unknown);

        let url = settings.database_url.clone();
        let pool_settings = settings.pool.clone();
        let pool = web::block(move || DbPool::connect(&url, &pool_settings)).await??;
        let counting = pool.clone();
        let refreshed = web::block(move || counting.get()?.refresh_live_user_count()).await?;
        if let Err(error) = refreshed {
            tracing::warn!(
                %error,
                "refreshing the live-user count failed, so listings use the stored count"
            );
        }

        let store_arbiter = Arbiter::new();
        let worker_stats = Arc::new(WorkerStats::default());
        let pool_stats = Arc::new(PoolStats::default());
        let db = WorkerPool::new(
            settings.db_workers,
            pool.clone(),
            Arc::clone(&worker_stats),
            Arc::clone(&pool_stats),
            settings.ping_budget,
        );
        let db = Actor::start_in_arbiter(&store_arbiter.handle(), move |_| db);
        let writer = start_writer(
            &settings,
            &db,
            &store_arbiter.handle(),
            (&worker_stats, &pool_stats),
        )
        .await?;
        let queue_wait = metrics::queue_wait_histogram()?;
        let admission = Admission::new(settings.queue.capacity, settings.queue.wait)
            .with_wait_histogram(queue_wait.clone());
        let store_stats = Arc::new(StoreStats::default());
        let escalation = Arc::new(Escalation::default());
        let mut store = UserStore::new(
            UserDb::new(&db)
                .with_writer(&writer)
                .with_admission(admission.clone()),
            settings.cache_capacity.unwrap_or(NonZeroUsize::MIN),
            Arc::clone(&store_stats),
        )
        .with_supervision(RestartPolicy::default(), Arc::clone(&escalation))
        .with_batching(settings.write_batch_max, batches_in_flight(&settings))
        .with_read_batching(settings.db_workers);
        if settings.cache_capacity.is_none() {
            store = store.without_cache();
        }
        let store = UserStore::start_supervised(&store_arbiter.handle(), store);
        let post_writes = Arc::new(BatchStats::default());
        let post_writer = WriteBatcher::<posts::Write>::new(
            writer.clone().recipient(),
            admission.clone(),
            settings.write_batch_max,
            batches_in_flight(&settings),
            Arc::clone(&post_writes),
        );
        let post_writer = Actor::start_in_arbiter(&store_arbiter.handle(), move |_| post_writer);

        let metrics = Arc::new(Metrics::new(Sources {
            pool: pool.clone(),
            admission: admission.clone(),
            queue_wait,
            worker_stats: Arc::clone(&worker_stats),
            store_stats: Arc::clone(&store_stats),
            post_writes,
            pool_stats,
        })?);
        let mut pools = vec![db.clone().recipient()];
        // On PostgreSQL the writer is the reader pool itself.
        if matches!(settings.database_url, DatabaseUrl::Sqlite(_)) {
            pools.push(writer.clone().recipient());
        }
        let finished = Arc::clone(&metrics);
        let releaser = MemoryReleaser::new(
            Arc::new(move || finished.requests_finished()),
            pools,
            QUIET_CHECK_INTERVAL,
        );
        Actor::start_in_arbiter(&store_arbiter.handle(), move |_| releaser);

        let shutting_down = Arc::new(AtomicBool::new(false));
        let (cut_off, cut_off_notice) = watch::channel(false);
        let state = web::Data::new(AppState {
            shutting_down: Arc::clone(&shutting_down),
            escalation: Arc::clone(&escalation),
            cut_off: cut_off_notice,
            store: store.clone(),
            db: db.clone(),
            writer: writer.clone(),
            post_writer,
            admission,
            metrics,
            request_timeout: settings.request_timeout,
            body_limit: settings.body_limit,
            client_timeout: settings.client_timeout,
        });
        let cache_capacity = settings.cache_capacity;
        let mut server = HttpServer::new(move || {
            // Each HTTP worker thread builds its app here, so each gets a
            // cache replica of its own, on its own thread.
            let replica = cache_capacity
                .map(|capacity| CacheReplica::new(state.store.clone(), capacity).start());
            App::new()
                .app_data(state.clone())
                .app_data(replica)
                .wrap(from_fn(http::request_context))
                .configure(http::routes)
        });
        if let Some(workers) = settings.http_workers {
            server = server.workers(workers);
        }
        // `run` handles the signals itself, to turn readiness off first. The
        // extra second lets requests log that they are being cut off.
        server = server
            .client_request_timeout(settings.client_timeout)
            .disable_signals()
            .shutdown_timeout(settings.shutdown_timeout.as_secs() + CUT_OFF_GRACE_SECS);
        let server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                addr: settings.bind,
                source,
            })?
            .run();

        let signals = ShutdownSignals::register().map_err(StartupError::Signals)?;
        tracing::info!(http.addr = %addr, "listening");
        Ok(Self {
            server,
            addr,
            store,
            db,
            writer,
            store_arbiter,
            worker_stats,
            store_stats,
            shutting_down,
            signals,
            escalation,
            cut_off,
            shutdown_timeout: settings.shutdown_timeout,
            shutdown_delay: settings.shutdown_delay,
        })
    }

    /// Returns the bound address, with the real port when port 0 was requested.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns a handle that stops the HTTP server and the user store.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            server: self.server.handle(),
            writer: self.writer.clone(),
            store_arbiter: self.store_arbiter.handle(),
        }
    }

    pub fn user_store(&self) -> &Addr<UserStore> {
        &self.store
    }

    pub fn db_workers(&self) -> &Addr<WorkerPool> {
        &self.db
    }

    /// Serves until the server stops (on SIGINT or SIGTERM, or through its
    /// handle), then stops the user store.
    pub async fn run(self) -> std::io::Result<()> {
        let signals = self.signals;
        let handle = self.server.handle();
        let shutting_down = Arc::clone(&self.shutting_down);
        let cut_off = self.cut_off.clone();
        let timeout = self.shutdown_timeout;
        let delay = self.shutdown_delay;
        let on_signal = actix_web::rt::spawn(async move {
            let signal = signals.recv().await;
            shutting_down.store(true, Ordering::SeqCst);
            if !delay.is_zero() {
                tracing::info!(
                    signal,
                    delay_ms = delay.as_millis() as u64,
                    "shutting down: readiness is off, still serving until the delay ends"
                );
                actix_web::rt::time::sleep(delay).await;
            }
            tracing::info!(
                signal,
                timeout_secs = timeout.as_secs(),
                "shutting down: stopped accepting, in-flight requests are finishing"
            );
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(timeout).await;
                let _ = cut_off.send(true);
            });
            handle.stop(true).await;
        });

        let escalation = Arc::clone(&self.escalation);
        let mut server = self.server;
        let result = tokio::select! {
            result = &mut server => result,
            () = escalation.wait() => {
                tracing::error!("stopping after an escalated failure; exiting non-zero");
                self.shutting_down.store(true, Ordering::SeqCst);
                let stopping = server.handle().stop(true);
                let _ = tokio::join!(stopping, &mut server);
                Err(std::io::Error::other("the user store failed more often than its restart policy allows"))
            }
        };

        on_signal.abort();
        self.shutting_down.store(true, Ordering::SeqCst);
        merge_log(&self.writer).await;
        // Every request has finished or been cut off, so nothing waits for
        // the store. Queued database work drains as the workers' last
        // senders go away, and each worker closes its connection.
        self.store_arbiter.stop();
        tracing::info!("HTTP server stopped; the user store and database workers are stopping");
        result
    }
}
