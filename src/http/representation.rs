//! JSON representations of the resources and of listing pages.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use chrono::SecondsFormat;
use serde::Serialize;

use super::params::QueryParams;
use crate::domain::{entity_tag, Page, PageRequest, Post, Timestamp, User};

/// Renders a timestamp as RFC 3339 in UTC with microseconds.
fn rfc3339(timestamp: &Timestamp) -> String {
    timestamp.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Debug, Serialize)]
pub struct UserBody {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub age: Option<i32>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posts: Option<Vec<PostBody>>,
}

impl UserBody {
    pub fn new(user: &User, posts: Option<&[Post]>) -> Self {
        Self {
            id: user.id.get(),
            name: user.name.clone(),
            email: user.email.clone(),
            age: user.age,
            created_at: rfc3339(&user.created_at),
            updated_at: rfc3339(&user.updated_at),
            posts: posts.map(|posts| posts.iter().map(PostBody::from).collect()),
        }
    }
}

impl From<&User> for UserBody {
    fn from(user: &User) -> Self {
        Self::new(user, None)
    }
}

#[derive(Debug, Serialize)]
pub struct PostBody {
    pub id: i64,
    pub user_id: i64,
    pub title: String,
    pub content: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Post> for PostBody {
    fn from(post: &Post) -> Self {
        Self {
            id: post.id.get(),
            user_id: post.user_id.get(),
            title: post.title.clone(),
            content: post.content.clone(),
            created_at: rfc3339(&post.created_at),
            updated_at: rfc3339(&post.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
struct PageBody<T> {
    data: Vec<T>,
    page: i64,
    limit: i64,
    total: i64,
}

/// Renders one page of a listing with a `Link` header (RFC 8288) to the
/// first, previous, next and last pages.
pub fn page_response<T, B>(
    request: &HttpRequest,
    query: &QueryParams,
    paging: PageRequest,
    page: Page<T>,
) -> HttpResponse
where
    B: Serialize + for<'a> From<&'a T>,
{
    let last = paging.last_page(page.total);
    let current = paging.page();
    let link = |page: i64, rel: &str| {
        format!(
            "<{}?{}>; rel=\"{rel}\"",
            request.path(),
            query.with_page(page)
        )
    };

    let mut links = vec![link(1, "first")];
    if current > 1 {
        links.push(link((current - 1).min(last), "prev"));
    }
    if current < last {
        links.push(link(current + 1, "next"));
    }
    links.push(link(last, "last"));

    let body = PageBody {
        data: page.items.iter().map(B::from).collect(),
        page: current,
        limit: paging.limit(),
        total: page.total,
    };
    HttpResponse::Ok()
        .insert_header((header::LINK, links.join(", ")))
        .json(body)
}

/// Starts a response that carries the resource's entity tag.
pub fn with_etag(
    mut builder: actix_web::HttpResponseBuilder,
    version: i64,
) -> actix_web::HttpResponseBuilder {
    builder.insert_header((header::ETAG, entity_tag(version)));
    builder
}
