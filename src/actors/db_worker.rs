use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};

use super::batch::{run_live, LiveWrite};
use super::{panic_message, ActorError, Batch, RequestCtx, RequestId};
use crate::db::{DbConn, DbError, DbPool, RowLock};

/// One unit of database work: a plain function of a connection. Each query
/// type wraps one function from `db`.
pub trait DbQuery: Send + 'static {
    type Output: Send + 'static;
    /// Dotted name for logs, such as `users.insert`.
    const NAME: &'static str;

    /// Returns the name of this value for logs, when it depends on the value.
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(self, conn: &mut DbConn) -> Result<Self::Output, DbError>;

    /// Returns the row this value locks when it runs, if any, so that a
    /// batch can lock the rows of all its writes in one order first.
    fn row_lock(&self) -> Option<RowLock> {
        None
    }

    /// Runs several values together in the transaction that the caller has
    /// open, when that is cheaper than running them one by one, and returns
    /// their outputs in order. Returns `None` when these values cannot run
    /// together. After an error the caller rolls the transaction back.
    fn run_together(
        queries: &[&Self],
        conn: &mut DbConn,
    ) -> Option<Result<Vec<Self::Output>, DbError>>
    where
        Self: Sized,
    {
        let _ = (queries, conn);
        None
    }
}

/// The message that carries a query to a `DbWorker`, with its request context.
#[derive(Debug)]
pub struct Query<Q> {
    pub ctx: RequestCtx,
    pub query: Q,
}

impl<Q> Query<Q> {
    pub fn new(ctx: RequestCtx, query: Q) -> Self {
        Self { ctx, query }
    }
}

impl<Q: DbQuery> Message for Query<Q> {
    type Result = Result<Q::Output, ActorError>;
}

/// Counters shared by the workers of one pool.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub panics: AtomicU64,
    pub deadline_skips: AtomicU64,
}

/// A synchronous actor that runs queries on its own thread of the
/// `SyncArbiter`, on one connection taken from the r2d2 pool. It keeps the
/// connection between messages and takes a fresh one after a panic or a
/// broken connection, so the worker itself never dies.
pub struct DbWorker {
    pool: DbPool,
    conn: Option<DbConn>,
    stats: Arc<WorkerStats>,
}

impl DbWorker {
    /// Starts `workers` threads, each with its own `DbWorker`.
    pub fn start_pool(workers: usize, pool: DbPool, stats: Arc<WorkerStats>) -> Addr<Self> {
        SyncArbiter::start(workers, move || DbWorker {
            pool: pool.clone(),
            conn: None,
            stats: Arc::clone(&stats),
        })
    }

    fn connection(&mut self) -> Result<&mut DbConn, DbError> {
        match &mut self.conn {
            Some(conn) => Ok(conn),
            slot => Ok(slot.insert(self.pool.get()?)),
        }
    }
}

impl Actor for DbWorker {
    type Context = SyncContext<Self>;
}

impl DbWorker {
    /// Frees what the worker's connection caches and returns 1 if it did,
    /// 0 if it has no connection or one with no cache to free.
    pub(super) fn release_memory(&mut self) -> usize {
        self.on_connection(
            "database connection could not free its cache",
            DbConn::release_memory,
        )
    }

    /// Merges SQLite's write-ahead log into the database file through the
    /// worker's connection and returns 1 if it did. A worker without a
    /// connection does nothing rather than open one: after the file was
    /// replaced, a new connection would read the old file's log into the
    /// new file.
    pub(super) fn checkpoint(&mut self) -> usize {
        self.on_connection(
            "merging the write-ahead log into the database failed",
            DbConn::checkpoint,
        )
    }

    /// Runs `task` on the worker's connection, if it has one, and returns 1
    /// if the task did its work. A failure is logged with `failure`, and a
    /// connection it broke is dropped.
    fn on_connection(
        &mut self,
        failure: &'static str,
        task: impl FnOnce(&mut DbConn) -> Result<bool, DbError>,
    ) -> usize {
        let Some(conn) = &mut self.conn else {
            return 0;
        };
        match task(conn) {
            Ok(done) => usize::from(done),
            Err(error) => {
                tracing::warn!(error = %error, "{failure}");
                if error.breaks_connection() {
                    self.conn = None;
                }
                0
            }
        }
    }

    fn skip_expired(&self, name: &'static str, request_id: &RequestId) -> ActorError {
        self.stats.deadline_skips.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            db.op = name,
            request_id = %request_id,
            "request deadline passed before the query started, skipped"
        );
        ActorError::DeadlineExceeded
    }

    /// Logs the panic of query `name` and drops the connection. There is no
    /// `request_id` for a batch, which serves several requests.
    fn caught_panic(
        &mut self,
        name: &'static str,
        request_id: Option<&RequestId>,
        payload: &(dyn std::any::Any + Send),
    ) {
        // A connection left inside a transaction is discarded by the pool on
        // return, which rolls the transaction back.
        self.conn = None;
        self.stats.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            db.op = name,
            request_id = request_id.map(tracing::field::display),
            panic = panic_message(payload),
            "database worker caught a panic and took a fresh connection"
        );
    }
}

impl<Q: DbQuery> Handler<Query<Q>> for DbWorker {
    type Result = Result<Q::Output, ActorError>;

    fn handle(&mut self, message: Query<Q>, _: &mut SyncContext<Self>) -> Self::Result {
        let Query { ctx, query } = message;
        let _entered = ctx.span.enter();

        if ctx.is_expired() {
            return Err(self.skip_expired(Q::NAME, &ctx.request_id));
        }

        let started = Instant::now();
        let conn = self.connection()?;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| query.run(conn)));
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;

        match outcome {
            Ok(Ok(output)) => {
                tracing::debug!(db.op = Q::NAME, duration_ms, "query finished");
                Ok(output)
            }
            Ok(Err(error)) => {
                if error.breaks_connection() {
                    self.conn = None;
                }
                Err(ActorError::Db(error))
            }
            Err(payload) => {
                self.caught_panic(Q::NAME, Some(&ctx.request_id), payload.as_ref());
                Err(ActorError::Panicked { actor: "db_worker" })
            }
        }
    }
}

impl<Q: DbQuery + Clone> Handler<Batch<Q>> for DbWorker {
    type Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>;

    /// Runs the items in one write transaction (see `batch::run_live`). An
    /// error that breaks the connection, or a panic, fails the whole batch
    /// and rolls everything back.
    fn handle(&mut self, batch: Batch<Q>, _: &mut SyncContext<Self>) -> Self::Result {
        let mut results: Vec<Option<Result<Q::Output, ActorError>>> =
            Vec::with_capacity(batch.items.len());
        let mut live = Vec::with_capacity(batch.items.len());
        for (index, Query { ctx, query }) in batch.items.into_iter().enumerate() {
            if ctx.is_expired() {
                let _entered = ctx.span.enter();
                results.push(Some(Err(self.skip_expired(query.name(), &ctx.request_id))));
            } else {
                results.push(None);
                live.push(LiveWrite { index, ctx, query });
            }
        }
        if live.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }

        let size = live.len();
        let started = Instant::now();
        let conn = self.connection()?;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| run_live(conn, live)));
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;

        match outcome {
            Ok(Ok(outputs)) => {
                tracing::debug!(db.op = Q::NAME, size, duration_ms, "batch committed");
                for (index, output) in outputs {
                    results[index] = Some(output);
                }
                Ok(results.into_iter().flatten().collect())
            }
            Ok(Err(error)) => {
                tracing::warn!(db.op = Q::NAME, size, error = %error, "batch failed");
                if error.breaks_connection() {
                    self.conn = None;
                }
                Err(ActorError::Db(error))
            }
            Err(payload) => {
                self.caught_panic(Q::NAME, None, payload.as_ref());
                Err(ActorError::Panicked { actor: "db_worker" })
            }
        }
    }
}
