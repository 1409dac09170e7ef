//! troupe: a users-and-posts REST service built on actors.
//!
//! How a request travels:
//!
//! 1. `http` matches the route; the request middleware assigns the request
//!    id and span. Extractors turn the path, query and JSON body into domain
//!    types (`domain`), or reject the request with a problem (`http::problem`).
//! 2. The handler sends one message carrying a `RequestCtx` (request id,
//!    span, deadline): a user read to its thread's `CacheReplica`, other
//!    user operations to the `UserStore` actor, post reads straight to the
//!    `WorkerPool`, post writes to a `WriteBatcher`.
//! 3. The `UserStore` serves reads from its cache or sends a query message
//!    (`actors::queries`) to the `WorkerPool`, gathering the misses that
//!    arrive together into one query, and queues writes into batches that
//!    one worker commits in one transaction (`actors::batch`).
//!    The pool routes each message to a `DbWorker`, which runs the matching
//!    plain function from `db` on its own connection, in a transaction, or
//!    in its batch's transaction, where it writes.
//! 4. The reply travels back; `http::problem` maps any error to a status in
//!    one place, and the middleware logs one line for the request.
//!
//! Modules:
//! - `config`: flags and environment variables, read only there.
//! - `domain`: validated value types; no HTTP, actix or Diesel.
//! - `db`: schema, pools, migrations, query functions, Diesel error mapping.
//! - `actors`: `UserStore`, `DbWorker`, their messages and the query types.
//! - `http`: routes, handlers, extractors, JSON representations, problems.
//! - `metrics`: the Prometheus registry behind `GET /metrics`.
//! - `startup`: builds and runs the whole service; tests use it too.
//! - `telemetry`: the log subscriber.

pub mod actors;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod startup;
pub mod telemetry;
