//! Liveness and readiness probes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::problem::{ApiError, UnavailableReason};
use super::AppState;
use crate::actors::queries::{CheckReady, Readiness};
use crate::actors::{ActorError, Query, RequestCtx};

/// Returns 200 while the process and its actors run. It never touches the
/// database, so it stays fast when the database is slow or locked.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.store.connected()
        || !state.db.connected()
        || !state.writer.connected()
        || !state.post_writer.connected()
    {
        return Err(ApiError::unavailable(UnavailableReason::ActorUnavailable));
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ok" })))
}

/// Renders every metric in the Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state
        .metrics
        .render()
        .map_err(|e| ApiError::Internal { cause: Box::new(e) })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// Returns 200 when a worker reaches the database, every migration is
/// applied, the schema has what troupe reads and relies on, an SQLite file
/// is still where troupe opened it, and the user store runs; 503
/// otherwise.
pub async fn readyz(state: web::Data<AppState>, ctx: RequestCtx) -> Result<HttpResponse, ApiError> {
    if state.escalation.is_triggered() {
        return Err(ApiError::Unavailable {
            reason: UnavailableReason::NotReady,
            cause: Some("the user store failed past its restart policy".into()),
        });
    }
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable {
            reason: UnavailableReason::NotReady,
            cause: Some("the service is shutting down".into()),
        });
    }
    if !state.store.connected() {
        return Err(ApiError::unavailable(UnavailableReason::ActorUnavailable));
    }

    // The probe waits at most the request budget, even with a queue ahead.
    let wait = state.request_timeout.max(Duration::from_millis(100));
    let delivery = state
        .db
        .send(Query::new(ctx, CheckReady))
        .timeout(wait)
        .await;
    match ActorError::flatten("db_worker", delivery) {
        Ok(Readiness::Ready) => Ok(HttpResponse::Ok().json(json!({ "status": "ready" }))),
        Ok(Readiness::PendingMigrations) => Err(ApiError::Unavailable {
            reason: UnavailableReason::NotReady,
            cause: Some("database has pending migrations".into()),
        }),
        Ok(Readiness::SchemaMismatch(mismatch)) => Err(ApiError::Unavailable {
            reason: UnavailableReason::NotReady,
            cause: Some(Box::new(mismatch)),
        }),
        Ok(Readiness::FileMoved) => Err(ApiError::Unavailable {
            reason: UnavailableReason::NotReady,
            cause: Some(
                "the SQLite database file or its -wal file was moved, replaced or \
                 deleted after troupe opened it; move that file back or restart troupe"
                    .into(),
            ),
        }),
        Err(error) => Err(ApiError::from(error)),
    }
}
