//! The real binary serving HTTP: what it logs for failed requests, and how
//! it shuts down on SIGTERM and recovers after SIGKILL.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, SqliteConnection};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use troupe::db::DatabaseUrl;

use crate::helpers::{stderr_lines, troupe_command, Backend, TestDb};

crate::on_both_backends!(
    sigterm_keeps_acknowledged_writes,
    sigkill_keeps_acknowledged_writes
);

/// How long the server may take to start or to exit before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Concurrent creates in a burst; the signal goes out after `SIGNAL_AFTER`
/// of them were acknowledged.
const BURST: usize = 200;
const SIGNAL_AFTER: usize = 20;

/// A running `troupe serve` with JSON logs, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
    /// Lines read while waiting for the server to listen.
    start_log: Vec<String>,
}

impl Server {
    fn start(url: &DatabaseUrl, extra: &[&str]) -> Self {
        let mut command = troupe_command();
        command
            .env("DATABASE_URL", url.connection_string())
            .args(["--log-format", "json", "serve", "--bind", "127.0.0.1:0"])
            .args([
                "--db-pool-size",
                "2",
                "--db-workers",
                "2",
                "--http-workers",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();

        let log = stderr_lines(&mut child);

        let deadline = Instant::now() + DEADLINE;
        let mut start_log = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = log.recv_timeout(left) else {
                panic!(
                    "troupe did not log that it is listening; log:\n{}",
                    start_log.join("\n")
                )
            };
            start_log.push(line.clone());
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                break event["http.addr"].as_str().unwrap().parse().unwrap();
            }
        };
        Self {
            child,
            addr,
            log,
            start_log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit and returns its status and every log
    /// event it wrote.
    fn wait(mut self) -> (ExitStatus, Vec<Value>) {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = std::mem::take(&mut self.start_log);
        // The log channel disconnects when stderr closes, that is at exit.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("troupe did not exit within {DEADLINE:?}")
                }
            }
        }
        let status = self.child.wait().unwrap();
        let events = lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        (status, events)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops the server with SIGTERM and returns every log event it wrote.
async fn stop(server: Server) -> Vec<Value> {
    server.signal("TERM");
    let (_, events) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    events
}

/// Returns the events that belong to one request id: through the request
/// span, or through a field of their own where the filter left the span out.
fn events_of<'a>(events: &'a [Value], request_id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| {
            event["span"]["request_id"] == request_id || event["request_id"] == request_id
        })
        .collect()
}

/// Sends a burst of creates, sends `signal` after `SIGNAL_AFTER` of them got
/// 201, and returns the ids of every acknowledged create.
async fn burst_then_signal(server: &Server, signal: &str) -> Vec<i64> {
    let client = reqwest::Client::new();
    let mut requests = JoinSet::new();
    for n in 0..BURST {
        let request = client.post(server.url("/api/v1/users")).json(
            &json!({ "name": format!("Burst {n}"), "email": format!("burst{n}@example.com") }),
        );
        requests.spawn(async move {
            let response = request.send().await.ok()?;
            if response.status() != 201 {
                return None;
            }
            let user: Value = response.json().await.ok()?;
            user["id"].as_i64()
        });
    }

    let mut acknowledged = Vec::new();
    let mut signalled = false;
    while let Some(joined) = requests.join_next().await {
        if let Some(id) = joined.unwrap() {
            acknowledged.push(id);
        }
        if !signalled && acknowledged.len() >= SIGNAL_AFTER {
            server.signal(signal);
            signalled = true;
        }
    }
    assert!(
        signalled,
        "at least {SIGNAL_AFTER} creates were acknowledged before the signal"
    );
    acknowledged
}

/// Returns the ids among `ids` that have a user row.
fn stored_ids(url: &DatabaseUrl, ids: &[i64]) -> Vec<i64> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let query = diesel::sql_query("SELECT id FROM users");
    let rows: Vec<Row> = match url {
        DatabaseUrl::Postgres(raw) => {
            diesel::RunQueryDsl::load(query, &mut PgConnection::establish(raw).unwrap()).unwrap()
        }
        DatabaseUrl::Sqlite(_) => diesel::RunQueryDsl::load(
            query,
            &mut SqliteConnection::establish(&url.connection_string()).unwrap(),
        )
        .unwrap(),
    };
    let stored: Vec<i64> = rows.into_iter().map(|row| row.id).collect();
    ids.iter()
        .copied()
        .filter(|id| stored.contains(id))
        .collect()
}

/// SIGTERM during a burst of writes: the process exits 0, and every create
/// that was answered 201 is in the database.
async fn sigterm_keeps_acknowledged_writes(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let server = Server::start(&db.url, &[]);

    let acknowledged = burst_then_signal(&server, "TERM").await;
    let (status, events) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();

    assert!(status.success(), "troupe exits 0 after SIGTERM: {status}");
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))),
        "the shutdown is logged"
    );
    assert_eq!(
        stored_ids(&db.url, &acknowledged),
        acknowledged,
        "every acknowledged create is stored"
    );
}

/// SIGKILL during a burst of writes, then a restart on the same database:
/// every create that was answered 201 can be read back.
async fn sigkill_keeps_acknowledged_writes(backend: Backend) {
    let Some(db) = TestDb::create(backend) else {
        return;
    };
    let server = Server::start(&db.url, &[]);

    let acknowledged = burst_then_signal(&server, "KILL").await;
    let (status, _) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(!status.success(), "SIGKILL ends the process: {status}");

    let restarted = Server::start(&db.url, &[]);
    let client = reqwest::Client::new();
    for id in &acknowledged {
        let response = client
            .get(restarted.url(&format!("/api/v1/users/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "acknowledged user {id} survives SIGKILL"
        );
    }
}

/// A 500 is logged exactly once, at error level, with the request id, the
/// route template, the status, the latency and the cause chain; a 404 is
/// not logged as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_logged_once() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    let server = Server::start(&db.url, &[]);
    let mut conn = SqliteConnection::establish(&db.url.connection_string()).unwrap();
    conn.batch_execute(
        "ALTER TABLE users RENAME TO users_gone; \
         ALTER TABLE live_user_counts RENAME TO counts_gone;",
    )
    .unwrap();

    let client = reqwest::Client::new();
    let failed = client
        .get(server.url("/api/v1/users"))
        .header("x-request-id", "failing-list")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let missing = client
        .get(server.url("/api/v1/posts/12345"))
        .header("x-request-id", "missing-post")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let events = stop(server).await;

    let failed: Vec<_> = events_of(&events, "failing-list")
        .into_iter()
        .filter(|e| e["level"] == "ERROR")
        .collect();
    assert_eq!(failed.len(), 1, "one error line for the 500: {failed:?}");
    let line = failed[0];
    assert_eq!(line["http.status"], 500);
    assert_eq!(line["span"]["http.route"], "/api/v1/users");
    assert!(
        line["latency_ms"].as_f64().is_some(),
        "latency logged: {line}"
    );
    let cause = line["error.cause_chain"].as_str().unwrap_or_default();
    assert!(
        cause.contains("no such table"),
        "cause chain logged: {cause}"
    );

    let missing = events_of(&events, "missing-post");
    assert!(!missing.is_empty(), "the 404 is logged");
    assert!(
        missing.iter().all(|e| e["level"] == "INFO"),
        "a 404 is not logged as a warning or error: {missing:?}"
    );
}

/// At `warn` the request span is off, yet a 500's error line still names
/// its request: id, method and route are fields of the line itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_at_warn_names_request() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    // The start-up module stays at `info` so that the server logs where it
    // listens.
    let server = Server::start(&db.url, &["--log-level", "warn,troupe::startup=info"]);
    let mut conn = SqliteConnection::establish(&db.url.connection_string()).unwrap();
    conn.batch_execute("ALTER TABLE live_user_counts RENAME TO counts_gone;")
        .unwrap();

    let client = reqwest::Client::new();
    let failed = client
        .get(server.url("/api/v1/users"))
        .header("x-request-id", "failing-at-warn")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let healthy = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);

    let events = stop(server).await;

    let failed = events_of(&events, "failing-at-warn");
    assert_eq!(failed.len(), 1, "one line for the 500: {failed:?}");
    assert_eq!(failed[0]["level"], "ERROR");
    assert_eq!(failed[0]["http.method"], "GET");
    assert_eq!(failed[0]["http.route"], "/api/v1/users");
    let request_lines: Vec<_> = events
        .iter()
        .filter(|e| e["target"] == "troupe::http::request" && e["level"] == "INFO")
        .collect();
    assert!(
        request_lines.is_empty(),
        "warn hides the lines of requests below 500: {request_lines:?}"
    );
}

/// A 503's warning names why the request was not served, with the code
/// its problem body has: here the writer waited out SQLite's busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_logged_with_code() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    let server = Server::start(&db.url, &["--sqlite-busy-timeout-ms", "100"]);
    let mut lock = SqliteConnection::establish(&db.url.connection_string()).unwrap();
    lock.batch_execute("BEGIN IMMEDIATE;").unwrap();

    let response = reqwest::Client::new()
        .post(server.url("/api/v1/users"))
        .header("x-request-id", "busy-create")
        .json(&json!({ "name": "Busy", "email": "busy@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    lock.batch_execute("ROLLBACK;").unwrap();

    let events = stop(server).await;

    let failed: Vec<_> = events_of(&events, "busy-create")
        .into_iter()
        .filter(|e| e["message"] == "request failed")
        .collect();
    assert_eq!(failed.len(), 1, "one line for the 503: {failed:?}");
    assert_eq!(failed[0]["level"], "WARN");
    assert_eq!(
        body["code"], "database_busy",
        "the lock made the writer wait"
    );
    assert_eq!(failed[0]["error.code"], body["code"]);
}

/// With a shutdown delay, SIGTERM turns readiness off at once while the
/// server still serves requests, health checks and writes alike. After the
/// delay it stops and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_turns_readiness_off_first() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    let server = Server::start(&db.url, &["--shutdown-delay-ms", "3000"]);
    let client = reqwest::Client::new();
    let before = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(before.status(), 200, "ready before the signal");

    server.signal("TERM");
    // Polls until the signal has been handled; bounded, so that a server
    // that never turns readiness off fails the test.
    let mut not_ready = None;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let response = client.get(server.url("/readyz")).send().await.unwrap();
        if response.status() == 503 {
            not_ready = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let not_ready = not_ready.expect("/readyz turns 503 after SIGTERM");
    let body: Value = not_ready.json().await.unwrap();
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    let created = client
        .post(server.url("/api/v1/users"))
        .json(&json!({ "name": "Late Writer", "email": "late@example.com" }))
        .send()
        .await
        .unwrap();
    let (status, events) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();

    assert_eq!(body["code"], "not_ready", "the 503 says why: {body}");
    assert_eq!(health.status(), 200, "liveness stays 200 during the delay");
    assert_eq!(
        created.status(),
        201,
        "writes are still served during the delay"
    );
    assert!(status.success(), "troupe exits 0 after the delay: {status}");
    assert!(
        events.iter().any(|e| e["message"]
            == "shutting down: readiness is off, still serving until the delay ends"),
        "the delay is logged"
    );
    assert_eq!(
        stored_ids(&db.url, &[1]),
        vec![1],
        "the write acknowledged during the delay is stored"
    );
}

/// A request still running when the shutdown timeout ends is cut off and
/// logged at warn level with its request id; the process still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_logs_cut_requests() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    let server = Server::start(&db.url, &["--shutdown-timeout-secs", "1"]);
    let mut locker = SqliteConnection::establish(&db.url.connection_string()).unwrap();
    locker.batch_execute("BEGIN EXCLUSIVE").unwrap();

    let client = reqwest::Client::new();
    let blocked = client
        .post(server.url("/api/v1/users"))
        .header("x-request-id", "cut-off-create")
        .json(&json!({ "name": "Blocked", "email": "blocked@example.com" }))
        .send();
    let blocked = tokio::spawn(blocked);
    // Polls until the create holds its queue place; bounded so that a
    // create that never arrives fails the test.
    let mut queued = false;
    for _ in 0..500 {
        let text = client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|line| line == "troupe_db_queue_depth 1") {
            queued = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(queued, "the create reaches the database queue");

    server.signal("TERM");
    let (status, events) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    let reply = blocked.await.unwrap();
    locker.batch_execute("ROLLBACK").unwrap();

    assert!(
        status.success(),
        "troupe exits 0 after the shutdown timeout: {status}"
    );
    assert!(
        reply.is_err() || reply.is_ok_and(|r| r.status() != 201),
        "the cut-off create is not acknowledged"
    );
    let cut = events_of(&events, "cut-off-create");
    assert!(
        cut.iter().any(|e| e["level"] == "WARN"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("still running at the shutdown timeout"))),
        "the cut-off request is logged at warn level: {cut:?}"
    );
    assert!(
        stored_ids(&db.url, &[1]).is_empty(),
        "the cut-off create is not stored"
    );
}

/// Log lines that actors write while handling a request carry that
/// request's id, because every message carries the request's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_logs_carry_request_id() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    let server = Server::start(&db.url, &["--log-level", "info,troupe::actors=debug"]);

    let client = reqwest::Client::new();
    let created = client
        .post(server.url("/api/v1/users"))
        .header("x-request-id", "traced-create")
        .json(&json!({ "name": "Traced", "email": "traced@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let events = stop(server).await;

    let from_worker: Vec<_> = events_of(&events, "traced-create")
        .into_iter()
        .filter(|e| {
            e["target"].as_str().is_some_and(|target| {
                target == "troupe::actors::db_worker" || target.starts_with("troupe::actors::batch")
            })
        })
        .collect();
    assert!(
        !from_worker.is_empty(),
        "the database worker's log line for the insert carries the request id"
    );
    assert!(
        from_worker.iter().any(|e| e["db.op"] == "users.insert"),
        "the line names the query: {from_worker:?}"
    );
}

/// Two instances starting at once on a fresh SQLite file both start, and
/// neither logs an error: switching the file to WAL used to race and log
/// "database is locked" at error level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sqlite_starts_log_no_error() {
    let Some(db) = TestDb::create(Backend::Sqlite) else {
        return;
    };
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| Server::start(&db.url, &[]));
        let second = scope.spawn(|| Server::start(&db.url, &[]));
        (first.join().unwrap(), second.join().unwrap())
    });

    for server in [first, second] {
        server.signal("TERM");
        let (status, events) = tokio::task::spawn_blocking(move || server.wait())
            .await
            .unwrap();
        let errors: Vec<_> = events.iter().filter(|e| e["level"] == "ERROR").collect();
        assert!(status.success(), "each instance exits 0: {status}");
        assert!(errors.is_empty(), "no error is logged: {errors:?}");
    }
}
