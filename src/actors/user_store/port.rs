//! The database side of the `UserStore`: the recipients of its queries and
//! the admission every query passes first.

use actix::dev::ToEnvelope;
use actix::prelude::*;

use crate::actors::queries::users;
use crate::actors::{ActorError, Admission, Batch, DbQuery, Query};

/// The database side of the `UserStore`: one recipient per message it
/// sends. Built from the `DbWorker` pool in production and from a recording
/// stand-in in tests.
#[derive(Clone)]
pub struct UserDb {
    pub find: Recipient<Query<users::Find>>,
    pub find_many: Recipient<Query<users::FindMany>>,
    pub find_with_posts: Recipient<Query<users::FindWithPosts>>,
    pub list: Recipient<Query<users::List>>,
    /// Every write goes here, in batches.
    pub write: Recipient<Batch<users::Write>>,
    /// The bound shared with every other sender to the pool.
    pub admission: Admission,
}

/// An actor that handles every message `UserDb` sends.
pub trait UserQueryHandler:
    Actor
    + Handler<Query<users::Find>>
    + Handler<Query<users::FindMany>>
    + Handler<Query<users::FindWithPosts>>
    + Handler<Query<users::List>>
    + Handler<Batch<users::Write>>
{
}

impl<A> UserQueryHandler for A where
    A: Actor
        + Handler<Query<users::Find>>
        + Handler<Query<users::FindMany>>
        + Handler<Query<users::FindWithPosts>>
        + Handler<Query<users::List>>
        + Handler<Batch<users::Write>>
{
}

impl UserDb {
    pub fn new<A>(addr: &Addr<A>) -> Self
    where
        A: UserQueryHandler,
        A::Context: ToEnvelope<A, Query<users::Find>>
            + ToEnvelope<A, Query<users::FindMany>>
            + ToEnvelope<A, Query<users::FindWithPosts>>
            + ToEnvelope<A, Query<users::List>>
            + ToEnvelope<A, Batch<users::Write>>,
    {
        Self {
            find: addr.clone().recipient(),
            find_many: addr.clone().recipient(),
            find_with_posts: addr.clone().recipient(),
            list: addr.clone().recipient(),
            write: addr.clone().recipient(),
            admission: Admission::unbounded(),
        }
    }

    /// Sends the batches of writes to `addr` instead, leaving reads where
    /// they were.
    pub fn with_writer<A>(mut self, addr: &Addr<A>) -> Self
    where
        A: UserQueryHandler,
        A::Context: ToEnvelope<A, Batch<users::Write>>,
    {
        self.write = addr.clone().recipient();
        self
    }

    /// Makes every query wait for a place in `admission` first.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }
}

/// Takes a place in the database queue, then sends `query` and waits for
/// the worker's reply. The place is freed when the reply arrives.
pub(super) async fn send_admitted<Q>(
    admission: Admission,
    recipient: Recipient<Query<Q>>,
    query: Query<Q>,
) -> Result<Q::Output, ActorError>
where
    Q: DbQuery,
    Query<Q>: Message<Result = Result<Q::Output, ActorError>>,
{
    // A message that waited out a restart backoff may have expired.
    if query.ctx.is_expired() {
        return Err(ActorError::DeadlineExceeded);
    }
    let _ticket = admission.admit().await?;
    ActorError::flatten("db_worker", recipient.send(query).await)
}
