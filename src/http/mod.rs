//! The HTTP layer: the route table, extractors, representations
//! and the problem format. Handlers validate input into domain types, send
//! one message to an actor and render its reply.

mod body;
mod health;
mod params;
mod posts;
pub mod problem;
mod representation;
mod request;
mod users;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{guard, web, HttpResponse, Route};

pub use request::{request_context, REQUEST_ID_HEADER};

use crate::actors::{queries, Admission, UserStore, WorkerPool, WriteBatcher};
use crate::metrics::Metrics;
use problem::ApiError;

/// Shared, read-only state of every HTTP worker: actor addresses and limits.
/// Nothing in it is mutable, so no lock is needed.
pub struct AppState {
    pub store: Addr<UserStore>,
    /// The workers for reads.
    pub db: Addr<WorkerPool>,
    /// The worker or workers for writes: one on SQLite, the readers on
    /// PostgreSQL.
    pub writer: Addr<WorkerPool>,
    /// Batches post writes and sends them to `writer`.
    pub post_writer: Addr<WriteBatcher<queries::posts::Write>>,
    /// The bound on database work, shared with the user store.
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts, so readiness turns false.
    pub shutting_down: Arc<AtomicBool>,
    /// Triggered when a supervised actor fails past its restart policy.
    pub escalation: Arc<crate::actors::Escalation>,
    /// Turns true when the shutdown timeout has passed.
    pub cut_off: tokio::sync::watch::Receiver<bool>,
    pub request_timeout: Duration,
    pub body_limit: usize,
    /// Time a client has to send a request body.
    pub client_timeout: Duration,
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(resource("/healthz", "GET, HEAD").route(get().to(health::healthz)))
        .service(resource("/readyz", "GET, HEAD").route(get().to(health::readyz)))
        .service(resource("/metrics", "GET, HEAD").route(get().to(health::metrics)))
        .service(
            web::scope("/api/v1")
                .service(resource("/healthz", "GET, HEAD").route(get().to(health::healthz)))
                .service(
                    resource("/users", "GET, HEAD, POST")
                        .route(get().to(users::list))
                        .route(web::post().to(users::create)),
                )
                .service(
                    resource("/users/{id}", "GET, HEAD, PUT, PATCH, DELETE")
                        .route(get().to(users::get))
                        .route(web::put().to(users::replace))
                        .route(web::patch().to(users::patch))
                        .route(web::delete().to(users::delete)),
                )
                .service(
                    resource("/users/{id}/posts", "GET, HEAD, POST")
                        .route(get().to(posts::list_for_user))
                        .route(web::post().to(posts::create_for_user)),
                )
                .service(resource("/posts", "GET, HEAD").route(get().to(posts::list)))
                .service(
                    resource("/posts/{id}", "GET, HEAD, PUT, PATCH, DELETE")
                        .route(get().to(posts::get))
                        .route(web::put().to(posts::replace))
                        .route(web::patch().to(posts::patch))
                        .route(web::delete().to(posts::delete)),
                )
                .default_service(not_found()),
        )
        .default_service(not_found());
}

/// Builds a route for GET that also serves HEAD. actix-web sends no body
/// in a HEAD response.
fn get() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Builds a resource whose unmatched methods get 405 with `Allow`.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow })
    }))
}

fn not_found() -> Route {
    web::to(|| async { Err::<HttpResponse, _>(ApiError::RouteNotFound) })
}
