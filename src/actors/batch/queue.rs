//! The queue of writes that an actor keeps, and the messages it handles
//! for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message, Recipient};
use tokio::sync::oneshot;

use super::{reply_lost, Batch};
use crate::actors::{ActorError, Admission, DbQuery, Query, Ticket};

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

/// Items waiting to go to the database together. At most `max_in_flight`
/// batches are there at a time: the queue fills while they are, and the
/// next batch takes what has gathered, up to `max_batch` items. A lone item
/// on a quiet server goes at once, in a batch of one.
pub(in crate::actors) struct BatchQueue<T> {
    waiting: VecDeque<T>,
    in_flight: usize,
    max_in_flight: usize,
    max_batch: usize,
}

impl<T> BatchQueue<T> {
    pub(in crate::actors) fn new(max_batch: usize, max_in_flight: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
        }
    }

    pub(in crate::actors) fn push(&mut self, item: T) {
        self.waiting.push_back(item);
    }

    /// Takes the next batch, unless `max_in_flight` batches are in the
    /// database already or nothing waits. Call `finished` once the batch has
    /// replied.
    pub(in crate::actors) fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.in_flight >= self.max_in_flight || self.waiting.is_empty() {
            return None;
        }
        let size = self.waiting.len().min(self.max_batch);
        self.in_flight += 1;
        Some(self.waiting.drain(..size).collect())
    }

    /// Records that one batch in the database has replied.
    pub(in crate::actors) fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// The writes waiting for the next batch (see `BatchQueue`).
pub struct WriteQueue<Q: DbQuery> {
    queue: BatchQueue<Waiting<Q>>,
}

impl<Q: DbQuery> WriteQueue<Q> {
    pub fn new(max_batch: usize, max_in_flight: usize) -> Self {
        Self {
            queue: BatchQueue::new(max_batch, max_in_flight),
        }
    }

    /// Queues a write that has its place in the database queue and returns
    /// the receiver of its result.
    pub fn push(&mut self, query: Query<Q>, ticket: Ticket) -> WriteReply<Q> {
        let (reply, receiver) = oneshot::channel();
        self.queue.push(Waiting {
            query,
            reply,
            ticket,
        });
        receiver
    }

    /// Queues `query` when the database queue has a free place for it, or
    /// hands it back to wait for one.
    pub fn admit(&mut self, admission: &Admission, query: Query<Q>) -> Queued<Q> {
        match admission.try_admit() {
            Some(ticket) => Queued::Now(self.push(query, ticket)),
            None => Queued::Later(admission.clone(), query),
        }
    }

    /// Sends the next batch to `writer` unless `max_in_flight` batches are
    /// in the database already. A task of its own sends the batch, so a
    /// restart of `owner` cannot cut off the results of a committed batch.
    /// Then `owner` gets `BatchAnswered`.
    pub fn flush<A>(&mut self, writer: &Recipient<Batch<Q>>, owner: Addr<A>, stats: &BatchStats)
    where
        A: Actor + Handler<BatchAnswered>,
        A::Context: ToEnvelope<A, BatchAnswered>,
        Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
    {
        let Some(items) = self.queue.next_batch() else {
            return;
        };
        let batch = PendingBatch { items };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let writer = writer.clone();
        actix::spawn(async move {
            batch.send(writer).await;
            owner.do_send(BatchAnswered);
        });
    }

    /// Records that one batch in the database has replied.
    pub fn finished(&mut self) {
        self.queue.finished();
    }
}

/// Counters of the batches one queue sent.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches sent to the database.
    pub batches: AtomicU64,
    /// Writes sent in those batches.
    pub writes: AtomicU64,
}

/// A write handed to `WriteQueue::admit`.
pub enum Queued<Q: DbQuery> {
    /// Queued; its result arrives on this receiver.
    Now(WriteReply<Q>),
    /// Not queued yet, because the database queue had no free place.
    Later(Admission, Query<Q>),
}

impl<Q: DbQuery> Queued<Q> {
    /// Waits for the write's result. A write that has no place yet waits for
    /// one within the admission's wait, then goes to `owner`'s queue with
    /// `Enqueue`.
    pub async fn result<A>(self, owner: Addr<A>) -> Result<Q::Output, ActorError>
    where
        A: Actor + Handler<Enqueue<Q>>,
        A::Context: ToEnvelope<A, Enqueue<Q>>,
    {
        let reply = match self {
            Self::Now(reply) => reply,
            Self::Later(admission, query) => {
                if query.ctx.is_expired() {
                    return Err(ActorError::DeadlineExceeded);
                }
                let ticket = admission.admit().await?;
                let queued = owner.send(Enqueue { query, ticket }).await;
                ActorError::flatten("write_queue", queued.map(Ok))?
            }
        };
        reply.await.unwrap_or_else(|_| Err(reply_lost()))
    }
}

/// Queues a write that had to wait for its place in the database queue.
/// The owner of the queue pushes it and flushes.
pub struct Enqueue<Q: DbQuery> {
    pub query: Query<Q>,
    pub ticket: Ticket,
}

impl<Q: DbQuery> Message for Enqueue<Q> {
    type Result = WriteReply<Q>;
}

/// Sent to the owner of a queue once a batch has replied, so it can record
/// that and send the next batch.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct BatchAnswered;

/// A batch taken from a `WriteQueue`, not yet sent.
pub struct PendingBatch<Q: DbQuery> {
    items: Vec<Waiting<Q>>,
}

impl<Q> PendingBatch<Q>
where
    Q: DbQuery,
    Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
{
    fn len(&self) -> usize {
        self.items.len()
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

#[cfg(test)]
mod tests {
    use super::BatchQueue;

    #[test]
    fn batches_wait_for_in_flight_ones() {
        let mut queue = BatchQueue::new(3, 2);
        for item in 1..=8 {
            queue.push(item);
        }

        assert_eq!(
            queue.next_batch(),
            Some(vec![1, 2, 3]),
            "the first batch is full"
        );
        assert_eq!(
            queue.next_batch(),
            Some(vec![4, 5, 6]),
            "a second may be in flight"
        );
        assert_eq!(queue.next_batch(), None, "a third waits for one of them");

        queue.finished();
        assert_eq!(
            queue.next_batch(),
            Some(vec![7, 8]),
            "the rest goes once one replied"
        );
        queue.finished();
        queue.finished();
        assert_eq!(queue.next_batch(), None, "nothing waits");
    }

    #[test]
    fn limits_of_zero_become_one() {
        let mut queue = BatchQueue::new(0, 0);
        queue.push('a');
        queue.push('b');

        assert_eq!(queue.next_batch(), Some(vec!['a']), "one item per batch");
        assert_eq!(queue.next_batch(), None, "one batch in flight");
    }
}
