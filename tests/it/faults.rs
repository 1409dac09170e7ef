//! Behaviour under bursts and database locks.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use troupe::db::DatabaseUrl;

use crate::helpers::{Backend, TestApp};

/// Concurrent creates in one burst.
const BURST: usize = 300;

async fn total_users(app: &TestApp) -> i64 {
    let page: Value = app
        .get("/api/v1/users?limit=1")
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
        total_users(&app).await,
        created,
        "rows stored equal 201 answers"
    );
    app.stop().await;
}

/// A write blocked behind another process's SQLite lock occupies a database
/// worker, not the HTTP thread: `/healthz` still answers.
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
    let stored = total_users(&app).await;
    match status {
        201 => assert_eq!(stored, 1, "an acknowledged create is stored"),
        503 => assert_eq!(stored, 0, "a create answered 503 is not stored"),
        other => panic!("the blocked create answered {other}"),
    }
    app.stop().await;
}

crate::on_both_backends!(burst_creates_match_rows);
