//! `CacheReplica`: a copy of the user cache on one HTTP worker thread.

use std::num::NonZeroUsize;
use std::sync::Arc;

use actix::fut::{self, ActorFutureExt, WrapFuture};
use actix::prelude::*;
use lru::LruCache;

use super::messages::GetUser;
use super::UserStore;
use crate::actors::ActorError;
use crate::domain::{User, UserId};

/// A cache of users on the thread of the HTTP handlers that read it, so a
/// cache hit costs no hop to another thread. A miss sends the read to the
/// `UserStore` and keeps the user it returns.
///
/// The store keeps every replica coherent: before a write's client gets
/// its reply, the store has every replica evict the written user and waits
/// for them (`EvictReplica`). A user that arrives after an eviction that
/// followed its request is returned but not kept (`generation` counts
/// evictions), as in the store.
pub struct CacheReplica {
    store: Addr<UserStore>,
    cache: LruCache<UserId, Arc<User>>,
    generation: u64,
    /// False when the store could not put this replica on its list; then
    /// nothing is kept, because no eviction would reach it.
    registered: bool,
}

impl CacheReplica {
    pub fn new(store: Addr<UserStore>, capacity: NonZeroUsize) -> Self {
        Self {
            store,
            cache: LruCache::new(capacity),
            generation: 0,
            registered: false,
        }
    }
}

impl Actor for CacheReplica {
    type Context = Context<Self>;

    /// Registers with the store before handling any message, so the first
    /// user read can already be kept.
    fn started(&mut self, ctx: &mut Context<Self>) {
        let register = self.store.send(AddReplica(ctx.address().recipient()));
        ctx.wait(register.into_actor(self).map(|added, replica, _| {
            match added {
                Ok(()) => replica.registered = true,
                Err(error) => tracing::warn!(%error, "cache replica could not register with the user store"),
            }
        }));
    }
}

/// Asks a replica to drop one user; the reply means it has.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EvictReplica {
    pub id: UserId,
}

/// Adds a replica to the store's list of replicas to evict from.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddReplica(pub Recipient<EvictReplica>);

impl Handler<EvictReplica> for CacheReplica {
    type Result = ();

    fn handle(&mut self, message: EvictReplica, _: &mut Context<Self>) {
        self.cache.pop(&message.id);
        self.generation += 1;
    }
}

impl Handler<GetUser> for CacheReplica {
    type Result = ResponseActFuture<Self, Result<Arc<User>, ActorError>>;

    fn handle(&mut self, message: GetUser, _: &mut Context<Self>) -> Self::Result {
        let id = message.id;
        if let Some(user) = self.cache.get(&id) {
            return Box::pin(fut::ready(Ok(user.clone())));
        }

        let generation = self.generation;
        let reply = self.store.send(message);
        Box::pin(reply.into_actor(self).map(move |delivery, replica, _| {
            let result = ActorError::flatten("user_store", delivery);
            if let Ok(user) = &result {
                if replica.registered && replica.generation == generation {
                    replica.cache.put(id, user.clone());
                }
            }
            result
        }))
    }
}
