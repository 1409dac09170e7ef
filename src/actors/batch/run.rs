//! The run of a batch's writes in a `DbWorker`.

use std::time::Instant;

use crate::actors::{ActorError, DbQuery, RequestCtx};
use crate::db::{self, DbConn, DbError, RowLock};

/// A write of a batch whose deadline had not passed when the batch started.
pub(in crate::actors) struct LiveWrite<Q> {
    /// The write's place in its batch.
    pub(in crate::actors) index: usize,
    pub(in crate::actors) ctx: RequestCtx,
    pub(in crate::actors) query: Q,
}

/// The results of a batch's live writes, each with its place in the batch.
type Outputs<T> = Vec<(usize, Result<T, ActorError>)>;

/// Runs the live writes of a batch in one write transaction and commits it.
///
/// The writes first run straight in the transaction, together when the
/// query type can do that (`DbQuery::run_together`, such as one `INSERT`
/// for many users). That is the common case and costs one round trip per
/// statement. A write can also fail on its own: a conflict, a failed
/// precondition or a missing user. Then everything is rolled back and the
/// writes run once more one by one, each in its own savepoint, so only the
/// failed one is undone. An error that breaks the connection fails the
/// whole batch.
///
/// Each transaction of a batch of several writes first locks the rows of
/// all of them in one order (`db::lock_rows`), so that batches in flight
/// at once do not deadlock. A single write takes its locks in that order
/// by itself.
pub(in crate::actors) fn run_live<Q: DbQuery + Clone>(
    conn: &mut DbConn,
    live: Vec<LiveWrite<Q>>,
) -> Result<Outputs<Q::Output>, DbError> {
    let locks: Vec<RowLock> = if live.len() > 1 {
        live.iter()
            .filter_map(|write| write.query.row_lock())
            .collect()
    } else {
        Vec::new()
    };
    let flat = conn.write_transaction(|conn| {
        db::lock_rows(conn, &locks)?;
        db::without_savepoints(|| run_flat(conn, &live))
    });
    match flat {
        Ok(outputs) => Ok(outputs),
        Err(Flat::Broken(error)) => Err(error),
        // Alone in its batch, the failed write's rollback was its own. A
        // write that met a deadlock runs again below instead.
        Err(Flat::WriteFailed(Some((index, error)))) if live.len() == 1 && !error.is_deadlock() => {
            Ok(vec![(index, Err(ActorError::Db(error)))])
        }
        Err(Flat::WriteFailed(_)) => conn.write_transaction(|conn| {
            db::lock_rows(conn, &locks)?;
            run_with_savepoints(conn, live)
        }),
    }
}

/// Runs the writes straight in the open transaction, together when the
/// query type can, and stops at the first write that fails.
fn run_flat<Q: DbQuery + Clone>(
    conn: &mut DbConn,
    live: &[LiveWrite<Q>],
) -> Result<Outputs<Q::Output>, Flat> {
    let size = live.len();
    if size > 1 {
        let queries: Vec<&Q> = live.iter().map(|write| &write.query).collect();
        let started = Instant::now();
        if let Some(together) = Q::run_together(&queries, conn) {
            return match together {
                Ok(outputs) if outputs.len() == size => Ok(ran_together(live, outputs, started)),
                Err(error) if error.breaks_connection() => Err(Flat::Broken(error)),
                Ok(_) | Err(_) => Err(Flat::WriteFailed(None)),
            };
        }
    }

    let mut outputs = Vec::with_capacity(size);
    for write in live {
        match run_one(conn, write.query.clone(), &write.ctx, size) {
            Ok(output) => outputs.push((write.index, Ok(output))),
            Err(error) if error.breaks_connection() => return Err(Flat::Broken(error)),
            Err(error) => return Err(Flat::WriteFailed(Some((write.index, error)))),
        }
    }
    Ok(outputs)
}

/// Runs the writes one by one, each in its own savepoint, so a write that
/// fails on its own is undone alone and the others go on. A write that
/// PostgreSQL rolled back to break a deadlock runs again, up to
/// `DEADLOCK_RETRIES` times. Up-front row locks prevent deadlocks over
/// rows, but two transactions can still wait on each other's uncommitted
/// emails in the unique index, as when one takes the email that the other
/// gives up.
fn run_with_savepoints<Q: DbQuery + Clone>(
    conn: &mut DbConn,
    live: Vec<LiveWrite<Q>>,
) -> Result<Outputs<Q::Output>, DbError> {
    let size = live.len();
    let mut outputs = Vec::with_capacity(size);
    for write in live {
        let mut retries = 0;
        let result = loop {
            match run_one(conn, write.query.clone(), &write.ctx, size) {
                Err(error) if error.is_deadlock() && retries < DEADLOCK_RETRIES => {
                    retries += 1;
                    let _entered = write.ctx.span.enter();
                    tracing::info!(retries, "write ran again after a deadlock");
                }
                result => break result,
            }
        };
        match result {
            Ok(output) => outputs.push((write.index, Ok(output))),
            Err(error) if error.breaks_connection() => return Err(error),
            Err(error) => outputs.push((write.index, Err(ActorError::Db(error)))),
        }
    }
    Ok(outputs)
}

/// How many times a write runs again after PostgreSQL broke a deadlock by
/// rolling it back.
const DEADLOCK_RETRIES: usize = 2;

/// The cause of the rollback of a batch that ran without savepoints.
enum Flat {
    /// The transaction failed as a whole.
    Broken(DbError),
    /// A write failed on its own: the one at this place in the batch, with
    /// its error, or one of the writes that ran together.
    WriteFailed(Option<(usize, DbError)>),
}

impl From<DbError> for Flat {
    fn from(error: DbError) -> Self {
        Self::Broken(error)
    }
}

/// Pairs the outputs of writes that ran together with their places in the
/// batch, and logs each under its request's span.
fn ran_together<Q: DbQuery>(
    live: &[LiveWrite<Q>],
    outputs: Vec<Q::Output>,
    started: Instant,
) -> Outputs<Q::Output> {
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    live.iter()
        .zip(outputs)
        .map(|(write, output)| {
            let _entered = write.ctx.span.enter();
            tracing::debug!(
                db.op = write.query.name(),
                duration_ms,
                batch.size = live.len(),
                "write ran together with its batch"
            );
            (write.index, Ok(output))
        })
        .collect()
}

/// Runs one write of a batch under its request's span.
fn run_one<Q: DbQuery>(
    conn: &mut DbConn,
    query: Q,
    ctx: &RequestCtx,
    batch_size: usize,
) -> Result<Q::Output, DbError> {
    let _entered = ctx.span.enter();
    let name = query.name();
    let started = Instant::now();
    let result = query.run(conn);
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::debug!(
        db.op = name,
        duration_ms,
        batch.size = batch_size,
        "write ran in a batch"
    );
    result
}
