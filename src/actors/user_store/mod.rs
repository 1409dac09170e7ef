//! The `UserStore` actor: the owner of user state, with its supervision and
//! the handlers of its messages.

mod messages;
mod port;
mod reads;
mod replica;

use std::num::NonZeroUsize;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::{self, ActorFutureExt, WrapFuture};
use actix::prelude::*;
use futures_util::future::{join_all, LocalBoxFuture};
use lru::LruCache;

use messages::WriteFinished;
pub use messages::{
    CreateUser, DeleteUser, GetUser, GetUserWithPosts, ListUsers, PatchUser, ReplaceUser,
};
use port::send_admitted;
pub use port::{UserDb, UserQueryHandler};
pub use reads::ReadStats;
use reads::{ReadQueue, ReadsAnswered};
pub use replica::{AddReplica, CacheReplica, EvictReplica};

use super::queries::users::{self, Written};
use super::{
    panic_message, ActorError, BatchAnswered, BatchStats, Enqueue, Escalation, Query, RequestCtx,
    RestartDecision, RestartPolicy, RestartTracker, WriteQueue,
};
use crate::domain::{Page, User, UserId, UserWithPosts};

const ACTOR: &str = "user_store";

/// The maximum number of writes in one batch, unless configured otherwise.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Counters of one `UserStore`, kept across its restarts.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub restarts: AtomicU64,
    pub panics: AtomicU64,
    /// The batches of user writes.
    pub writes: BatchStats,
    /// The cache misses read together.
    pub reads: ReadStats,
}

/// The owner of user state. Every user operation passes through it. It runs
/// on its own arbiter under an `actix::Supervisor` and keeps a bounded LRU
/// cache of users by id. Reads and writes go on to the `DbWorker` pool as
/// messages. The store never blocks on the database itself, so many
/// requests are in flight at once.
///
/// The cache never serves a user older than the client's last acknowledged
/// write: a write evicts its user when it starts and again when the database
/// answers, and a read fills the cache only if no write started or finished
/// while it was in flight (`generation` counts those events).
pub struct UserStore {
    db: UserDb,
    capacity: NonZeroUsize,
    cache: LruCache<UserId, Arc<User>>,
    generation: u64,
    stats: Arc<StoreStats>,
    restarts: RestartTracker,
    escalation: Arc<Escalation>,
    /// The pause to take before handling messages again after a restart.
    backoff: Option<Duration>,
    /// False when every read must go to the database.
    caching: bool,
    /// Writes waiting for the next batch. They are requests, not state, so
    /// they stay queued across a restart.
    writes: WriteQueue<users::Write>,
    /// Cache misses waiting to be read together, or `None` when each goes
    /// to the database alone. Kept across restarts, like the writes.
    reads: Option<ReadQueue>,
    /// The cache replicas on the HTTP worker threads, which every write
    /// evicts from before its reply. Kept across restarts.
    replicas: Vec<Recipient<EvictReplica>>,
}

impl UserStore {
    pub fn new(db: UserDb, capacity: NonZeroUsize, stats: Arc<StoreStats>) -> Self {
        Self {
            db,
            capacity,
            cache: LruCache::new(capacity),
            generation: 0,
            stats,
            restarts: RestartTracker::new(RestartPolicy::default()),
            escalation: Arc::new(Escalation::default()),
            backoff: None,
            caching: true,
            writes: WriteQueue::new(DEFAULT_MAX_BATCH, 1),
            reads: None,
            replicas: Vec::new(),
        }
    }

    /// Reads cache misses together: at most `max_in_flight` queries for
    /// misses are in the database at once, and the misses that arrive
    /// meanwhile go in the next one (see `reads`).
    pub fn with_read_batching(mut self, max_in_flight: usize) -> Self {
        self.reads = Some(ReadQueue::new(max_in_flight));
        self
    }

    /// Puts at most `max_batch` writes in one batch (1 turns batching off)
    /// and sends at most `max_in_flight` batches to the database at once.
    pub fn with_batching(mut self, max_batch: usize, max_in_flight: usize) -> Self {
        self.writes = WriteQueue::new(max_batch, max_in_flight);
        self
    }

    /// Turns the cache off, so every read goes to the database. Several
    /// instances that share a database need this until their caches are
    /// invalidated across instances.
    pub fn without_cache(mut self) -> Self {
        self.caching = false;
        self
    }

    /// Applies `policy` to restarts and reports failures past it to
    /// `escalation`.
    pub fn with_supervision(mut self, policy: RestartPolicy, escalation: Arc<Escalation>) -> Self {
        self.restarts = RestartTracker::new(policy);
        self.escalation = escalation;
        self
    }

    /// Starts the store on `arbiter`, supervised.
    pub fn start_supervised(arbiter: &ArbiterHandle, store: UserStore) -> Addr<Self> {
        Supervisor::start_in_arbiter(arbiter, move |_| store)
    }

    fn evict(&mut self, id: UserId) {
        self.cache.pop(&id);
        self.generation += 1;
    }

    /// Runs a handler body, turning a panic into an error reply and a
    /// restart with fresh state.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        message: &'static str,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
        on_panic: impl FnOnce() -> R,
    ) -> R {
        match panic::catch_unwind(AssertUnwindSafe(|| body(self, ctx))) {
            Ok(reply) => reply,
            Err(payload) => {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    message,
                    panic = panic_message(payload.as_ref()),
                    "user store caught a panic and is restarting with fresh state"
                );
                ctx.stop();
                on_panic()
            }
        }
    }

    /// Queues a write for the next batch and evicts `id` around it. The
    /// write waits for a place in the database queue first: at once when
    /// one is free, otherwise in the reply future, within the queue's wait.
    /// The reply future does not belong to the actor's context, so a
    /// restart of the store cannot cut off the reply of a committed write.
    fn write(
        &mut self,
        ctx: &mut Context<Self>,
        id: Option<UserId>,
        request: RequestCtx,
        write: users::Write,
    ) -> ResponseFuture<Result<Written, ActorError>> {
        if let Some(id) = id {
            self.evict(id);
        }
        let queued = self
            .writes
            .admit(&self.db.admission, Query::new(request, write));
        self.flush(ctx);
        let store = ctx.address();
        Box::pin(async move {
            let result = queued.result(store.clone()).await;
            if let Some(id) = id {
                // If the store is restarting it has dropped its cache anyway.
                let _ = store.send(WriteFinished { id }).await;
            }
            result
        })
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.writes
            .flush(&self.db.write, ctx.address(), &self.stats.writes);
    }

    /// Reads user `id` from the database: in the read queue when reads are
    /// batched and the database queue has a free place at once, otherwise
    /// alone, after waiting for a place.
    fn read(
        &mut self,
        ctx: &mut Context<Self>,
        request: RequestCtx,
        id: UserId,
    ) -> LocalBoxFuture<'static, Result<User, ActorError>> {
        if let Some(reads) = &mut self.reads {
            if let Some(ticket) = self.db.admission.try_admit() {
                let user = reads.push(id, request, ticket);
                reads.flush(&self.db, ctx.address(), &self.stats.reads);
                return Box::pin(user);
            }
        }
        let query = Query::new(request, users::Find { id });
        Box::pin(send_admitted(
            self.db.admission.clone(),
            self.db.find.clone(),
            query,
        ))
    }
}

impl Handler<ReadsAnswered> for UserStore {
    type Result = ();

    fn handle(&mut self, _: ReadsAnswered, ctx: &mut Context<Self>) {
        if let Some(reads) = &mut self.reads {
            reads.finished();
            reads.flush(&self.db, ctx.address(), &self.stats.reads);
        }
    }
}

/// Turns the result of a write into the kind its request expects.
fn written<T>(
    result: Result<Written, ActorError>,
    expected: impl FnOnce(Written) -> Option<T>,
) -> Result<T, ActorError> {
    result.and_then(|written| {
        expected(written).ok_or(ActorError::Bug("a write got the result of another kind"))
    })
}

impl Actor for UserStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let capacity = if self.caching { self.capacity.get() } else { 0 };
        tracing::debug!(cache.capacity = capacity, "user store started");

        // Messages wait in the mailbox during the pause; each is checked
        // against its deadline when it is handled.
        if let Some(backoff) = self.backoff.take() {
            ctx.wait(fut::wrap_future(actix::clock::sleep(backoff)));
        }
    }
}

impl Supervised for UserStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        self.cache = LruCache::new(self.capacity);
        self.generation = 0;

        match self.restarts.record(Instant::now()) {
            RestartDecision::Restart { backoff } => {
                tracing::warn!(
                    backoff_ms = backoff.as_millis() as u64,
                    "user store restarting with an empty cache"
                );
                self.backoff = Some(backoff);
            }
            RestartDecision::Escalate => {
                tracing::error!(
                    "user store restarted too often; escalating so the process is restarted"
                );
                self.escalation.trigger();
            }
        }
    }
}

/// Makes the store's handler panic, to test supervision.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct InjectPanic;

#[cfg(feature = "test-hooks")]
impl Handler<InjectPanic> for UserStore {
    type Result = Result<(), ActorError>;

    #[expect(clippy::panic, reason = "the message exists to make the handler panic")]
    fn handle(&mut self, _: InjectPanic, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(
            ctx,
            "inject_panic",
            |_, _| panic!("panic injected by a test"),
            || Err(ActorError::Panicked { actor: ACTOR }),
        )
    }
}

/// Evicts the user here and in every replica; the reply waits for the
/// replicas, so the write's client cannot read the old user from one.
impl Handler<WriteFinished> for UserStore {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, message: WriteFinished, _: &mut Context<Self>) -> Self::Result {
        self.evict(message.id);
        let evictions: Vec<_> = self
            .replicas
            .iter()
            .map(|replica| replica.send(EvictReplica { id: message.id }))
            .collect();
        Box::pin(async move {
            // A replica that is gone has nothing left to serve.
            join_all(evictions).await;
        })
    }
}

impl Handler<AddReplica> for UserStore {
    type Result = ();

    fn handle(&mut self, AddReplica(replica): AddReplica, _: &mut Context<Self>) {
        self.replicas.push(replica);
    }
}

impl Handler<GetUser> for UserStore {
    type Result = ResponseActFuture<Self, Result<Arc<User>, ActorError>>;

    fn handle(&mut self, message: GetUser, ctx: &mut Context<Self>) -> Self::Result {
        let on_panic =
            || Box::pin(fut::ready(Err(ActorError::Panicked { actor: ACTOR }))) as Self::Result;
        self.guarded(ctx, "get_user", |store, ctx| {
            let GetUser { ctx: request, id } = message;
            let span = request.span.clone();
            let _entered = span.enter();

            if let Some(user) = store.cache.get(&id) {
                tracing::debug!(user.id = %id, "user cache hit");
                return Box::pin(fut::ready(Ok(user.clone()))) as Self::Result;
            }

            let generation = store.generation;
            let span = span.clone();
            let reply = store.read(ctx, request, id);
            Box::pin(reply.into_actor(store).map(move |result, store, _| {
                let result = result.map(Arc::new);
                if let Ok(user) = &result {
                    if store.caching && store.generation == generation {
                        store.cache.put(id, user.clone());
                    } else {
                        let _entered = span.enter();
                        tracing::debug!(user.id = %id, "user changed while it was read, not cached");
                    }
                }
                result
            }))
        }, on_panic)
    }
}

/// Forwards a read that bypasses the cache.
macro_rules! forward_read {
    ($message:ty, $recipient:ident, |$m:ident| $query:expr, $output:ty) => {
        impl Handler<$message> for UserStore {
            type Result = ResponseFuture<Result<$output, ActorError>>;

            fn handle(&mut self, $m: $message, _: &mut Context<Self>) -> Self::Result {
                let request = $m.ctx.clone();
                let query = Query::new(request, $query);
                Box::pin(send_admitted(
                    self.db.admission.clone(),
                    self.db.$recipient.clone(),
                    query,
                ))
            }
        }
    };
}

forward_read!(
    GetUserWithPosts,
    find_with_posts,
    |m| users::FindWithPosts { id: m.id },
    UserWithPosts
);
forward_read!(
    ListUsers,
    list,
    |m| users::List {
        filter: m.filter,
        sort: m.sort,
        page: m.page
    },
    Page<User>
);

impl Handler<Enqueue<users::Write>> for UserStore {
    type Result = MessageResult<Enqueue<users::Write>>;

    fn handle(&mut self, message: Enqueue<users::Write>, ctx: &mut Context<Self>) -> Self::Result {
        let reply = self.writes.push(message.query, message.ticket);
        self.flush(ctx);
        MessageResult(reply)
    }
}

impl Handler<BatchAnswered> for UserStore {
    type Result = ();

    fn handle(&mut self, _: BatchAnswered, ctx: &mut Context<Self>) {
        self.writes.finished();
        self.flush(ctx);
    }
}

impl Handler<CreateUser> for UserStore {
    type Result = ResponseFuture<Result<UserWithPosts, ActorError>>;

    fn handle(&mut self, message: CreateUser, ctx: &mut Context<Self>) -> Self::Result {
        let write = users::Write::Insert(users::Insert { user: message.user });
        let reply = self.write(ctx, None, message.ctx, write);
        Box::pin(async move {
            written(reply.await, |written| match written {
                Written::Inserted(user) => Some(user),
                _ => None,
            })
        })
    }
}

impl Handler<ReplaceUser> for UserStore {
    type Result = ResponseFuture<Result<User, ActorError>>;

    fn handle(&mut self, message: ReplaceUser, ctx: &mut Context<Self>) -> Self::Result {
        let ReplaceUser {
            ctx: request,
            id,
            fields,
            precondition,
        } = message;
        let write = users::Write::Replace(users::Replace {
            id,
            fields,
            precondition,
        });
        let reply = self.write(ctx, Some(id), request, write);
        Box::pin(async move { written(reply.await, changed) })
    }
}

impl Handler<PatchUser> for UserStore {
    type Result = ResponseFuture<Result<User, ActorError>>;

    fn handle(&mut self, message: PatchUser, ctx: &mut Context<Self>) -> Self::Result {
        let PatchUser {
            ctx: request,
            id,
            patch,
            precondition,
        } = message;
        let write = users::Write::Update(users::Update {
            id,
            patch,
            precondition,
        });
        let reply = self.write(ctx, Some(id), request, write);
        Box::pin(async move { written(reply.await, changed) })
    }
}

impl Handler<DeleteUser> for UserStore {
    type Result = ResponseFuture<Result<(), ActorError>>;

    fn handle(&mut self, message: DeleteUser, ctx: &mut Context<Self>) -> Self::Result {
        let DeleteUser {
            ctx: request,
            id,
            mode,
            precondition,
        } = message;
        let write = users::Write::Delete(users::Delete {
            id,
            mode,
            precondition,
        });
        let reply = self.write(ctx, Some(id), request, write);
        Box::pin(async move {
            written(reply.await, |written| match written {
                Written::Deleted => Some(()),
                _ => None,
            })
        })
    }
}

fn changed(written: Written) -> Option<User> {
    match written {
        Written::Changed(user) => Some(user),
        _ => None,
    }
}
