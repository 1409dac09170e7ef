//! PostgreSQL going away and coming back while troupe runs. The outage is
//! made by a TCP proxy that the test controls, never by stopping the shared
//! server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use troupe::db::DatabaseUrl;

use crate::faults::metric;
use crate::helpers::{postgres_admin_url, test_settings, Backend, TestApp, TestDb};

/// How long recovery may take before the test fails.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

/// A TCP proxy in front of PostgreSQL. While it is down it closes every
/// new connection at once and has cut every open one.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));

        let accept = tokio::spawn({
            let down = Arc::clone(&down);
            let connections = Arc::clone(&connections);
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    connections.lock().await.spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            }
        });
        Self {
            addr,
            down,
            connections,
            accept,
        }
    }

    /// Cuts every open connection and refuses new ones.
    async fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Returns the URL with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let userinfo = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{addr}/{path}")
}

/// Returns the host and port of a PostgreSQL URL.
fn server_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    host_port.parse().unwrap()
}

async fn list_status(app: &TestApp) -> u16 {
    app.get("/api/v1/users")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// While PostgreSQL is unreachable, requests get 503 with `Retry-After` and
/// `/readyz` turns 503 while `/healthz` stays 200; once it is back, service
/// resumes without a restart of troupe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_then_recovery() {
    if postgres_admin_url().is_none() {
        return;
    }
    let Some(db) = TestDb::create(Backend::Postgres) else {
        return;
    };
    let DatabaseUrl::Postgres(direct) = db.url.clone() else {
        unreachable!("a PostgreSQL database")
    };
    let proxy = Proxy::start(server_addr(&direct)).await;
    let mut settings = test_settings(DatabaseUrl::Postgres(through(&direct, proxy.addr)));
    settings.pool.connection_timeout = Duration::from_millis(500);
    settings.request_timeout = Duration::from_secs(3);
    let app = TestApp::start(settings, db);
    let created = app.create_user("Before Outage", "before@example.com").await;

    proxy.cut().await;

    for attempt in 0..3 {
        let response = app.get("/api/v1/users").send().await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "list during the outage, attempt {attempt}"
        );
        assert!(
            response.headers().contains_key("retry-after"),
            "503 carries Retry-After"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["code"], "database_unavailable",
            "attempt {attempt}: {body}"
        );
    }
    let write = app
        .post_json(
            "/api/v1/users",
            &json!({ "name": "During Outage", "email": "during@example.com" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        write.status(),
        503,
        "a create during the outage is not acknowledged"
    );
    assert_eq!(
        app.get("/readyz").send().await.unwrap().status(),
        503,
        "not ready during the outage"
    );
    assert_eq!(
        app.get("/healthz").send().await.unwrap().status(),
        200,
        "alive during the outage"
    );

    proxy.restore();

    // Polls until service resumes; the deadline turns a failure to recover
    // into a test failure.
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    while list_status(&app).await != 200 {
        assert!(
            Instant::now() < deadline,
            "service did not resume within {RECOVERY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.get("/readyz").send().await.unwrap().status(),
        200,
        "ready again"
    );
    let id = created["id"].as_i64().unwrap();
    let fetched = app
        .get(&format!("/api/v1/users/{id}?include=posts"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        fetched.status(),
        200,
        "data written before the outage is there"
    );
    let page: Value = app
        .get("/api/v1/users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["total"], 1,
        "the create answered 503 during the outage was not stored"
    );
    assert!(
        metric(
            &app,
            "troupe_unavailable_responses_total{reason=\"database_unavailable\"}"
        )
        .await
            >= 4.0,
        "the outage's 503s are counted by reason"
    );
    app.stop().await;
}
