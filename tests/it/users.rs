//! `/api/v1/users` over HTTP: create, validation, email uniqueness, listing,
//! 64-bit ids, conditional requests, replace, merge patch, delete, the
//! user-store cache and timestamps, on SQLite and on PostgreSQL.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use futures_util::future::join_all;
use serde_json::{json, Value};
use troupe::db::DatabaseUrl;

use crate::helpers::{problem, test_settings, Backend, TestApp, TestDb};

const USERS: &str = "/api/v1/users";

/// 2^62, an id far outside the 32-bit range.
const BIG_ID: i64 = 4_611_686_018_427_387_904;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn user_path(id: i64) -> String {
    format!("{USERS}/{id}")
}

fn id_of(user: &Value) -> i64 {
    user["id"].as_i64().expect("user id is an integer")
}

async fn create(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post_json(USERS, body).send().await.expect("send POST")
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.get(path).send().await.expect("send GET")
}

async fn json_body(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("ASCII header").to_owned())
}

fn etag(response: &reqwest::Response) -> String {
    header(response, "etag").expect("ETag header")
}

/// Reads `GET path`, asserting 200, and returns the ETag and the body.
async fn fetch(app: &TestApp, path: &str) -> (String, Value) {
    let response = get(app, path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    let tag = etag(&response);
    (tag, json_body(response).await)
}

/// Reads a listing page, asserting 200.
async fn list(app: &TestApp, query: &str) -> Value {
    let response = get(app, &format!("{USERS}?{query}")).await;
    assert_eq!(response.status(), 200, "GET {USERS}?{query}");
    json_body(response).await
}

fn page_ids(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(id_of)
        .collect()
}

/// Creates a user named `Test User` with `email` and any `fields` added or
/// replaced, asserting 201.
async fn create_with(app: &TestApp, email: &str, fields: Value) -> Value {
    let mut body = json!({"name": "Test User", "email": email});
    for (key, value) in fields.as_object().expect("fields are an object") {
        body[key] = value.clone();
    }
    let response = create(app, &body).await;
    assert_eq!(response.status(), 201, "create {body}");
    json_body(response).await
}

/// Parses a `Link` header into its targets by relation type.
fn links(response: &reqwest::Response) -> BTreeMap<String, String> {
    let raw = header(response, "link").expect("Link header");
    raw.split(", ")
        .map(|link| {
            let (target, params) = link.split_once(">; ").expect("link has parameters");
            let target = target.strip_prefix('<').expect("link target in <>");
            let rel = params
                .strip_prefix("rel=\"")
                .and_then(|rest| rest.strip_suffix('"'))
                .expect("rel parameter");
            (rel.to_owned(), target.to_owned())
        })
        .collect()
}

fn parse_timestamp(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().expect("timestamp is a string");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// A direct connection to the test database, beside the service's pool.
enum DirectDb {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct StoredTime {
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    at: NaiveDateTime,
}

#[derive(QueryableByName)]
struct Zone {
    #[diesel(sql_type = diesel::sql_types::Text)]
    zone: String,
}

impl DirectDb {
    fn connect(url: &DatabaseUrl) -> Self {
        match url {
            DatabaseUrl::Postgres(url) => {
                Self::Pg(PgConnection::establish(url).expect("connect to PostgreSQL"))
            }
            DatabaseUrl::Sqlite(path) => {
                let path = path.to_str().expect("UTF-8 database path");
                Self::Sqlite(SqliteConnection::establish(path).expect("open the SQLite file"))
            }
        }
    }

    fn execute(&mut self, sql: &str) -> usize {
        let result = match self {
            Self::Pg(conn) => diesel::sql_query(sql).execute(conn),
            Self::Sqlite(conn) => diesel::sql_query(sql).execute(conn),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs `SELECT count(*) FROM {from}`.
    fn count(&mut self, from: &str) -> i64 {
        let sql = format!("SELECT count(*) AS count FROM {from}");
        let result = match self {
            Self::Pg(conn) => diesel::sql_query(&sql).get_result::<Count>(conn),
            Self::Sqlite(conn) => diesel::sql_query(&sql).get_result::<Count>(conn),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}")).count
    }

    /// Runs a query that returns one `BIGINT` named `count`.
    fn scalar(&mut self, sql: &str) -> i64 {
        let result = match self {
            Self::Pg(conn) => diesel::sql_query(sql).get_result::<Count>(conn),
            Self::Sqlite(conn) => diesel::sql_query(sql).get_result::<Count>(conn),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}")).count
    }
}

/// Sends a request and returns the status and the body as JSON, or `Null`
/// for an empty body.
async fn status_and_body(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("send request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("read body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, body)
}

// ---------------------------------------------------------------------------
// POST /users
// ---------------------------------------------------------------------------

async fn create_returns_location_and_etag(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let response = create(&app, &json!({"name": "Ada", "email": "ada@example.com"})).await;

    assert_eq!(response.status(), 201);
    let location = header(&response, "location");
    let tag = header(&response, "etag");
    let user = json_body(response).await;
    assert_eq!(location, Some(user_path(id_of(&user))));
    assert_eq!(tag.as_deref(), Some("\"1\""));
    app.stop().await;
}

async fn create_trims_and_lowercases(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let user = create_with(
        &app,
        "  Ada.Lovelace@Example.COM ",
        json!({"name": "  Ada Lovelace  "}),
    )
    .await;

    assert_eq!(user["name"], "Ada Lovelace", "name is trimmed");
    assert_eq!(
        user["email"], "ada.lovelace@example.com",
        "email is trimmed and lower-cased"
    );
    let (_, stored) = fetch(&app, &user_path(id_of(&user))).await;
    assert_eq!(stored["name"], "Ada Lovelace", "stored name is trimmed");
    assert_eq!(
        stored["email"], "ada.lovelace@example.com",
        "stored email is lower-cased"
    );
    app.stop().await;
}

async fn create_without_age_is_null(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let user = app.create_user("No Age", "noage@example.com").await;

    assert!(user.get("age").is_some(), "age is present: {user}");
    assert_eq!(user["age"], Value::Null);
    assert!(user.get("posts").is_none(), "no posts key without posts");
    app.stop().await;
}

async fn create_with_posts_returns_them(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let user = create_with(
        &app,
        "author@example.com",
        json!({"posts": [
            {"title": "First", "content": "one"},
            {"title": "Second", "content": "two"},
        ]}),
    )
    .await;

    let id = id_of(&user);
    let posts = user["posts"].as_array().expect("posts array");
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0]["title"], "First");
    assert_eq!(posts[1]["title"], "Second");
    assert!(posts.iter().all(|post| post["user_id"] == id));

    for post in posts {
        let post_id = post["id"].as_i64().expect("post id");
        let response = get(&app, &format!("/api/v1/posts/{post_id}")).await;
        assert_eq!(response.status(), 200, "post {post_id} is stored");
    }
    app.stop().await;
}

async fn create_over_100_posts_rejected(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let posts: Vec<Value> = (0..101)
        .map(|i| json!({"title": format!("Post {i}"), "content": "text"}))
        .collect();

    let response = create(
        &app,
        &json!({"name": "Prolific", "email": "many@example.com", "posts": posts}),
    )
    .await;

    let body = problem(response, 422).await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["errors"][0]["field"], "posts");
    assert_eq!(body["errors"][0]["code"], "too_many");
    assert_eq!(list(&app, "").await["total"], 0, "no user was created");
    app.stop().await;
}

async fn create_invalid_post_names_field(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let response = create(
        &app,
        &json!({"name": "Writer", "email": "writer@example.com",
                "posts": [{"title": "   ", "content": "text"}]}),
    )
    .await;

    let body = problem(response, 422).await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["errors"][0]["field"], "posts[0].title");
    assert_eq!(body["errors"][0]["code"], "too_short");
    assert_eq!(list(&app, "").await["total"], 0, "no user was created");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

async fn create_rejects_invalid_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let long_email = format!("{}@example.com", "a".repeat(250));
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "name of one character",
            json!({"name": "A"}),
            "name",
            "too_short",
        ),
        (
            "name of 51 characters",
            json!({"name": "a".repeat(51)}),
            "name",
            "too_long",
        ),
        (
            "name of 51 accented letters",
            json!({"name": "é".repeat(51)}),
            "name",
            "too_long",
        ),
        (
            "name of one emoji",
            json!({"name": "😀"}),
            "name",
            "too_short",
        ),
        (
            "name with a bell character",
            json!({"name": "Ada\u{7}L"}),
            "name",
            "invalid_characters",
        ),
        (
            "name with a newline",
            json!({"name": "Ada\nLovelace"}),
            "name",
            "invalid_characters",
        ),
        (
            "email without @",
            json!({"email": "ada.example.com"}),
            "email",
            "invalid_format",
        ),
        (
            "email with two @",
            json!({"email": "a@b@example.com"}),
            "email",
            "invalid_format",
        ),
        (
            "email with an empty local part",
            json!({"email": "@example.com"}),
            "email",
            "invalid_format",
        ),
        (
            "email domain without a dot",
            json!({"email": "ada@example"}),
            "email",
            "invalid_format",
        ),
        (
            "email with white space",
            json!({"email": "ada lovelace@example.com"}),
            "email",
            "invalid_format",
        ),
        (
            "email over 254 characters",
            json!({"email": long_email}),
            "email",
            "too_long",
        ),
        ("age -1", json!({"age": -1}), "age", "out_of_range"),
        ("age 151", json!({"age": 151}), "age", "out_of_range"),
        (
            "age as a string",
            json!({"age": "30"}),
            "age",
            "invalid_type",
        ),
        (
            "age as a fraction",
            json!({"age": 1.5}),
            "age",
            "invalid_type",
        ),
    ];

    for (reason, fields, field, code) in cases {
        let mut body = json!({"name": "Valid Name", "email": "valid@example.com"});
        for (key, value) in fields.as_object().expect("fields are an object") {
            body[key] = value.clone();
        }
        let response = create(&app, &body).await;
        assert_eq!(response.status(), 422, "status: {reason}");
        let body = problem(response, 422).await;
        assert_eq!(body["code"], "validation_failed", "code: {reason}");
        assert_eq!(body["errors"][0]["field"], field, "field: {reason}");
        assert_eq!(body["errors"][0]["code"], code, "field code: {reason}");
    }
    assert_eq!(list(&app, "").await["total"], 0, "no user was created");
    app.stop().await;
}

async fn create_accepts_boundary_names(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let accented = "é".repeat(50);
    let cases = [
        ("two CJK characters", "李雷", "cjk@example.com"),
        (
            "50 accented letters",
            accented.as_str(),
            "accent@example.com",
        ),
    ];

    for (reason, name, email) in cases {
        let response = create(&app, &json!({"name": name, "email": email})).await;
        assert_eq!(response.status(), 201, "status: {reason}");
        let user = json_body(response).await;
        assert_eq!(user["name"], name, "name kept: {reason}");
    }
    app.stop().await;
}

async fn create_rejects_unknown_field(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (
            "top-level field",
            json!({"name": "Ada", "email": "ada@example.com", "nickname": "countess"}),
            "nickname",
        ),
        (
            "field of a nested post",
            json!({"name": "Ada", "email": "ada@example.com",
                   "posts": [{"title": "Notes", "content": "text", "tags": []}]}),
            "posts[0].tags",
        ),
    ];

    for (reason, body, field) in cases {
        let body = problem(create(&app, &body).await, 422).await;
        assert_eq!(body["code"], "validation_failed", "code: {reason}");
        assert_eq!(body["errors"][0]["field"], field, "field: {reason}");
        assert_eq!(
            body["errors"][0]["code"], "unknown_field",
            "field code: {reason}"
        );
    }
    app.stop().await;
}

async fn create_requires_name_and_email(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        ("name", json!({"email": "ada@example.com"})),
        ("email", json!({"name": "Ada"})),
    ];

    for (missing, body) in cases {
        let body = problem(create(&app, &body).await, 422).await;
        assert_eq!(body["code"], "validation_failed", "code without {missing}");
        assert_eq!(
            body["errors"][0]["field"], missing,
            "field without {missing}"
        );
        assert_eq!(
            body["errors"][0]["code"], "required",
            "field code without {missing}"
        );
    }
    app.stop().await;
}

async fn create_rejects_non_object_body(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (
            "JSON array",
            json!([{"name": "Ada", "email": "ada@example.com"}]),
        ),
        ("JSON string", json!("Ada")),
    ];

    for (reason, body) in cases {
        let body = problem(create(&app, &body).await, 422).await;
        assert_eq!(body["code"], "validation_failed", "code: {reason}");
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Email uniqueness
// ---------------------------------------------------------------------------

async fn email_taken_on_create(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.create_user("First", "A@B.example").await;

    let response = create(&app, &json!({"name": "Second", "email": "a@b.example"})).await;

    let body = problem(response, 409).await;
    assert_eq!(body["code"], "email_taken");
    assert_eq!(list(&app, "").await["total"], 1, "one user exists");
    app.stop().await;
}

async fn email_taken_on_replace(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.create_user("First", "A@B.example").await;
    let other = app.create_user("Other", "other@b.example").await;
    let path = user_path(id_of(&other));

    let response = app
        .put_json(&path, &json!({"name": "Other", "email": "a@B.EXAMPLE"}))
        .send()
        .await
        .unwrap();

    let body = problem(response, 409).await;
    assert_eq!(body["code"], "email_taken");
    let (tag, stored) = fetch(&app, &path).await;
    assert_eq!(stored["email"], "other@b.example", "email unchanged");
    assert_eq!(tag, "\"1\"", "version unchanged");
    app.stop().await;
}

async fn email_taken_on_patch(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.create_user("First", "A@B.example").await;
    let other = app.create_user("Other", "other@b.example").await;
    let path = user_path(id_of(&other));

    let response = app
        .patch_json(&path, &json!({"email": "A@b.Example"}))
        .send()
        .await
        .unwrap();

    let body = problem(response, 409).await;
    assert_eq!(body["code"], "email_taken");
    let (tag, stored) = fetch(&app, &path).await;
    assert_eq!(stored["email"], "other@b.example", "email unchanged");
    assert_eq!(tag, "\"1\"", "version unchanged");
    app.stop().await;
}

async fn email_filter_ignores_case(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("First", "A@B.example").await;
    app.create_user("Other", "other@b.example").await;

    let page = list(&app, "email=A@B.EXAMPLE").await;

    assert_eq!(page["total"], 1);
    assert_eq!(page_ids(&page), vec![id_of(&user)]);
    app.stop().await;
}

async fn email_race_creates_one_user(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // Each variant upper-cases the letters of "racer" picked by the bits of i.
    let variants: Vec<String> = (0..20)
        .map(|i: u32| {
            let local: String = "racer"
                .chars()
                .enumerate()
                .map(|(bit, c)| {
                    if i & (1 << bit) == 0 {
                        c
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect();
            format!("{local}@Race.example")
        })
        .collect();

    let requests = variants.iter().map(|email| {
        status_and_body(
            app.client
                .post(app.url(USERS))
                .json(&json!({"name": "Racer", "email": email})),
        )
    });
    let outcomes = join_all(requests).await;

    let created = outcomes.iter().filter(|(status, _)| *status == 201).count();
    let conflicts: Vec<&Value> = outcomes
        .iter()
        .filter(|(status, _)| *status == 409)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(created, 1, "exactly one create succeeds: {outcomes:?}");
    assert_eq!(conflicts.len(), 19, "the others conflict: {outcomes:?}");
    assert!(
        conflicts.iter().all(|body| body["code"] == "email_taken"),
        "conflicts are email_taken: {conflicts:?}"
    );
    assert_eq!(list(&app, "email=racer@race.example").await["total"], 1);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// GET /users
// ---------------------------------------------------------------------------

/// Creates `count` users named `User {i}` with emails `user{i}@list.example`
/// and returns them in creation order.
async fn create_users(app: &TestApp, count: usize) -> Vec<Value> {
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        users.push(
            app.create_user(&format!("User {i}"), &format!("user{i}@list.example"))
                .await,
        );
    }
    users
}

async fn list_defaults_page_and_limit(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let users = create_users(&app, 21).await;

    let page = list(&app, "").await;

    assert_eq!(page["page"], 1);
    assert_eq!(page["limit"], 20);
    assert_eq!(page["total"], 21);
    let expected: Vec<i64> = users.iter().take(20).map(id_of).collect();
    assert_eq!(page_ids(&page), expected, "first 20 users by id");
    app.stop().await;
}

async fn list_limit_and_page(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let users = create_users(&app, 5).await;
    let ids: Vec<i64> = users.iter().map(id_of).collect();

    let page = list(&app, "limit=2&page=2").await;

    assert_eq!(page["page"], 2);
    assert_eq!(page["limit"], 2);
    assert_eq!(page["total"], 5);
    assert_eq!(page_ids(&page), ids[2..4].to_vec());
    let last = list(&app, "limit=2&page=3").await;
    assert_eq!(page_ids(&last), ids[4..].to_vec(), "last page is partial");
    app.stop().await;
}

async fn list_past_end_is_empty(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    create_users(&app, 3).await;

    let path = format!("{USERS}?limit=2&page=5");
    let response = get(&app, &path).await;
    assert_eq!(response.status(), 200);
    let links = links(&response);
    let page = json_body(response).await;

    assert_eq!(page["page"], 5);
    assert_eq!(page["total"], 3);
    assert_eq!(page_ids(&page), Vec::<i64>::new());
    assert_eq!(
        links.get("prev").map(String::as_str),
        Some(format!("{USERS}?limit=2&page=2").as_str()),
        "prev points at the last page"
    );
    assert!(
        !links.contains_key("next"),
        "no next past the end: {links:?}"
    );
    app.stop().await;
}

async fn list_sorts_break_ties_by_id(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // Lower-case ASCII names sort the same in SQLite's binary order and in
    // PostgreSQL's C and en_US collations. Repeated names need the id to
    // break ties.
    // Every user is 30, so the filter `min_age=30` keeps them all and sorts
    // them in the statement that filtered listings use.
    let names = ["bob", "alice", "carol", "bob", "alice", "bob"];
    let mut users = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let email = format!("sort{i}@example.com");
        users.push(create_with(&app, &email, json!({"name": name, "age": 30})).await);
    }
    let key = |user: &Value, field: &str| user[field].as_str().expect("text").to_owned();

    let mut by_id: Vec<&Value> = users.iter().collect();
    by_id.sort_by_key(|user| id_of(user));
    let mut by_name = by_id.clone();
    by_name.sort_by_key(|user| (key(user, "name"), id_of(user)));
    let mut by_created = by_id.clone();
    by_created.sort_by_key(|user| (key(user, "created_at"), id_of(user)));
    let ascending = |users: &[&Value]| users.iter().map(|user| id_of(user)).collect::<Vec<_>>();
    let descending = |users: &[&Value]| {
        let mut ids = ascending(users);
        ids.reverse();
        ids
    };
    // A descending sort reverses the whole order, ties included, so that
    // `-field` is the exact reverse of `field`.
    let cases = [
        ("id", ascending(&by_id)),
        ("-id", descending(&by_id)),
        ("name", ascending(&by_name)),
        ("-name", descending(&by_name)),
        ("created_at", ascending(&by_created)),
        ("-created_at", descending(&by_created)),
    ];

    for (sort, expected) in cases {
        let page = list(&app, &format!("sort={sort}&limit=100")).await;
        assert_eq!(page_ids(&page), expected, "order of sort={sort}");
        let filtered = list(&app, &format!("sort={sort}&limit=100&min_age=30")).await;
        assert_eq!(
            page_ids(&filtered),
            expected,
            "order of sort={sort} with a filter"
        );
    }
    app.stop().await;
}

async fn list_filters_combine(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let young = create_with(&app, "young@example.com", json!({"age": 20})).await;
    let middle = create_with(&app, "middle@example.com", json!({"age": 30})).await;
    let twin = create_with(&app, "twin@example.com", json!({"age": 31})).await;
    create_with(&app, "old@example.com", json!({"age": 40})).await;
    create_with(&app, "ageless@example.com", json!({})).await;

    let min_only = list(&app, "min_age=30").await;
    let max_only = list(&app, "max_age=30").await;
    let range = list(&app, "min_age=25&max_age=35").await;
    let all_three = list(&app, "min_age=25&max_age=35&email=Twin@Example.com").await;

    assert_eq!(
        min_only["total"], 3,
        "min_age is inclusive, null ages excluded"
    );
    assert_eq!(
        page_ids(&max_only),
        vec![id_of(&young), id_of(&middle)],
        "max_age is inclusive"
    );
    assert_eq!(
        page_ids(&range),
        vec![id_of(&middle), id_of(&twin)],
        "both bounds"
    );
    assert_eq!(all_three["total"], 1, "age range and email");
    assert_eq!(page_ids(&all_three), vec![id_of(&twin)]);
    app.stop().await;
}

async fn list_rejects_invalid_paging(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        ("page=0", "page", "page starts at 1"),
        ("page=-1", "page", "negative page"),
        ("page=x", "page", "page is not a number"),
        ("limit=0", "limit", "limit starts at 1"),
        ("limit=101", "limit", "limit ends at 100"),
        (
            "page=9223372036854775807&limit=100",
            "page",
            "row offset overflows 64 bits",
        ),
        ("page=99999999999999999999", "page", "page beyond 64 bits"),
    ];

    assert_queries_rejected(&app, &cases).await;
    app.stop().await;
}

async fn list_rejects_blank_filters(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        ("email=", "email", "empty email"),
        ("email=%20%20", "email", "email of spaces"),
        ("min_age=", "min_age", "empty min_age"),
        ("max_age=", "max_age", "empty max_age"),
    ];

    assert_queries_rejected(&app, &cases).await;
    app.stop().await;
}

/// Lists users with each `(query, field, reason)` case and expects a 400
/// `invalid_query` whose first error names `field`.
async fn assert_queries_rejected(app: &TestApp, cases: &[(&str, &str, &str)]) {
    for (query, field, reason) in cases {
        let response = get(app, &format!("{USERS}?{query}")).await;
        assert_eq!(response.status(), 400, "status: {reason}");
        let body = problem(response, 400).await;
        assert_eq!(body["code"], "invalid_query", "code: {reason}");
        assert_eq!(body["errors"][0]["field"], *field, "field: {reason}");
    }
}

async fn list_rejects_unknown_parameter(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let body = problem(get(&app, &format!("{USERS}?colour=red")).await, 400).await;

    assert_eq!(body["code"], "invalid_query");
    assert_eq!(body["errors"][0]["field"], "colour");
    assert_eq!(body["errors"][0]["code"], "unknown_parameter");
    app.stop().await;
}

async fn list_rejects_repeated_parameter(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let body = problem(get(&app, &format!("{USERS}?page=1&page=2")).await, 400).await;

    assert_eq!(body["code"], "invalid_query");
    assert_eq!(body["errors"][0]["field"], "page");
    assert_eq!(body["errors"][0]["code"], "repeated_parameter");
    app.stop().await;
}

async fn list_link_header_rels(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let users = create_users(&app, 5).await;
    let ids: Vec<i64> = users.iter().map(id_of).collect();
    let target = |page: i64| format!("{USERS}?limit=2&page={page}");
    let rels = |links: &BTreeMap<String, String>| links.keys().cloned().collect::<Vec<_>>();

    let first = links(&get(&app, &target(1)).await);
    let middle = links(&get(&app, &target(2)).await);
    let last = links(&get(&app, &target(3)).await);

    assert_eq!(rels(&first), ["first", "last", "next"], "rels of page 1");
    assert_eq!(first["next"], target(2));
    assert_eq!(first["last"], target(3));
    assert_eq!(
        rels(&middle),
        ["first", "last", "next", "prev"],
        "rels of page 2"
    );
    assert_eq!(middle["first"], target(1));
    assert_eq!(middle["prev"], target(1));
    assert_eq!(middle["next"], target(3));
    assert_eq!(rels(&last), ["first", "last", "prev"], "rels of page 3");
    assert_eq!(last["prev"], target(2));

    let followed = json_body(get(&app, &first["next"]).await).await;
    assert_eq!(page_ids(&followed), ids[2..4].to_vec(), "next link works");

    let single = links(&get(&app, USERS).await);
    assert_eq!(rels(&single), ["first", "last"], "rels of the only page");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 64-bit ids
// ---------------------------------------------------------------------------

async fn big_id_round_trips(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let timestamp = match backend {
        Backend::Sqlite => "'2026-01-02 03:04:05.123456'",
        Backend::Postgres => "'2026-01-02 03:04:05.123456+00'",
    };
    let mut db = DirectDb::connect(&app.db.url);
    let inserted = db.execute(&format!(
        "INSERT INTO users (id, name, email, age, version, created_at, updated_at) \
         VALUES ({BIG_ID}, 'Big Id', 'big@example.com', 42, 1, {timestamp}, {timestamp})"
    ));
    assert_eq!(inserted, 1);

    let response = get(&app, &user_path(BIG_ID)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let user: Value = serde_json::from_str(&text).unwrap();
    let page = list(&app, "sort=-id").await;

    assert!(
        text.contains(&format!("\"id\":{BIG_ID}")),
        "id written as an exact integer: {text}"
    );
    assert_eq!(user["id"].as_i64(), Some(BIG_ID));
    assert_eq!(user["email"], "big@example.com");
    assert_eq!(user["created_at"], "2026-01-02T03:04:05.123456Z");
    assert_eq!(page["data"][0]["id"].as_i64(), Some(BIG_ID));
    app.stop().await;
}

// ---------------------------------------------------------------------------
// GET /users/{id}
// ---------------------------------------------------------------------------

async fn get_returns_etag(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;

    let (tag, body) = fetch(&app, &user_path(id_of(&user))).await;

    assert_eq!(tag, "\"1\"");
    assert_eq!(body, user);
    app.stop().await;
}

async fn get_if_none_match_304(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    let (tag, _) = fetch(&app, &path).await;

    let response = app
        .get(&path)
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();

    // Repeated header lines form one list, so a match on the second counts.
    let second_line = app
        .get(&path)
        .header("if-none-match", "\"0\"")
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 304);
    assert_eq!(header(&response, "etag"), Some(tag));
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "304 has no body"
    );
    assert_eq!(second_line.status(), 304, "a match on the second line");
    app.stop().await;
}

async fn get_stale_tag_200(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    let patched = app
        .patch_json(&path, &json!({"age": 36}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);

    let response = app
        .get(&path)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag").as_deref(), Some("\"2\""));
    assert_eq!(json_body(response).await["age"], 36);
    app.stop().await;
}

async fn get_include_posts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = id_of(&user);
    let first = app.create_post(id, "First").await;
    let second = app.create_post(id, "Second").await;

    let response = get(&app, &format!("{}?include=posts", user_path(id))).await;

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["id"], id);
    assert_eq!(body["posts"], json!([first, second]));
    app.stop().await;
}

async fn get_include_comments_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;

    let path = format!("{}?include=comments", user_path(id_of(&user)));
    let body = problem(get(&app, &path).await, 400).await;

    assert_eq!(body["code"], "invalid_query");
    assert_eq!(body["errors"][0]["field"], "include");
    app.stop().await;
}

async fn get_unknown_id_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let body = problem(get(&app, &user_path(987_654)).await, 404).await;

    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// PUT /users/{id}
// ---------------------------------------------------------------------------

async fn put_replaces_all_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = create_with(&app, "ada@example.com", json!({"age": 36})).await;
    let path = user_path(id_of(&user));

    let response = app
        .put_json(
            &path,
            &json!({"name": " Grace Hopper ", "email": "Grace@Example.com", "age": 85}),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(etag(&response), "\"2\"");
    let replaced = json_body(response).await;
    assert_eq!(replaced["id"], user["id"]);
    assert_eq!(replaced["name"], "Grace Hopper");
    assert_eq!(replaced["email"], "grace@example.com");
    assert_eq!(replaced["age"], 85);
    assert_eq!(replaced["created_at"], user["created_at"]);
    let (_, stored) = fetch(&app, &path).await;
    assert_eq!(stored, replaced, "GET returns the replacement");
    app.stop().await;
}

async fn put_missing_age_becomes_null(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = create_with(&app, "ada@example.com", json!({"age": 36})).await;
    let path = user_path(id_of(&user));

    let response = app
        .put_json(&path, &json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["age"], Value::Null);
    let (_, stored) = fetch(&app, &path).await;
    assert_eq!(stored["age"], Value::Null, "stored age is null");
    app.stop().await;
}

async fn put_unknown_id_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let response = app
        .put_json(
            &user_path(987_654),
            &json!({"name": "Nobody", "email": "nobody@example.com"}),
        )
        .send()
        .await
        .unwrap();

    let body = problem(response, 404).await;
    assert_eq!(body["code"], "not_found");
    assert_eq!(list(&app, "").await["total"], 0, "PUT does not create");
    app.stop().await;
}

async fn put_missing_email_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .put_json(&path, &json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();

    let body = problem(response, 422).await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["errors"][0]["field"], "email");
    assert_eq!(body["errors"][0]["code"], "required");
    let (tag, _) = fetch(&app, &path).await;
    assert_eq!(tag, "\"1\"", "user unchanged");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// PATCH /users/{id}
// ---------------------------------------------------------------------------

async fn patch_keeps_absent_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = create_with(&app, "ada@example.com", json!({"name": "Ada", "age": 36})).await;
    let path = user_path(id_of(&user));

    let response = app
        .patch_json(&path, &json!({"name": "Ada King"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let patched = json_body(response).await;
    assert_eq!(patched["name"], "Ada King");
    assert_eq!(patched["email"], "ada@example.com", "email unchanged");
    assert_eq!(patched["age"], 36, "age unchanged");
    app.stop().await;
}

async fn patch_null_age_clears(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = create_with(&app, "ada@example.com", json!({"age": 36})).await;
    let path = user_path(id_of(&user));

    let response = app
        .patch_json(&path, &json!({"age": null}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let patched = json_body(response).await;
    assert_eq!(patched["age"], Value::Null);
    assert_eq!(patched["name"], user["name"], "name unchanged");
    let (_, stored) = fetch(&app, &path).await;
    assert_eq!(stored["age"], Value::Null, "stored age is null");
    app.stop().await;
}

async fn patch_null_name_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .patch_json(&path, &json!({"name": null}))
        .send()
        .await
        .unwrap();

    let body = problem(response, 422).await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["errors"][0]["field"], "name");
    assert_eq!(body["errors"][0]["code"], "not_nullable");
    let (_, stored) = fetch(&app, &path).await;
    assert_eq!(stored, user, "user unchanged");
    app.stop().await;
}

async fn patch_empty_changes_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = create_with(&app, "ada@example.com", json!({"age": 36})).await;
    let path = user_path(id_of(&user));
    let (tag_before, before) = fetch(&app, &path).await;

    let response = app.patch_json(&path, &json!({})).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(etag(&response), tag_before, "ETag unchanged");
    let patched = json_body(response).await;
    assert_eq!(patched, before, "body unchanged, updated_at included");
    let (tag_after, after) = fetch(&app, &path).await;
    assert_eq!(tag_after, tag_before, "stored version unchanged");
    assert_eq!(after, before, "stored user unchanged");
    app.stop().await;
}

async fn patch_accepts_merge_patch_type(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .client
        .patch(app.url(&path))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"age": 40}).to_string())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["age"], 40);
    app.stop().await;
}

async fn patch_if_match_current(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    let (tag, _) = fetch(&app, &path).await;

    let response = app
        .patch_json(&path, &json!({"age": 36}))
        .header("if-match", &tag)
        .send()
        .await
        .unwrap();

    assert_eq!(tag, "\"1\"");
    assert_eq!(response.status(), 200);
    assert_eq!(etag(&response), "\"2\"", "ETag increments");
    let (stored_tag, stored) = fetch(&app, &path).await;
    assert_eq!(stored_tag, "\"2\"");
    assert_eq!(stored["age"], 36);
    app.stop().await;
}

async fn patch_if_match_stale_412(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    let first = app
        .patch_json(&path, &json!({"age": 36}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let (_, before) = fetch(&app, &path).await;

    let response = app
        .patch_json(&path, &json!({"age": 99}))
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();

    let body = problem(response, 412).await;
    assert_eq!(body["code"], "precondition_failed");
    let (tag, after) = fetch(&app, &path).await;
    assert_eq!(tag, "\"2\"", "version unchanged");
    assert_eq!(after, before, "user unchanged");
    app.stop().await;
}

async fn patch_if_match_any(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .patch_json(&path, &json!({"age": 36}))
        .header("if-match", "*")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(etag(&response), "\"2\"");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// DELETE /users/{id}
// ---------------------------------------------------------------------------

async fn delete_then_get_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let deleted = app.delete(&path).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(deleted.bytes().await.unwrap().is_empty(), "204 has no body");

    let body = problem(get(&app, &path).await, 404).await;
    assert_eq!(body["code"], "not_found", "GET after DELETE");
    let again = problem(app.delete(&path).send().await.unwrap(), 404).await;
    assert_eq!(again["code"], "not_found", "second DELETE");
    assert_eq!(list(&app, "").await["total"], 0, "list omits the user");
    app.stop().await;
}

async fn delete_hides_posts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = id_of(&user);
    let post = app.create_post(id, "Notes").await;
    let post_id = post["id"].as_i64().expect("post id");

    let deleted = app.delete(&user_path(id)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);

    let body = problem(get(&app, &format!("/api/v1/posts/{post_id}")).await, 404).await;
    assert_eq!(body["code"], "not_found");
    let posts = get(&app, &format!("/api/v1/posts?user_id={id}")).await;
    assert_eq!(posts.status(), 200);
    assert_eq!(json_body(posts).await["total"], 0);
    app.stop().await;
}

async fn delete_frees_email(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let deleted = app.delete(&user_path(id_of(&user))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);

    let response = create(&app, &json!({"name": "Ada", "email": "ADA@example.com"})).await;

    assert_eq!(response.status(), 201);
    let again = json_body(response).await;
    assert_ne!(again["id"], user["id"], "a new user");
    assert_eq!(list(&app, "email=ada@example.com").await["total"], 1);
    app.stop().await;
}

async fn delete_concurrent_one_wins(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let requests = (0..10).map(|_| status_and_body(app.delete(&path)));
    let outcomes = join_all(requests).await;

    let statuses: Vec<u16> = outcomes.iter().map(|(status, _)| *status).collect();
    let deleted = statuses.iter().filter(|status| **status == 204).count();
    let missing = statuses.iter().filter(|status| **status == 404).count();
    assert_eq!(deleted, 1, "one DELETE succeeds: {outcomes:?}");
    assert_eq!(missing, 9, "the others find nothing: {outcomes:?}");
    problem(get(&app, &path).await, 404).await;
    app.stop().await;
}

async fn delete_hard_removes_rows(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = id_of(&user);
    app.create_post(id, "First").await;
    app.create_post(id, "Second").await;
    let kept = app.create_user("Kept", "kept@example.com").await;
    app.create_post(id_of(&kept), "Kept post").await;
    let mut db = DirectDb::connect(&app.db.url);
    assert_eq!(db.count(&format!("posts WHERE user_id = {id}")), 2);

    let response = app
        .delete(&format!("{}?hard=true", user_path(id)))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 204);
    assert_eq!(db.count(&format!("users WHERE id = {id}")), 0, "user row");
    assert_eq!(
        db.count(&format!("posts WHERE user_id = {id}")),
        0,
        "post rows"
    );
    assert_eq!(db.count("users"), 1, "other user kept");
    assert_eq!(db.count("posts"), 1, "other post kept");
    problem(get(&app, &user_path(id)).await, 404).await;
    app.stop().await;
}

async fn delete_hard_maybe_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .delete(&format!("{path}?hard=maybe"))
        .send()
        .await
        .unwrap();

    let body = problem(response, 400).await;
    assert_eq!(body["code"], "invalid_query");
    assert_eq!(body["errors"][0]["field"], "hard");
    assert_eq!(get(&app, &path).await.status(), 200, "user still exists");
    app.stop().await;
}

async fn delete_stale_if_match_412(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .delete(&path)
        .header("if-match", "\"7\"")
        .send()
        .await
        .unwrap();

    let body = problem(response, 412).await;
    assert_eq!(body["code"], "precondition_failed");
    let (tag, stored) = fetch(&app, &path).await;
    assert_eq!(tag, "\"1\"", "version unchanged");
    assert_eq!(stored, user, "user still exists unchanged");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Read-your-writes through the user-store cache
// ---------------------------------------------------------------------------

async fn cache_read_after_patch(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    fetch(&app, &path).await;
    fetch(&app, &path).await;

    let response = app
        .patch_json(&path, &json!({"name": "Ada King"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let (tag, stored) = fetch(&app, &path).await;
    assert_eq!(stored["name"], "Ada King");
    assert_eq!(tag, "\"2\"");
    app.stop().await;
}

async fn cache_read_after_put(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    fetch(&app, &path).await;

    let response = app
        .put_json(
            &path,
            &json!({"name": "Grace", "email": "grace@example.com", "age": 85}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let replaced = json_body(response).await;

    let (tag, stored) = fetch(&app, &path).await;
    assert_eq!(stored, replaced);
    assert_eq!(tag, "\"2\"");
    app.stop().await;
}

async fn cache_read_after_delete(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));
    fetch(&app, &path).await;

    let deleted = app.delete(&path).send().await.unwrap();
    assert_eq!(deleted.status(), 204);

    let body = problem(get(&app, &path).await, 404).await;
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

async fn timestamps_are_utc_rfc3339(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let (_, stored) = fetch(&app, &user_path(id_of(&user))).await;

    for (source, body) in [("create", &user), ("GET", &stored)] {
        for field in ["created_at", "updated_at"] {
            let text = body[field].as_str().expect("timestamp is a string");
            let (_, fraction) = text.rsplit_once('.').expect("fractional seconds");
            assert!(text.ends_with('Z'), "{source} {field} ends in Z: {text}");
            assert_eq!(
                fraction.len(),
                7,
                "{source} {field} has microseconds: {text}"
            );
            parse_timestamp(&body[field]);
        }
    }
    assert_eq!(
        user["created_at"], user["updated_at"],
        "a new user was never updated"
    );
    app.stop().await;
}

async fn patch_moves_updated_at_only(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = user_path(id_of(&user));

    let response = app
        .patch_json(&path, &json!({"age": 36}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let patched = json_body(response).await;

    assert_eq!(patched["created_at"], user["created_at"], "created_at kept");
    assert!(
        parse_timestamp(&patched["updated_at"]) > parse_timestamp(&user["updated_at"]),
        "updated_at moves forward: {} then {}",
        user["updated_at"],
        patched["updated_at"]
    );
    let (_, stored) = fetch(&app, &path).await;
    assert_eq!(
        stored["updated_at"], patched["updated_at"],
        "stored updated_at"
    );
    assert_eq!(
        stored["created_at"], user["created_at"],
        "stored created_at"
    );
    app.stop().await;
}

/// On PostgreSQL every session adds to a live-user count row of its own.
/// Rows of sessions that have ended are folded into one at start, and the
/// listing's total stays right through the fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_start_folds_ended_sessions_counts() {
    let Some(db) = TestDb::create(Backend::Postgres) else {
        return;
    };
    troupe::db::migrations::run_pending(&db.url).expect("migrate");
    let mut ended = Vec::new();
    for (session, deleted_at) in [("a", "NULL"), ("b", "CURRENT_TIMESTAMP")] {
        let mut conn = DirectDb::connect(&db.url);
        conn.execute(&format!(
            "INSERT INTO users (name, email, created_at, updated_at, deleted_at) VALUES \
             ('One', 'one-{session}@example.com', now(), now(), NULL), \
             ('Two', 'two-{session}@example.com', now(), now(), {deleted_at})"
        ));
        ended.push(conn.scalar("SELECT pg_backend_pid()::bigint AS count"));
    }
    let pids = format!("{}, {}", ended[0], ended[1]);
    let mut watcher = DirectDb::connect(&db.url);
    assert_eq!(
        watcher.count(&format!("live_user_counts WHERE slot IN ({pids})")),
        2,
        "each session wrote a row of its own"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while watcher.count(&format!("pg_stat_activity WHERE pid IN ({pids})")) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed sessions' backends exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let app = TestApp::start(test_settings(db.url.clone()), db);

    assert_eq!(
        watcher.count(&format!("live_user_counts WHERE slot IN ({pids})")),
        0,
        "start folded the ended sessions' rows"
    );
    assert_eq!(
        watcher.scalar("SELECT live AS count FROM live_user_counts WHERE slot = 0"),
        3,
        "slot 0 holds their live users"
    );
    assert_eq!(list(&app, "").await["total"], 3);
    app.create_user("Ada", "ada@example.com").await;
    assert_eq!(list(&app, "").await["total"], 4);
    app.stop().await;
}

/// On SQLite a `REPLACE` run without `recursive_triggers` removes a row
/// without its delete trigger, so the live-user count drifts. A start
/// counts the users again, and troupe's own connections run the trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_start_recounts_live_users() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    troupe::db::migrations::run_pending(&db.url).expect("migrate");
    let mut conn = DirectDb::connect(&db.url);
    conn.execute(
        "INSERT INTO users (id, name, email, created_at, updated_at) VALUES \
         (1, 'One', 'one@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), \
         (2, 'Two', 'two@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    );
    conn.execute(
        "INSERT OR REPLACE INTO users (id, name, email, created_at, updated_at) \
         VALUES (1, 'Uno', 'one@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    );
    let drifted = conn.scalar("SELECT live AS count FROM live_user_counts WHERE slot = 0");
    assert_eq!(drifted, 3, "the replace counted a user it did not add");

    let settings = test_settings(db.url.clone());
    let pool = troupe::db::DbPool::connect(&db.url, &settings.pool).expect("pool");
    let app = TestApp::start(settings, db);
    assert_eq!(list(&app, "").await["total"], 2, "start counted again");

    let Ok(troupe::db::DbConn::Sqlite(mut pooled)) = pool.get() else {
        panic!("an SQLite connection from troupe's pool");
    };
    diesel::sql_query(
        "REPLACE INTO users (id, name, email, created_at, updated_at) \
         VALUES (2, 'Dos', 'two@example.com', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    )
    .execute(&mut *pooled)
    .expect("replace through troupe's connection");
    assert_eq!(
        list(&app, "").await["total"],
        2,
        "troupe's connections run a replace's delete trigger"
    );
    app.stop().await;
}

/// A PostgreSQL database whose default `TimeZone` is not UTC must store and
/// return the same instants as one in UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_time_zone_keeps_utc() {
    let Some(db) = TestDb::create(Backend::Postgres) else {
        return;
    };
    let DatabaseUrl::Postgres(url) = db.url.clone() else {
        unreachable!("TestDb::create(Postgres) returns a PostgreSQL URL");
    };
    let name = url.rsplit('/').next().expect("database name in the URL");
    let mut conn = DirectDb::connect(&db.url);
    conn.execute(&format!(
        "ALTER DATABASE {name} SET timezone = 'America/New_York'"
    ));
    let app = TestApp::start(test_settings(db.url.clone()), db);

    let user = app.create_user("Ada", "ada@example.com").await;
    let now = Utc::now();
    let id = id_of(&user);
    let (_, stored) = fetch(&app, &user_path(id)).await;

    let created = parse_timestamp(&user["created_at"]);
    let skew = (now - created).num_seconds().abs();
    assert!(
        skew < 300,
        "created_at {created} is {skew} s away from now {now}"
    );
    assert_eq!(
        stored["created_at"], user["created_at"],
        "GET matches create"
    );

    // Diesel 2's `PgConnection::establish` sets each session to UTC, so the
    // check reads `reset_val`, the zone a session starts with, which is the
    // database default. AT TIME ZONE 'UTC' reads the stored instant as UTC
    // wall-clock time in any session zone.
    let DirectDb::Pg(mut pg) = DirectDb::connect(&app.db.url) else {
        unreachable!("the test database is PostgreSQL");
    };
    let zone: Zone =
        diesel::sql_query("SELECT reset_val AS zone FROM pg_settings WHERE name = 'TimeZone'")
            .get_result(&mut pg)
            .unwrap();
    assert_eq!(zone.zone, "America/New_York", "database default zone");
    let row: StoredTime = diesel::sql_query(format!(
        "SELECT created_at AT TIME ZONE 'UTC' AS at FROM users WHERE id = {id}"
    ))
    .get_result(&mut pg)
    .unwrap();
    assert_eq!(row.at, created.naive_utc(), "stored instant in UTC");
    app.stop().await;
}

/// Reads the user's name after changing it behind the service's back.
async fn name_after_direct_update(app: &TestApp) -> (Value, Value) {
    let user = app.create_user("Cached Name", "cached@example.com").await;
    let path = user_path(id_of(&user));
    let before: Value = app.get(&path).send().await.unwrap().json().await.unwrap();

    let mut db = DirectDb::connect(&app.db.url);
    db.execute(&format!(
        "UPDATE users SET name = 'Changed Directly' WHERE id = {}",
        id_of(&user)
    ));

    let after: Value = app.get(&path).send().await.unwrap().json().await.unwrap();
    (before["name"].clone(), after["name"].clone())
}

async fn cache_serves_repeated_reads(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (before, after) = name_after_direct_update(&app).await;
    assert_eq!(before, "Cached Name");
    assert_eq!(after, "Cached Name", "the second read comes from the cache");
    app.stop().await;
}

async fn cache_off_reads_database(backend: Backend) {
    let spawned = TestApp::spawn_with(backend, |settings| settings.cache_capacity = None);
    let Some(app) = spawned.await else { return };
    let (before, after) = name_after_direct_update(&app).await;
    assert_eq!(before, "Cached Name");
    assert_eq!(
        after, "Changed Directly",
        "with the cache off every read sees the database"
    );
    app.stop().await;
}

crate::on_both_backends!(
    cache_serves_repeated_reads,
    cache_off_reads_database,
    create_returns_location_and_etag,
    create_trims_and_lowercases,
    create_without_age_is_null,
    create_with_posts_returns_them,
    create_over_100_posts_rejected,
    create_invalid_post_names_field,
    create_rejects_invalid_fields,
    create_accepts_boundary_names,
    create_rejects_unknown_field,
    create_requires_name_and_email,
    create_rejects_non_object_body,
    email_taken_on_create,
    email_taken_on_replace,
    email_taken_on_patch,
    email_filter_ignores_case,
    email_race_creates_one_user,
    list_defaults_page_and_limit,
    list_limit_and_page,
    list_past_end_is_empty,
    list_sorts_break_ties_by_id,
    list_filters_combine,
    list_rejects_invalid_paging,
    list_rejects_blank_filters,
    list_rejects_unknown_parameter,
    list_rejects_repeated_parameter,
    list_link_header_rels,
    big_id_round_trips,
    get_returns_etag,
    get_if_none_match_304,
    get_stale_tag_200,
    get_include_posts,
    get_include_comments_400,
    get_unknown_id_404,
    put_replaces_all_fields,
    put_missing_age_becomes_null,
    put_unknown_id_404,
    put_missing_email_422,
    patch_keeps_absent_fields,
    patch_null_age_clears,
    patch_null_name_422,
    patch_empty_changes_nothing,
    patch_accepts_merge_patch_type,
    patch_if_match_current,
    patch_if_match_stale_412,
    patch_if_match_any,
    delete_then_get_404,
    delete_hides_posts,
    delete_frees_email,
    delete_concurrent_one_wins,
    delete_hard_removes_rows,
    delete_hard_maybe_400,
    delete_stale_if_match_412,
    cache_read_after_patch,
    cache_read_after_put,
    cache_read_after_delete,
    timestamps_are_utc_rfc3339,
    patch_moves_updated_at_only,
);
