//! Group commit. Writes that arrive while a batch is in the database wait in
//! a `WriteQueue` and go together in the next batch: one transaction, one
//! commit, one savepoint per write. Each write gets its reply only after its
//! batch committed, so an acknowledged write is durable like a lone one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::{MailboxError, Message, Recipient};
use tokio::sync::oneshot;

use super::{ActorError, DbQuery, Query, RequestCtx, Ticket};
use crate::db::{self, DbConn, DbError};

/// Writes that a `DbWorker` runs in one transaction, each in its own
/// savepoint, in order. Items whose deadline passed before the batch
/// started are skipped.
///
/// The reply contains one result per item, in order. The reply is an error
/// only when the whole transaction failed: it could not begin or commit, the
/// connection broke, or a write panicked. Then nothing of the batch was
/// applied.
#[derive(Debug)]
pub struct Batch<Q> {
    pub items: Vec<Query<Q>>,
}

impl<Q: DbQuery> Message for Batch<Q> {
    type Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>;
}

/// The receiver of one write's result, sent once its batch has replied.
pub type WriteReply<Q> = oneshot::Receiver<Result<<Q as DbQuery>::Output, ActorError>>;

/// A write waiting for its batch, with its place in the database queue
/// and the channel its result goes to.
struct Waiting<Q: DbQuery> {
    query: Query<Q>,
    reply: oneshot::Sender<Result<Q::Output, ActorError>>,
    /// Held until the result is handed over.
    ticket: Ticket,
}

/// The writes waiting for the next batch. At most `max_in_flight` batches
/// are in the database at a time: the queue fills while they are there and
/// the next batch takes what has gathered, up to `max_batch` writes. A lone
/// write on a quiet server goes at once, in a batch of one.
pub struct WriteQueue<Q: DbQuery> {
    waiting: VecDeque<Waiting<Q>>,
    in_flight: usize,
    max_in_flight: usize,
    max_batch: usize,
}

impl<Q: DbQuery> WriteQueue<Q> {
    pub fn new(max_batch: usize, max_in_flight: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues a write that has its place in the database queue and returns
    /// the receiver of its result.
    pub fn push(&mut self, query: Query<Q>, ticket: Ticket) -> WriteReply<Q> {
        let (reply, receiver) = oneshot::channel();
        self.waiting.push_back(Waiting {
            query,
            reply,
            ticket,
        });
        receiver
    }

    /// Takes the next batch, unless `max_in_flight` batches are in the
    /// database already or nothing waits. Call `finished` once the batch has
    /// replied.
    pub fn next_batch(&mut self) -> Option<PendingBatch<Q>> {
        if self.in_flight >= self.max_in_flight || self.waiting.is_empty() {
            return None;
        }
        let size = self.waiting.len().min(self.max_batch);
        self.in_flight += 1;
        Some(PendingBatch {
            items: self.waiting.drain(..size).collect(),
        })
    }

    /// Records that one batch in the database has replied.
    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Writes waiting for a batch, not counting those in the database.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// A batch taken from a `WriteQueue`, not yet sent.
pub struct PendingBatch<Q: DbQuery> {
    items: Vec<Waiting<Q>>,
}

impl<Q> PendingBatch<Q>
where
    Q: DbQuery,
    Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
{
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends the batch to `writer` and, once it replies, sends every write
    /// its own result and frees its place in the database queue.
    pub async fn send(self, writer: Recipient<Batch<Q>>) {
        let (queries, waiting): (Vec<_>, Vec<_>) = self
            .items
            .into_iter()
            .map(|item| (item.query, (item.reply, item.ticket)))
            .unzip();

        match writer.send(Batch { items: queries }).await {
            Ok(Ok(results)) => {
                for ((reply, _ticket), result) in waiting.into_iter().zip(results) {
                    // The request may have been cut off meanwhile.
                    let _ = reply.send(result);
                }
            }
            Ok(Err(error)) => {
                let shared = Arc::new(error);
                for (reply, _ticket) in waiting {
                    let _ = reply.send(Err(ActorError::Batch(Arc::clone(&shared))));
                }
            }
            Err(source) => {
                for (reply, _ticket) in waiting {
                    let _ = reply.send(Err(ActorError::Unavailable {
                        actor: "db_worker",
                        source,
                    }));
                }
            }
        }
    }
}

/// A write of a batch whose deadline had not passed when the batch started.
pub(super) struct LiveWrite<Q> {
    /// The write's place in its batch.
    pub(super) index: usize,
    pub(super) ctx: RequestCtx,
    pub(super) query: Q,
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
pub(super) fn run_live<Q: DbQuery + Clone>(
    conn: &mut DbConn,
    live: Vec<LiveWrite<Q>>,
) -> Result<Outputs<Q::Output>, DbError> {
    let size = live.len();
    let flat = conn.write_transaction(|conn| {
        db::without_savepoints(|| {
            if size > 1 {
                let queries: Vec<&Q> = live.iter().map(|write| &write.query).collect();
                let started = Instant::now();
                if let Some(together) = Q::run_together(&queries, conn) {
                    return match together {
                        Ok(outputs) if outputs.len() == size => {
                            Ok(ran_together(&live, outputs, started))
                        }
                        Err(error) if error.breaks_connection() => Err(Flat::Broken(error)),
                        Ok(_) | Err(_) => Err(Flat::WriteFailed(None)),
                    };
                }
            }
            let mut outputs = Vec::with_capacity(size);
            for write in &live {
                match run_one(conn, write.query.clone(), &write.ctx, size) {
                    Ok(output) => outputs.push((write.index, Ok(output))),
                    Err(error) if error.breaks_connection() => return Err(Flat::Broken(error)),
                    Err(error) => return Err(Flat::WriteFailed(Some((write.index, error)))),
                }
            }
            Ok(outputs)
        })
    });
    match flat {
        Ok(outputs) => Ok(outputs),
        Err(Flat::Broken(error)) => Err(error),
        // Alone in its batch, the failed write's rollback was its own.
        Err(Flat::WriteFailed(Some((index, error)))) if size == 1 => {
            Ok(vec![(index, Err(ActorError::Db(error)))])
        }
        Err(Flat::WriteFailed(..)) => conn.write_transaction(|conn| {
            let mut outputs = Vec::with_capacity(size);
            for write in live {
                match run_one(conn, write.query, &write.ctx, size) {
                    Ok(output) => outputs.push((write.index, Ok(output))),
                    Err(error) if error.breaks_connection() => return Err(error),
                    Err(error) => outputs.push((write.index, Err(ActorError::Db(error)))),
                }
            }
            Ok(outputs)
        }),
    }
}

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

/// Returns the error for a write whose result never arrived, because its
/// batch was dropped at shutdown before the worker replied.
pub fn reply_lost() -> ActorError {
    ActorError::Unavailable {
        actor: "db_worker",
        source: MailboxError::Closed,
    }
}
