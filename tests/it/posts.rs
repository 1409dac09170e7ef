//! Posts over HTTP: create, read, replace, patch, delete, and both listings.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LINK, LOCATION};
use serde_json::{json, Value};
use troupe::db::DatabaseUrl;

use crate::helpers::{problem, Backend, TestApp};

/// Creates a user with an email unique to `tag` and returns its id.
async fn new_user(app: &TestApp, tag: &str) -> i64 {
    let user = app
        .create_user("Post Author", &format!("{tag}@example.com"))
        .await;
    user["id"].as_i64().expect("user id")
}

/// Creates a post with the given title and returns its id.
async fn new_post(app: &TestApp, user_id: i64, title: &str) -> i64 {
    let post = app.create_post(user_id, title).await;
    post["id"].as_i64().expect("post id")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("{name} header missing"))
        .to_str()
        .expect("ASCII header")
        .to_owned()
}

fn post_path(id: i64) -> String {
    format!("/api/v1/posts/{id}")
}

fn user_posts_path(user_id: i64) -> String {
    format!("/api/v1/users/{user_id}/posts")
}

/// Fetches a post and returns its entity tag and body.
async fn fetch_post(app: &TestApp, id: i64) -> (String, Value) {
    let response = app.get(&post_path(id)).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET post {id}");
    let etag = header(&response, ETAG);
    (etag, response.json().await.unwrap())
}

/// Fetches a listing and returns its body and `Link` relations.
async fn fetch_page(app: &TestApp, path_and_query: &str) -> (Value, HashMap<String, String>) {
    let response = app.get(path_and_query).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path_and_query}");
    let links = parse_links(&header(&response, LINK));
    (response.json().await.unwrap(), links)
}

/// Splits a `Link` header into a map from `rel` to target.
fn parse_links(value: &str) -> HashMap<String, String> {
    value
        .split(", ")
        .map(|link| {
            let (target, rel) = link
                .split_once(">; rel=\"")
                .unwrap_or_else(|| panic!("malformed link {link:?}"));
            let target = target.trim_start_matches('<');
            let rel = rel.trim_end_matches('"');
            (rel.to_owned(), target.to_owned())
        })
        .collect()
}

/// Returns the value of `name` in the query string of `target`.
fn query_value(target: &str, name: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn ids_of(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|post| post["id"].as_i64().expect("post id"))
        .collect()
}

#[derive(QueryableByName)]
struct RowCount {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Runs a `SELECT COUNT(*) AS count ...` statement directly on the database.
fn count_rows(url: &DatabaseUrl, sql: &str) -> i64 {
    let query = diesel::sql_query(sql);
    let rows: Vec<RowCount> = match url {
        DatabaseUrl::Sqlite(_) => {
            let mut conn = SqliteConnection::establish(&url.connection_string()).unwrap();
            query.load(&mut conn).unwrap()
        }
        DatabaseUrl::Postgres(_) => {
            let mut conn = PgConnection::establish(&url.connection_string()).unwrap();
            query.load(&mut conn).unwrap()
        }
    };
    rows[0].count
}

async fn create_returns_post(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "create").await;
    let content = "  indented first line\n\tsecond line with a tab  \n\n";

    let response = app
        .post_json(
            &user_posts_path(user_id),
            &json!({"title": "  Spaced title \t", "content": content}),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    let location = header(&response, LOCATION);
    let etag = header(&response, ETAG);
    let post: Value = response.json().await.unwrap();
    let id = post["id"].as_i64().expect("post id");
    assert_eq!(location, post_path(id), "Location names the new post");
    assert!(!etag.is_empty(), "ETag is set");
    assert_eq!(post["user_id"], user_id, "user_id is the path user");
    assert_eq!(post["title"], "Spaced title", "title is trimmed");
    assert_eq!(post["content"], content, "content is stored exactly");
    assert!(post["created_at"].is_string(), "created_at: {post}");
    assert!(post["updated_at"].is_string(), "updated_at: {post}");

    let (fetched_etag, fetched) = fetch_post(&app, id).await;
    assert_eq!(fetched, post, "GET returns what POST returned");
    assert_eq!(fetched_etag, etag, "GET returns the same ETag");
    app.stop().await;
}

async fn create_for_missing_user_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let response = app
        .post_json(
            &user_posts_path(424_242),
            &json!({"title": "Orphan", "content": "text"}),
        )
        .send()
        .await
        .unwrap();

    let body = problem(response, 404).await;
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

async fn create_for_deleted_user_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "deleted").await;
    let deleted = app
        .delete(&format!("/api/v1/users/{user_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204, "delete the user");

    let response = app
        .post_json(
            &user_posts_path(user_id),
            &json!({"title": "Too late", "content": "text"}),
        )
        .send()
        .await
        .unwrap();

    let body = problem(response, 404).await;
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

async fn create_rejects_invalid_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "invalid").await;
    let cases = [
        (
            json!({"title": "", "content": "x"}),
            "title",
            "too_short",
            "empty title",
        ),
        (
            json!({"title": " \t\n ", "content": "x"}),
            "title",
            "too_short",
            "blank title",
        ),
        (
            json!({"title": "t".repeat(201), "content": "x"}),
            "title",
            "too_long",
            "201-character title",
        ),
        (
            json!({"title": "bell\u{7}title", "content": "x"}),
            "title",
            "invalid_characters",
            "title with a control character",
        ),
        (
            json!({"title": "Long", "content": "c".repeat(10_001)}),
            "content",
            "too_long",
            "content over 10 000 characters",
        ),
        (
            json!({"title": "No content"}),
            "content",
            "required",
            "missing content",
        ),
    ];

    for (body, field, code, reason) in cases {
        let response = app
            .post_json(&user_posts_path(user_id), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{reason}");
        let error_body = problem(response, 422).await;
        let errors = error_body["errors"].as_array().expect("errors list");
        assert!(
            errors
                .iter()
                .any(|error| error["field"] == field && error["code"] == code),
            "{reason}: expected {field}/{code} in {error_body}"
        );
    }

    let (listing, _) = fetch_page(&app, &user_posts_path(user_id)).await;
    assert_eq!(listing["total"], 0, "no invalid post was stored");
    app.stop().await;
}

async fn create_unknown_field_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "unknown").await;

    let response = app
        .post_json(
            &user_posts_path(user_id),
            &json!({"title": "Extra", "content": "x", "tags": ["a"]}),
        )
        .send()
        .await
        .unwrap();

    let body = problem(response, 422).await;
    let errors = body["errors"].as_array().expect("errors list");
    assert_eq!(errors.len(), 1, "one error: {body}");
    assert_eq!(errors[0]["code"], "unknown_field", "error code: {body}");
    assert_eq!(errors[0]["field"], "tags", "field names the key: {body}");
    app.stop().await;
}

async fn create_accepts_maximum_lengths(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "maximum").await;
    let cases = [
        ("t".repeat(200), "c".repeat(10_000), "ASCII at the limits"),
        (
            "标".repeat(200),
            "é".repeat(10_000),
            "multi-byte characters at the limits",
        ),
        (
            format!("  {}  ", "t".repeat(200)),
            String::new(),
            "200 characters after trimming, empty content",
        ),
    ];

    for (title, content, reason) in cases {
        let response = app
            .post_json(
                &user_posts_path(user_id),
                &json!({"title": title, "content": content}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{reason}");
        let post: Value = response.json().await.unwrap();
        assert_eq!(post["title"], title.trim(), "{reason}: title");
        assert_eq!(post["content"], content, "{reason}: content");
    }
    app.stop().await;
}

async fn create_content_nul_character(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "nul").await;
    let content = "before\u{0}after";

    let response = app
        .post_json(
            &user_posts_path(user_id),
            &json!({"title": "NUL inside", "content": content}),
        )
        .send()
        .await
        .unwrap();

    let status = response.status();
    assert!(
        !status.is_server_error(),
        "content with U+0000 is stored or rejected as invalid, got {status}"
    );
    if status == 201 {
        let post: Value = response.json().await.unwrap();
        let (_, fetched) = fetch_post(&app, post["id"].as_i64().unwrap()).await;
        assert_eq!(fetched["content"], content, "content is stored exactly");
    } else {
        let body = problem(response, 422).await;
        assert_eq!(body["errors"][0]["field"], "content", "rejected field");
    }
    app.stop().await;
}

async fn get_returns_etag_and_304(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "etag").await;
    let id = new_post(&app, user_id, "Cached").await;

    let (etag, post) = fetch_post(&app, id).await;
    assert_eq!(post["title"], "Cached");

    let unchanged = app
        .get(&post_path(id))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        unchanged.status(),
        304,
        "If-None-Match with the current tag"
    );
    assert_eq!(header(&unchanged, ETAG), etag, "304 repeats the ETag");
    assert!(
        unchanged.bytes().await.unwrap().is_empty(),
        "304 has no body"
    );

    let other = app
        .get(&post_path(id))
        .header(IF_NONE_MATCH, "\"999\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "If-None-Match with another tag");
    app.stop().await;
}

async fn get_unknown_post_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let response = app.get(&post_path(777)).send().await.unwrap();

    let body = problem(response, 404).await;
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

async fn put_replaces_all_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "put").await;
    let created = app.create_post(user_id, "Before").await;
    let id = created["id"].as_i64().unwrap();
    let (etag_before, _) = fetch_post(&app, id).await;

    let response = app
        .put_json(
            &post_path(id),
            &json!({"title": " After ", "content": "new text\n"}),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let etag_after = header(&response, ETAG);
    let post: Value = response.json().await.unwrap();
    assert_eq!(post["title"], "After", "title replaced and trimmed");
    assert_eq!(post["content"], "new text\n", "content replaced");
    assert_eq!(post["user_id"], user_id, "owner unchanged");
    assert_eq!(post["created_at"], created["created_at"], "created_at kept");
    assert_ne!(etag_after, etag_before, "ETag changes with the post");
    let (_, fetched) = fetch_post(&app, id).await;
    assert_eq!(fetched, post, "GET returns the replaced post");
    app.stop().await;
}

async fn put_missing_field_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "put-missing").await;
    let id = new_post(&app, user_id, "Kept").await;
    let cases = [
        (json!({"title": "Only title"}), "content", "content missing"),
        (json!({"content": "Only content"}), "title", "title missing"),
    ];

    for (body, field, reason) in cases {
        let response = app.put_json(&post_path(id), &body).send().await.unwrap();
        assert_eq!(response.status(), 422, "{reason}");
        let error_body = problem(response, 422).await;
        assert_eq!(error_body["errors"][0]["field"], field, "{reason}");
        assert_eq!(error_body["errors"][0]["code"], "required", "{reason}");
    }

    let (_, post) = fetch_post(&app, id).await;
    assert_eq!(post["title"], "Kept", "a rejected PUT changes nothing");
    app.stop().await;
}

async fn patch_keeps_absent_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "patch").await;
    let id = new_post(&app, user_id, "Stable title").await;

    let response = app
        .patch_json(&post_path(id), &json!({"content": "patched"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let post: Value = response.json().await.unwrap();
    assert_eq!(post["content"], "patched", "content patched");
    assert_eq!(post["title"], "Stable title", "absent title unchanged");

    let response = app
        .patch_json(&post_path(id), &json!({"title": "New title"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let post: Value = response.json().await.unwrap();
    assert_eq!(post["title"], "New title", "title patched");
    assert_eq!(post["content"], "patched", "absent content unchanged");
    app.stop().await;
}

async fn patch_null_title_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "patch-null").await;
    let id = new_post(&app, user_id, "Not null").await;
    let (etag_before, before) = fetch_post(&app, id).await;

    let response = app
        .patch_json(&post_path(id), &json!({"title": null}))
        .send()
        .await
        .unwrap();

    let body = problem(response, 422).await;
    assert_eq!(body["errors"][0]["field"], "title");
    assert_eq!(body["errors"][0]["code"], "not_nullable");
    let (etag_after, after) = fetch_post(&app, id).await;
    assert_eq!(after, before, "post unchanged");
    assert_eq!(etag_after, etag_before, "ETag unchanged");
    app.stop().await;
}

async fn patch_empty_object_unchanged(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "patch-empty").await;
    let id = new_post(&app, user_id, "Untouched").await;
    let (etag_before, before) = fetch_post(&app, id).await;

    let response = app
        .patch_json(&post_path(id), &json!({}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, ETAG), etag_before, "ETag unchanged");
    let post: Value = response.json().await.unwrap();
    assert_eq!(post, before, "response is the unchanged post");
    let (_, after) = fetch_post(&app, id).await;
    assert_eq!(after, before, "stored post unchanged");
    app.stop().await;
}

async fn patch_accepts_merge_patch_type(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "merge").await;
    let id = new_post(&app, user_id, "Merge").await;

    let response = app
        .client
        .patch(app.url(&post_path(id)))
        .header(CONTENT_TYPE, "application/merge-patch+json")
        .body(r#"{"content": "merged"}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let post: Value = response.json().await.unwrap();
    assert_eq!(post["content"], "merged");
    assert_eq!(post["title"], "Merge");
    app.stop().await;
}

async fn if_match_current_applies(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "if-match").await;
    let id = new_post(&app, user_id, "Versioned").await;
    let (etag, _) = fetch_post(&app, id).await;

    let patched = app
        .patch_json(&post_path(id), &json!({"title": "Patched"}))
        .header(IF_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200, "PATCH with the current tag");
    let etag = header(&patched, ETAG);

    let replaced = app
        .put_json(&post_path(id), &json!({"title": "Put", "content": "c"}))
        .header(IF_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200, "PUT with the current tag");
    let etag = header(&replaced, ETAG);

    let deleted = app
        .delete(&post_path(id))
        .header(IF_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204, "DELETE with the current tag");
    app.stop().await;
}

async fn if_match_stale_412(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "stale").await;
    let id = new_post(&app, user_id, "Original").await;
    let (stale_etag, _) = fetch_post(&app, id).await;
    let bumped = app
        .patch_json(&post_path(id), &json!({"content": "second version"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bumped.status(), 200, "change the post once");
    let (current_etag, current) = fetch_post(&app, id).await;

    let attempts = [
        (
            app.patch_json(&post_path(id), &json!({"title": "Lost"})),
            "PATCH",
        ),
        (
            app.put_json(&post_path(id), &json!({"title": "Lost", "content": "x"})),
            "PUT",
        ),
        (app.delete(&post_path(id)), "DELETE"),
    ];
    for (request, method) in attempts {
        let response = request.header(IF_MATCH, &stale_etag).send().await.unwrap();
        assert_eq!(response.status(), 412, "{method} with a stale tag");
        let body = problem(response, 412).await;
        assert_eq!(body["code"], "precondition_failed", "{method}");

        let (etag, post) = fetch_post(&app, id).await;
        assert_eq!(post, current, "{method} with a stale tag changed the post");
        assert_eq!(
            etag, current_etag,
            "{method} with a stale tag changed the ETag"
        );
    }
    app.stop().await;
}

async fn delete_then_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "delete").await;
    let id = new_post(&app, user_id, "Doomed").await;

    let deleted = app.delete(&post_path(id)).send().await.unwrap();
    assert_eq!(deleted.status(), 204, "first DELETE");
    assert!(deleted.bytes().await.unwrap().is_empty(), "204 has no body");

    let fetched = app.get(&post_path(id)).send().await.unwrap();
    let body = problem(fetched, 404).await;
    assert_eq!(body["code"], "not_found", "GET after DELETE");

    let again = app.delete(&post_path(id)).send().await.unwrap();
    let body = problem(again, 404).await;
    assert_eq!(body["code"], "not_found", "second DELETE");

    let soft_rows = count_rows(
        &app.db.url,
        &format!("SELECT COUNT(*) AS count FROM posts WHERE id = {id} AND deleted_at IS NOT NULL"),
    );
    assert_eq!(soft_rows, 1, "a soft delete keeps the row, marked deleted");
    app.stop().await;
}

async fn delete_hard_removes_row(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "hard").await;
    let id = new_post(&app, user_id, "Gone").await;
    let count_sql = format!("SELECT COUNT(*) AS count FROM posts WHERE id = {id}");
    assert_eq!(count_rows(&app.db.url, &count_sql), 1, "row before delete");

    let deleted = app
        .delete(&format!("{}?hard=true", post_path(id)))
        .send()
        .await
        .unwrap();

    assert_eq!(deleted.status(), 204);
    assert_eq!(count_rows(&app.db.url, &count_sql), 0, "row after delete");
    let fetched = app.get(&post_path(id)).send().await.unwrap();
    problem(fetched, 404).await;
    app.stop().await;
}

async fn user_posts_paging_links(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "paging").await;
    let other_id = new_user(&app, "other").await;
    app.create_post(other_id, "Not in this listing").await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(new_post(&app, user_id, &format!("post {n}")).await);
    }
    let base = user_posts_path(user_id);

    let (page, _) = fetch_page(&app, &base).await;
    assert_eq!(page["page"], 1, "default page");
    assert_eq!(page["limit"], 20, "default limit");
    assert_eq!(page["total"], 5, "only this user's posts are counted");
    assert_eq!(ids_of(&page), ids, "default order is by id");

    let cases = [
        (1, &ids[0..2], vec!["first", "next", "last"]),
        (2, &ids[2..4], vec!["first", "prev", "next", "last"]),
        (3, &ids[4..5], vec!["first", "prev", "last"]),
        (4, &ids[0..0], vec!["first", "prev", "last"]),
    ];
    for (number, expected_ids, rels) in cases {
        let (page, links) = fetch_page(&app, &format!("{base}?limit=2&page={number}")).await;
        assert_eq!(page["page"], number, "page {number}: page field");
        assert_eq!(page["limit"], 2, "page {number}: limit field");
        assert_eq!(page["total"], 5, "page {number}: total field");
        assert_eq!(ids_of(&page), expected_ids, "page {number}: items");

        let mut got_rels: Vec<&str> = links.keys().map(String::as_str).collect();
        let mut expected_rels = rels.clone();
        got_rels.sort_unstable();
        expected_rels.sort_unstable();
        assert_eq!(got_rels, expected_rels, "page {number}: Link relations");
        for (rel, target) in &links {
            assert!(
                target.starts_with(&format!("{base}?")),
                "page {number}: {rel} link {target} stays on the listing"
            );
            assert_eq!(
                query_value(target, "limit").as_deref(),
                Some("2"),
                "page {number}: {rel} link keeps the limit"
            );
        }
        assert_eq!(
            query_value(&links["first"], "page").as_deref(),
            Some("1"),
            "page {number}: first"
        );
        assert_eq!(
            query_value(&links["last"], "page").as_deref(),
            Some("3"),
            "page {number}: last"
        );
    }

    let (_, links) = fetch_page(&app, &format!("{base}?limit=2&page=2")).await;
    let (next, _) = fetch_page(&app, &links["next"]).await;
    assert_eq!(next["page"], 3, "following next from page 2");
    let (prev, _) = fetch_page(&app, &links["prev"]).await;
    assert_eq!(prev["page"], 1, "following prev from page 2");
    app.stop().await;
}

async fn user_posts_invalid_paging_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "bad-paging").await;
    let cases = [
        ("page=0", "page", "page starts at 1"),
        ("page=-1", "page", "negative page"),
        ("page=two", "page", "page not a number"),
        ("limit=0", "limit", "limit starts at 1"),
        ("limit=101", "limit", "limit ends at 100"),
        ("limit=1.5", "limit", "fractional limit"),
        ("page=1&page=2", "page", "repeated page"),
        ("offset=5", "offset", "unknown parameter"),
    ];

    for (query, field, reason) in cases {
        let response = app
            .get(&format!("{}?{query}", user_posts_path(user_id)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}: {reason}");
        let body = problem(response, 400).await;
        assert_eq!(body["code"], "invalid_query", "{query}: {reason}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {reason}");
    }
    app.stop().await;
}

async fn user_posts_sort_orders(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // The posts created with their user share one created_at, so sorting by
    // created_at has ties. The title "alpha" appears twice, so sorting by
    // title has a tie too. These lower-case ASCII titles sort the same under
    // byte order and under the C and common locale collations of PostgreSQL.
    let created = app
        .post_json(
            "/api/v1/users",
            &json!({"name": "Sort Author", "email": "sort@example.com", "posts": [
                {"title": "delta", "content": "1"},
                {"title": "alpha", "content": "2"},
                {"title": "charlie", "content": "3"},
            ]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "create the user with posts");
    let created: Value = created.json().await.unwrap();
    let user_id = created["id"].as_i64().unwrap();
    let mut posts = created["posts"].as_array().unwrap().clone();
    for title in ["alpha", "bravo"] {
        posts.push(app.create_post(user_id, title).await);
    }
    let created_at_ties = posts
        .iter()
        .filter(|post| post["created_at"] == posts[0]["created_at"])
        .count();
    assert!(
        created_at_ties > 1,
        "posts created with their user share created_at"
    );
    let key = |post: &Value, field: &str| {
        (
            post[field].as_str().map(str::to_owned),
            post["id"].as_i64().unwrap(),
        )
    };
    let ordered_by = |field: &str, descending: bool| -> Vec<i64> {
        let mut sorted = posts.clone();
        if field == "id" {
            sorted.sort_by_key(|post| post["id"].as_i64().unwrap());
        } else {
            sorted.sort_by_key(|post| key(post, field));
        }
        if descending {
            sorted.reverse();
        }
        sorted
            .iter()
            .map(|post| post["id"].as_i64().unwrap())
            .collect()
    };
    let cases = [
        ("id", ordered_by("id", false)),
        ("-id", ordered_by("id", true)),
        ("title", ordered_by("title", false)),
        ("-title", ordered_by("title", true)),
        ("created_at", ordered_by("created_at", false)),
        ("-created_at", ordered_by("created_at", true)),
    ];

    for (sort, expected) in cases {
        let (page, _) = fetch_page(
            &app,
            &format!("{}?sort={sort}&limit=100", user_posts_path(user_id)),
        )
        .await;
        assert_eq!(ids_of(&page), expected, "sort={sort}");
    }

    let invalid = app
        .get(&format!("{}?sort=content", user_posts_path(user_id)))
        .send()
        .await
        .unwrap();
    let body = problem(invalid, 400).await;
    assert_eq!(body["errors"][0]["field"], "sort", "unknown sort field");
    app.stop().await;
}

async fn user_posts_missing_user_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let response = app.get(&user_posts_path(31_337)).send().await.unwrap();

    let body = problem(response, 404).await;
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

async fn user_posts_deleted_user_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "gone").await;
    app.create_post(user_id, "Left behind").await;
    let deleted = app
        .delete(&format!("/api/v1/users/{user_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204, "delete the user");

    let response = app.get(&user_posts_path(user_id)).send().await.unwrap();

    let body = problem(response, 404).await;
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

async fn user_posts_reject_user_id(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "param").await;

    let response = app
        .get(&format!("{}?user_id={user_id}", user_posts_path(user_id)))
        .send()
        .await
        .unwrap();

    let body = problem(response, 400).await;
    assert_eq!(body["code"], "invalid_query");
    assert_eq!(body["errors"][0]["field"], "user_id");
    app.stop().await;
}

async fn posts_filter_by_user_id(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let first = new_user(&app, "first").await;
    let second = new_user(&app, "second").await;
    let mut first_ids = Vec::new();
    let mut second_ids = Vec::new();
    for n in 0..3 {
        let post = app.create_post(first, &format!("first {n}")).await;
        first_ids.push(post["id"].as_i64().unwrap());
        let post = app.create_post(second, &format!("second {n}")).await;
        second_ids.push(post["id"].as_i64().unwrap());
    }

    for (user_id, expected) in [(first, &first_ids), (second, &second_ids)] {
        let (page, links) = fetch_page(&app, &format!("/api/v1/posts?user_id={user_id}")).await;
        assert_eq!(&ids_of(&page), expected, "user_id={user_id}: items");
        assert_eq!(page["total"], 3, "user_id={user_id}: total");
        assert_eq!(
            query_value(&links["first"], "user_id"),
            Some(user_id.to_string()),
            "user_id={user_id}: Link keeps the filter"
        );
        for post in page["data"].as_array().unwrap() {
            assert_eq!(post["user_id"], user_id, "user_id={user_id}: owner");
        }
    }

    let (page, _) = fetch_page(&app, "/api/v1/posts?user_id=9999").await;
    assert_eq!(page["total"], 0, "user without posts");
    assert_eq!(ids_of(&page), Vec::<i64>::new(), "user without posts");
    app.stop().await;
}

async fn posts_list_all_users(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let first = new_user(&app, "all-first").await;
    let second = new_user(&app, "all-second").await;
    let mut ids = Vec::new();
    for (user_id, title) in [(first, "a"), (second, "b"), (first, "c")] {
        ids.push(new_post(&app, user_id, title).await);
    }

    let (page, _) = fetch_page(&app, "/api/v1/posts").await;

    assert_eq!(ids_of(&page), ids, "every user's posts, by id");
    assert_eq!(page["total"], 3, "total counts every post");
    app.stop().await;
}

async fn posts_invalid_user_id_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        ("abc", "not a number"),
        ("0", "zero"),
        ("-3", "negative"),
        ("", "empty"),
    ];

    for (raw, reason) in cases {
        let response = app
            .get(&format!("/api/v1/posts?user_id={raw}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "user_id={raw:?}: {reason}");
        let body = problem(response, 400).await;
        assert_eq!(body["code"], "invalid_query", "{reason}");
        assert_eq!(body["errors"][0]["field"], "user_id", "{reason}");
    }
    app.stop().await;
}

async fn listings_exclude_deleted_posts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user_id = new_user(&app, "excluded").await;
    let kept_id = new_post(&app, user_id, "kept").await;
    let soft_id = new_post(&app, user_id, "soft").await;
    let hard_id = new_post(&app, user_id, "hard").await;
    let soft_deleted = app.delete(&post_path(soft_id)).send().await.unwrap();
    assert_eq!(soft_deleted.status(), 204, "soft delete");
    let hard_deleted = app
        .delete(&format!("{}?hard=true", post_path(hard_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(hard_deleted.status(), 204, "hard delete");
    let gone_user = new_user(&app, "excluded-owner").await;
    let orphan = new_post(&app, gone_user, "owner deleted").await;
    let user_deleted = app
        .delete(&format!("/api/v1/users/{gone_user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(user_deleted.status(), 204, "delete the other user");
    let fetched = app.get(&post_path(orphan)).send().await.unwrap();
    assert_eq!(fetched.status(), 404, "a deleted user's post is gone");

    let listings = [
        user_posts_path(user_id),
        format!("/api/v1/posts?user_id={user_id}"),
        "/api/v1/posts".to_owned(),
        format!("/api/v1/posts?user_id={gone_user}"),
    ];
    let expected = [vec![kept_id], vec![kept_id], vec![kept_id], vec![]];
    for (listing, expected) in listings.iter().zip(expected) {
        let (page, _) = fetch_page(&app, listing).await;
        assert_eq!(ids_of(&page), expected, "{listing}: data");
        assert_eq!(page["total"], expected.len(), "{listing}: total");
    }
    app.stop().await;
}

crate::on_both_backends!(
    create_returns_post,
    create_for_missing_user_404,
    create_for_deleted_user_404,
    create_rejects_invalid_fields,
    create_unknown_field_422,
    create_accepts_maximum_lengths,
    create_content_nul_character,
    get_returns_etag_and_304,
    get_unknown_post_404,
    put_replaces_all_fields,
    put_missing_field_422,
    patch_keeps_absent_fields,
    patch_null_title_422,
    patch_empty_object_unchanged,
    patch_accepts_merge_patch_type,
    if_match_current_applies,
    if_match_stale_412,
    delete_then_404,
    delete_hard_removes_row,
    user_posts_paging_links,
    user_posts_invalid_paging_400,
    user_posts_sort_orders,
    user_posts_missing_user_404,
    user_posts_deleted_user_404,
    user_posts_reject_user_id,
    posts_filter_by_user_id,
    posts_list_all_users,
    posts_invalid_user_id_400,
    listings_exclude_deleted_posts,
);
