//! One walk through the API, as the README shows it, and the request
//! counts it leaves in `/metrics`.

use serde_json::json;

use crate::faults::metric;
use crate::helpers::{problem, Backend, TestApp};

async fn walk_through(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };

    let created = app
        .post_json(
            "/api/v1/users",
            &json!({"name": "Ada Lovelace", "email": "Ada@Example.com", "age": 36,
                    "posts": [{"title": "Notes", "content": "On the engine"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let user: serde_json::Value = created.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["posts"][0]["title"], "Notes");
    assert_eq!(location, format!("/api/v1/users/{}", user["id"]));

    let fetched = app
        .get(&format!("{location}?include=posts"))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let fetched: serde_json::Value = fetched.json().await.unwrap();
    assert_eq!(fetched["posts"].as_array().map(Vec::len), Some(1));

    let deleted = app.delete(&location).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    problem(app.get(&location).send().await.unwrap(), 404).await;
    app.stop().await;
}

/// Requests count under their route template, whatever the ids in the
/// path. A path that matches no route counts as `unmatched`.
async fn metrics_count_route_templates(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.create_user("Route Label", "route@example.com").await;
    let path = format!("/api/v1/users/{}", user["id"]);
    assert_eq!(app.get(&path).send().await.unwrap().status(), 200);
    let missing = app.get("/api/v1/nowhere").send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let routed = metric(
        &app,
        r#"troupe_http_requests_total{method="GET",route="/api/v1/users/{id}",status="200"}"#,
    )
    .await;
    let unmatched = metric(
        &app,
        r#"troupe_http_requests_total{method="GET",route="unmatched",status="404"}"#,
    )
    .await;
    assert_eq!(routed, 1.0, "the read counts under its route template");
    assert_eq!(unmatched, 1.0, "the unknown path counts as unmatched");
    app.stop().await;
}

crate::on_both_backends!(walk_through, metrics_count_route_templates);
