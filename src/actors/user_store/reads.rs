//! Cache misses that arrive while other reads are in the database, gathered
//! into one query.
//!
//! Each uncached read costs two thread hops to a database worker and back,
//! and on two cores those wake-ups cost more than the lookup itself. While
//! `max_in_flight` reads are in the database, new misses wait here; when one
//! returns, every miss that gathered goes in one `users::FindMany`. A lone
//! miss on a quiet store goes at once, as a plain `users::Find`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{UserDb, UserStore};
use crate::actors::batch::{reply_lost, BatchQueue};
use crate::actors::queries::users;
use crate::actors::{ActorError, Query, RequestCtx, Ticket};
use crate::db::DbError;
use crate::domain::{User, UserId};

/// Reads that one `FindMany` carries at most.
const MAX_READ_BATCH: usize = 64;

/// A cache miss waiting for its query, with its place in the database
/// queue and the channel its user goes to.
struct WaitingRead {
    id: UserId,
    ctx: RequestCtx,
    reply: oneshot::Sender<Result<User, ActorError>>,
    /// Held until the user is handed over.
    _ticket: Ticket,
}

/// Counters of the reads that went to the database in batches of two or
/// more.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// `FindMany` queries sent.
    pub batches: AtomicU64,
    /// Reads that those queries carried.
    pub reads: AtomicU64,
}

/// The cache misses waiting for the next query (see `BatchQueue`).
pub(super) struct ReadQueue {
    queue: BatchQueue<WaitingRead>,
}

/// Sent to the store when a query of its read queue has replied.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct ReadsAnswered;

impl ReadQueue {
    /// Creates a queue that sends at most `max_in_flight` queries at a time.
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            queue: BatchQueue::new(MAX_READ_BATCH, max_in_flight),
        }
    }

    /// Queues a read that has its place in the database queue and returns
    /// the receiver of its user.
    pub(super) fn push(
        &mut self,
        id: UserId,
        ctx: RequestCtx,
        ticket: Ticket,
    ) -> impl Future<Output = Result<User, ActorError>> {
        let (reply, receiver) = oneshot::channel();
        self.queue.push(WaitingRead {
            id,
            ctx,
            reply,
            _ticket: ticket,
        });
        async move { receiver.await.unwrap_or_else(|_| Err(reply_lost())) }
    }

    /// Sends what waits, up to `MAX_READ_BATCH` reads, unless
    /// `max_in_flight` queries are in the database already. A task of its
    /// own waits for the reply, hands each read its user, then sends
    /// `ReadsAnswered` to `owner`.
    pub(super) fn flush(&mut self, db: &UserDb, owner: Addr<UserStore>, stats: &ReadStats) {
        let Some(reads) = self.queue.next_batch() else {
            return;
        };
        let size = reads.len();
        if size > 1 {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.reads.fetch_add(size as u64, Ordering::Relaxed);
        }
        let db = db.clone();
        actix::spawn(async move {
            answer(reads, &db).await;
            owner.do_send(ReadsAnswered);
        });
    }

    /// Records that one query has replied.
    pub(super) fn finished(&mut self) {
        self.queue.finished();
    }
}

/// Runs the query for `reads` and sends each read its user, or `NotFound`
/// when the query did not return it.
async fn answer(mut reads: Vec<WaitingRead>, db: &UserDb) {
    if reads.len() == 1 {
        if let Some(read) = reads.pop() {
            let query = Query::new(read.ctx, users::Find { id: read.id });
            let result = ActorError::flatten("db_worker", db.find.send(query).await);
            // The request may have been cut off meanwhile.
            let _ = read.reply.send(result);
        }
        return;
    }

    let mut ids: Vec<UserId> = reads.iter().map(|read| read.id).collect();
    ids.sort_unstable();
    ids.dedup();
    // The newest read has the latest deadline, so the query runs as long as
    // any read in it can still use the result. Its log lines go under that
    // request.
    let Some(ctx) = reads.last().map(|read| read.ctx.clone()) else {
        return;
    };
    let query = Query::new(ctx, users::FindMany { ids });
    match ActorError::flatten("db_worker", db.find_many.send(query).await) {
        Ok(users) => {
            let found: HashMap<UserId, User> =
                users.into_iter().map(|user| (user.id, user)).collect();
            for read in reads {
                let user = found
                    .get(&read.id)
                    .cloned()
                    .ok_or(ActorError::Db(DbError::NotFound));
                let _ = read.reply.send(user);
            }
        }
        Err(error) => {
            let shared = Arc::new(error);
            for read in reads {
                let _ = read.reply.send(Err(ActorError::Batch(Arc::clone(&shared))));
            }
        }
    }
}
