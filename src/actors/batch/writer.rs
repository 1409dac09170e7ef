//! `WriteBatcher`: an actor that owns a `WriteQueue` and nothing else.

use std::sync::Arc;

use actix::prelude::*;

use super::{Batch, BatchAnswered, BatchStats, Enqueue, WriteQueue};
use crate::actors::{ActorError, Admission, DbQuery, Query};

/// Commits the writes it receives in batches, like the `UserStore` does
/// for users. Post writes go through one.
pub struct WriteBatcher<Q: DbQuery> {
    writer: Recipient<Batch<Q>>,
    admission: Admission,
    writes: WriteQueue<Q>,
    stats: Arc<BatchStats>,
}

impl<Q> WriteBatcher<Q>
where
    Q: DbQuery + Unpin,
    Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
{
    /// Sends batches of at most `max_batch` writes to `writer`, at most
    /// `max_in_flight` at once, after each write took its place in
    /// `admission`.
    pub fn new(
        writer: Recipient<Batch<Q>>,
        admission: Admission,
        max_batch: usize,
        max_in_flight: usize,
        stats: Arc<BatchStats>,
    ) -> Self {
        Self {
            writer,
            admission,
            writes: WriteQueue::new(max_batch, max_in_flight),
            stats,
        }
    }
}

impl<Q: DbQuery + Unpin> Actor for WriteBatcher<Q> {
    type Context = Context<Self>;
}

/// Queues one write; the reply is its result, once its batch committed.
pub struct QueueWrite<Q>(pub Query<Q>);

impl<Q: DbQuery> Message for QueueWrite<Q> {
    type Result = Result<Q::Output, ActorError>;
}

impl<Q> Handler<QueueWrite<Q>> for WriteBatcher<Q>
where
    Q: DbQuery + Unpin,
    Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
{
    type Result = ResponseFuture<Result<Q::Output, ActorError>>;

    fn handle(
        &mut self,
        QueueWrite(query): QueueWrite<Q>,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        let queued = self.writes.admit(&self.admission, query);
        self.writes.flush(&self.writer, ctx.address(), &self.stats);
        Box::pin(queued.result(ctx.address()))
    }
}

impl<Q> Handler<Enqueue<Q>> for WriteBatcher<Q>
where
    Q: DbQuery + Unpin,
    Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
{
    type Result = MessageResult<Enqueue<Q>>;

    fn handle(&mut self, message: Enqueue<Q>, ctx: &mut Context<Self>) -> Self::Result {
        let reply = self.writes.push(message.query, message.ticket);
        self.writes.flush(&self.writer, ctx.address(), &self.stats);
        MessageResult(reply)
    }
}

impl<Q> Handler<BatchAnswered> for WriteBatcher<Q>
where
    Q: DbQuery + Unpin,
    Batch<Q>: Message<Result = Result<Vec<Result<Q::Output, ActorError>>, ActorError>>,
{
    type Result = ();

    fn handle(&mut self, _: BatchAnswered, ctx: &mut Context<Self>) {
        self.writes.finished();
        self.writes.flush(&self.writer, ctx.address(), &self.stats);
    }
}
