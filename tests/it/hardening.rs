//! Regression tests for faults found by trying to break the service: each
//! test is named after the fault it pins.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::errors::raw_exchange;
use crate::helpers::{problem, Backend, TestApp};

crate::on_both_backends!(
    partial_body_gets_408,
    stalled_chunked_body_closes_connection,
    hard_delete_never_reuses_ids,
    email_filter_with_nul_is_400,
    bad_percent_escapes_are_400,
    nested_duplicate_keys_are_422,
    query_parameters_rejected_on_writes,
    content_type_variants,
    content_encoding_is_415,
    if_match_needs_canonical_tags,
    if_none_match_guards_writes,
    if_match_lines_form_one_list,
    empty_if_match_matches_nothing,
    unchanged_patch_keeps_version,
    type_errors_use_json_names,
    leading_zero_ids_are_400,
    huge_number_is_422,
);

/// A client that sends part of its body and stops gets 408 within the
/// client timeout instead of holding the connection.
async fn partial_body_gets_408(backend: Backend) {
    let spawned = TestApp::spawn_with(backend, |settings| {
        settings.client_timeout = Duration::from_millis(300);
    });
    let Some(app) = spawned.await else { return };
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        app.addr
    );

    let response = raw_exchange(app.addr, &head, &[b"{\"name\":".to_vec()]).await;

    let body = problem(response, 408).await;
    assert_eq!(body["code"], "request_timeout");
    app.stop().await;
}

/// A chunked body that stops mid-chunk got its 408 on a connection that
/// then stayed open, so a client could hold connections without sending.
async fn stalled_chunked_body_closes_connection(backend: Backend) {
    let spawned = TestApp::spawn_with(backend, |settings| {
        settings.client_timeout = Duration::from_millis(300);
    });
    let Some(app) = spawned.await else { return };
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"nam\r\n",
        app.addr
    );

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received));
    let closed = read.await;

    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 408"),
        "the stalled body gets 408: {text}"
    );
    assert!(
        text.contains("connection: close"),
        "the 408 says the connection closes: {text}"
    );
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the server closed the connection after the 408"
    );
    app.stop().await;
}

/// SQLite reused the id of a hard-deleted row, so an old entity tag matched
/// a different user.
async fn hard_delete_never_reuses_ids(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.create_user("First User", "first@example.com").await;
    let last = app.create_user("Last User", "last@example.com").await;
    let last_id = last["id"].as_i64().unwrap();

    let deleted = app
        .delete(&format!("/api/v1/users/{last_id}?hard=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let next = app.create_user("Next User", "next@example.com").await;

    assert!(
        next["id"].as_i64().unwrap() > last_id,
        "a new user gets a fresh id: {next}"
    );
    app.stop().await;
}

/// PostgreSQL text cannot hold NUL; the filter must be rejected, not sent.
async fn email_filter_with_nul_is_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for query in ["email=%00", "email=a%00b@example.com"] {
        let response = app
            .get(&format!("/api/v1/users?{query}"))
            .send()
            .await
            .unwrap();
        let body = problem(response, 400).await;
        assert_eq!(body["code"], "invalid_query", "{query}");
    }
    app.stop().await;
}

/// An escape that is not `%` and two hex digits, or that decodes to bytes
/// that are not UTF-8, reached the email filter as other text and got an
/// empty 200.
async fn bad_percent_escapes_are_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.create_user("Percent", "percent@example.com").await;
    for query in [
        "email=%ZZ",
        "email=%FF",
        "email=%C3",
        "email=abc%",
        "email=%4",
        "email=%+F",
        "page=%31%",
    ] {
        let response = app
            .get(&format!("/api/v1/users?{query}"))
            .send()
            .await
            .unwrap();
        let body = problem(response, 400).await;
        assert_eq!(body["code"], "invalid_query", "{query}");
        assert_eq!(body["errors"][0]["code"], "malformed", "{query}");
    }
    let valid = app
        .get("/api/v1/users?email=PERCENT%40example.com&page=%31")
        .send()
        .await
        .unwrap();
    assert_eq!(valid.status(), 200, "valid escapes still decode");
    let page: Value = valid.json().await.unwrap();
    assert_eq!(page["data"][0]["email"], "percent@example.com");
    app.stop().await;
}

/// A post inside a create body went through a JSON map first, so its
/// duplicate keys kept the last value and its errors lost the field's path.
async fn nested_duplicate_keys_are_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (
            r#"{"name":"Dup","email":"dup@example.com","age":1,"age":2}"#,
            "age",
            "duplicate_field",
        ),
        (
            r#"{"name":"Dup","email":"dup@example.com","posts":[{"title":"a","content":"b","content":"z"}]}"#,
            "posts[0].content",
            "duplicate_field",
        ),
        (
            r#"{"name":"Dup","email":"dup@example.com","posts":[{"title":"a","content":"b","title":null}]}"#,
            "posts[0].title",
            "duplicate_field",
        ),
        (
            r#"{"name":"Dup","email":"dup@example.com","posts":[{"title":null,"content":"b"}]}"#,
            "posts[0].title",
            "invalid_type",
        ),
        (
            r#"{"name":"Dup","email":"dup@example.com","posts":[["a","b"]]}"#,
            "posts[0]",
            "invalid_type",
        ),
    ];
    for (body, field, code) in cases {
        let response = app
            .client
            .post(app.url("/api/v1/users"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = problem(response, 422).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert_eq!(problem["errors"][0]["code"], code, "{body}");
    }
    let listed = app.get_json("/api/v1/users?email=dup@example.com").await;
    assert_eq!(listed["total"], 0, "no rejected body created a user");
    app.stop().await;
}

/// Routes that take no query parameters rejected none of them.
async fn query_parameters_rejected_on_writes(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Query Check", "query@example.com").await;
    let post = app
        .create_post(user["id"].as_i64().unwrap(), "Query post")
        .await;
    let user_path = format!("/api/v1/users/{}", user["id"]);
    let post_path = format!("/api/v1/posts/{}", post["id"]);
    let user_body = json!({ "name": "Query Check", "email": "query@example.com" });
    let post_body = json!({ "title": "t", "content": "c" });

    let requests = [
        (
            "POST /users",
            app.post_json("/api/v1/users?x=1", &user_body),
        ),
        (
            "PUT /users/{id}",
            app.put_json(&format!("{user_path}?x=1"), &user_body),
        ),
        (
            "PATCH /users/{id}",
            app.patch_json(&format!("{user_path}?hard=true"), &json!({})),
        ),
        (
            "POST /users/{id}/posts",
            app.post_json(&format!("{user_path}/posts?x=1"), &post_body),
        ),
        (
            "PUT /posts/{id}",
            app.put_json(&format!("{post_path}?x=1"), &post_body),
        ),
        (
            "PATCH /posts/{id}",
            app.patch_json(&format!("{post_path}?x=1"), &json!({})),
        ),
    ];
    for (route, request) in requests {
        let body = problem(request.send().await.unwrap(), 400).await;
        assert_eq!(body["code"], "invalid_query", "{route}");
    }
    app.stop().await;
}

async fn create_with_content_type(
    app: &TestApp,
    content_type: &str,
    email: &str,
) -> reqwest::Response {
    let body = json!({ "name": "Type Check", "email": email }).to_string();
    app.client
        .post(app.url("/api/v1/users"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// HTTP allows white space before `;`, and JSON is always UTF-8, so another
/// declared charset would be misread. The alias `utf8` was rejected.
async fn content_type_variants(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        ("application/json ; charset=utf-8", 201),
        ("application/json;charset=\"UTF-8\"", 201),
        ("application/json;charset=utf8", 201),
        ("application/json; charset=latin1", 415),
        ("application/json; charset=utf-16", 415),
    ];
    for (index, (content_type, status)) in cases.into_iter().enumerate() {
        let response =
            create_with_content_type(&app, content_type, &format!("type{index}@example.com")).await;
        assert_eq!(response.status(), status, "{content_type}");
    }
    app.stop().await;
}

/// A compressed body was decoded as if it were plain JSON.
async fn content_encoding_is_415(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let response = app
        .post_json(
            "/api/v1/users",
            &json!({ "name": "Gzip", "email": "gzip@example.com" }),
        )
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();

    let body = problem(response, 415).await;
    assert_eq!(body["code"], "unsupported_media_type");
    app.stop().await;
}

async fn patch_with_if_match(app: &TestApp, path: &str, tags: &[&str]) -> reqwest::Response {
    let mut request = app.patch_json(path, &json!({ "age": 40 }));
    for tag in tags {
        request = request.header("if-match", *tag);
    }
    request.send().await.unwrap()
}

/// `If-None-Match` on PUT, PATCH and DELETE was ignored, so a client's
/// guard against overwriting a version it had seen did nothing. It fails
/// the write with 412 when it lists the current version, weakly compared,
/// or is `*`, and it is checked even when `If-Match` passes.
async fn if_none_match_guards_writes(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Guarded", "guarded@example.com").await;
    let user_path = format!("/api/v1/users/{}", user["id"]);
    let post = app
        .create_post(user["id"].as_i64().unwrap(), "Guarded post")
        .await;
    let post_path = format!("/api/v1/posts/{}", post["id"]);

    let failing: [(&str, Option<&str>); 4] = [
        ("*", None),
        ("\"1\"", None),
        ("W/\"1\", \"7\"", None),
        ("\"1\"", Some("\"1\"")),
    ];
    for (if_none_match, if_match) in failing {
        let writes = [
            app.patch_json(&user_path, &json!({ "age": 41 })),
            app.put_json(
                &user_path,
                &json!({ "name": "Guarded", "email": "guarded@example.com", "age": 41 }),
            ),
            app.patch_json(&post_path, &json!({ "title": "Changed" })),
            app.delete(&post_path),
            app.delete(&user_path),
        ];
        for write in writes {
            let mut write = write.header("if-none-match", if_none_match);
            if let Some(tag) = if_match {
                write = write.header("if-match", tag);
            }
            let response = write.send().await.unwrap();
            assert_eq!(
                response.status(),
                412,
                "If-None-Match: {if_none_match}, If-Match: {if_match:?}"
            );
        }
    }
    let unchanged = app.get(&user_path).send().await.unwrap();
    assert_eq!(
        unchanged.headers()["etag"],
        "\"1\"",
        "the user is unchanged"
    );
    let unchanged = app.get(&post_path).send().await.unwrap();
    assert_eq!(
        unchanged.headers()["etag"],
        "\"1\"",
        "the post is unchanged"
    );

    let passing = app
        .patch_json(&user_path, &json!({ "age": 42 }))
        .header("if-none-match", "\"2\", W/\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        passing.status(),
        200,
        "other versions do not fail the write"
    );
    assert_eq!(passing.headers()["etag"], "\"2\"");
    let unreadable = app
        .patch_json(&user_path, &json!({ "age": 43 }))
        .header(
            "if-none-match",
            reqwest::header::HeaderValue::from_bytes(b"\"\xc3\xa9\"").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        unreadable.status(),
        200,
        "a value that is not ASCII matches no tag"
    );
    app.stop().await;
}

/// `"01"` matched the tag `"1"` because tags were compared as numbers.
async fn if_match_needs_canonical_tags(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Tag Check", "tag@example.com").await;
    let path = format!("/api/v1/users/{}", user["id"]);

    for tag in ["\"01\"", "\"+1\"", "\" 1\""] {
        let response = patch_with_if_match(&app, &path, &[tag]).await;
        assert_eq!(response.status(), 412, "If-Match: {tag}");
    }
    app.stop().await;
}

/// Two `If-Match` lines are one list; only the first line was read.
async fn if_match_lines_form_one_list(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Lines Check", "lines@example.com").await;
    let path = format!("/api/v1/users/{}", user["id"]);

    let response = patch_with_if_match(&app, &path, &["\"5\"", "\"1\""]).await;

    assert_eq!(
        response.status(),
        200,
        "the second line matches the current tag"
    );
    app.stop().await;
}

/// An empty `If-Match` was treated as no condition at all.
async fn empty_if_match_matches_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Empty Tag", "empty@example.com").await;
    let path = format!("/api/v1/users/{}", user["id"]);

    let response = patch_with_if_match(&app, &path, &[""]).await;

    assert_eq!(response.status(), 412);
    app.stop().await;
}

/// A patch that set a value to what it already was raised the version.
async fn unchanged_patch_keeps_version(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app
        .post_json(
            "/api/v1/users",
            &json!({ "name": "Same Age", "email": "same@example.com", "age": 30 }),
        )
        .send()
        .await
        .unwrap();
    let user: Value = user.json().await.unwrap();
    let path = format!("/api/v1/users/{}", user["id"]);

    let patched = app
        .patch_json(&path, &json!({ "age": 30, "email": "SAME@example.com" }))
        .send()
        .await
        .unwrap();

    assert_eq!(patched.status(), 200);
    assert_eq!(patched.headers()["etag"], "\"1\"", "the version stays");
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        patched["updated_at"], user["updated_at"],
        "updated_at stays"
    );
    app.stop().await;
}

/// Type errors named Rust types such as `i64` and `struct CreateUserBody`.
async fn type_errors_use_json_names(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (
            json!({ "name": "Ada", "email": "a@b.co", "age": 1.5 }),
            "an integer",
        ),
        (
            json!({ "name": "Ada", "email": "a@b.co", "posts": {} }),
            "an array",
        ),
    ];
    for (body, expected) in cases {
        let response = app.post_json("/api/v1/users", &body).send().await.unwrap();
        let problem_body = problem(response, 422).await;
        let message = problem_body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains(expected), "{body}: {message}");
        assert!(
            !message.contains("i64") && !message.contains("struct"),
            "{body}: {message}"
        );
    }
    app.stop().await;
}

/// `/users/01` served user 1, giving one resource several paths.
async fn leading_zero_ids_are_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Zero Check", "zero@example.com").await;
    let id = user["id"].as_i64().unwrap();

    for path in [
        format!("/api/v1/users/0{id}"),
        format!("/api/v1/users/00{id}/posts"),
    ] {
        let body = problem(app.get(&path).send().await.unwrap(), 400).await;
        assert_eq!(body["code"], "invalid_id", "{path}");
    }
    app.stop().await;
}

/// A number too large for any integer is well-formed JSON of the wrong
/// type, but it was reported as malformed JSON.
async fn huge_number_is_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let response = app
        .client
        .post(app.url("/api/v1/users"))
        .header("content-type", "application/json")
        .body(r#"{"name":"Hu Ge","email":"huge@example.com","age":1e400}"#)
        .send()
        .await
        .unwrap();

    let body = problem(response, 422).await;
    assert_eq!(body["errors"][0]["field"], "age");
    assert_eq!(body["errors"][0]["code"], "invalid_type");
    app.stop().await;
}
