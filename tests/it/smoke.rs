//! One walk through the API, as the README shows it.

use serde_json::json;

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

crate::on_both_backends!(walk_through);
