//! Behaviour under bursts and database locks.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use troupe::actors::{ActorError, DbQuery, InjectPanic, Query, RequestCtx};
use troupe::config::QueueSettings;
use troupe::db::DatabaseUrl;
use troupe::db::{DbConn, DbError, DbPool, PoolSettings};

use crate::helpers::{problem, test_settings, Backend, TestApp, TestDb};

/// Concurrent creates in one burst.
const BURST: usize = 300;

/// Returns the `total` of a listing, such as `users` or `posts`.
async fn total(app: &TestApp, collection: &str) -> i64 {
    let page: Value = app
        .get(&format!("/api/v1/{collection}?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["total"].as_i64().expect("total is an integer")
}

/// Every create in a burst is either committed and answered 201, or
/// answered 503 with `Retry-After` and not committed.
async fn burst_creates_match_rows(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let client = app.client.clone();
    let url = app.url("/api/v1/users");

    let mut requests = JoinSet::new();
    for n in 0..BURST {
        let request = client
            .post(&url)
            .json(&json!({ "name": format!("User {n}"), "email": format!("user{n}@example.com") }));
        requests.spawn(async move { request.send().await });
    }

    let mut created = 0;
    while let Some(joined) = requests.join_next().await {
        let response = joined.unwrap().unwrap();
        match response.status().as_u16() {
            201 => created += 1,
            503 => assert!(
                response.headers().contains_key("retry-after"),
                "503 without Retry-After"
            ),
            other => panic!(
                "a create answered {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }

    assert_eq!(
        total(&app, "users").await,
        created,
        "rows stored equal 201 answers"
    );
    app.stop().await;
}

/// A write blocked behind another process's SQLite lock occupies a database
/// worker, not the HTTP thread: `/healthz` still responds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_sqlite_locked() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let DatabaseUrl::Sqlite(path) = app.db.url.clone() else {
        unreachable!("an SQLite test database")
    };

    let mut locker = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
    locker.batch_execute("BEGIN EXCLUSIVE").unwrap();

    let create = app
        .post_json(
            "/api/v1/users",
            &json!({ "name": "Blocked", "email": "blocked@example.com" }),
        )
        .send();
    let create = tokio::spawn(create);

    // The timeout only turns a hang into a failure.
    let health = app
        .get("/healthz")
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    let health = health.expect("/healthz answers while the database is locked");
    assert_eq!(health.status(), 200);

    locker.batch_execute("ROLLBACK").unwrap();
    let create = create.await.unwrap().unwrap();
    let status = create.status().as_u16();
    let stored = total(&app, "users").await;
    match status {
        201 => assert_eq!(stored, 1, "an acknowledged create is stored"),
        503 => assert_eq!(stored, 0, "a create answered 503 is not stored"),
        other => panic!("the blocked create answered {other}"),
    }
    app.stop().await;
}

/// The open connections keep an SQLite file that was moved away under a
/// running troupe, but troupe would never open it again. So while it is away,
/// `/readyz` returns 503 and a write is rejected with 503 instead of being
/// acknowledged into it. Both recover once the file is back. Deleting the
/// write-ahead log counts the same. A deleted file is not created again
/// empty: writes keep failing with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_moved_away_rejects_writes() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let DatabaseUrl::Sqlite(path) = app.db.url.clone() else {
        unreachable!("an SQLite test database")
    };
    let create = |email: &'static str| {
        app.post_json("/api/v1/users", &json!({ "name": "Moved", "email": email }))
            .send()
    };
    assert_eq!(create("first@example.com").await.unwrap().status(), 201);

    let aside = path.with_extension("aside");
    std::fs::rename(&path, &aside).unwrap();
    let ready = app.get("/readyz").send().await.unwrap();
    let body = problem(ready, 503).await;
    assert_eq!(body["code"], "not_ready", "{body}");
    assert!(
        !body.to_string().contains(".db"),
        "the body names the file: {body}"
    );
    let rejected = create("rejected@example.com").await.unwrap();
    let body = problem(rejected, 503).await;
    assert_eq!(body["code"], "database_unavailable", "{body}");
    assert!(
        !body.to_string().contains(".db"),
        "the body names the file: {body}"
    );

    std::fs::rename(&aside, &path).unwrap();
    assert_eq!(app.get("/readyz").send().await.unwrap().status(), 200);
    // The rejected write was not stored, so its email is still free.
    assert_eq!(create("rejected@example.com").await.unwrap().status(), 201);
    assert_eq!(total(&app, "users").await, 2);

    // Deleting the write-ahead log deletes the writes it holds.
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    std::fs::remove_file(&wal).unwrap();
    let rejected = create("no-log@example.com").await.unwrap();
    let body = problem(rejected, 503).await;
    assert_eq!(body["code"], "database_unavailable", "{body}");
    let ready = app.get("/readyz").send().await.unwrap();
    problem(ready, 503).await;

    std::fs::remove_file(&path).unwrap();
    let rejected = create("gone@example.com").await.unwrap();
    problem(rejected, 503).await;
    let rejected = create("gone-again@example.com").await.unwrap();
    problem(rejected, 503).await;
    // A pool opens its replacement connections the same way.
    let settings = PoolSettings {
        connection_timeout: Duration::from_millis(300),
        ..crate::helpers::test_settings(app.db.url.clone()).pool
    };
    assert!(DbPool::connect(&app.db.url, &settings).is_err());
    assert!(
        !path.exists(),
        "a connection created the deleted file again"
    );
    app.stop().await;
}

/// troupe merges SQLite's write-ahead log into the database file when it
/// stops, so the file alone contains every acknowledged write: a copy of it
/// is a whole backup. That includes writes whose log was deleted while
/// troupe ran, because its connections still have the log open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stop_merges_log_into_file() {
    for delete_log in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("troupe.db");
        let Some(db) = TestDb::create(Backend::Sqlite) else {
            return;
        };
        let app = TestApp::start(test_settings(DatabaseUrl::Sqlite(path.clone())), db);
        for n in 0..3 {
            let body = json!({ "name": "Kept", "email": format!("kept{n}@example.com") });
            let created = app.post_json("/api/v1/users", &body).send().await.unwrap();
            assert_eq!(created.status(), 201);
        }
        if delete_log {
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            std::fs::remove_file(&wal).unwrap();
        }
        app.stop().await;

        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        let mut conn = SqliteConnection::establish(&copy.to_string_lossy()).unwrap();
        let users: i64 =
            diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT count(*) FROM users")
                .get_result(&mut conn)
                .unwrap();
        assert_eq!(
            users, 3,
            "users in the file alone, log deleted: {delete_log}"
        );
    }
}

crate::on_both_backends!(
    burst_creates_match_rows,
    metrics_count_panics_and_restarts,
    duplicate_creates_in_batches_conflict_alone,
    concurrent_posts_go_in_batches,
    concurrent_uncached_reads_get_their_own_user,
    crossed_writes_do_not_deadlock,
);

/// Twenty-four clients change six users and their posts at once, each in
/// its own order: user renames, post edits and new posts. Batches in
/// flight together lock the same rows, and on PostgreSQL they deadlocked
/// when they took the locks in different orders. Every write must succeed
/// and count once in its row's version.
async fn crossed_writes_do_not_deadlock(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut users = Vec::new();
    let mut posts = Vec::new();
    for n in 0..6 {
        let body = json!({
            "name": "Crossed",
            "email": format!("crossed{n}@example.com"),
            "posts": [{ "title": "First", "content": "Body" }],
        });
        let created = app.post_json("/api/v1/users", &body).send().await.unwrap();
        assert_eq!(created.status(), 201);
        let created: Value = created.json().await.unwrap();
        users.push(created["id"].as_i64().unwrap());
        posts.push(created["posts"][0]["id"].as_i64().unwrap());
    }

    let mut clients = JoinSet::new();
    for client in 0..24 {
        let requests: Vec<(String, reqwest::RequestBuilder)> = (0..20)
            .flat_map(|round| {
                let user = users[(client * 5 + round) % 6];
                let post = posts[(client + round * 5) % 6];
                let owner = users[(client + round) % 6];
                [
                    (
                        format!("user {user}"),
                        app.patch_json(
                            &format!("/api/v1/users/{user}"),
                            &json!({ "name": format!("Client {client} round {round}") }),
                        ),
                    ),
                    (
                        format!("post {post}"),
                        app.patch_json(
                            &format!("/api/v1/posts/{post}"),
                            &json!({ "content": format!("Client {client} round {round}") }),
                        ),
                    ),
                    (
                        "new post".to_owned(),
                        app.post_json(
                            &format!("/api/v1/users/{owner}/posts"),
                            &json!({ "title": "Later", "content": "Body" }),
                        ),
                    ),
                ]
            })
            .collect();
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for (target, request) in requests {
                let status = request.send().await.unwrap().status().as_u16();
                statuses.push((target, status));
            }
            statuses
        });
    }
    let mut changes: std::collections::HashMap<String, i64> = Default::default();
    while let Some(joined) = clients.join_next().await {
        for (target, status) in joined.unwrap() {
            let expected = if target == "new post" { 201 } else { 200 };
            assert_eq!(status, expected, "a write to {target} succeeds");
            *changes.entry(target).or_default() += 1;
        }
    }

    for (kind, ids) in [("user", &users), ("post", &posts)] {
        for id in ids {
            let path = match kind {
                "user" => format!("/api/v1/users/{id}"),
                _ => format!("/api/v1/posts/{id}"),
            };
            let current = app.get(&path).send().await.unwrap();
            let writes = changes.get(&format!("{kind} {id}")).copied().unwrap_or(0);
            assert_eq!(
                current.headers()["etag"],
                format!("\"{}\"", 1 + writes).as_str(),
                "{kind} {id} counts each of its {writes} changes once in its version"
            );
        }
    }
    let new_posts = changes.get("new post").copied().unwrap_or(0);
    assert_eq!(new_posts, 24 * 20, "every new post was acknowledged");
    app.stop().await;
}

/// Forty-two concurrent reads with the cache off, spread over five live
/// users, a deleted one and an id never used: each live read gets its own
/// user, the others 404, however the reads were gathered into queries.
async fn concurrent_uncached_reads_get_their_own_user(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |settings| settings.cache_capacity = None).await
    else {
        return;
    };
    let mut ids = Vec::new();
    for n in 0..6 {
        let created = app
            .create_user("Reader", &format!("reader{n}@example.com"))
            .await;
        ids.push(created["id"].as_i64().unwrap());
    }
    let deleted = ids[5];
    let deletion = app
        .delete(&format!("/api/v1/users/{deleted}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deletion.status(), 204);
    ids.push(deleted + 1000);

    let mut reads = JoinSet::new();
    for n in 0..42 {
        let id = ids[n % ids.len()];
        let request = app.get(&format!("/api/v1/users/{id}"));
        reads.spawn(async move { (id, request.send().await) });
    }
    let mut found = 0;
    while let Some(joined) = reads.join_next().await {
        let (id, response) = joined.unwrap();
        let response = response.unwrap();
        if id >= deleted {
            assert_eq!(response.status(), 404, "user {id} is deleted or missing");
            continue;
        }
        assert_eq!(response.status(), 200, "user {id} is live");
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["id"], id, "the read gets the user it asked for");
        found += 1;
    }

    assert_eq!(found, 30, "five live users, six reads each");
    app.stop().await;
}

/// Thirty concurrent post creates for three users, ten of them for a user
/// deleted meanwhile: the others are stored, each answered with its own post,
/// and every create went through a batch.
async fn concurrent_posts_go_in_batches(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let mut users = Vec::new();
    for n in 0..3 {
        let body = json!({ "name": "Author", "email": format!("author{n}@example.com") });
        let created: Value = app
            .post_json("/api/v1/users", &body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        users.push(created["id"].as_i64().unwrap());
    }
    let deleted = users[2];
    let gone = app
        .client
        .delete(app.url(&format!("/api/v1/users/{deleted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);

    let mut requests = JoinSet::new();
    for n in 0..30 {
        let user = users[n % 3];
        let title = format!("Post {n}");
        let request = app.post_json(
            &format!("/api/v1/users/{user}/posts"),
            &json!({ "title": title, "content": "Body" }),
        );
        requests.spawn(async move { (user, title, request.send().await) });
    }
    let mut stored = 0;
    while let Some(joined) = requests.join_next().await {
        let (user, title, response) = joined.unwrap();
        let response = response.unwrap();
        if user == deleted {
            assert_eq!(
                response.status(),
                404,
                "a post for the deleted user gets 404"
            );
            continue;
        }
        assert_eq!(response.status(), 201, "a post for a live user is created");
        let post: Value = response.json().await.unwrap();
        assert_eq!(post["user_id"], user, "the post belongs to its user");
        assert_eq!(
            post["title"],
            title.as_str(),
            "the reply is this create's post"
        );
        stored += 1;
    }

    assert_eq!(
        total(&app, "posts").await,
        stored,
        "every 201 is a stored post"
    );
    assert_eq!(
        metric(&app, "troupe_batched_writes_total{writes=\"posts\"}").await,
        30.0,
        "every post create went through a batch"
    );
    app.stop().await;
}

/// Forty concurrent creates, four spellings of each of ten emails. Whatever
/// batches they share, each email is created once and its other three
/// creates get 409; every create went through a batch.
async fn duplicate_creates_in_batches_conflict_alone(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let spellings = [
        "user{n}@example.com",
        "USER{n}@example.com",
        "User{n}@Example.com",
        " user{n}@example.COM ",
    ];

    let mut requests = JoinSet::new();
    for n in 0..10 {
        for spelling in spellings {
            let email = spelling.replace("{n}", &n.to_string());
            let request =
                app.post_json("/api/v1/users", &json!({ "name": "Twin", "email": email }));
            requests.spawn(async move { request.send().await });
        }
    }
    let mut created = 0;
    let mut conflicts = 0;
    while let Some(joined) = requests.join_next().await {
        match joined.unwrap().unwrap().status().as_u16() {
            201 => created += 1,
            409 => conflicts += 1,
            other => panic!("a create answered {other}"),
        }
    }

    assert_eq!(created, 10, "each email is created once");
    assert_eq!(conflicts, 30, "every other spelling gets 409");
    assert_eq!(total(&app, "users").await, 10, "one row per email");
    assert_eq!(
        metric(&app, "troupe_batched_writes_total{writes=\"users\"}").await,
        40.0,
        "every create went through a batch"
    );
    let batches = metric(&app, "troupe_write_batches_total{writes=\"users\"}").await;
    assert!(
        (1.0..=40.0).contains(&batches),
        "40 writes took between 1 and 40 batches, not {batches}"
    );
    app.stop().await;
}

/// While a batch waits for SQLite's write lock, the creates that arrive
/// meanwhile wait in the user store. Once the lock is free they commit
/// together in one more batch, and every one of them is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_behind_a_batch_commit_together() {
    const WRITES: usize = 20;
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let lock = SqliteLock::take(&app);

    let mut requests = JoinSet::new();
    for n in 0..WRITES {
        let request = create_request(&app, n);
        requests.spawn(async move { request.send().await });
    }
    let queued = until_metric(
        &app,
        "troupe_db_queue_depth",
        WRITES as f64,
        Duration::from_secs(5),
    )
    .await;
    assert!(queued, "all {WRITES} creates are admitted behind the lock");
    lock.release();

    while let Some(joined) = requests.join_next().await {
        let status = joined.unwrap().unwrap().status();
        assert_eq!(
            status, 201,
            "a create behind the lock is stored once it is free"
        );
    }
    assert_eq!(
        total(&app, "users").await,
        WRITES as i64,
        "every create is stored"
    );
    assert_eq!(
        metric(&app, "troupe_write_batches_total{writes=\"users\"}").await,
        2.0,
        "the first create waited alone, the others shared the next batch"
    );
    app.stop().await;
}

/// Reads one sample from `/metrics`, such as
/// `troupe_unavailable_responses_total{reason="overloaded"}`; a sample that
/// is not there yet counts as 0.
pub async fn metric(app: &TestApp, sample: &str) -> f64 {
    let text = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix(sample))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `sample` equals `expected`, for at most `within`,
/// and returns whether it did. The bound turns a value that never comes
/// into a failed assertion instead of a hung test.
async fn until_metric(app: &TestApp, sample: &str, expected: f64, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if metric(app, sample).await == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Holds SQLite's write lock from another connection until dropped.
struct SqliteLock(SqliteConnection);

impl SqliteLock {
    fn take(app: &TestApp) -> Self {
        let DatabaseUrl::Sqlite(path) = app.db.url.clone() else {
            unreachable!("an SQLite test database")
        };
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
        conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
        Self(conn)
    }

    fn release(mut self) {
        self.0.batch_execute("ROLLBACK").unwrap();
    }
}

fn create_request(app: &TestApp, n: usize) -> reqwest::RequestBuilder {
    app.post_json(
        "/api/v1/users",
        &json!({ "name": format!("Queued {n}"), "email": format!("queued{n}@example.com") }),
    )
}

/// With the only queue place taken by a write stuck behind a lock, the next
/// request is rejected at once with 503 `overloaded` and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_rejects_with_503() {
    let spawned = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.queue = QueueSettings {
            capacity: 1,
            wait: Duration::from_millis(10),
        };
    });
    let Some(app) = spawned.await else { return };
    let lock = SqliteLock::take(&app);

    let first = tokio::spawn(create_request(&app, 1).send());
    let admitted = until_metric(&app, "troupe_db_queue_depth", 1.0, Duration::from_secs(5)).await;
    assert!(admitted, "the first create takes the only queue place");

    let second = create_request(&app, 2).send().await.unwrap();
    assert_eq!(second.status(), 503, "the second create is rejected");
    assert!(
        second.headers().contains_key("retry-after"),
        "503 carries Retry-After"
    );
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");

    lock.release();
    let first = first.await.unwrap().unwrap().status().as_u16();
    let expected_rows = i64::from(first == 201);
    assert!(
        first == 201 || first == 503,
        "the first create answered {first}"
    );
    assert_eq!(
        total(&app, "users").await,
        expected_rows,
        "only an acknowledged create is stored"
    );
    assert_eq!(
        metric(
            &app,
            "troupe_unavailable_responses_total{reason=\"overloaded\"}"
        )
        .await,
        1.0,
        "the rejection is counted by reason"
    );
    assert_eq!(metric(&app, "troupe_db_queue_rejections_total").await, 1.0);
    app.stop().await;
}

/// Runs three creates behind an SQLite lock with one worker, one write per
/// batch, a busy timeout of 400 ms and a request budget of 500 ms. The
/// first create waits out the
/// busy timeout and gets 503 `database_busy`. The second starts at 400 ms or
/// later and does the same, so the third cannot start before 800 ms and is
/// skipped with 503 `deadline_exceeded`. None is stored, and service resumes
/// once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_are_skipped() {
    let spawned = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.db_workers = 1;
        settings.pool.max_size = 1;
        settings.write_batch_max = 1;
        settings.pool.sqlite_busy_timeout = Duration::from_millis(400);
        settings.request_timeout = Duration::from_millis(500);
    });
    let Some(app) = spawned.await else { return };
    let lock = SqliteLock::take(&app);

    let mut requests = JoinSet::new();
    for n in 0..3 {
        let request = create_request(&app, n);
        requests.spawn(async move { request.send().await });
    }
    let mut codes = Vec::new();
    while let Some(joined) = requests.join_next().await {
        let response = joined.unwrap().unwrap();
        assert_eq!(response.status(), 503, "a create behind the lock gets 503");
        assert!(
            response.headers().contains_key("retry-after"),
            "503 carries Retry-After"
        );
        let body: Value = response.json().await.unwrap();
        codes.push(body["code"].as_str().unwrap_or_default().to_owned());
    }

    assert!(
        codes.contains(&"database_busy".to_owned()),
        "a started create reports the lock: {codes:?}"
    );
    assert!(
        codes.contains(&"deadline_exceeded".to_owned()),
        "a late create is skipped: {codes:?}"
    );
    assert!(
        metric(&app, "troupe_db_deadline_skips_total").await >= 1.0,
        "skips are counted"
    );
    lock.release();
    assert_eq!(
        total(&app, "users").await,
        0,
        "no create behind the lock is stored"
    );

    let after = create_request(&app, 9).send().await.unwrap();
    assert_eq!(after.status(), 201, "service resumes once the lock is gone");
    app.stop().await;
}

/// Another session takes the email that a PUT requests and, before it
/// commits, waits for the user that the PUT has locked: a deadlock over the
/// unique email index that row locks taken in order cannot prevent.
/// PostgreSQL rolls back the PUT's statement, which used to answer 503
/// `database_busy`. The write runs again once the session has committed
/// and gets the 409 it would have got without the deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlock_runs_write_again() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let DatabaseUrl::Postgres(url) = app.db.url.clone() else {
        unreachable!("a PostgreSQL test database")
    };
    let first = app.create_user("First", "first@example.com").await;
    let second = app.create_user("Second", "second@example.com").await;
    let (first, second) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );

    let mut session = diesel::PgConnection::establish(&url).unwrap();
    session
        .batch_execute(&format!(
            "BEGIN; UPDATE users SET email = 'taken@example.com' WHERE id = {first}"
        ))
        .unwrap();
    let put = app.put_json(
        &format!("/api/v1/users/{second}"),
        &json!({ "name": "Second", "email": "taken@example.com" }),
    );
    let put = tokio::spawn(async move { put.send().await });

    // The PUT has locked the second user and waits on the session's email.
    let mut watcher = diesel::PgConnection::establish(&url).unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(waiting)
            .get_result(&mut watcher)
            .unwrap();
        if count == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the PUT never waited for the session's email"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now the session waits for the PUT: PostgreSQL breaks the cycle by
    // rolling back the PUT, whose wait began first.
    session
        .batch_execute(&format!(
            "UPDATE users SET name = 'Session' WHERE id = {second}; COMMIT"
        ))
        .unwrap();

    let response = put.await.unwrap().unwrap();
    let body = problem(response, 409).await;
    assert_eq!(body["code"], "email_taken");
    let stored = app.get_json(&format!("/api/v1/users/{second}")).await;
    assert_eq!(
        stored["email"], "second@example.com",
        "the PUT changed nothing"
    );
    assert_eq!(stored["name"], "Session", "the session's change stands");
    app.stop().await;
}

/// PostgreSQL counterpart of the SQLite lock test, also with one write per
/// batch: another session holds an exclusive lock on `users` longer than
/// the request budget. The statement
/// that waits for it is cancelled by `statement_timeout` (503
/// `database_busy`), later ones are skipped at their deadline (503
/// `deadline_exceeded`), nothing is stored, and `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_table_lock_gives_503() {
    let spawned = TestApp::spawn_with(Backend::Postgres, |settings| {
        settings.db_workers = 1;
        settings.pool.max_size = 1;
        settings.write_batch_max = 1;
        settings.pool.pg_statement_timeout = Duration::from_millis(400);
        settings.request_timeout = Duration::from_millis(500);
    });
    let Some(app) = spawned.await else { return };
    let DatabaseUrl::Postgres(url) = app.db.url.clone() else {
        unreachable!("a PostgreSQL test database")
    };
    let mut locker = diesel::PgConnection::establish(&url).unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .unwrap();

    let mut requests = JoinSet::new();
    for n in 0..3 {
        let request = create_request(&app, n);
        requests.spawn(async move { request.send().await });
    }
    let health = app
        .get("/healthz")
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert_eq!(health.expect("/healthz answers").status(), 200);

    let mut codes = Vec::new();
    while let Some(joined) = requests.join_next().await {
        let response = joined.unwrap().unwrap();
        assert_eq!(response.status(), 503, "a create behind the lock gets 503");
        let body: Value = response.json().await.unwrap();
        codes.push(body["code"].as_str().unwrap_or_default().to_owned());
    }
    locker.batch_execute("ROLLBACK").unwrap();

    assert!(
        codes.contains(&"database_busy".to_owned()),
        "the started create is cancelled: {codes:?}"
    );
    assert!(
        codes.contains(&"deadline_exceeded".to_owned()),
        "a late create is skipped: {codes:?}"
    );
    assert_eq!(
        total(&app, "users").await,
        0,
        "no create behind the lock is stored"
    );
    app.stop().await;
}

/// A query that panics, to make a database worker fail on purpose.
struct Explode;

impl DbQuery for Explode {
    type Output = ();
    const NAME: &'static str = "test.explode";

    fn run(self, _: &mut DbConn) -> Result<(), DbError> {
        panic!("panic injected by a test")
    }
}

/// Panics caught in the user store and in the database workers, and the
/// store's restarts, show in `/metrics`; the service keeps serving.
async fn metrics_count_panics_and_restarts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let store_reply = app.store.send(InjectPanic).await.unwrap();
    let worker_reply = app
        .workers
        .send(Query::new(
            RequestCtx::internal(Duration::from_secs(5)),
            Explode,
        ))
        .await
        .unwrap();

    assert!(
        matches!(store_reply, Err(ActorError::Panicked { .. })),
        "{store_reply:?}"
    );
    assert!(
        matches!(worker_reply, Err(ActorError::Panicked { .. })),
        "{worker_reply:?}"
    );
    assert_eq!(metric(&app, "troupe_user_store_panics_total").await, 1.0);
    assert_eq!(metric(&app, "troupe_user_store_restarts_total").await, 1.0);
    assert_eq!(metric(&app, "troupe_db_worker_panics_total").await, 1.0);
    app.create_user("After Panics", "after@example.com").await;
    app.stop().await;
}

/// Blocks its worker until the test sends on, or drops, the other end.
struct Hang(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl DbQuery for Hang {
    type Output = ();
    const NAME: &'static str = "test.hang";

    fn run(self, _: &mut DbConn) -> Result<(), DbError> {
        let _ = self.0.lock().map(|release| release.recv());
        Ok(())
    }
}

/// A database worker that stops answering is replaced once it misses its
/// ping budget: with the only other worker busy serving, every request
/// still succeeds, and the replacement is counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_worker_is_replaced() {
    let spawned = TestApp::spawn_with(Backend::Postgres, |settings| {
        settings.db_workers = 2;
        settings.pool.max_size = 3;
        settings.pool.pg_statement_timeout = Duration::from_millis(400);
        settings.request_timeout = Duration::from_millis(500);
        settings.ping_budget = Duration::from_millis(800);
    });
    let Some(app) = spawned.await else { return };
    app.create_user("Before", "before@example.com").await;
    let (release, hold) = std::sync::mpsc::channel();

    let hung = app.workers.send(Query::new(
        RequestCtx::internal(Duration::from_secs(60)),
        Hang(std::sync::Mutex::new(hold)),
    ));
    let hung = tokio::spawn(hung);
    let replaced = until_metric(
        &app,
        "troupe_db_workers_replaced_total",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(replaced, "the hung worker is replaced");

    let mut statuses = Vec::new();
    for n in 0..6 {
        let list = app.get("/api/v1/users?limit=1").send().await.unwrap();
        let email = format!("after{n}@example.com");
        let create = app
            .post_json("/api/v1/users", &json!({ "name": "After", "email": email }))
            .send()
            .await
            .unwrap();
        statuses.push((list.status().as_u16(), create.status().as_u16()));
    }
    let ready = app.get("/readyz").send().await.unwrap();
    release.send(()).unwrap();
    let hung = hung.await.unwrap().unwrap();

    assert!(
        statuses.iter().all(|&pair| pair == (200, 201)),
        "every read and write succeeds with a worker hung: {statuses:?}"
    );
    assert_eq!(ready.status(), 200, "the service stays ready");
    assert!(
        hung.is_ok(),
        "the hung query returns once released: {hung:?}"
    );
    assert_eq!(
        total(&app, "users").await,
        7,
        "every acknowledged create is stored"
    );
    app.stop().await;
}
