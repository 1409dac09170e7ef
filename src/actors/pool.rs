//! `WorkerPool`: the `DbWorker`s behind one address, with a health ping that
//! replaces a worker that stops answering.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::{self, ActorFutureExt};
use actix::prelude::*;
use futures_util::future::{join_all, LocalBoxFuture};
use tokio::sync::oneshot;

use super::{ActorError, Batch, DbQuery, DbWorker, Query, ReleaseMemory, WorkerStats};
use crate::db::DbPool;

/// How often each worker is pinged.
const PING_INTERVAL: Duration = Duration::from_millis(500);

/// Messages sent to one worker and not yet answered, at most. Enough that a
/// worker seldom waits for the pool between two messages, few enough that
/// no message waits long behind a slow worker. The rest wait in the pool,
/// where any worker that frees up takes them.
const MAX_IN_FLIGHT: usize = 8;

/// A message waiting in the pool: sends itself to the worker it is given
/// and forwards the reply to its sender.
type Dispatch = Box<dyn FnOnce(&Addr<DbWorker>) -> LocalBoxFuture<'static, ()> + Send>;

/// Counters of one `WorkerPool`.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Workers replaced because they did not answer a ping in time.
    pub replaced: AtomicU64,
}

/// Routes database messages to its workers and keeps their number up.
///
/// Each worker is a `SyncArbiter` of one thread with its own mailbox. A
/// shared `SyncArbiter` queue would balance load by itself, but a message
/// to it reaches whichever thread is free, so it can neither ping one
/// worker nor route around one. The pool sends each message to the worker
/// with the fewest in flight, at most `MAX_IN_FLIGHT` each. Beyond that,
/// messages wait in the pool for the first worker with room, as they would
/// in a shared queue.
///
/// Every `PING_INTERVAL` each worker gets a `Ping`, which it answers after
/// the message it is running. A worker that has not answered within
/// `ping_budget` is stuck: it gets no more messages, and a new worker with
/// a connection of its own takes its place. The stuck thread cannot be
/// stopped from outside; it exits once its message returns, and the
/// messages queued behind it are still answered then.
pub struct WorkerPool {
    workers: Vec<Worker>,
    /// Messages that found every worker at `MAX_IN_FLIGHT`, oldest first.
    waiting: VecDeque<Dispatch>,
    db: DbPool,
    worker_stats: Arc<WorkerStats>,
    stats: Arc<PoolStats>,
    ping_budget: Duration,
    next_id: u64,
}

struct Worker {
    id: u64,
    addr: Addr<DbWorker>,
    in_flight: usize,
    /// When the unanswered ping was sent.
    pinged: Option<Instant>,
    /// Set once the worker missed its ping budget; it then gets no messages.
    stuck: bool,
}

/// Tells the pool that worker `id` has replied to one message.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Answered {
    id: u64,
}

impl Handler<Answered> for WorkerPool {
    type Result = ();

    fn handle(&mut self, Answered { id }: Answered, ctx: &mut Context<Self>) {
        self.answered(id);
        self.start_waiting(ctx);
    }
}

/// Asks a worker to answer once it has finished what it is running.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for DbWorker {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) {}
}

/// Frees what the worker's connection caches, after the messages before it.
impl Handler<ReleaseMemory> for DbWorker {
    type Result = usize;

    fn handle(&mut self, _: ReleaseMemory, _: &mut SyncContext<Self>) -> usize {
        self.release_memory()
    }
}

/// Sends the request to every worker that is not stuck, because a stuck
/// one would not reply.
impl Handler<ReleaseMemory> for WorkerPool {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, message: ReleaseMemory, _: &mut Context<Self>) -> Self::Result {
        self.send_to_workers(message)
    }
}

/// Asks every worker of a pool to merge SQLite's write-ahead log into the
/// database file through its connection. Replies with the connections
/// that did. Sent at shutdown after the last write, it runs after the
/// writes queued before it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct Checkpoint;

impl Handler<Checkpoint> for DbWorker {
    type Result = usize;

    fn handle(&mut self, _: Checkpoint, _: &mut SyncContext<Self>) -> usize {
        self.checkpoint()
    }
}

/// Sends the request to every worker that is not stuck, like
/// `ReleaseMemory`.
impl Handler<Checkpoint> for WorkerPool {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, message: Checkpoint, _: &mut Context<Self>) -> Self::Result {
        self.send_to_workers(message)
    }
}

impl WorkerPool {
    /// Sends `message` to every worker that is not stuck, because a stuck
    /// one would not reply, and adds up the replies.
    fn send_to_workers<M>(&self, message: M) -> ResponseFuture<usize>
    where
        M: Message<Result = usize> + Clone + Send + 'static,
        DbWorker: Handler<M>,
    {
        let replies: Vec<_> = self
            .workers
            .iter()
            .filter(|worker| !worker.stuck)
            .map(|worker| worker.addr.send(message.clone()))
            .collect();
        Box::pin(async move { join_all(replies).await.into_iter().flatten().sum() })
    }
}

impl WorkerPool {
    pub fn new(
        workers: usize,
        db: DbPool,
        worker_stats: Arc<WorkerStats>,
        stats: Arc<PoolStats>,
        ping_budget: Duration,
    ) -> Self {
        let mut pool = Self {
            workers: Vec::with_capacity(workers),
            waiting: VecDeque::new(),
            db,
            worker_stats,
            stats,
            ping_budget,
            next_id: 0,
        };
        for _ in 0..workers.max(1) {
            pool.add_worker();
        }
        pool
    }

    fn add_worker(&mut self) {
        self.next_id += 1;
        self.workers.push(Worker {
            id: self.next_id,
            addr: DbWorker::start_pool(1, self.db.clone(), Arc::clone(&self.worker_stats)),
            in_flight: 0,
            pinged: None,
            stuck: false,
        });
    }

    /// Returns the index of the worker that takes the next message: the one
    /// with the fewest in flight among those that are not stuck and below
    /// `MAX_IN_FLIGHT`.
    fn free_worker(&self) -> Option<usize> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, worker)| !worker.stuck && worker.in_flight < MAX_IN_FLIGHT)
            .min_by_key(|(_, worker)| worker.in_flight)
            .map(|(index, _)| index)
    }

    /// Sends `dispatch` to the worker at `index`. A task of its own waits
    /// for the reply, so the pool's context keeps no future per message.
    /// The task reports the reply to the pool with `Answered`.
    fn start(&mut self, index: usize, dispatch: Dispatch, ctx: &mut Context<Self>) {
        let worker = &mut self.workers[index];
        worker.in_flight += 1;
        let id = worker.id;
        let sent = dispatch(&worker.addr);
        let pool = ctx.address();
        actix::spawn(async move {
            sent.await;
            pool.do_send(Answered { id });
        });
    }

    /// Hands waiting messages to the workers that have room.
    fn start_waiting(&mut self, ctx: &mut Context<Self>) {
        while !self.waiting.is_empty() {
            let Some(index) = self.free_worker() else {
                return;
            };
            if let Some(dispatch) = self.waiting.pop_front() {
                self.start(index, dispatch, ctx);
            }
        }
    }

    /// Sends `message` to a worker with room, or queues it until one has
    /// room, and returns its reply.
    fn route<M>(
        &mut self,
        message: M,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<M::Result, MailboxError>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        DbWorker: Handler<M>,
    {
        let (reply, replied) = oneshot::channel();
        let dispatch: Dispatch = Box::new(move |worker: &Addr<DbWorker>| {
            let sent = worker.send(message);
            Box::pin(async move {
                // The sender may have given up meanwhile.
                let _ = reply.send(sent.await);
            })
        });
        match self.free_worker() {
            Some(index) => self.start(index, dispatch, ctx),
            None => self.waiting.push_back(dispatch),
        }
        Box::pin(async move { replied.await.unwrap_or(Err(MailboxError::Closed)) })
    }

    /// Returns the workers that take messages.
    pub fn live(&self) -> usize {
        self.workers.iter().filter(|worker| !worker.stuck).count()
    }

    /// Records a reply from worker `id`.
    fn answered(&mut self, id: u64) {
        if let Some(worker) = self.workers.iter_mut().find(|worker| worker.id == id) {
            worker.in_flight = worker.in_flight.saturating_sub(1);
        }
        self.forget_stuck();
    }

    /// Drops the stuck workers that have answered everything, their ping
    /// included; their threads exit once nothing can send to them.
    fn forget_stuck(&mut self) {
        self.workers
            .retain(|worker| !(worker.stuck && worker.in_flight == 0 && worker.pinged.is_none()));
    }

    /// Pings every worker that has no ping pending, and replaces each one
    /// whose pending ping is older than the budget.
    fn check(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut stuck = 0;
        for worker in self.workers.iter_mut().filter(|worker| !worker.stuck) {
            match worker.pinged {
                Some(sent) if now.duration_since(sent) > self.ping_budget => {
                    worker.stuck = true;
                    stuck += 1;
                    tracing::warn!(
                        worker.id = worker.id,
                        waited_ms = now.duration_since(sent).as_millis() as u64,
                        in_flight = worker.in_flight,
                        "database worker did not answer its ping in time; replacing it"
                    );
                }
                Some(_) => {}
                None => {
                    worker.pinged = Some(now);
                    let id = worker.id;
                    let pong = fut::wrap_future::<_, Self>(worker.addr.send(Ping));
                    ctx.spawn(pong.map(move |_, pool, _| {
                        if let Some(worker) = pool.workers.iter_mut().find(|w| w.id == id) {
                            worker.pinged = None;
                        }
                        pool.forget_stuck();
                    }));
                }
            }
        }
        for _ in 0..stuck {
            self.stats.replaced.fetch_add(1, Ordering::Relaxed);
            self.add_worker();
        }
        if stuck > 0 {
            self.start_waiting(ctx);
        }
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(PING_INTERVAL, |pool, ctx| pool.check(ctx));
    }
}

impl<Q: DbQuery> Handler<Query<Q>> for WorkerPool {
    type Result = ResponseFuture<Result<Q::Output, ActorError>>;

    fn handle(&mut self, message: Query<Q>, ctx: &mut Context<Self>) -> Self::Result {
        let reply = self.route(message, ctx);
        Box::pin(async move { ActorError::flatten("db_worker", reply.await) })
    }
}

impl<Q: DbQuery + Clone> Handler<Batch<Q>> for WorkerPool {
    type Result = ResponseFuture<Result<Vec<Result<Q::Output, ActorError>>, ActorError>>;

    fn handle(&mut self, message: Batch<Q>, ctx: &mut Context<Self>) -> Self::Result {
        let reply = self.route(message, ctx);
        Box::pin(async move { ActorError::flatten("db_worker", reply.await) })
    }
}
