//! Integration tests: the real service over HTTP on a socket, against a real
//! SQLite file and a real PostgreSQL database, plus actor-level tests.
//!
//! PostgreSQL tests run when `TROUPE_TEST_POSTGRES_URL` names a server
//! (an admin URL such as `postgres://postgres@127.0.0.1:5432/postgres`); each
//! test creates and drops its own database. Without it they print that they
//! were skipped, unless `TROUPE_TEST_REQUIRE_POSTGRES=1`, which makes a
//! missing URL fail them.

// The crate lints deny these for the service code. `clippy.toml` allows them
// only inside `#[test]` functions, and most test code here lives in helpers
// and in the async functions that `on_both_backends!` wraps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod errors;
mod helpers;
mod posts;
mod smoke;
