//! Integration tests: the real service over HTTP on a socket, against a real
//! SQLite file and a real PostgreSQL database, plus actor-level tests.
//!
//! PostgreSQL tests run when `TROUPE_TEST_POSTGRES_URL` names a server
//! (an admin URL such as `postgres://postgres@127.0.0.1:5432/postgres`); each
//! test creates and drops its own database. Without it they print that they
//! were skipped, unless `TROUPE_TEST_REQUIRE_POSTGRES=1`, which makes a
//! missing URL fail them.

// unwrap, expect and panic are denied in src/ but fine in tests. Clippy's
// allow-*-in-tests settings cover only `#[test]` functions, so they miss the
// helpers and shared test bodies that those functions call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actors;
mod cli;
mod errors;
mod faults;
mod hardening;
// The harness serves every test module; no single module uses all of it.
#[allow(dead_code)]
mod helpers;
mod migrations;
mod outage;
mod posts;
mod process;
mod smoke;
mod users;
