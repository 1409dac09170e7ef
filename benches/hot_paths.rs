//! Micro-benchmarks of three hot paths of a read: an actor round trip to
//! the `UserStore` served from its cache, the `users::find` query function
//! on SQLite, and JSON encoding of a page of 20 users.
//!
//! Run with `cargo bench --bench hot_paths`. Each benchmark measures for a
//! few seconds only.

#![allow(
    clippy::expect_used,
    reason = "a benchmark stops at the first setup failure; there is no caller to report to"
)]

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use chrono::SecondsFormat;
use criterion::{criterion_group, criterion_main, Criterion};
use serde::Serialize;
use troupe::actors::queries::users::Insert;
use troupe::actors::{
    ActorError, DbWorker, GetUser, Query, RequestCtx, StoreStats, UserDb, UserStore, WorkerStats,
};
use troupe::db::{DatabaseUrl, DbPool, PoolSettings};
use troupe::domain::{Email, NewUser, Timestamp, User, UserFields, UserId, UserName};

/// A migrated SQLite file in a temporary directory and a pool over it.
struct Sqlite {
    pool: DbPool,
    _dir: tempfile::TempDir,
}

fn sqlite() -> Sqlite {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = DatabaseUrl::Sqlite(dir.path().join("bench.db"));
    troupe::db::migrations::run_pending(&url).expect("migrate");
    let settings = PoolSettings {
        max_size: 2,
        min_idle: None,
        connection_timeout: Duration::from_secs(5),
        sqlite_busy_timeout: Duration::from_secs(5),
        pg_statement_timeout: Duration::from_secs(5),
    };
    let pool = DbPool::connect(&url, &settings).expect("connect the pool");
    Sqlite { pool, _dir: dir }
}

fn new_user(n: usize) -> NewUser {
    NewUser {
        fields: UserFields {
            name: UserName::parse(&format!("Bench User {n}")).expect("valid name"),
            email: Email::parse(&format!("bench{n}@bench.example")).expect("valid email"),
            age: None,
        },
        posts: Vec::new(),
    }
}

/// Builds a request context whose deadline lies far beyond any benchmark run.
fn long_ctx() -> RequestCtx {
    RequestCtx::internal(Duration::from_secs(3600))
}

/// Measures a `GetUser` round trip to a `UserStore` that serves the user
/// from its cache: the message send, the handler and the reply, with no
/// database work.
fn actor_round_trip(c: &mut Criterion) {
    let db = sqlite();
    let system = actix::System::new();
    let (store, id): (Addr<UserStore>, UserId) = system.block_on(async {
        let workers = DbWorker::start_pool(1, db.pool.clone(), Arc::new(WorkerStats::default()));
        let created = workers
            .send(Query::new(long_ctx(), Insert { user: new_user(1) }))
            .await
            .expect("deliver the insert")
            .expect("insert a user");
        let capacity = NonZeroUsize::new(16).expect("non-zero");
        let store = UserStore::new(
            UserDb::new(&workers),
            capacity,
            Arc::new(StoreStats::default()),
        )
        .start();
        let id = created.user.id;
        // The first read fills the cache; every later one is a hit.
        get(&store, id, long_ctx()).await.expect("read the user");
        (store, id)
    });

    let ctx = long_ctx();
    c.bench_function("actor/get_user_cache_hit", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let user = get(&store, id, ctx.clone()).await.expect("cache hit");
                    std::hint::black_box(user);
                }
                started.elapsed()
            })
        });
    });
}

async fn get(
    store: &Addr<UserStore>,
    id: UserId,
    ctx: RequestCtx,
) -> Result<Arc<User>, ActorError> {
    ActorError::flatten("user_store", store.send(GetUser { ctx, id }).await)
}

/// Measures `troupe::db::users::find` on a pooled SQLite connection: the
/// query function alone, without actors or HTTP.
fn query_function(c: &mut Criterion) {
    let db = sqlite();
    let mut conn = db.pool.get().expect("take a connection");
    let now = troupe::domain::now().naive_utc();
    let mut last = None;
    for n in 0..100 {
        let created = troupe::db::users::insert(&mut conn, &new_user(n), now).expect("insert");
        last = Some(created.user.id);
    }
    let id = last.expect("users were inserted");

    c.bench_function("db/users_find_sqlite", |b| {
        b.iter(|| {
            let user = troupe::db::users::find(&mut conn, std::hint::black_box(id)).expect("find");
            std::hint::black_box(user)
        });
    });
}

// troupe's JSON types in `http::representation` are private to the crate,
// so these local types copy their shape: the same fields, names and
// timestamp format as `UserBody` and the listing page.
#[derive(Serialize)]
struct UserBody {
    id: i64,
    name: String,
    email: String,
    age: Option<i32>,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
struct PageBody {
    data: Vec<UserBody>,
    page: i64,
    limit: i64,
    total: i64,
}

fn rfc3339(timestamp: &Timestamp) -> String {
    timestamp.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn page_body(users: &[User]) -> PageBody {
    PageBody {
        data: users
            .iter()
            .map(|user| UserBody {
                id: user.id.get(),
                name: user.name.clone(),
                email: user.email.clone(),
                age: user.age,
                created_at: rfc3339(&user.created_at),
                updated_at: rfc3339(&user.updated_at),
            })
            .collect(),
        page: 1,
        limit: 20,
        total: 10_000,
    }
}

/// Measures encoding a page of 20 users with `serde_json::to_vec`, from
/// ready DTOs and from domain users (timestamp formatting included).
fn json_page(c: &mut Criterion) {
    let now = troupe::domain::now();
    let users: Vec<User> = (1..=20)
        .map(|n| User {
            id: UserId::from_db(n),
            name: format!("Bench User {n}"),
            email: format!("bench{n}@bench.example"),
            age: Some(30),
            version: 1,
            created_at: now,
            updated_at: now,
        })
        .collect();
    let body = page_body(&users);

    let mut group = c.benchmark_group("json");
    group.bench_function("page_of_20_to_vec", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&body)).expect("encode"));
    });
    group.bench_function("page_of_20_from_users", |b| {
        b.iter(|| serde_json::to_vec(&page_body(std::hint::black_box(&users))).expect("encode"));
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = actor_round_trip, query_function, json_page
}
criterion_main!(hot_paths);
