//! The error contract: every error is `application/problem+json` with type,
//! title, status, detail, code and request_id, and each failure class has its
//! own status and code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use reqwest::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use troupe::db::DatabaseUrl;

use crate::helpers::{problem, Backend, TestApp};

/// The default largest request body, in bytes.
const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// How long a raw HTTP exchange may take before the test fails instead of
/// hanging.
const RAW_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counter that makes every generated email address unique within the test
/// process.
static NEXT_EMAIL: AtomicUsize = AtomicUsize::new(1);

fn unique_email() -> String {
    let n = NEXT_EMAIL.fetch_add(1, Ordering::Relaxed);
    format!("person{n}@example.com")
}

/// A user and a post that routes with an `{id}` can point at.
struct Fixture {
    user_id: i64,
    post_id: i64,
}

async fn fixture(app: &TestApp) -> Fixture {
    let user = app.create_user("Fixture User", &unique_email()).await;
    let user_id = user["id"].as_i64().expect("user id");
    let post = app.create_post(user_id, "Fixture post").await;
    let post_id = post["id"].as_i64().expect("post id");
    Fixture { user_id, post_id }
}

/// A route that takes a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonRoute {
    CreateUser,
    ReplaceUser,
    PatchUser,
    CreatePost,
    ReplacePost,
    PatchPost,
}

impl JsonRoute {
    const ALL: [Self; 6] = [
        Self::CreateUser,
        Self::ReplaceUser,
        Self::PatchUser,
        Self::CreatePost,
        Self::ReplacePost,
        Self::PatchPost,
    ];

    fn method(self) -> Method {
        match self {
            Self::CreateUser | Self::CreatePost => Method::POST,
            Self::ReplaceUser | Self::ReplacePost => Method::PUT,
            Self::PatchUser | Self::PatchPost => Method::PATCH,
        }
    }

    fn path(self, fixture: &Fixture) -> String {
        match self {
            Self::CreateUser => "/api/v1/users".to_owned(),
            Self::ReplaceUser | Self::PatchUser => format!("/api/v1/users/{}", fixture.user_id),
            Self::CreatePost => format!("/api/v1/users/{}/posts", fixture.user_id),
            Self::ReplacePost | Self::PatchPost => format!("/api/v1/posts/{}", fixture.post_id),
        }
    }

    /// Returns a body that the route accepts, with a new email address on
    /// every call.
    fn valid_body(self) -> Value {
        match self {
            Self::CreateUser => json!({"name": "New Person", "email": unique_email()}),
            Self::ReplaceUser => {
                json!({"name": "Replaced Person", "email": unique_email(), "age": 40})
            }
            Self::PatchUser => json!({"name": "Patched Person"}),
            Self::CreatePost | Self::ReplacePost => {
                json!({"title": "Body test", "content": "text"})
            }
            Self::PatchPost => json!({"content": "patched text"}),
        }
    }

    /// Returns the status of a successful request.
    fn success_status(self) -> u16 {
        match self {
            Self::CreateUser | Self::CreatePost => 201,
            _ => 200,
        }
    }

    fn label(self, fixture: &Fixture) -> String {
        format!("{} {}", self.method(), self.path(fixture))
    }
}

/// Sends `body` with the given Content-Type, or with none.
async fn send_body(
    app: &TestApp,
    route: JsonRoute,
    fixture: &Fixture,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(route.method(), app.url(&route.path(fixture)));
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    request.body(body).send().await.unwrap()
}

/// Serializes `body` and pads it with trailing spaces to exactly `size`
/// bytes. JSON allows white space after the value.
fn padded(body: &Value, size: usize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(body).unwrap();
    assert!(bytes.len() <= size, "{body} is longer than {size} bytes");
    bytes.resize(size, b' ');
    bytes
}

/// Splits `body` into HTTP/1.1 chunks of at most `chunk_size` bytes, with
/// the terminating zero-length chunk.
fn chunked(body: &[u8], chunk_size: usize) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = body
        .chunks(chunk_size)
        .map(|chunk| {
            let mut part = format!("{:x}\r\n", chunk.len()).into_bytes();
            part.extend_from_slice(chunk);
            part.extend_from_slice(b"\r\n");
            part
        })
        .collect();
    parts.push(b"0\r\n\r\n".to_vec());
    parts
}

/// Writes a request head and body parts on a new connection and reads one
/// response. Write errors are ignored because the server may respond and
/// stop reading before the whole body is sent. The connection stays open until
/// the response has been read, so the server cannot learn that the body
/// ended early.
pub(crate) async fn raw_exchange(
    addr: SocketAddr,
    head: &str,
    body_parts: &[Vec<u8>],
) -> reqwest::Response {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the app");
        if stream.write_all(head.as_bytes()).await.is_ok() {
            for part in body_parts {
                if stream.write_all(part).await.is_err() {
                    break;
                }
            }
        }
        read_response(&mut stream).await
    };
    tokio::time::timeout(RAW_EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("the server responds within the timeout")
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> reqwest::Response {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 8192];
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break position + 4;
        }
        let read = stream.read(&mut chunk).await.expect("read the response");
        assert!(
            read > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..read]);
    };

    let head = std::str::from_utf8(&buffer[..head_end]).expect("ASCII response head");
    let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line {status_line:?}"));
    let mut builder = http::Response::builder().status(status);
    let mut content_length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("malformed header line {line:?}"));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().expect("numeric Content-Length"));
        }
        builder = builder.header(name, value);
    }
    let content_length =
        content_length.unwrap_or_else(|| panic!("response without Content-Length: {head}"));

    let mut body = buffer[head_end..].to_vec();
    while body.len() < content_length {
        let read = stream.read(&mut chunk).await.expect("read the body");
        assert!(read > 0, "connection closed inside the response body");
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(content_length);
    reqwest::Response::from(builder.body(body).expect("valid response"))
}

fn request_head(app: &TestApp, route: JsonRoute, fixture: &Fixture, framing: &str) -> String {
    format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n",
        route.method(),
        route.path(fixture),
        app.addr
    )
}

/// Sends `body` with `Transfer-Encoding: chunked` in chunks of 8 KiB.
async fn send_chunked(
    app: &TestApp,
    route: JsonRoute,
    fixture: &Fixture,
    body: &[u8],
) -> reqwest::Response {
    let head = request_head(app, route, fixture, "Transfer-Encoding: chunked");
    raw_exchange(app.addr, &head, &chunked(body, 8 * 1024)).await
}

fn header_text(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("ASCII header").to_owned())
}

/// Tells whether `id` has the request id format: 1 to 64 characters of
/// `[A-Za-z0-9._-]`.
fn is_valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Runs one SQL statement directly on the test database, behind the
/// service's back.
fn execute_sql(url: &DatabaseUrl, sql: &str) {
    match url {
        DatabaseUrl::Sqlite(_) => {
            let mut conn = SqliteConnection::establish(&url.connection_string()).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        }
        DatabaseUrl::Postgres(_) => {
            let mut conn = PgConnection::establish(&url.connection_string()).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        }
    }
}

/// Builds malformed variants of a valid body: cut short, followed by more text,
/// empty, and with invalid UTF-8 bytes inside a string.
fn malformed_bodies(valid: &Value) -> Vec<(Vec<u8>, &'static str)> {
    let text = serde_json::to_vec(valid).unwrap();

    let truncated = text[..text.len() - 1].to_vec();
    let mut trailing = text.clone();
    trailing.extend_from_slice(br#" {"extra": 1}"#);
    let string_start = text
        .windows(3)
        .position(|w| w == br#"":""#)
        .expect("a string value")
        + 3;
    let mut invalid_utf8 = text[..string_start].to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe");
    invalid_utf8.extend_from_slice(&text[string_start..]);

    vec![
        (truncated, "truncated object"),
        (Vec::new(), "empty body"),
        (trailing, "trailing garbage after the object"),
        (invalid_utf8, "invalid UTF-8 inside a string"),
    ]
}

async fn malformed_json_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        for (body, reason) in malformed_bodies(&route.valid_body()) {
            let response = send_body(&app, route, &fixture, Some("application/json"), body).await;
            let label = route.label(&fixture);
            assert_eq!(response.status(), 400, "{label}: {reason}");
            let error_body = problem(response, 400).await;
            assert_eq!(error_body["code"], "malformed_json", "{label}: {reason}");
        }
    }
    app.stop().await;
}

async fn wrong_json_types_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let cases = [
        (
            JsonRoute::CreatePost,
            json!({"title": 5, "content": "c"}),
            "title",
            "number for a string",
        ),
        (
            JsonRoute::CreatePost,
            json!({"title": "t", "content": true}),
            "content",
            "boolean for a string",
        ),
        (
            JsonRoute::PatchPost,
            json!({"title": ["t"]}),
            "title",
            "array for a string in a patch",
        ),
        (
            JsonRoute::ReplaceUser,
            json!({"name": "Some One", "email": "s@example.com", "age": "forty"}),
            "age",
            "string for a number",
        ),
        (
            JsonRoute::CreatePost,
            json!("title"),
            "body",
            "string for an object",
        ),
        (
            JsonRoute::CreatePost,
            json!(null),
            "body",
            "null for an object",
        ),
    ];

    for (route, body, field, reason) in cases {
        let response = send_body(
            &app,
            route,
            &fixture,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 422, "{reason}");
        let error_body = problem(response, 422).await;
        assert_eq!(error_body["code"], "validation_failed", "{reason}");
        assert_eq!(error_body["errors"][0]["field"], field, "{reason}");
        assert_eq!(error_body["errors"][0]["code"], "invalid_type", "{reason}");
    }
    app.stop().await;
}

/// Checks that a wrong type before a cut-off end is the error reported,
/// because the body is decoded as it is read.
async fn type_error_before_truncation_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let body = br#"{"title": 5, "content": "#.to_vec();

    let response = send_body(
        &app,
        JsonRoute::CreatePost,
        &fixture,
        Some("application/json"),
        body,
    )
    .await;

    assert_eq!(response.status(), 422);
    let error_body = problem(response, 422).await;
    assert_eq!(error_body["errors"][0]["field"], "title");
    assert_eq!(error_body["errors"][0]["code"], "invalid_type");
    app.stop().await;
}

async fn array_for_object_422(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let cases = [
        (
            JsonRoute::CreatePost,
            json!(["title", "content"]),
            "body",
            "array for an object",
        ),
        (
            JsonRoute::CreateUser,
            json!({"name": "Some One", "email": "nested@example.com",
                   "posts": [["title", "content"]]}),
            "posts[0]",
            "array for a nested post object",
        ),
    ];

    for (route, body, field, reason) in cases {
        let response = send_body(
            &app,
            route,
            &fixture,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 422, "{reason}");
        let error_body = problem(response, 422).await;
        assert_eq!(error_body["errors"][0]["field"], field, "{reason}");
        assert_eq!(error_body["errors"][0]["code"], "invalid_type", "{reason}");
    }
    app.stop().await;
}

async fn unknown_field_named_by_path(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let mut body = route.valid_body();
        body["extra"] = json!(1);
        let label = route.label(&fixture);
        let response = send_body(
            &app,
            route,
            &fixture,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 422, "{label}");
        let error_body = problem(response, 422).await;
        assert_eq!(error_body["errors"][0]["code"], "unknown_field", "{label}");
        assert_eq!(
            error_body["errors"][0]["field"], "extra",
            "{label}: {error_body}"
        );
    }

    let nested = json!({"name": "Some One", "email": unique_email(),
                        "posts": [{"title": "t", "content": "c", "extra": 1}]});
    let response = send_body(
        &app,
        JsonRoute::CreateUser,
        &fixture,
        Some("application/json"),
        serde_json::to_vec(&nested).unwrap(),
    )
    .await;
    let error_body = problem(response, 422).await;
    assert_eq!(
        error_body["errors"][0]["field"], "posts[0].extra",
        "nested unknown field: {error_body}"
    );
    app.stop().await;
}

/// Lists every route with an `{id}` segment, with a valid body for the
/// routes that take one.
fn id_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let user = || json!({"name": "Some One", "email": unique_email()});
    let post = || json!({"title": "t", "content": "c"});
    vec![
        (Method::GET, "/api/v1/users/{id}", None),
        (Method::PUT, "/api/v1/users/{id}", Some(user())),
        (
            Method::PATCH,
            "/api/v1/users/{id}",
            Some(json!({"name": "Some One"})),
        ),
        (Method::DELETE, "/api/v1/users/{id}", None),
        (Method::GET, "/api/v1/users/{id}/posts", None),
        (Method::POST, "/api/v1/users/{id}/posts", Some(post())),
        (Method::GET, "/api/v1/posts/{id}", None),
        (Method::PUT, "/api/v1/posts/{id}", Some(post())),
        (
            Method::PATCH,
            "/api/v1/posts/{id}",
            Some(json!({"title": "t"})),
        ),
        (Method::DELETE, "/api/v1/posts/{id}", None),
    ]
}

async fn send_with_id(
    app: &TestApp,
    method: &Method,
    template: &str,
    id: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let path = template.replace("{id}", id);
    let mut request = app.client.request(method.clone(), app.url(&path));
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

async fn path_ids_invalid_400(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    fixture(&app).await;
    let ids = [
        ("abc", "not a number"),
        ("0", "zero"),
        ("-1", "negative"),
        ("+1", "leading plus sign"),
        ("1.5", "fraction"),
        ("9223372036854775808", "one past the 64-bit maximum"),
        ("99999999999999999999", "far past the 64-bit maximum"),
        ("%C3%A9", "a non-ASCII letter, still routed"),
    ];

    for (method, template, body) in id_routes() {
        for (id, reason) in ids {
            let response = send_with_id(&app, &method, template, id, body.as_ref()).await;
            assert_eq!(
                response.status(),
                400,
                "{method} {template} id={id}: {reason}"
            );
            let error_body = problem(response, 400).await;
            assert_eq!(
                error_body["code"], "invalid_id",
                "{method} {template} id={id}: {reason}"
            );
        }
    }
    app.stop().await;
}

async fn path_id_maximum_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    fixture(&app).await;
    let maximum = i64::MAX.to_string();

    for (method, template, body) in id_routes() {
        let response = send_with_id(&app, &method, template, &maximum, body.as_ref()).await;
        assert_eq!(response.status(), 404, "{method} {template} id={maximum}");
        let error_body = problem(response, 404).await;
        assert_eq!(error_body["code"], "not_found", "{method} {template}");
    }
    app.stop().await;
}

async fn unknown_route_404(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (Method::GET, "/nothing-here", "outside the API"),
        (Method::GET, "/api/v1/nothing-here", "under /api/v1/"),
        (Method::GET, "/api/v1/", "the API root"),
        (Method::GET, "/api/v2/users", "another API version"),
        (Method::GET, "/api/v1/users/1/comments", "under a user"),
        (Method::POST, "/api/v1/nothing-here", "POST under /api/v1/"),
        (Method::DELETE, "/nothing-here", "DELETE outside the API"),
    ];

    for (method, path, reason) in cases {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}: {reason}");
        let error_body = problem(response, 404).await;
        assert_eq!(error_body["code"], "route_not_found", "{method} {path}");
    }
    app.stop().await;
}

async fn wrong_method_405_allow(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let item = ["GET", "HEAD", "PUT", "PATCH", "DELETE"].as_slice();
    let collection = ["GET", "HEAD", "POST"].as_slice();
    let read_only = ["GET", "HEAD"].as_slice();
    let cases = [
        (Method::DELETE, "/api/v1/users", collection),
        (Method::PUT, "/api/v1/users", collection),
        (Method::POST, "/api/v1/users/1", item),
        (Method::DELETE, "/api/v1/users/1/posts", collection),
        (Method::PATCH, "/api/v1/users/1/posts", collection),
        (Method::POST, "/api/v1/posts", read_only),
        (Method::DELETE, "/api/v1/posts", read_only),
        (Method::POST, "/api/v1/posts/1", item),
        (Method::POST, "/healthz", read_only),
        (Method::POST, "/readyz", read_only),
        (Method::DELETE, "/api/v1/healthz", read_only),
    ];

    for (method, path, allowed) in cases {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let allow = header_text(&response, ALLOW.as_str())
            .unwrap_or_else(|| panic!("{method} {path}: Allow header missing"));
        let mut listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        let mut expected = allowed.to_vec();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{method} {path}: Allow lists the methods");
        let error_body = problem(response, 405).await;
        assert_eq!(error_body["code"], "method_not_allowed", "{method} {path}");
    }
    app.stop().await;
}

/// HEAD responds like GET, with the same status and headers and no body.
async fn head_matches_get(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Head Check", "head@example.com").await;
    let paths = [
        "/healthz".to_owned(),
        "/api/v1/users".to_owned(),
        format!("/api/v1/users/{}", user["id"]),
        "/api/v1/users/999999".to_owned(),
    ];

    for path in paths {
        let get = app.get(&path).send().await.unwrap();
        let head = app.client.head(app.url(&path)).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}: status");
        assert_eq!(
            header_text(&head, "etag"),
            header_text(&get, "etag"),
            "HEAD {path}: ETag"
        );
        assert_eq!(head.bytes().await.unwrap().len(), 0, "HEAD {path}: no body");
    }
    app.stop().await;
}

async fn body_at_limit_accepted(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let body = padded(&route.valid_body(), DEFAULT_BODY_LIMIT);
        let response = send_body(&app, route, &fixture, Some("application/json"), body).await;
        assert_eq!(
            response.status(),
            route.success_status(),
            "{}: body of exactly {DEFAULT_BODY_LIMIT} bytes",
            route.label(&fixture)
        );
    }
    app.stop().await;
}

async fn body_one_byte_over_413(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let body = padded(&route.valid_body(), DEFAULT_BODY_LIMIT + 1);
        let response = send_body(&app, route, &fixture, Some("application/json"), body).await;
        let label = route.label(&fixture);
        assert_eq!(response.status(), 413, "{label}: one byte over the limit");
        let error_body = problem(response, 413).await;
        assert_eq!(error_body["code"], "payload_too_large", "{label}");
    }
    app.stop().await;
}

async fn body_ten_megabytes_413(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let body = padded(&route.valid_body(), 10 * 1024 * 1024);
        let response = send_body(&app, route, &fixture, Some("application/json"), body).await;
        let label = route.label(&fixture);
        assert_eq!(response.status(), 413, "{label}: 10 MiB body");
        let error_body = problem(response, 413).await;
        assert_eq!(error_body["code"], "payload_too_large", "{label}");
    }
    app.stop().await;
}

async fn chunked_body_limit(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let label = route.label(&fixture);

        let at_limit = padded(&route.valid_body(), DEFAULT_BODY_LIMIT);
        let response = send_chunked(&app, route, &fixture, &at_limit).await;
        assert_eq!(
            response.status(),
            route.success_status(),
            "{label}: chunked body of exactly the limit"
        );

        let over_limit = padded(&route.valid_body(), DEFAULT_BODY_LIMIT + 1);
        let response = send_chunked(&app, route, &fixture, &over_limit).await;
        assert_eq!(
            response.status(),
            413,
            "{label}: chunked body over the limit"
        );
        let error_body = problem(response, 413).await;
        assert_eq!(error_body["code"], "payload_too_large", "{label}");
    }
    app.stop().await;
}

async fn declared_length_rejected_early(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let label = route.label(&fixture);
        let head = request_head(&app, route, &fixture, "Content-Length: 10485760");
        // Only the start of the declared body is sent and the connection
        // stays open, so a server that waits for the rest times the test out.
        let response = raw_exchange(app.addr, &head, &[br#"{"title": "#.to_vec()]).await;
        assert_eq!(response.status(), 413, "{label}: declared 10 MiB");
        let error_body = problem(response, 413).await;
        assert_eq!(error_body["code"], "payload_too_large", "{label}");
    }
    app.stop().await;
}

async fn configured_body_limit(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |settings| settings.body_limit = 1024).await
    else {
        return;
    };
    let fixture = fixture(&app).await;

    for route in JsonRoute::ALL {
        let label = route.label(&fixture);

        let body = padded(&route.valid_body(), 1024);
        let response = send_body(&app, route, &fixture, Some("application/json"), body).await;
        assert_eq!(
            response.status(),
            route.success_status(),
            "{label}: body of exactly 1024 bytes"
        );

        let body = padded(&route.valid_body(), 1025);
        let response = send_body(&app, route, &fixture, Some("application/json"), body).await;
        assert_eq!(response.status(), 413, "{label}: 1025 bytes");
        let error_body = problem(response, 413).await;
        assert_eq!(error_body["code"], "payload_too_large", "{label}");
        assert!(
            error_body["detail"].as_str().unwrap().contains("1024"),
            "{label}: detail names the configured limit: {error_body}"
        );

        let body = padded(&route.valid_body(), 1025);
        let response = send_chunked(&app, route, &fixture, &body).await;
        assert_eq!(response.status(), 413, "{label}: chunked 1025 bytes");
    }
    app.stop().await;
}

async fn unsupported_content_type_415(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let content_types = [
        (None, "no Content-Type"),
        (Some("text/plain"), "text/plain"),
        (Some("application/x-www-form-urlencoded"), "form encoding"),
    ];

    for route in JsonRoute::ALL {
        for (content_type, reason) in content_types {
            let body = serde_json::to_vec(&route.valid_body()).unwrap();
            let response = send_body(&app, route, &fixture, content_type, body).await;
            let label = route.label(&fixture);
            assert_eq!(response.status(), 415, "{label}: {reason}");
            let error_body = problem(response, 415).await;
            assert_eq!(
                error_body["code"], "unsupported_media_type",
                "{label}: {reason}"
            );
        }
    }
    app.stop().await;
}

async fn json_content_type_variants(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let content_types = [
        "application/json; charset=utf-8",
        "Application/JSON",
        "APPLICATION/JSON; Charset=UTF-8",
    ];

    for route in JsonRoute::ALL {
        for content_type in content_types {
            let body = serde_json::to_vec(&route.valid_body()).unwrap();
            let response = send_body(&app, route, &fixture, Some(content_type), body).await;
            assert_eq!(
                response.status(),
                route.success_status(),
                "{}: Content-Type {content_type}",
                route.label(&fixture)
            );
        }
    }
    app.stop().await;
}

async fn merge_patch_only_on_patch(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let merge_patch = Some("application/merge-patch+json");

    for route in JsonRoute::ALL {
        let body = serde_json::to_vec(&route.valid_body()).unwrap();
        let response = send_body(&app, route, &fixture, merge_patch, body).await;
        let label = route.label(&fixture);
        if route.method() == Method::PATCH {
            assert_eq!(response.status(), 200, "{label}: merge patch accepted");
        } else {
            assert_eq!(response.status(), 415, "{label}: merge patch rejected");
            let error_body = problem(response, 415).await;
            assert_eq!(error_body["code"], "unsupported_media_type", "{label}");
        }
    }
    app.stop().await;
}

async fn request_id_valid_echoed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ids = ["a".to_owned(), "req-42_retry.1".to_owned(), "Z".repeat(64)];

    for id in ids {
        let ok = app
            .get("/api/v1/posts")
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{id}: listing");
        assert_eq!(
            header_text(&ok, "x-request-id").as_deref(),
            Some(id.as_str()),
            "{id}: echoed on success"
        );

        let missing = app
            .get("/api/v1/posts/123456")
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header_text(&missing, "x-request-id").as_deref(),
            Some(id.as_str()),
            "{id}: echoed on an error"
        );
        let error_body = problem(missing, 404).await;
        assert_eq!(
            error_body["request_id"],
            id.as_str(),
            "{id}: in the problem"
        );
    }
    app.stop().await;
}

async fn request_id_invalid_replaced(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (
            HeaderValue::from_str(&"a".repeat(65)).unwrap(),
            "65 characters",
        ),
        (HeaderValue::from_static("has space"), "a space"),
        (HeaderValue::from_static("has/slash"), "a slash"),
        (
            HeaderValue::from_bytes("übung".as_bytes()).unwrap(),
            "non-ASCII",
        ),
    ];

    for (sent, reason) in cases {
        let response = app
            .get("/api/v1/posts/123456")
            .header("x-request-id", sent.clone())
            .send()
            .await
            .unwrap();
        let returned = header_text(&response, "x-request-id")
            .unwrap_or_else(|| panic!("{reason}: X-Request-Id missing"));
        assert_ne!(returned.as_bytes(), sent.as_bytes(), "{reason}: replaced");
        assert!(
            is_valid_request_id(&returned),
            "{reason}: generated id {returned:?} is valid"
        );
        let error_body = problem(response, 404).await;
        assert_eq!(
            error_body["request_id"],
            returned.as_str(),
            "{reason}: body"
        );
    }
    app.stop().await;
}

async fn request_id_generated_when_absent(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let first = app.get("/api/v1/posts").send().await.unwrap();
    let second = app.get("/api/v1/posts/123456").send().await.unwrap();

    let first_id = header_text(&first, "x-request-id").expect("id on success");
    let second_id = header_text(&second, "x-request-id").expect("id on an error");
    assert!(is_valid_request_id(&first_id), "valid id {first_id:?}");
    assert!(is_valid_request_id(&second_id), "valid id {second_id:?}");
    assert_ne!(first_id, second_id, "each request gets its own id");
    let error_body = problem(second, 404).await;
    assert_eq!(
        error_body["request_id"],
        second_id.as_str(),
        "id in the problem"
    );
    app.stop().await;
}

async fn internal_error_hides_details(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // Renames both tables a listing reads, so the listing fails instead of
    // finding an empty table.
    execute_sql(&app.db.url, "ALTER TABLE users RENAME TO users_gone");
    execute_sql(
        &app.db.url,
        "ALTER TABLE live_user_counts RENAME TO counts_gone",
    );
    let forbidden = ["users", "sql", "sqlite", "diesel", "table", "/tmp", "actix"];

    let requests = [
        (app.get("/api/v1/users"), "GET /api/v1/users"),
        (
            app.post_json(
                "/api/v1/users",
                &json!({"name": "Hidden Error", "email": unique_email()}),
            ),
            "POST /api/v1/users",
        ),
    ];
    for (request, label) in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 500, "{label}");
        let error_body = problem(response, 500).await;
        assert_eq!(error_body["code"], "internal_error", "{label}");
        let text = error_body.to_string().to_lowercase();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{label}: body mentions {word:?}: {text}"
            );
        }
    }
    app.stop().await;
}

/// `/readyz` checks the schema troupe relies on beyond the recorded
/// migrations: it is 503 after a table, a column, the unique email index or
/// a count trigger is renamed, dropped or disabled by hand, and 200 again
/// once the schema is back. The probe itself changes nothing.
async fn readyz_checks_schema(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ready = app.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready on a migrated database");

    let alter = |change: &str| format!("ALTER TABLE {change}");
    let mut changes = vec![
        (
            alter("posts RENAME TO posts_moved"),
            alter("posts_moved RENAME TO posts"),
        ),
        (
            alter("users RENAME COLUMN email TO mail"),
            alter("users RENAME COLUMN mail TO email"),
        ),
        (
            alter("posts RENAME COLUMN deleted_at TO removed_at"),
            alter("posts RENAME COLUMN removed_at TO deleted_at"),
        ),
        (
            alter("live_user_counts RENAME TO counts_moved"),
            alter("counts_moved RENAME TO live_user_counts"),
        ),
        // The undo fails if the probe created the migrations table again.
        (
            alter("__diesel_schema_migrations RENAME TO applied_moved"),
            alter("applied_moved RENAME TO __diesel_schema_migrations"),
        ),
        (
            "DROP INDEX users_email_live_key".to_owned(),
            "CREATE UNIQUE INDEX users_email_live_key ON users (lower(email)) \
             WHERE deleted_at IS NULL"
                .to_owned(),
        ),
    ];
    match backend {
        Backend::Postgres => {
            changes.push((
                alter("users DISABLE TRIGGER users_count_update"),
                alter("users ENABLE TRIGGER users_count_update"),
            ));
            // A replica trigger does not fire in troupe's sessions.
            changes.push((
                alter("users ENABLE REPLICA TRIGGER users_count_insert"),
                alter("users ENABLE TRIGGER users_count_insert"),
            ));
        }
        Backend::Sqlite => {
            let definition = sqlite_text(
                &app.db.url,
                "SELECT sql AS text FROM sqlite_master WHERE name = 'users_count_delete'",
            );
            changes.push(("DROP TRIGGER users_count_delete".to_owned(), definition));
        }
    }
    for (change, undo) in changes {
        execute_sql(&app.db.url, &change);
        let response = app.get("/readyz").send().await.unwrap();
        let body = problem(response, 503).await;
        assert_eq!(body["code"], "not_ready", "after {change}: {body}");
        let text = body.to_string().to_lowercase();
        for internal in ["posts", "column", "index", "trigger", "users_"] {
            assert!(!text.contains(internal), "after {change}: {text}");
        }

        execute_sql(&app.db.url, &undo);
        let ready = app.get("/readyz").send().await.unwrap();
        assert_eq!(ready.status(), 200, "ready again after {undo}");
    }
    app.stop().await;
}

/// Reads one text value, named `text`, from an SQLite database.
fn sqlite_text(url: &DatabaseUrl, sql: &str) -> String {
    #[derive(QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        text: String,
    }
    let mut conn = SqliteConnection::establish(&url.connection_string()).unwrap();
    let row: Text = diesel::sql_query(sql).get_result(&mut conn).unwrap();
    row.text
}

async fn validation_errors_reported_together(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let fixture = fixture(&app).await;
    let cases = [
        (
            JsonRoute::CreateUser,
            json!({"name": "", "email": "no-at-sign", "age": 200}),
            vec!["name", "email", "age"],
        ),
        (
            JsonRoute::ReplaceUser,
            json!({"name": "x", "email": "a@b", "age": -1}),
            vec!["name", "email", "age"],
        ),
        (
            JsonRoute::CreatePost,
            json!({"title": " ", "content": "c".repeat(10_001)}),
            vec!["title", "content"],
        ),
        (
            JsonRoute::PatchPost,
            json!({"title": null, "content": null}),
            vec!["title", "content"],
        ),
    ];

    for (route, body, fields) in cases {
        let label = route.label(&fixture);
        let response = send_body(
            &app,
            route,
            &fixture,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 422, "{label}");
        let error_body = problem(response, 422).await;
        assert_eq!(error_body["code"], "validation_failed", "{label}");
        let errors = error_body["errors"].as_array().expect("errors list");
        for error in errors {
            let object = error.as_object().expect("error object");
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["code", "field", "message"], "{label}: {error}");
            for key in ["code", "field", "message"] {
                assert!(
                    object[key].as_str().is_some_and(|text| !text.is_empty()),
                    "{label}: {key} is a non-empty string in {error}"
                );
            }
        }
        let reported: Vec<&str> = errors
            .iter()
            .map(|error| error["field"].as_str().unwrap())
            .collect();
        assert_eq!(reported, fields, "{label}: every invalid field, in order");
    }
    app.stop().await;
}

crate::on_both_backends!(
    malformed_json_400,
    type_error_before_truncation_422,
    wrong_json_types_422,
    array_for_object_422,
    unknown_field_named_by_path,
    path_ids_invalid_400,
    path_id_maximum_404,
    unknown_route_404,
    wrong_method_405_allow,
    head_matches_get,
    body_at_limit_accepted,
    body_one_byte_over_413,
    body_ten_megabytes_413,
    chunked_body_limit,
    declared_length_rejected_early,
    configured_body_limit,
    unsupported_content_type_415,
    json_content_type_variants,
    merge_patch_only_on_patch,
    request_id_valid_echoed,
    request_id_invalid_replaced,
    request_id_generated_when_absent,
    internal_error_hides_details,
    readyz_checks_schema,
    validation_errors_reported_together,
);
