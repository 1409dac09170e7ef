//! The actor layer: the actors, their messages and the request
//! context that every message carries.
//!
//! - `UserStore` (async, one arbiter, supervised) owns the user cache,
//!   sends user reads on to the pool and user writes in batches.
//! - `WriteBatcher` (async, on the same arbiter) sends post writes in
//!   batches (`batch`).
//! - `DbWorker` (sync, one thread each in a `SyncArbiter`) owns a database
//!   connection and runs one query, or one batch of writes, per message.
//! - `WorkerPool` (async) routes messages to the `DbWorker`s and replaces
//!   one that stops answering its health ping.
//! - `MemoryReleaser` (async) frees caches and returns memory to the system
//!   once traffic stops.

mod admission;
mod batch;
mod context;
mod db_worker;
mod error;
mod memory;
mod pool;
pub mod queries;
mod supervision;
mod user_store;

pub use admission::{Admission, Ticket};
pub use batch::{
    Batch, BatchAnswered, BatchStats, Enqueue, QueueWrite, Queued, WriteBatcher, WriteQueue,
    WriteReply,
};
pub use context::{RequestCtx, RequestId};
pub use db_worker::{DbQuery, DbWorker, Query, WorkerStats};
pub(crate) use error::panic_message;
pub use error::ActorError;
pub use memory::{ActivityCount, CheckQuiet, MemoryReleaser, ReleaseMemory};
pub use pool::{Checkpoint, Ping, PoolStats, WorkerPool};
pub use supervision::{Escalation, RestartDecision, RestartPolicy, RestartTracker};
#[cfg(feature = "test-hooks")]
pub use user_store::InjectPanic;
pub use user_store::{
    AddReplica, CacheReplica, CreateUser, DeleteUser, EvictReplica, GetUser, GetUserWithPosts,
    ListUsers, PatchUser, ReplaceUser, StoreStats, UserDb, UserQueryHandler, UserStore,
};
