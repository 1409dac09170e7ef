//! The test harness: a fresh database per test and the service spawned on
//! port 0 in its own thread and actix system.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use actix::Addr;
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::Value;
use troupe::actors::{UserStore, WorkerPool};
use troupe::config::{ServeArgs, Settings};
use troupe::db::DatabaseUrl;
use troupe::startup::{Application, StopHandle};

pub const POSTGRES_URL_VAR: &str = "TROUPE_TEST_POSTGRES_URL";
pub const REQUIRE_POSTGRES_VAR: &str = "TROUPE_TEST_REQUIRE_POSTGRES";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A database that exists for one test and is removed when dropped.
pub struct TestDb {
    pub url: DatabaseUrl,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// Creates an empty database, or returns `None` (after saying so) when
    /// PostgreSQL is not configured and not required.
    pub fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = DatabaseUrl::Sqlite(dir.path().join("troupe.db"));
                Some(Self {
                    url,
                    cleanup: Cleanup::Sqlite(dir),
                })
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url()?;
                let name = format!("troupe_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::establish(&admin_url)
                    .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_VAR}: {e}"));
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .expect("create the test database");
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(base, _)| base);
                let url = DatabaseUrl::Postgres(format!("{base}/{name}"));
                Some(Self {
                    url,
                    cleanup: Cleanup::Postgres { admin_url, name },
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            if let Ok(mut admin) = PgConnection::establish(admin_url) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin);
            }
        }
    }
}

/// Returns the PostgreSQL admin URL for tests, or `None` when PostgreSQL
/// tests are skipped. Panics when they are required but not configured.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_URL_VAR} is not set")
        }
        _ => {
            eprintln!("SKIPPED: PostgreSQL test, set {POSTGRES_URL_VAR} to run it");
            None
        }
    }
}

/// Settings for a test service: port 0 and small pools.
pub fn test_settings(url: DatabaseUrl) -> Settings {
    let serve = ServeArgs {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        db_pool_size: 2,
        db_workers: Some(2),
        http_workers: Some(1),
        ..ServeArgs::default()
    };
    Settings::new(url, &serve).expect("valid test settings")
}

/// The service running in its own thread, with its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The running service's actors, for tests that message them directly.
    pub store: Addr<UserStore>,
    pub workers: Addr<WorkerPool>,
    pub client: reqwest::Client,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
    pub db: TestDb,
}

impl TestApp {
    /// Starts the service on a fresh database, or returns `None` when the
    /// backend is skipped.
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Like `spawn`, after `configure` has adjusted the settings.
    pub async fn spawn_with(
        backend: Backend,
        configure: impl FnOnce(&mut Settings),
    ) -> Option<Self> {
        let db = TestDb::create(backend)?;
        let mut settings = test_settings(db.url.clone());
        configure(&mut settings);
        Some(Self::start(settings, db))
    }

    /// Starts the service with `settings` on `db`.
    pub fn start(settings: Settings, db: TestDb) -> Self {
        let (started_tx, started_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let app = Application::build(settings)
                    .await
                    .expect("build the application");
                let actors = (app.user_store().clone(), app.db_workers().clone());
                started_tx
                    .send((app.local_addr(), app.stop_handle(), actors))
                    .expect("report the address");
                app.run().await.expect("run the server");
            });
        });
        let (addr, stop, (store, workers)) = started_rx.recv().expect("the application starts");
        Self {
            addr,
            store,
            workers,
            client: reqwest::Client::new(),
            stop,
            thread: Some(thread),
            db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).json(body)
    }

    pub fn put_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.put(self.url(path)).json(body)
    }

    pub fn patch_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.patch(self.url(path)).json(body)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// Creates a user and returns its JSON representation.
    pub async fn create_user(&self, name: &str, email: &str) -> Value {
        let response = self
            .post_json(
                "/api/v1/users",
                &serde_json::json!({ "name": name, "email": email }),
            )
            .send()
            .await
            .expect("send create user");
        assert_eq!(response.status(), 201, "create user {email}");
        response.json().await.expect("user JSON")
    }

    /// Creates a post for `user_id` and returns its JSON representation.
    pub async fn create_post(&self, user_id: i64, title: &str) -> Value {
        let response = self
            .post_json(
                &format!("/api/v1/users/{user_id}/posts"),
                &serde_json::json!({ "title": title, "content": "text" }),
            )
            .send()
            .await
            .expect("send create post");
        assert_eq!(response.status(), 201, "create post {title}");
        response.json().await.expect("post JSON")
    }

    /// Sends `GET path`, checks that it succeeds and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).send().await.expect("send GET");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("response JSON")
    }

    /// Stops the service and waits for its thread.
    pub async fn stop(mut self) {
        self.stop.stop(true).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let stop = self.stop.clone();
        // The stop command is sent when `stop` is first polled, so poll it
        // on a runtime of its own; the server thread does the rest.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(stop.stop(false));
            }
        })
        .join();
        let _ = thread.join();
    }
}

/// Reads a response as a problem body and checks the envelope.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        content_type, "application/problem+json",
        "problem content type"
    );
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status, "problem status field: {body}");
    assert!(
        body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "problem code: {body}"
    );
    assert!(body["type"].as_str().is_some(), "problem type: {body}");
    assert!(body["title"].as_str().is_some(), "problem title: {body}");
    assert!(body["detail"].as_str().is_some(), "problem detail: {body}");
    assert_eq!(
        body["request_id"],
        request_id.as_str(),
        "problem request_id matches X-Request-Id"
    );
    body
}

/// Builds a command for the `troupe` binary that inherits none of troupe's
/// settings from the test's environment.
pub fn troupe_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_troupe"));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name == "DATABASE_URL" || name.starts_with("TROUPE_") {
            command.env_remove(&key);
        }
    }
    command.stdin(std::process::Stdio::null());
    command
}

/// Reads the child's stderr line by line on a thread of its own. The
/// receiver disconnects when the pipe closes, that is when the child exits.
pub fn stderr_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    use std::io::BufRead;

    let stderr = child.stderr.take().expect("stderr is piped");
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}
