//! Exists only as a benchmark baseline: the smallest actix-web JSON server,
//! the ceiling that `bench/run` measures troupe against.
//!
//! `BIND` sets the listen address (default `127.0.0.1:8081`). It runs one
//! HTTP worker per core, as troupe does by default.

use std::thread::available_parallelism;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Serialize;

#[derive(Serialize)]
struct Hello {
    message: &'static str,
}

async fn hello() -> HttpResponse {
    HttpResponse::Ok().json(Hello {
        message: "Hello, world!",
    })
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8081".to_owned());
    let workers = available_parallelism().map_or(1, |n| n.get());
    HttpServer::new(|| App::new().route("/", web::get().to(hello)))
        .workers(workers)
        .bind(&bind)?
        .run()
        .await
}
