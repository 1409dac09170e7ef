//! Group commit. Writes that arrive while a batch is in the database wait in
//! a `WriteQueue` and go together in the next batch: one transaction, one
//! commit, one savepoint per write. Each write gets its reply only after its
//! batch committed, so an acknowledged write is durable like a lone one.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::{MailboxError, Message, Recipient};
use tokio::sync::oneshot;

use super::{ActorError, DbQuery, Query, Ticket};

/// Writes that a `DbWorker` runs in one transaction, each in its own
/// savepoint, in order. Items whose deadline passed before the batch
/// started are skipped.
///
/// The reply contains one result per item, in order. It is an error as a
/// whole only when the transaction failed as a whole (it could not begin or
/// commit, the connection broke, or a write panicked); then nothing of the
/// batch was applied.
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

/// The writes waiting for the next batch. At most one batch is in the
/// database at a time: the queue fills while it is there and the next batch
/// takes what has gathered, up to `max_batch` writes. A lone write on a
/// quiet server goes at once, in a batch of one.
pub struct WriteQueue<Q: DbQuery> {
    waiting: VecDeque<Waiting<Q>>,
    in_flight: bool,
    max_batch: usize,
}

impl<Q: DbQuery> WriteQueue<Q> {
    pub fn new(max_batch: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: false,
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

    /// Takes the next batch, unless one is in the database already or
    /// nothing waits. Call `finished` once the batch has replied.
    pub fn next_batch(&mut self) -> Option<PendingBatch<Q>> {
        if self.in_flight || self.waiting.is_empty() {
            return None;
        }
        let size = self.waiting.len().min(self.max_batch);
        self.in_flight = true;
        Some(PendingBatch {
            items: self.waiting.drain(..size).collect(),
        })
    }

    /// Records that the batch in the database has replied.
    pub fn finished(&mut self) {
        self.in_flight = false;
    }

    /// Writes waiting for a batch, not counting the one in the database.
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

/// Returns the error for a write whose result never arrived, because its
/// batch was dropped at shutdown before the worker replied.
pub fn reply_lost() -> ActorError {
    ActorError::Unavailable {
        actor: "db_worker",
        source: MailboxError::Closed,
    }
}
