//! Group commit. Writes that arrive while a batch is in the database wait in
//! a `WriteQueue` and go together in the next batch: one transaction and one
//! commit. Each write gets its reply only after its batch committed, so an
//! acknowledged write is durable like a lone one.
//!
//! - `queue`: the queue an actor keeps, and the messages it handles for it.
//! - `run`: how a `DbWorker` runs a batch.
//! - `writer`: `WriteBatcher`, an actor that only batches writes.

mod queue;
mod run;
mod writer;

use actix::{MailboxError, Message};

use super::{ActorError, DbQuery, Query};

pub(in crate::actors) use queue::BatchQueue;
pub use queue::{BatchAnswered, BatchStats, Enqueue, Queued, WriteQueue, WriteReply};
pub(in crate::actors) use run::{run_live, LiveWrite};
pub use writer::{QueueWrite, WriteBatcher};

/// Writes that a `DbWorker` runs in one transaction, in order. Items whose
/// deadline passed before the batch started are skipped.
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

/// Returns the error for a write whose result never arrived, because its
/// batch was dropped at shutdown before the worker replied.
pub fn reply_lost() -> ActorError {
    ActorError::Unavailable {
        actor: "db_worker",
        source: MailboxError::Closed,
    }
}
