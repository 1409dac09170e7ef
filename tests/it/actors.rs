//! Actor-level tests. The `UserStore` runs against `RecordingDb`, a stand-in
//! for the database pool that records every query it receives and replies
//! with scripted results. The `DbWorker` pool runs against real databases.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use futures_util::future::{join_all, BoxFuture};
use tokio::sync::oneshot;
use troupe::actors::queries::{posts, users};
use troupe::actors::{
    ActorError, Batch, CacheReplica, CreateUser, DbQuery, DbWorker, DeleteUser, Escalation,
    GetUser, GetUserWithPosts, InjectPanic, PatchUser, PoolStats, Query, ReleaseMemory,
    ReplaceUser, RequestCtx, RequestId, RestartPolicy, StoreStats, UserDb, UserStore, WorkerPool,
    WorkerStats,
};
use troupe::db::{DbConn, DbError, DbPool, PoolSettings};
use troupe::domain::{
    Age, DeleteMode, Email, NewUser, Page, PostContent, PostFields, PostTitle, Precondition, User,
    UserFields, UserId, UserName, UserPatch, UserWithPosts,
};

use crate::helpers::{Backend, TestDb};

// ---------------------------------------------------------------------------
// The recording stand-in for the database pool
// ---------------------------------------------------------------------------

/// One query that `RecordingDb` received, with its typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Find(users::Find),
    FindMany(users::FindMany),
    FindWithPosts(users::FindWithPosts),
    List(users::List),
    Insert(users::Insert),
    Replace(users::Replace),
    Update(users::Update),
    Delete(users::Delete),
}

/// A scripted reply: given at once, or held until the test sends it.
enum Reply<T> {
    Ready(Result<T, ActorError>),
    Held(oneshot::Receiver<Result<T, ActorError>>),
}

/// The replies still to give, one queue per query type, oldest first.
#[derive(Default)]
struct Replies {
    find: VecDeque<Reply<User>>,
    find_many: VecDeque<Reply<Vec<User>>>,
    find_with_posts: VecDeque<Reply<UserWithPosts>>,
    list: VecDeque<Reply<Page<User>>>,
    insert: VecDeque<Reply<UserWithPosts>>,
    replace: VecDeque<Reply<User>>,
    update: VecDeque<Reply<User>>,
    delete: VecDeque<Reply<()>>,
    /// Errors that fail the next batches as a whole, one per batch.
    batch_failures: VecDeque<ActorError>,
}

/// What a test shares with its `RecordingDb`.
#[derive(Default)]
struct Script {
    sent: Mutex<Vec<Sent>>,
    /// The size of every batch of writes received, in arrival order.
    batches: Mutex<Vec<usize>>,
    replies: Mutex<Replies>,
}

impl Script {
    fn replies(&self) -> MutexGuard<'_, Replies> {
        self.replies.lock().unwrap()
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    /// Returns every query received so far, in arrival order.
    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// Returns the ids of the `users::Find` queries received so far.
    fn finds(&self) -> Vec<UserId> {
        self.sent()
            .into_iter()
            .filter_map(|sent| match sent {
                Sent::Find(find) => Some(find.id),
                _ => None,
            })
            .collect()
    }

    /// Returns the ids of each `users::FindMany` received so far.
    fn find_manys(&self) -> Vec<Vec<UserId>> {
        self.sent()
            .into_iter()
            .filter_map(|sent| match sent {
                Sent::FindMany(find) => Some(find.ids),
                _ => None,
            })
            .collect()
    }

    fn inserts(&self) -> Vec<users::Insert> {
        self.sent()
            .into_iter()
            .filter_map(|sent| match sent {
                Sent::Insert(insert) => Some(insert),
                _ => None,
            })
            .collect()
    }
}

/// Records each user query and replies from the `Script`. A query with
/// no scripted reply gets `DbError::Unavailable`, so an unexpected query
/// shows up as a failed reply as well as in the record.
struct RecordingDb {
    script: Arc<Script>,
}

impl Actor for RecordingDb {
    type Context = Context<Self>;
}

fn unscripted(name: &str) -> ActorError {
    ActorError::Db(DbError::Unavailable(
        format!("no scripted reply for {name}").into(),
    ))
}

async fn answer<T>(reply: Option<Reply<T>>, name: &'static str) -> Result<T, ActorError> {
    match reply {
        Some(Reply::Ready(result)) => result,
        Some(Reply::Held(release)) => release.await.unwrap_or_else(|_| Err(unscripted(name))),
        None => Err(unscripted(name)),
    }
}

macro_rules! records {
    ($query:ident, $variant:ident, $queue:ident) => {
        impl Handler<Query<users::$query>> for RecordingDb {
            type Result = ResponseFuture<Result<<users::$query as DbQuery>::Output, ActorError>>;

            fn handle(
                &mut self,
                message: Query<users::$query>,
                _: &mut Context<Self>,
            ) -> Self::Result {
                self.script
                    .sent
                    .lock()
                    .unwrap()
                    .push(Sent::$variant(message.query));
                let reply = self.script.replies().$queue.pop_front();
                Box::pin(answer(reply, <users::$query as DbQuery>::NAME))
            }
        }
    };
}

records!(Find, Find, find);
records!(FindMany, FindMany, find_many);
records!(FindWithPosts, FindWithPosts, find_with_posts);
records!(List, List, list);

/// Returns the scripted answer to one write of a batch, as a `Written`.
fn written<T: Send + 'static>(
    reply: Option<Reply<T>>,
    name: &'static str,
    kind: fn(T) -> users::Written,
) -> BoxFuture<'static, Result<users::Written, ActorError>> {
    Box::pin(async move { answer(reply, name).await.map(kind) })
}

/// Records every write of a batch and its size, and answers each write
/// from the queue of its kind, in order. A scripted batch failure answers
/// the whole batch instead.
impl Handler<Batch<users::Write>> for RecordingDb {
    type Result = ResponseFuture<Result<Vec<Result<users::Written, ActorError>>, ActorError>>;

    fn handle(&mut self, batch: Batch<users::Write>, _: &mut Context<Self>) -> Self::Result {
        self.script.batches.lock().unwrap().push(batch.items.len());
        let failure = self.script.replies().batch_failures.pop_front();
        let mut answers = Vec::with_capacity(batch.items.len());
        for item in batch.items {
            let mut replies = self.script.replies();
            let (sent, answer) = match item.query.clone() {
                users::Write::Insert(insert) => (
                    Sent::Insert(insert),
                    written(
                        replies.insert.pop_front(),
                        "users.insert",
                        users::Written::Inserted,
                    ),
                ),
                users::Write::Replace(replace) => (
                    Sent::Replace(replace),
                    written(
                        replies.replace.pop_front(),
                        "users.replace",
                        users::Written::Changed,
                    ),
                ),
                users::Write::Update(update) => (
                    Sent::Update(update),
                    written(
                        replies.update.pop_front(),
                        "users.update",
                        users::Written::Changed,
                    ),
                ),
                users::Write::Delete(delete) => (
                    Sent::Delete(delete),
                    written(replies.delete.pop_front(), "users.delete", |()| {
                        users::Written::Deleted
                    }),
                ),
            };
            self.script.sent.lock().unwrap().push(sent);
            answers.push(answer);
        }
        Box::pin(async move {
            let mut results = Vec::with_capacity(answers.len());
            for answer in answers {
                results.push(answer.await);
            }
            match failure {
                Some(error) => Err(error),
                None => Ok(results),
            }
        })
    }
}

/// Stops the `RecordingDb`, which closes its mailbox.
#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for RecordingDb {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Starts a `UserStore` wired to a fresh `RecordingDb`.
fn recorded_store(capacity: usize) -> (Addr<UserStore>, Addr<RecordingDb>, Arc<Script>) {
    recorded_store_with(capacity, |store| store)
}

/// Like `recorded_store`, with the store adjusted by `configure` first.
fn recorded_store_with(
    capacity: usize,
    configure: impl FnOnce(UserStore) -> UserStore,
) -> (Addr<UserStore>, Addr<RecordingDb>, Arc<Script>) {
    let script = Arc::new(Script::default());
    let recorder = RecordingDb {
        script: Arc::clone(&script),
    }
    .start();
    let store = UserStore::new(
        UserDb::new(&recorder),
        NonZeroUsize::new(capacity).unwrap(),
        Arc::new(StoreStats::default()),
    );
    (configure(store).start(), recorder, script)
}

/// Starts a `UserStore` that has at most `max_in_flight` reads of cache
/// misses in the database and reads the others together.
fn read_batching_store(max_in_flight: usize) -> (Addr<UserStore>, Arc<Script>) {
    let (store, _recorder, script) =
        recorded_store_with(8, |store| store.with_read_batching(max_in_flight));
    (store, script)
}

/// Starts a supervised `UserStore` wired to a fresh `RecordingDb`, as
/// start-up does, and returns its counters too.
fn supervised_store(capacity: usize) -> (Addr<UserStore>, Arc<Script>, Arc<StoreStats>) {
    let policy = RestartPolicy {
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RestartPolicy::default()
    };
    supervised_store_with(capacity, policy, Arc::new(Escalation::default()))
}

/// Like `supervised_store`, with a restart policy and an escalation to watch.
fn supervised_store_with(
    capacity: usize,
    policy: RestartPolicy,
    escalation: Arc<Escalation>,
) -> (Addr<UserStore>, Arc<Script>, Arc<StoreStats>) {
    let script = Arc::new(Script::default());
    let recorder = RecordingDb {
        script: Arc::clone(&script),
    }
    .start();
    let stats = Arc::new(StoreStats::default());
    let db = UserDb::new(&recorder);
    let store_stats = Arc::clone(&stats);
    let store = Supervisor::start(move |_| {
        UserStore::new(db, NonZeroUsize::new(capacity).unwrap(), store_stats)
            .with_supervision(policy, escalation)
    });
    (store, script, stats)
}

// ---------------------------------------------------------------------------
// Values and messages
// ---------------------------------------------------------------------------

fn ctx() -> RequestCtx {
    RequestCtx::internal(Duration::from_secs(10))
}

fn id(raw: i64) -> UserId {
    UserId::from_db(raw)
}

fn user(raw_id: i64, name: &str, email: &str) -> User {
    let now = troupe::domain::now();
    User {
        id: id(raw_id),
        name: name.to_owned(),
        email: email.to_owned(),
        age: None,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

fn new_user(name: &str, email: &str) -> NewUser {
    NewUser {
        fields: fields(name, email),
        posts: Vec::new(),
    }
}

fn fields(name: &str, email: &str) -> UserFields {
    UserFields {
        name: UserName::parse(name).unwrap(),
        email: Email::parse(email).unwrap(),
        age: None,
    }
}

fn rename(name: &str) -> UserPatch {
    UserPatch {
        name: Some(UserName::parse(name).unwrap()),
        ..UserPatch::default()
    }
}

async fn get(store: &Addr<UserStore>, id: UserId) -> Result<User, ActorError> {
    ActorError::flatten("user_store", store.send(GetUser { ctx: ctx(), id }).await)
        .map(Arc::unwrap_or_clone)
}

async fn create(store: &Addr<UserStore>, user: NewUser) -> Result<UserWithPosts, ActorError> {
    ActorError::flatten(
        "user_store",
        store.send(CreateUser { ctx: ctx(), user }).await,
    )
}

async fn patch(store: &Addr<UserStore>, id: UserId, patch: UserPatch) -> Result<User, ActorError> {
    let message = PatchUser {
        ctx: ctx(),
        id,
        patch,
        precondition: Precondition::default(),
    };
    ActorError::flatten("user_store", store.send(message).await)
}

// ---------------------------------------------------------------------------
// UserStore against the recording stand-in
// ---------------------------------------------------------------------------

#[actix::test]
async fn store_get_asks_database_once() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));

    let first = get(&store, id(7)).await;

    assert_eq!(
        script.sent(),
        vec![Sent::Find(users::Find { id: id(7) })],
        "a read of an uncached user sends one Find with its id"
    );
    assert_eq!(first.unwrap(), ada, "the read returns the database's user");
}

#[actix::test]
async fn store_cache_hit_sends_nothing() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    let first = get(&store, id(7)).await.unwrap();

    let second = get(&store, id(7)).await;

    assert_eq!(script.sent().len(), 1, "a cached read sends no query");
    assert_eq!(
        second.unwrap(),
        first,
        "a cached read returns the same user"
    );
}

#[actix::test]
async fn store_create_sends_normalised_email() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = NewUser {
        fields: UserFields {
            name: UserName::parse("Ada").unwrap(),
            email: Email::parse("  Ada@Example.COM ").unwrap(),
            age: None,
        },
        posts: Vec::new(),
    };
    let stored = UserWithPosts {
        user: user(1, "Ada", "ada@example.com"),
        posts: Vec::new(),
    };
    script
        .replies()
        .insert
        .push_back(Reply::Ready(Ok(stored.clone())));

    let created = create(&store, ada.clone()).await;

    let inserts = script.inserts();
    assert_eq!(script.sent().len(), 1, "a create sends one query");
    assert_eq!(inserts.len(), 1, "the one query is an Insert");
    assert_eq!(
        inserts[0].user.fields.email.as_str(),
        "ada@example.com",
        "the Insert carries the trimmed, lower-cased email"
    );
    assert_eq!(inserts[0].user, ada, "the Insert carries the user as sent");
    assert_eq!(
        created.unwrap(),
        stored,
        "the create returns the stored user"
    );
}

#[actix::test]
async fn store_patch_evicts_user() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    let renamed = User {
        name: "Ada King".into(),
        version: 2,
        ..ada.clone()
    };
    script.replies().find.push_back(Reply::Ready(Ok(ada)));
    script
        .replies()
        .update
        .push_back(Reply::Ready(Ok(renamed.clone())));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(renamed.clone())));
    get(&store, id(7)).await.unwrap();

    patch(&store, id(7), rename("Ada King")).await.unwrap();
    let after = get(&store, id(7)).await;

    assert_eq!(
        script.sent()[1],
        Sent::Update(users::Update {
            id: id(7),
            patch: rename("Ada King"),
            precondition: Precondition::default(),
        }),
        "the patch sends an Update with the id and patch"
    );
    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "a read after the patch sends a new Find"
    );
    assert_eq!(after.unwrap(), renamed, "the read returns the patched user");
}

#[actix::test]
async fn store_replace_evicts_user() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    let replaced = User {
        name: "Ada King".into(),
        email: "king@example.com".into(),
        version: 2,
        ..ada.clone()
    };
    script.replies().find.push_back(Reply::Ready(Ok(ada)));
    script
        .replies()
        .replace
        .push_back(Reply::Ready(Ok(replaced.clone())));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(replaced.clone())));
    get(&store, id(7)).await.unwrap();

    let message = ReplaceUser {
        ctx: ctx(),
        id: id(7),
        fields: fields("Ada King", "king@example.com"),
        precondition: Precondition::default(),
    };
    ActorError::flatten("user_store", store.send(message).await).unwrap();
    let after = get(&store, id(7)).await;

    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "a read after the replacement sends a new Find"
    );
    assert_eq!(after.unwrap(), replaced, "the read returns the new fields");
}

#[actix::test]
async fn store_delete_evicts_user() {
    let (store, _recorder, script) = recorded_store(8);
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(user(7, "Ada", "ada@example.com"))));
    script.replies().delete.push_back(Reply::Ready(Ok(())));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Err(ActorError::Db(DbError::NotFound))));
    get(&store, id(7)).await.unwrap();

    let message = DeleteUser {
        ctx: ctx(),
        id: id(7),
        mode: DeleteMode::Soft,
        precondition: Precondition::default(),
    };
    ActorError::flatten("user_store", store.send(message).await).unwrap();
    let after = get(&store, id(7)).await;

    assert_eq!(
        script.sent()[1],
        Sent::Delete(users::Delete {
            id: id(7),
            mode: DeleteMode::Soft,
            precondition: Precondition::default(),
        }),
        "the delete sends a Delete with the id and mode"
    );
    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "a read after the delete sends a new Find"
    );
    assert!(
        matches!(after, Err(ActorError::Db(DbError::NotFound))),
        "the read returns the database's NotFound, got {after:?}"
    );
}

#[actix::test]
async fn store_cache_drops_least_recent() {
    let (store, _recorder, script) = recorded_store(1);
    for raw in [1, 2, 1] {
        script
            .replies()
            .find
            .push_back(Reply::Ready(Ok(user(raw, "Ada", "ada@example.com"))));
    }

    for raw in [1, 2, 1] {
        get(&store, id(raw)).await.unwrap();
    }

    assert_eq!(
        script.finds(),
        vec![id(1), id(2), id(1)],
        "a cache of one user forgets user 1 when user 2 is read"
    );
}

#[actix::test]
async fn store_get_with_posts_bypasses_cache() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = UserWithPosts {
        user: user(7, "Ada", "ada@example.com"),
        posts: Vec::new(),
    };
    for _ in 0..2 {
        script
            .replies()
            .find_with_posts
            .push_back(Reply::Ready(Ok(ada.clone())));
    }

    for _ in 0..2 {
        let message = GetUserWithPosts {
            ctx: ctx(),
            id: id(7),
        };
        ActorError::flatten("user_store", store.send(message).await).unwrap();
    }

    assert_eq!(
        script.sent(),
        vec![Sent::FindWithPosts(users::FindWithPosts { id: id(7) }); 2],
        "every read with posts goes to the database"
    );
}

#[actix::test]
async fn store_passes_not_found_through() {
    let (store, _recorder, script) = recorded_store(8);
    script
        .replies()
        .find
        .push_back(Reply::Ready(Err(ActorError::Db(DbError::NotFound))));

    let result = get(&store, id(7)).await;

    assert!(
        matches!(result, Err(ActorError::Db(DbError::NotFound))),
        "the caller gets the database's NotFound, got {result:?}"
    );
}

#[actix::test]
async fn store_does_not_cache_not_found() {
    let (store, _recorder, script) = recorded_store(8);
    script
        .replies()
        .find
        .push_back(Reply::Ready(Err(ActorError::Db(DbError::NotFound))));
    let ada = user(7, "Ada", "ada@example.com");
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    get(&store, id(7)).await.unwrap_err();

    let second = get(&store, id(7)).await;

    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "a read after a NotFound asks the database again"
    );
    assert_eq!(second.unwrap(), ada, "the second read returns the user");
}

#[actix::test]
async fn store_passes_email_taken_through() {
    let (store, _recorder, script) = recorded_store(8);
    script
        .replies()
        .insert
        .push_back(Reply::Ready(Err(ActorError::Db(DbError::EmailTaken))));

    let result = create(&store, new_user("Ada", "ada@example.com")).await;

    assert!(
        matches!(result, Err(ActorError::Db(DbError::EmailTaken))),
        "the caller gets the database's EmailTaken, got {result:?}"
    );
}

#[actix::test]
async fn store_patch_passes_email_taken_through() {
    let (store, _recorder, script) = recorded_store(8);
    script
        .replies()
        .update
        .push_back(Reply::Ready(Err(ActorError::Db(DbError::EmailTaken))));
    let taken = UserPatch {
        email: Some(Email::parse("grace@example.com").unwrap()),
        ..UserPatch::default()
    };

    let result = patch(&store, id(7), taken).await;

    assert!(
        matches!(result, Err(ActorError::Db(DbError::EmailTaken))),
        "the caller gets the database's EmailTaken, got {result:?}"
    );
}

#[actix::test]
async fn store_stopped_database_is_unavailable() {
    let (store, recorder, _script) = recorded_store(8);
    recorder.send(Stop).await.unwrap();

    let read = get(&store, id(7)).await;
    let write = create(&store, new_user("Ada", "ada@example.com")).await;

    assert!(
        matches!(read, Err(ActorError::Unavailable { .. })),
        "a read through a closed mailbox is Unavailable, got {read:?}"
    );
    assert!(
        matches!(write, Err(ActorError::Unavailable { .. })),
        "a write through a closed mailbox is Unavailable, got {write:?}"
    );
}

/// A read sent before a write and completed after the write started must
/// not fill the cache, because it may carry the value from before the write.
#[actix::test]
async fn store_overlapping_read_not_cached() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    let renamed = User {
        name: "Ada King".into(),
        version: 2,
        ..ada.clone()
    };
    let (release_find, held_find) = oneshot::channel();
    script.replies().find.push_back(Reply::Held(held_find));
    script
        .replies()
        .update
        .push_back(Reply::Ready(Ok(renamed.clone())));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(renamed.clone())));

    // `send` queues the message at once, so the read reaches the store
    // before the patch.
    let read = store.send(GetUser {
        ctx: ctx(),
        id: id(7),
    });
    patch(&store, id(7), rename("Ada King")).await.unwrap();
    assert_eq!(
        script.sent().len(),
        2,
        "the Find and the Update both reached the database: {:?}",
        script.sent()
    );
    release_find.send(Ok(ada.clone())).unwrap();
    let stale = ActorError::flatten("user_store", read.await);
    let fresh = get(&store, id(7)).await;

    assert_eq!(*stale.unwrap(), ada, "the held read returns what it read");
    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "a read after the overlapping one sends a new Find"
    );
    assert_eq!(fresh.unwrap(), renamed, "the new read returns the patch");
}

/// Sends one `GetUser` for each raw id, queued in order.
fn send_gets(store: &Addr<UserStore>, ids: &[i64]) -> Vec<actix::dev::Request<UserStore, GetUser>> {
    ids.iter()
        .map(|&raw| {
            store.send(GetUser {
                ctx: ctx(),
                id: id(raw),
            })
        })
        .collect()
}

/// Waits until the store has handled every message sent before this call:
/// it handles messages in order, and the reply to this one comes from the
/// database (an error, since none is scripted).
async fn handled_so_far(store: &Addr<UserStore>) {
    let _ = store
        .send(GetUserWithPosts {
            ctx: ctx(),
            id: id(999),
        })
        .await;
}

/// Checks that misses arriving while a read is in the database wait for it
/// and then go together in one `FindMany`, each id once. Each read gets its
/// own user, and an id the query did not return is not found.
#[actix::test]
async fn store_reads_misses_together() {
    let (store, script) = read_batching_store(1);
    let ada = user(1, "Ada", "ada@example.com");
    let bob = user(2, "Bob", "bob@example.com");
    let eve = user(3, "Eve", "eve@example.com");
    let (release_first, held_first) = oneshot::channel();
    script.replies().find.push_back(Reply::Held(held_first));
    script
        .replies()
        .find_many
        .push_back(Reply::Ready(Ok(vec![eve.clone(), bob.clone()])));

    let first = store.send(GetUser {
        ctx: ctx(),
        id: id(1),
    });
    let later = send_gets(&store, &[2, 3, 2, 4]);
    handled_so_far(&store).await;
    let gathered_while_held = script.find_manys();
    release_first.send(Ok(ada.clone())).unwrap();
    let first = ActorError::flatten("user_store", first.await);
    let later: Vec<_> = join_all(later)
        .await
        .into_iter()
        .map(|reply| ActorError::flatten("user_store", reply))
        .collect();

    assert!(
        gathered_while_held.is_empty(),
        "nothing more is sent while the first read is in the database"
    );
    assert_eq!(script.finds(), vec![id(1)], "the first read goes alone");
    assert_eq!(
        script.find_manys(),
        vec![vec![id(2), id(3), id(4)]],
        "the later reads go in one FindMany, each id once"
    );
    assert_eq!(*first.unwrap(), ada, "the first read gets its user");
    assert_eq!(**later[0].as_ref().unwrap(), bob, "id 2 gets Bob");
    assert_eq!(**later[1].as_ref().unwrap(), eve, "id 3 gets Eve");
    assert_eq!(**later[2].as_ref().unwrap(), bob, "id 2 again gets Bob");
    assert!(
        matches!(later[3], Err(ActorError::Db(DbError::NotFound))),
        "id 4, which the query did not return, is not found: {:?}",
        later[3]
    );
}

/// Checks that a failed `FindMany` gives its error to every read in it and
/// that the store sends the next reads as before.
#[actix::test]
async fn store_read_batch_failure_reaches_every_read() {
    let (store, script) = read_batching_store(1);
    let ada = user(1, "Ada", "ada@example.com");
    let (release_first, held_first) = oneshot::channel();
    script.replies().find.push_back(Reply::Held(held_first));
    script
        .replies()
        .find_many
        .push_back(Reply::Ready(Err(ActorError::DeadlineExceeded)));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));

    let first = send_gets(&store, &[1]);
    let later = send_gets(&store, &[2, 3]);
    handled_so_far(&store).await;
    release_first
        .send(Err(ActorError::DeadlineExceeded))
        .unwrap();
    join_all(first).await;
    let later: Vec<_> = join_all(later)
        .await
        .into_iter()
        .map(|reply| ActorError::flatten("user_store", reply))
        .collect();
    let next = get(&store, id(1)).await;

    for (index, reply) in later.iter().enumerate() {
        assert!(
            matches!(reply, Err(ActorError::Batch(error)) if matches!(**error, ActorError::DeadlineExceeded)),
            "read {index} gets the query's error: {reply:?}"
        );
    }
    assert_eq!(
        next.unwrap(),
        ada,
        "a read after the failure is sent as usual"
    );
}

/// A read that completes while a write is in flight may fill the cache, but
/// the write's reply must not reach the caller before that entry is evicted.
#[actix::test]
async fn store_read_during_write_evicted() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    let renamed = User {
        name: "Ada King".into(),
        version: 2,
        ..ada.clone()
    };
    let (release_update, held_update) = oneshot::channel();
    script.replies().update.push_back(Reply::Held(held_update));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(renamed.clone())));

    let write = store.send(PatchUser {
        ctx: ctx(),
        id: id(7),
        patch: rename("Ada King"),
        precondition: Precondition::default(),
    });
    let during = get(&store, id(7)).await;
    release_update.send(Ok(renamed.clone())).unwrap();
    ActorError::flatten("user_store", write.await).unwrap();
    let after = get(&store, id(7)).await;

    assert_eq!(
        during.unwrap(),
        ada,
        "the read during the write saw the old row"
    );
    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "a read after the write's reply sends a new Find"
    );
    assert_eq!(after.unwrap(), renamed, "the read returns the patched user");
}

// ---------------------------------------------------------------------------
// DbWorker against real databases
// ---------------------------------------------------------------------------

/// Declares each listed `async fn name(backend: Backend)` as two tests that
/// run in an actix system, `sqlite::name` and `postgres::name`.
macro_rules! actix_on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[actix::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }

        mod postgres {
            $(
                #[actix::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

actix_on_both_backends!(
    worker_insert_then_find,
    worker_pool_survives_panics,
    worker_panic_rolls_back_write,
    worker_skips_expired_deadline,
    worker_batch_conflict_fails_only_its_write,
    worker_batch_skips_expired_writes,
    worker_batch_panic_rolls_back_whole_batch,
    worker_batch_creates_run_together,
    worker_batch_creates_fall_back_on_conflict,
    worker_batch_posts_run_together,
    worker_batch_posts_fall_back_on_missing_user,
    worker_pool_releases_memory,
    worker_find_many_skips_missing_and_deleted,
);

/// A migrated database and a pool of `DbWorker`s on it.
struct Workers {
    addr: Addr<DbWorker>,
    stats: Arc<WorkerStats>,
    _db: TestDb,
}

/// Starts `count` workers over a pool of `count` connections, or returns
/// `None` when the backend is skipped.
fn start_workers(backend: Backend, count: usize) -> Option<Workers> {
    let db = TestDb::create(backend)?;
    troupe::db::migrations::run_pending(&db.url).unwrap();
    let pool = DbPool::connect(&db.url, &pool_settings(count)).unwrap();
    let stats = Arc::new(WorkerStats::default());
    let addr = DbWorker::start_pool(count, pool, Arc::clone(&stats));
    Some(Workers {
        addr,
        stats,
        _db: db,
    })
}

fn pool_settings(connections: usize) -> PoolSettings {
    PoolSettings {
        max_size: u32::try_from(connections).unwrap(),
        min_idle: None,
        connection_timeout: Duration::from_secs(10),
        sqlite_busy_timeout: Duration::from_secs(10),
        pg_statement_timeout: Duration::from_secs(10),
    }
}

async fn run<Q: DbQuery>(workers: &Addr<DbWorker>, query: Q) -> Result<Q::Output, ActorError> {
    ActorError::flatten("db_worker", workers.send(Query::new(ctx(), query)).await)
}

/// Runs `$body` with `$c` bound to the concrete connection of either backend.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            DbConn::Pg(pooled) => {
                let $c: &mut PgConnection = pooled;
                $body
            }
            DbConn::Sqlite(pooled) => {
                let $c: &mut SqliteConnection = pooled;
                $body
            }
        }
    };
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count_email_sql(email: &str) -> String {
    format!("SELECT COUNT(*) AS n FROM users WHERE email = '{email}'")
}

/// Counts the user rows with one email, deleted or not.
struct CountEmail(&'static str);

impl DbQuery for CountEmail {
    type Output = i64;
    const NAME: &'static str = "test.count_email";

    fn run(self, conn: &mut DbConn) -> Result<i64, DbError> {
        let sql = count_email_sql(self.0);
        on_conn!(conn, c => Ok(diesel::sql_query(&sql).get_result::<Count>(c)?.n))
    }
}

/// Panics without touching the connection.
struct Explode;

impl DbQuery for Explode {
    type Output = ();
    const NAME: &'static str = "test.explode";

    fn run(self, _: &mut DbConn) -> Result<(), DbError> {
        panic!("test query panics on purpose")
    }
}

const ROLLBACK_EMAIL: &str = "rolled.back@example.com";

/// Inserts a user inside a write transaction, stores the number of rows
/// with that email that the transaction reads, and panics before the commit.
struct InsertThenPanic {
    seen_inside: Arc<AtomicI64>,
}

impl DbQuery for InsertThenPanic {
    type Output = ();
    const NAME: &'static str = "test.insert_then_panic";

    fn run(self, conn: &mut DbConn) -> Result<(), DbError> {
        let insert = format!(
            "INSERT INTO users (name, email, created_at, updated_at) \
             VALUES ('Rolled Back', '{ROLLBACK_EMAIL}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        );
        let count = count_email_sql(ROLLBACK_EMAIL);
        let seen = &self.seen_inside;
        match conn {
            DbConn::Pg(pooled) => {
                let c: &mut PgConnection = pooled;
                c.transaction::<(), DbError, _>(|c| {
                    diesel::sql_query(&insert).execute(c)?;
                    seen.store(
                        diesel::sql_query(&count).get_result::<Count>(c)?.n,
                        Ordering::SeqCst,
                    );
                    panic!("test query panics inside its transaction")
                })
            }
            DbConn::Sqlite(pooled) => {
                let c: &mut SqliteConnection = pooled;
                c.immediate_transaction::<(), DbError, _>(|c| {
                    diesel::sql_query(&insert).execute(c)?;
                    seen.store(
                        diesel::sql_query(&count).get_result::<Count>(c)?.n,
                        Ordering::SeqCst,
                    );
                    panic!("test query panics inside its transaction")
                })
            }
        }
    }
}

/// Waits until `expected` rendezvous queries run at the same time, for at
/// most ten seconds, and returns whether they all arrived.
struct Rendezvous {
    arrived: Arc<(Mutex<usize>, Condvar)>,
    expected: usize,
}

impl DbQuery for Rendezvous {
    type Output = bool;
    const NAME: &'static str = "test.rendezvous";

    fn run(self, _: &mut DbConn) -> Result<bool, DbError> {
        let (count, changed) = &*self.arrived;
        let mut count = count.lock().unwrap();
        *count += 1;
        changed.notify_all();
        let (count, _) = changed
            .wait_timeout_while(count, Duration::from_secs(10), |n| *n < self.expected)
            .unwrap();
        Ok(*count >= self.expected)
    }
}

/// Changes a user's name with plain SQL, past the `UserStore`.
struct RenameDirectly {
    id: UserId,
    name: &'static str,
}

impl DbQuery for RenameDirectly {
    type Output = usize;
    const NAME: &'static str = "test.rename_directly";

    fn run(self, conn: &mut DbConn) -> Result<usize, DbError> {
        let sql = format!(
            "UPDATE users SET name = '{}' WHERE id = {}",
            self.name,
            self.id.get()
        );
        on_conn!(conn, c => Ok(diesel::sql_query(&sql).execute(c)?))
    }
}

async fn worker_insert_then_find(backend: Backend) {
    let Some(workers) = start_workers(backend, 2) else {
        return;
    };

    let created = run(
        &workers.addr,
        users::Insert {
            user: new_user("Ada Lovelace", "Ada@Example.com"),
        },
    )
    .await
    .unwrap();
    let found = run(
        &workers.addr,
        users::Find {
            id: created.user.id,
        },
    )
    .await;

    assert_eq!(created.user.name, "Ada Lovelace", "stored name");
    assert_eq!(created.user.email, "ada@example.com", "stored email");
    assert_eq!(found.unwrap(), created.user, "Find reads the inserted row");
}

async fn worker_pool_survives_panics(backend: Backend) {
    const WORKERS: usize = 3;
    let Some(workers) = start_workers(backend, WORKERS) else {
        return;
    };

    let panicked = join_all((0..WORKERS).map(|_| run(&workers.addr, Explode))).await;
    let inserted = join_all((0..WORKERS * 3).map(|i| {
        let email = format!("user{i}@example.com");
        run(
            &workers.addr,
            users::Insert {
                user: new_user("Ada Lovelace", &email),
            },
        )
    }))
    .await;
    let arrived = Arc::new((Mutex::new(0), Condvar::new()));
    let together = join_all((0..WORKERS).map(|_| {
        let query = Rendezvous {
            arrived: Arc::clone(&arrived),
            expected: WORKERS,
        };
        run(&workers.addr, query)
    }))
    .await;

    for (i, reply) in panicked.iter().enumerate() {
        assert!(
            matches!(reply, Err(ActorError::Panicked { .. })),
            "panicking query {i} replies Panicked, got {reply:?}"
        );
    }
    for (i, reply) in inserted.iter().enumerate() {
        assert!(reply.is_ok(), "insert {i} after the panics: {reply:?}");
    }
    assert_eq!(
        workers.stats.panics.load(Ordering::Relaxed),
        WORKERS as u64,
        "every caught panic is counted"
    );
    assert!(
        together.iter().all(|reply| matches!(reply, Ok(true))),
        "all {WORKERS} workers still run queries at the same time: {together:?}"
    );
}

async fn worker_find_many_skips_missing_and_deleted(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let mut ids = Vec::new();
    for email in ["ada@example.com", "bob@example.com", "eve@example.com"] {
        let created = run(
            &workers.addr,
            users::Insert {
                user: new_user("Someone", email),
            },
        )
        .await
        .unwrap();
        ids.push(created.user.id);
    }
    run(
        &workers.addr,
        users::Delete {
            id: ids[1],
            mode: DeleteMode::Soft,
            precondition: Precondition::default(),
        },
    )
    .await
    .unwrap();
    let missing = id(ids[2].get() + 100);

    let found = run(
        &workers.addr,
        users::FindMany {
            ids: vec![ids[2], ids[1], missing, ids[0]],
        },
    )
    .await
    .unwrap();

    let mut emails: Vec<_> = found.iter().map(|user| user.email.as_str()).collect();
    emails.sort_unstable();
    assert_eq!(
        emails,
        ["ada@example.com", "eve@example.com"],
        "the live users only; the deleted and the missing id are left out"
    );
}

async fn worker_pool_releases_memory(backend: Backend) {
    const WORKERS: usize = 3;
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    troupe::db::migrations::run_pending(&db.url).unwrap();
    let pool = DbPool::connect(&db.url, &pool_settings(WORKERS)).unwrap();
    let pool = WorkerPool::new(
        WORKERS,
        pool,
        Arc::new(WorkerStats::default()),
        Arc::new(PoolStats::default()),
        Duration::from_secs(60),
    )
    .start();
    let send = |query| pool.send(Query::new(ctx(), query));

    let before = pool.send(ReleaseMemory).await.unwrap();
    // Each worker takes a connection for its query; the pool spreads the
    // three over the three workers, as they wait for each other.
    let arrived = Arc::new((Mutex::new(0), Condvar::new()));
    let together = join_all((0..WORKERS).map(|_| {
        send(Rendezvous {
            arrived: Arc::clone(&arrived),
            expected: WORKERS,
        })
    }))
    .await;
    let released = pool.send(ReleaseMemory).await.unwrap();
    let inserted = pool
        .send(Query::new(
            ctx(),
            users::Insert {
                user: new_user("Ada Lovelace", "ada@example.com"),
            },
        ))
        .await
        .unwrap();

    assert_eq!(
        before, 0,
        "no worker holds a connection before its first query"
    );
    assert!(
        together.iter().all(|reply| matches!(reply, Ok(Ok(true)))),
        "the three queries ran side by side: {together:?}"
    );
    let caching = match backend {
        Backend::Sqlite => WORKERS,
        Backend::Postgres => 0,
    };
    assert_eq!(released, caching, "every SQLite connection frees its cache");
    assert!(
        inserted.is_ok(),
        "the workers still write after: {inserted:?}"
    );
}

async fn worker_panic_rolls_back_write(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let seen_inside = Arc::new(AtomicI64::new(-1));

    let panicked = run(
        &workers.addr,
        InsertThenPanic {
            seen_inside: Arc::clone(&seen_inside),
        },
    )
    .await;
    let after = run(&workers.addr, CountEmail(ROLLBACK_EMAIL)).await;
    let next = run(
        &workers.addr,
        users::Insert {
            user: new_user("Next User", ROLLBACK_EMAIL),
        },
    )
    .await;

    assert!(
        matches!(panicked, Err(ActorError::Panicked { .. })),
        "the query replies Panicked, got {panicked:?}"
    );
    assert_eq!(
        seen_inside.load(Ordering::SeqCst),
        1,
        "the row existed inside the transaction"
    );
    assert_eq!(after.unwrap(), 0, "the row is gone after the panic");
    assert!(next.is_ok(), "the next write works: {next:?}");
}

async fn worker_skips_expired_deadline(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let expired = RequestCtx::new(RequestId::generate(), tracing::Span::none(), Duration::ZERO);
    let insert = users::Insert {
        user: new_user("Too Late", "too.late@example.com"),
    };

    let reply = ActorError::flatten(
        "db_worker",
        workers.addr.send(Query::new(expired, insert)).await,
    );
    let written = run(&workers.addr, CountEmail("too.late@example.com")).await;

    assert!(
        matches!(reply, Err(ActorError::DeadlineExceeded)),
        "an expired message replies DeadlineExceeded, got {reply:?}"
    );
    assert_eq!(written.unwrap(), 0, "nothing was written");
    assert_eq!(
        workers.stats.deadline_skips.load(Ordering::Relaxed),
        1,
        "the skip is counted"
    );
}

// ---------------------------------------------------------------------------
// UserStore over a real DbWorker pool
// ---------------------------------------------------------------------------

#[actix::test]
async fn store_over_sqlite_workers() {
    let workers = start_workers(Backend::Sqlite, 2).unwrap();
    let store = UserStore::new(
        UserDb::new(&workers.addr),
        NonZeroUsize::new(8).unwrap(),
        Arc::new(StoreStats::default()),
    )
    .start();
    let created = create(&store, new_user("Ada Lovelace", "ada@example.com"))
        .await
        .unwrap()
        .user;

    let first = get(&store, created.id).await.unwrap();
    let renamed = run(
        &workers.addr,
        RenameDirectly {
            id: created.id,
            name: "Renamed Behind",
        },
    )
    .await
    .unwrap();
    let cached = get(&store, created.id).await.unwrap();
    let age = UserPatch {
        age: Some(Some(Age::parse(36).unwrap())),
        ..UserPatch::default()
    };
    let patched = patch(&store, created.id, age).await.unwrap();
    let after = get(&store, created.id).await.unwrap();

    assert_eq!(first, created, "the first read returns the created user");
    assert_eq!(renamed, 1, "the direct update changed one row");
    assert_eq!(cached, first, "the second read comes from the cache");
    assert_eq!(patched.age, Some(36), "the patch sets the age");
    assert_eq!(
        patched.name, "Renamed Behind",
        "the patch returns the row as the database holds it"
    );
    assert_eq!(
        after, patched,
        "a read after the patch returns the new value"
    );
}

#[actix::test]
async fn store_panic_restarts_empty() {
    let (store, script, stats) = supervised_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    get(&store, id(7)).await.unwrap();

    let crashed = store.send(InjectPanic).await.unwrap();
    let after_restart = get(&store, id(7)).await;

    assert!(
        matches!(crashed, Err(ActorError::Panicked { .. })),
        "the panicking handler replies with an error: {crashed:?}"
    );
    assert_eq!(
        stats.panics.load(Ordering::Relaxed),
        1,
        "the panic is counted"
    );
    assert_eq!(
        stats.restarts.load(Ordering::Relaxed),
        1,
        "the store restarted once"
    );
    assert_eq!(
        after_restart.unwrap(),
        ada,
        "the restarted store still answers"
    );
    assert_eq!(
        script.sent().len(),
        2,
        "the restarted store has an empty cache, so the read goes to the database"
    );
}

#[actix::test]
async fn store_escalates_past_restart_limit() {
    let policy = RestartPolicy {
        max_restarts: 2,
        window: Duration::from_secs(60),
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let escalation = Arc::new(Escalation::default());
    let (store, script, stats) = supervised_store_with(8, policy, Arc::clone(&escalation));
    let ada = user(7, "Ada", "ada@example.com");

    for restart in 1..=2 {
        store.send(InjectPanic).await.unwrap().unwrap_err();
        script
            .replies()
            .find
            .push_back(Reply::Ready(Ok(ada.clone())));
        let reread = get(&store, id(7)).await;
        assert_eq!(
            reread.unwrap(),
            ada,
            "after restart {restart} the store reads the database again"
        );
        assert!(
            !escalation.is_triggered(),
            "restart {restart} is within the limit"
        );
    }
    store.send(InjectPanic).await.unwrap().unwrap_err();

    assert!(
        escalation.is_triggered(),
        "a third restart within the window escalates"
    );
    assert_eq!(stats.restarts.load(Ordering::Relaxed), 3);
    assert_eq!(script.sent().len(), 2, "each restart emptied the cache");
}

#[actix::test]
async fn store_backoff_expires_waiting_requests() {
    let policy = RestartPolicy {
        base_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_millis(300),
        ..RestartPolicy::default()
    };
    let (store, script, _) = supervised_store_with(8, policy, Arc::new(Escalation::default()));
    let ada = user(7, "Ada", "ada@example.com");
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    store.send(InjectPanic).await.unwrap().unwrap_err();

    // Both reads wait in the mailbox for the 300 ms backoff; the first has a
    // 50 ms budget, so it has expired when the store handles it.
    let short = RequestCtx::internal(Duration::from_millis(50));
    let hurried = store.send(GetUser {
        ctx: short,
        id: id(7),
    });
    let patient = store.send(GetUser {
        ctx: ctx(),
        id: id(7),
    });
    let hurried = ActorError::flatten("user_store", hurried.await);
    let patient = ActorError::flatten("user_store", patient.await);

    assert!(
        matches!(hurried, Err(ActorError::DeadlineExceeded)),
        "a read that expired during the backoff gets DeadlineExceeded: {hurried:?}"
    );
    assert_eq!(
        *patient.unwrap(),
        ada,
        "a read with time left is served after the backoff"
    );
    assert_eq!(
        script.sent().len(),
        1,
        "the expired read sent nothing to the database"
    );
}

#[actix::test]
async fn store_sends_writes_to_writer() {
    let reads = Arc::new(Script::default());
    let writes = Arc::new(Script::default());
    let readers = RecordingDb {
        script: Arc::clone(&reads),
    }
    .start();
    let writer = RecordingDb {
        script: Arc::clone(&writes),
    }
    .start();
    let db = UserDb::new(&readers).with_writer(&writer);
    let store = UserStore::new(
        db,
        NonZeroUsize::new(8).unwrap(),
        Arc::new(StoreStats::default()),
    )
    .start();
    let ada = user(1, "Ada", "ada@example.com");
    writes
        .replies()
        .insert
        .push_back(Reply::Ready(Ok(UserWithPosts {
            user: ada.clone(),
            posts: Vec::new(),
        })));
    writes
        .replies()
        .update
        .push_back(Reply::Ready(Ok(ada.clone())));
    reads
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));

    create(&store, new_user("Ada", "ada@example.com"))
        .await
        .unwrap();
    patch(&store, id(1), rename("Ada L")).await.unwrap();
    get(&store, id(1)).await.unwrap();

    assert_eq!(
        writes.sent().len(),
        2,
        "the insert and the update go to the writer"
    );
    assert_eq!(writes.inserts().len(), 1, "the writer got the insert");
    assert_eq!(
        reads.sent(),
        vec![Sent::Find(users::Find { id: id(1) })],
        "only the read goes to the readers"
    );
}

async fn send_batch<Q>(workers: &Addr<DbWorker>, items: Vec<Query<Q>>) -> BatchResult<Q>
where
    Q: DbQuery + Clone,
{
    ActorError::flatten("db_worker", workers.send(Batch { items }).await)
}

type BatchResult<Q> = Result<Vec<Result<<Q as DbQuery>::Output, ActorError>>, ActorError>;

fn insert_write(name: &str, email: &str) -> Query<users::Write> {
    Query::new(
        ctx(),
        users::Write::Insert(users::Insert {
            user: new_user(name, email),
        }),
    )
}

async fn worker_batch_conflict_fails_only_its_write(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let missing = Query::new(
        ctx(),
        users::Write::Update(users::Update {
            id: id(999_999),
            patch: rename("Nobody"),
            precondition: Precondition::default(),
        }),
    );

    let results = send_batch(
        &workers.addr,
        vec![
            insert_write("First", "first@example.com"),
            insert_write("Copy", "FIRST@example.com"),
            missing,
            insert_write("Second", "second@example.com"),
        ],
    )
    .await
    .unwrap();
    let first = run(&workers.addr, CountEmail("first@example.com")).await;
    let second = run(&workers.addr, CountEmail("second@example.com")).await;

    assert_eq!(results.len(), 4, "one result per write: {results:?}");
    assert!(
        matches!(&results[0], Ok(users::Written::Inserted(u)) if u.user.name == "First"),
        "the first insert is applied: {:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(ActorError::Db(DbError::EmailTaken))),
        "the duplicate email fails alone: {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(ActorError::Db(DbError::NotFound))),
        "the update of a missing user fails alone: {:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Ok(users::Written::Inserted(u)) if u.user.name == "Second"),
        "the write after the failures is applied: {:?}",
        results[3]
    );
    assert_eq!(first.unwrap(), 1, "one row for the first email");
    assert_eq!(second.unwrap(), 1, "one row for the second email");
}

async fn worker_batch_skips_expired_writes(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let expired = Query::new(
        RequestCtx::new(RequestId::generate(), tracing::Span::none(), Duration::ZERO),
        users::Write::Insert(users::Insert {
            user: new_user("Too Late", "late@example.com"),
        }),
    );

    let results = send_batch(
        &workers.addr,
        vec![expired, insert_write("On Time", "on.time@example.com")],
    )
    .await
    .unwrap();
    let late = run(&workers.addr, CountEmail("late@example.com")).await;
    let on_time = run(&workers.addr, CountEmail("on.time@example.com")).await;

    assert!(
        matches!(results[0], Err(ActorError::DeadlineExceeded)),
        "the expired write is skipped: {:?}",
        results[0]
    );
    assert!(
        results[1].is_ok(),
        "the write with time left is applied: {:?}",
        results[1]
    );
    assert_eq!(late.unwrap(), 0, "the skipped write left no row");
    assert_eq!(on_time.unwrap(), 1, "the applied write left its row");
    assert_eq!(
        workers.stats.deadline_skips.load(Ordering::Relaxed),
        1,
        "the skip is counted"
    );
}

/// Builds a batch item that creates a user with posts titled `titles`.
fn insert_with_posts(email: &str, titles: &[&str]) -> Query<users::Write> {
    let posts = titles
        .iter()
        .map(|title| PostFields {
            title: PostTitle::parse(title).unwrap(),
            content: PostContent::parse(&format!("About {title}")).unwrap(),
        })
        .collect();
    let user = NewUser {
        posts,
        ..new_user("Poster", email)
    };
    Query::new(ctx(), users::Write::Insert(users::Insert { user }))
}

/// Returns the email and post titles of a created user, or the error.
fn created(result: &Result<users::Written, ActorError>) -> Result<(String, Vec<String>), String> {
    match result {
        Ok(users::Written::Inserted(created)) => Ok((
            created.user.email.clone(),
            created
                .posts
                .iter()
                .map(|post| post.title.clone())
                .collect(),
        )),
        other => Err(format!("{other:?}")),
    }
}

fn titled(email: &str, titles: &[&str]) -> Result<(String, Vec<String>), String> {
    Ok((
        email.to_owned(),
        titles.iter().map(|title| (*title).to_owned()).collect(),
    ))
}

/// Creates alone in a batch run as one statement for the users and one for
/// the posts. Each create still gets its own user and its own posts, in the
/// order sent.
async fn worker_batch_creates_run_together(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };

    let results = send_batch(
        &workers.addr,
        vec![
            insert_with_posts("one@example.com", &["First", "Second"]),
            insert_with_posts("two@example.com", &[]),
            insert_with_posts("three@example.com", &["Third"]),
        ],
    )
    .await
    .unwrap();
    let stored = run(&workers.addr, CountEmail("two@example.com")).await;

    let created: Vec<_> = results.iter().map(created).collect();
    assert_eq!(
        created,
        vec![
            titled("one@example.com", &["First", "Second"]),
            titled("two@example.com", &[]),
            titled("three@example.com", &["Third"]),
        ],
        "each create gets its own user and posts"
    );
    assert_eq!(stored.unwrap(), 1, "the creates are committed");
}

/// A taken email fails the statement that inserts every user of the batch.
/// The batch then runs again one create at a time, so only the create with
/// the taken email fails.
async fn worker_batch_creates_fall_back_on_conflict(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    run(
        &workers.addr,
        users::Insert {
            user: new_user("Taken", "taken@example.com"),
        },
    )
    .await
    .unwrap();

    let results = send_batch(
        &workers.addr,
        vec![
            insert_with_posts("free@example.com", &["Kept"]),
            insert_with_posts("taken@example.com", &["Lost"]),
            insert_with_posts("also.free@example.com", &[]),
        ],
    )
    .await
    .unwrap();
    let taken = run(&workers.addr, CountEmail("taken@example.com")).await;
    let free = run(&workers.addr, CountEmail("free@example.com")).await;

    assert_eq!(created(&results[0]), titled("free@example.com", &["Kept"]));
    assert!(
        matches!(results[1], Err(ActorError::Db(DbError::EmailTaken))),
        "the create with the taken email fails alone: {:?}",
        results[1]
    );
    assert_eq!(created(&results[2]), titled("also.free@example.com", &[]));
    assert_eq!(taken.unwrap(), 1, "the taken email keeps its one row");
    assert_eq!(free.unwrap(), 1, "the free email is stored once");
}

/// Creates a user with `email` and returns its id.
async fn user_id(workers: &Addr<DbWorker>, email: &str) -> UserId {
    let user = new_user("Author", email);
    run(workers, users::Insert { user }).await.unwrap().user.id
}

/// Builds a batch item that creates a post.
fn post_write(user_id: UserId, title: &str) -> Query<posts::Write> {
    let post = PostFields {
        title: PostTitle::parse(title).unwrap(),
        content: PostContent::parse("Same content").unwrap(),
    };
    Query::new(ctx(), posts::Write::Insert(posts::Insert { user_id, post }))
}

/// Returns the author and title of a saved post, or the error.
fn saved_post(result: &Result<posts::Written, ActorError>) -> Result<(UserId, String), String> {
    match result {
        Ok(posts::Written::Saved(post)) => Ok((post.user_id, post.title.clone())),
        other => Err(format!("{other:?}")),
    }
}

/// Post creates alone in a batch run as one statement that locks their
/// users and one that inserts them. Each create gets its own post, equal
/// posts of one user included.
async fn worker_batch_posts_run_together(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let ada = user_id(&workers.addr, "ada@example.com").await;
    let bob = user_id(&workers.addr, "bob@example.com").await;

    let results = send_batch(
        &workers.addr,
        vec![
            post_write(ada, "Twice"),
            post_write(bob, "Once"),
            post_write(ada, "Twice"),
        ],
    )
    .await
    .unwrap();

    let saved: Vec<_> = results.iter().map(saved_post).collect();
    assert_eq!(
        saved,
        vec![
            Ok((ada, "Twice".to_owned())),
            Ok((bob, "Once".to_owned())),
            Ok((ada, "Twice".to_owned())),
        ],
        "each create gets a post of its own user"
    );
    let ids: Vec<_> = results
        .iter()
        .filter_map(|result| match result {
            Ok(posts::Written::Saved(post)) => Some(post.id),
            _ => None,
        })
        .collect();
    assert!(
        ids[0] != ids[2],
        "the two equal posts are two rows: {ids:?}"
    );
}

/// A post for a missing user fails the statement that locks the users. The
/// batch then runs one create at a time, so only that create fails.
async fn worker_batch_posts_fall_back_on_missing_user(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let ada = user_id(&workers.addr, "ada@example.com").await;

    let results = send_batch(
        &workers.addr,
        vec![
            post_write(ada, "Kept"),
            post_write(id(999_999), "Lost"),
            post_write(ada, "Also kept"),
        ],
    )
    .await
    .unwrap();

    assert_eq!(saved_post(&results[0]), Ok((ada, "Kept".to_owned())));
    assert!(
        matches!(results[1], Err(ActorError::Db(DbError::NotFound))),
        "the post for a missing user fails alone: {:?}",
        results[1]
    );
    assert_eq!(saved_post(&results[2]), Ok((ada, "Also kept".to_owned())));
}

/// A write for a batch that inserts a user or panics.
#[derive(Clone)]
enum InsertOrPanic {
    Insert(users::Insert),
    Panic,
}

impl DbQuery for InsertOrPanic {
    type Output = ();
    const NAME: &'static str = "test.insert_or_panic";

    fn run(self, conn: &mut DbConn) -> Result<(), DbError> {
        match self {
            Self::Insert(insert) => insert.run(conn).map(drop),
            Self::Panic => panic!("test write panics inside a batch"),
        }
    }
}

async fn worker_batch_panic_rolls_back_whole_batch(backend: Backend) {
    let Some(workers) = start_workers(backend, 1) else {
        return;
    };
    let insert = |email: &str| {
        Query::new(
            ctx(),
            InsertOrPanic::Insert(users::Insert {
                user: new_user("Batch Member", email),
            }),
        )
    };

    let panicked = send_batch(
        &workers.addr,
        vec![
            insert("before.panic@example.com"),
            Query::new(ctx(), InsertOrPanic::Panic),
        ],
    )
    .await;
    let before = run(&workers.addr, CountEmail("before.panic@example.com")).await;
    let next = send_batch(&workers.addr, vec![insert("after.panic@example.com")]).await;
    let after = run(&workers.addr, CountEmail("after.panic@example.com")).await;

    assert!(
        matches!(panicked, Err(ActorError::Panicked { .. })),
        "a panic fails the batch as a whole: {panicked:?}"
    );
    assert_eq!(
        before.unwrap(),
        0,
        "the write before the panic was rolled back"
    );
    assert!(
        matches!(next.as_deref(), Ok([Ok(())])),
        "the next batch works: {next:?}"
    );
    assert_eq!(after.unwrap(), 1, "the next batch committed");
    assert_eq!(
        workers.stats.panics.load(Ordering::Relaxed),
        1,
        "the panic is counted"
    );
}

// ---------------------------------------------------------------------------
// Write batching in the UserStore
// ---------------------------------------------------------------------------

/// Yields until the recorder has received `count` batches; panics if it
/// never does.
async fn until_batches(script: &Script, count: usize) {
    for _ in 0..100_000 {
        if script.batches().len() >= count {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "the store sent {:?} batches, expected {count}",
        script.batches()
    );
}

fn stored(raw_id: i64, email: &str) -> UserWithPosts {
    UserWithPosts {
        user: user(raw_id, "Ada", email),
        posts: Vec::new(),
    }
}

/// Creates `user{n}@example.com` from a task of its own.
fn spawn_create(store: &Addr<UserStore>, n: i64) -> CreateTask {
    let store = store.clone();
    let email = format!("user{n}@example.com");
    actix::spawn(async move { create(&store, new_user("Ada", &email)).await })
}

/// Scripts the replies to creates 1 to `last`: the first is held until the
/// returned sender releases it, the others succeed at once.
fn script_creates(
    script: &Script,
    last: i64,
) -> oneshot::Sender<Result<UserWithPosts, ActorError>> {
    let (release, first_reply) = oneshot::channel();
    let mut replies = script.replies();
    replies.insert.push_back(Reply::Held(first_reply));
    for n in 2..=last {
        let email = format!("user{n}@example.com");
        replies
            .insert
            .push_back(Reply::Ready(Ok(stored(n, &email))));
    }
    release
}

type CreateTask = tokio::task::JoinHandle<Result<UserWithPosts, ActorError>>;

/// Sends create 1, waits until its batch is in the database, then sends
/// creates 2 to `last` and lets them reach the store's queue.
async fn create_behind_first_batch(
    store: &Addr<UserStore>,
    script: &Script,
    last: i64,
) -> (CreateTask, Vec<CreateTask>) {
    let first = spawn_create(store, 1);
    until_batches(script, 1).await;
    let rest = (2..=last).map(|n| spawn_create(store, n)).collect();
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    (first, rest)
}

/// Starts a `UserStore` with `max_batch` wired to a fresh `RecordingDb`.
fn batching_store(max_batch: usize) -> (Addr<UserStore>, Arc<Script>) {
    let (store, _recorder, script) =
        recorded_store_with(8, |store| store.with_batching(max_batch, 1));
    (store, script)
}

#[actix::test]
async fn store_batches_writes_that_arrive_during_a_batch() {
    let (store, script) = batching_store(64);
    let release_first = script_creates(&script, 4);
    let (release_last, last_reply) = oneshot::channel();
    script.replies().insert.push_back(Reply::Held(last_reply));

    let (first, rest) = create_behind_first_batch(&store, &script, 5).await;
    let batches_while_first_held = script.batches();
    release_first
        .send(Ok(stored(1, "user1@example.com")))
        .unwrap();
    let first = first.await.unwrap();
    until_batches(&script, 2).await;
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    let answered_before_batch = rest.iter().filter(|task| task.is_finished()).count();
    release_last
        .send(Ok(stored(5, "user5@example.com")))
        .unwrap();
    let rest = join_all(rest).await;

    assert_eq!(
        batches_while_first_held,
        vec![1],
        "nothing else is sent while a batch is in the database"
    );
    assert!(first.is_ok(), "the first write succeeds: {first:?}");
    assert_eq!(
        script.batches(),
        vec![1, 4],
        "the four writes that arrived meanwhile go in one batch"
    );
    assert_eq!(
        answered_before_batch, 0,
        "no write of a batch is answered before the whole batch is"
    );
    for (n, reply) in (2..).zip(rest) {
        let reply = reply.unwrap().unwrap();
        assert_eq!(
            reply.user.email,
            format!("user{n}@example.com"),
            "write {n} gets its own result"
        );
    }
}

#[actix::test]
async fn store_batch_size_is_bounded() {
    let (store, script) = batching_store(2);
    let release = script_creates(&script, 6);

    let (first, rest) = create_behind_first_batch(&store, &script, 6).await;
    release.send(Ok(stored(1, "user1@example.com"))).unwrap();
    let first = first.await.unwrap();
    let rest = join_all(rest).await;

    assert!(first.is_ok(), "the first write succeeds: {first:?}");
    assert!(
        rest.iter().all(|reply| matches!(reply, Ok(Ok(_)))),
        "every later write succeeds: {rest:?}"
    );
    assert_eq!(
        script.batches(),
        vec![1, 2, 2, 1],
        "no batch is larger than the maximum"
    );
}

#[actix::test]
async fn store_batch_failure_reaches_every_write() {
    let (store, script) = batching_store(64);
    let release = script_creates(&script, 4);
    script
        .replies()
        .batch_failures
        .push_back(ActorError::Db(DbError::Unavailable(
            "connection lost at commit".into(),
        )));

    let (first, rest) = create_behind_first_batch(&store, &script, 4).await;
    release.send(Ok(stored(1, "user1@example.com"))).unwrap();
    let first = first.await.unwrap();
    let rest = join_all(rest).await;

    assert!(
        matches!(&first, Err(ActorError::Batch(cause))
            if matches!(cause.as_ref(), ActorError::Db(DbError::Unavailable(_)))),
        "the write whose batch failed gets the batch's cause: {first:?}"
    );
    assert_eq!(script.batches(), vec![1, 3], "the next batch still goes");
    for reply in rest {
        let reply = reply.unwrap();
        assert!(
            reply.is_ok(),
            "a write of the next batch succeeds: {reply:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Cache replicas
// ---------------------------------------------------------------------------

async fn get_via(replica: &Addr<CacheReplica>, id: UserId) -> Result<User, ActorError> {
    ActorError::flatten(
        "cache_replica",
        replica.send(GetUser { ctx: ctx(), id }).await,
    )
    .map(Arc::unwrap_or_clone)
}

/// Returns user 7 and the same user after a rename to "Ada King".
fn ada_and_renamed() -> (User, User) {
    let ada = user(7, "Ada", "ada@example.com");
    let renamed = User {
        name: "Ada King".into(),
        version: 2,
        ..ada.clone()
    };
    (ada, renamed)
}

fn replica_of(store: &Addr<UserStore>) -> Addr<CacheReplica> {
    CacheReplica::new(store.clone(), NonZeroUsize::new(8).unwrap()).start()
}

#[actix::test]
async fn replica_serves_repeat_reads_itself() {
    let (store, _recorder, script) = recorded_store(8);
    let ada = user(7, "Ada", "ada@example.com");
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(ada.clone())));
    let replica = replica_of(&store);

    let first = get_via(&replica, id(7)).await;
    let second = get_via(&replica, id(7)).await;

    assert_eq!(first.unwrap(), ada, "the first read comes from the store");
    assert_eq!(second.unwrap(), ada, "the second read is the same user");
    assert_eq!(script.finds(), vec![id(7)], "the database is asked once");
}

#[actix::test]
async fn replica_and_store_share_one_copy_of_a_user() {
    let (store, _recorder, script) = recorded_store(8);
    script
        .replies()
        .find
        .push_back(Reply::Ready(Ok(user(7, "Ada", "ada@example.com"))));
    let replica = replica_of(&store);
    let read = |addr: Addr<CacheReplica>| async move {
        ActorError::flatten(
            "cache_replica",
            addr.send(GetUser {
                ctx: ctx(),
                id: id(7),
            })
            .await,
        )
        .unwrap()
    };

    let from_store = read(replica.clone()).await;
    let from_replica = read(replica).await;
    let from_store_cache = ActorError::flatten(
        "user_store",
        store
            .send(GetUser {
                ctx: ctx(),
                id: id(7),
            })
            .await,
    )
    .unwrap();

    assert!(
        Arc::ptr_eq(&from_store, &from_replica),
        "the replica keeps the user the store sent, not a copy"
    );
    assert!(
        Arc::ptr_eq(&from_store, &from_store_cache),
        "the store's cache holds that same user"
    );
    assert_eq!(script.finds(), vec![id(7)], "the database is asked once");
}

#[actix::test]
async fn replica_evicted_before_write_reply() {
    let (store, _recorder, script) = recorded_store(8);
    let (ada, renamed) = ada_and_renamed();
    {
        let mut replies = script.replies();
        replies.find.push_back(Reply::Ready(Ok(ada.clone())));
        replies.update.push_back(Reply::Ready(Ok(renamed.clone())));
        replies.find.push_back(Reply::Ready(Ok(renamed.clone())));
    }
    let replica = replica_of(&store);
    get_via(&replica, id(7)).await.unwrap();

    patch(&store, id(7), rename("Ada King")).await.unwrap();
    let after = get_via(&replica, id(7)).await;

    assert_eq!(
        after.unwrap(),
        renamed,
        "a read after the patch's reply sees the patch"
    );
    assert_eq!(
        script.finds(),
        vec![id(7), id(7)],
        "the replica asked again after the patch"
    );
}

#[actix::test]
async fn replica_drops_answer_older_than_eviction() {
    let (store, _recorder, script) = recorded_store(8);
    let (ada, renamed) = ada_and_renamed();
    let (release_old, old_reply) = oneshot::channel();
    {
        let mut replies = script.replies();
        replies.find.push_back(Reply::Held(old_reply));
        replies.update.push_back(Reply::Ready(Ok(renamed.clone())));
        replies.find.push_back(Reply::Ready(Ok(renamed.clone())));
    }
    let replica = replica_of(&store);

    let slow = {
        let replica = replica.clone();
        actix::spawn(async move { get_via(&replica, id(7)).await })
    };
    for _ in 0..100_000 {
        if !script.finds().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    patch(&store, id(7), rename("Ada King")).await.unwrap();
    release_old.send(Ok(ada.clone())).unwrap();
    let slow = slow.await.unwrap();
    let after = get_via(&replica, id(7)).await;

    assert_eq!(slow.unwrap(), ada, "the slow read returns what it read");
    assert_eq!(
        after.unwrap(),
        renamed,
        "the replica did not keep the answer that predates the patch"
    );
    assert_eq!(script.finds().len(), 2, "the later read asked again");
}
