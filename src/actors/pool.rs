//! `WorkerPool`: the `DbWorker`s behind one address, with a health ping that
//! replaces a worker that stops answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::{self, ActorFutureExt, WrapFuture};
use actix::prelude::*;

use super::{ActorError, Batch, DbQuery, DbWorker, Query, WorkerStats};
use crate::db::DbPool;

/// How often each worker is pinged.
const PING_INTERVAL: Duration = Duration::from_millis(500);

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
/// with the fewest messages in flight.
///
/// Every `PING_INTERVAL` each worker gets a `Ping`, which it answers after
/// the message it is running. A worker that has not answered within
/// `ping_budget` is stuck: it gets no more messages, and a new worker with
/// a connection of its own takes its place. The stuck thread cannot be
/// stopped from outside; it exits once its message returns, and the
/// messages queued behind it are still answered then.
pub struct WorkerPool {
    workers: Vec<Worker>,
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

/// Asks a worker to answer once it has finished what it is running.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for DbWorker {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) {}
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

    /// Returns the worker that takes the next message: the one with the
    /// fewest messages in flight among those that are not stuck.
    fn pick(&mut self) -> &mut Worker {
        let index = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, worker)| !worker.stuck)
            .min_by_key(|(_, worker)| worker.in_flight)
            .map_or(0, |(index, _)| index);
        &mut self.workers[index]
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

    /// Sends `message` to a worker and returns its reply.
    fn route<M>(&mut self, message: M) -> ResponseActFuture<Self, Result<M::Result, MailboxError>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        DbWorker: Handler<M>,
    {
        let worker = self.pick();
        worker.in_flight += 1;
        let id = worker.id;
        let reply = worker.addr.send(message);
        Box::pin(reply.into_actor(self).map(move |reply, pool, _| {
            pool.answered(id);
            reply
        }))
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
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(PING_INTERVAL, |pool, ctx| pool.check(ctx));
    }
}

impl<Q: DbQuery> Handler<Query<Q>> for WorkerPool {
    type Result = ResponseActFuture<Self, Result<Q::Output, ActorError>>;

    fn handle(&mut self, message: Query<Q>, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.route(message)
                .map(|reply, _, _| ActorError::flatten("db_worker", reply)),
        )
    }
}

impl<Q: DbQuery + Clone> Handler<Batch<Q>> for WorkerPool {
    type Result = ResponseActFuture<Self, Result<Vec<Result<Q::Output, ActorError>>, ActorError>>;

    fn handle(&mut self, message: Batch<Q>, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.route(message)
                .map(|reply, _, _| ActorError::flatten("db_worker", reply)),
        )
    }
}
