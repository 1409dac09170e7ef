//! Post handlers: `/api/v1/users/{id}/posts` and `/api/v1/posts`. Posts go
//! straight to the `DbWorker` pool; they have no cache to keep consistent.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::body::JsonBody;
use super::params::{if_none_match, precondition, query_error, NoQuery, QueryParams};
use super::problem::ApiError;
use super::representation::{page_response, with_etag, PostBody};
use super::users::present;
use super::AppState;
use crate::actors::queries::posts;
use crate::actors::{ActorError, DbQuery, Query, QueueWrite, RequestCtx};
use crate::domain::{
    entity_tag, DeleteMode, FieldError, NewPost, Post, PostContent, PostFields, PostFilter, PostId,
    PostPatch, PostSort, PostTitle, UserId, ValidationError,
};

/// A post's fields, for a create or a full replacement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostFieldsBody {
    title: String,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchPostBody {
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    content: Option<Option<String>>,
}

/// Validates a post's fields, reporting every invalid one.
pub fn post_fields(body: PostFieldsBody) -> Result<PostFields, ValidationError> {
    let mut errors = ValidationError::default();
    let title = errors.collect(PostTitle::parse(&body.title));
    let content = errors.collect(PostContent::parse(&body.content));
    match (title, content) {
        (Some(title), Some(content)) => Ok(PostFields { title, content }),
        _ => Err(errors),
    }
}

impl PatchPostBody {
    fn validate(self) -> Result<PostPatch, ValidationError> {
        let mut errors = ValidationError::default();
        let not_null =
            |field: &str| FieldError::new(field, "not_nullable", format!("{field} cannot be null"));

        let title = match self.title {
            None => None,
            Some(None) => errors.collect(Err(not_null("title"))),
            Some(Some(raw)) => errors.collect(PostTitle::parse(&raw)),
        };
        let content = match self.content {
            None => None,
            Some(None) => errors.collect(Err(not_null("content"))),
            Some(Some(raw)) => errors.collect(PostContent::parse(&raw)),
        };

        if errors.is_empty() {
            Ok(PostPatch { title, content })
        } else {
            Err(errors)
        }
    }
}

/// Takes a place in the database queue, sends a query to the worker pool and
/// joins both layers of the result.
async fn run<Q: DbQuery>(
    state: &AppState,
    ctx: RequestCtx,
    query: Q,
) -> Result<Q::Output, ApiError> {
    let _ticket = state.admission.admit().await?;
    let delivery = state.db.send(Query::new(ctx, query)).await;
    ActorError::flatten("db_worker", delivery).map_err(ApiError::from)
}

/// Queues a write for the next batch of post writes and waits until the
/// batch committed.
async fn write(
    state: &AppState,
    ctx: RequestCtx,
    write: posts::Write,
) -> Result<posts::Written, ApiError> {
    let delivery = state
        .post_writer
        .send(QueueWrite(Query::new(ctx, write)))
        .await;
    ActorError::flatten("post_writer", delivery).map_err(ApiError::from)
}

/// Returns the post that a create or an update saved.
fn saved(written: posts::Written) -> Result<Post, ApiError> {
    match written {
        posts::Written::Saved(post) => Ok(post),
        posts::Written::Deleted => {
            Err(ActorError::Bug("an update got the result of a delete").into())
        }
    }
}

fn post_response(builder: actix_web::HttpResponseBuilder, post: &Post) -> HttpResponse {
    with_etag(builder, post.version).json(PostBody::from(post))
}

fn list_query(
    request: &HttpRequest,
    by_user: bool,
) -> Result<(QueryParams, posts::List), ApiError> {
    let allowed: &[&str] = if by_user {
        &["page", "limit", "sort"]
    } else {
        &["page", "limit", "sort", "user_id"]
    };
    let query = QueryParams::parse(request, allowed)?;
    let page = query.page()?;
    let sort = PostSort::parse(query.get("sort")).map_err(query_error)?;
    let user_id =
        match query.get("user_id") {
            None => None,
            Some(raw) => Some(UserId::parse(raw).map_err(|e| {
                query_error(FieldError::new("user_id", "invalid_id", e.to_string()))
            })?),
        };
    let list = posts::List {
        filter: PostFilter { user_id },
        require_user: false,
        sort,
        page,
    };
    Ok((query, list))
}

pub async fn create_for_user(
    user_id: UserId,
    state: web::Data<AppState>,
    ctx: RequestCtx,
    _: NoQuery,
    JsonBody(body): JsonBody<PostFieldsBody>,
) -> Result<HttpResponse, ApiError> {
    let post: NewPost = post_fields(body)?;

    let insert = posts::Write::Insert(posts::Insert { user_id, post });
    let post = saved(write(&state, ctx, insert).await?)?;

    Ok(with_etag(HttpResponse::Created(), post.version)
        .insert_header((header::LOCATION, format!("/api/v1/posts/{}", post.id)))
        .json(PostBody::from(&post)))
}

pub async fn list_for_user(
    user_id: UserId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
) -> Result<HttpResponse, ApiError> {
    let (query, mut list) = list_query(&request, true)?;
    list.filter.user_id = Some(user_id);
    list.require_user = true;
    let paging = list.page;

    let page = run(&state, ctx, list).await?;

    Ok(page_response::<Post, PostBody>(
        &request, &query, paging, page,
    ))
}

pub async fn list(
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
) -> Result<HttpResponse, ApiError> {
    let (query, list) = list_query(&request, false)?;
    let paging = list.page;

    let page = run(&state, ctx, list).await?;

    Ok(page_response::<Post, PostBody>(
        &request, &query, paging, page,
    ))
}

pub async fn get(
    id: PostId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
) -> Result<HttpResponse, ApiError> {
    QueryParams::parse(&request, &[])?;

    let post = run(&state, ctx, posts::Find { id }).await?;

    if if_none_match(&request, &entity_tag(post.version)) {
        return Ok(with_etag(HttpResponse::NotModified(), post.version).finish());
    }
    Ok(post_response(HttpResponse::Ok(), &post))
}

pub async fn replace(
    id: PostId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
    _: NoQuery,
    JsonBody(body): JsonBody<PostFieldsBody>,
) -> Result<HttpResponse, ApiError> {
    let fields = post_fields(body)?;
    let patch = PostPatch {
        title: Some(fields.title),
        content: Some(fields.content),
    };
    let precondition = precondition(&request);

    let update = posts::Write::Update(posts::Update {
        id,
        patch,
        precondition,
    });
    let post = saved(write(&state, ctx, update).await?)?;

    Ok(post_response(HttpResponse::Ok(), &post))
}

pub async fn patch(
    id: PostId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
    _: NoQuery,
    JsonBody(body): JsonBody<PatchPostBody>,
) -> Result<HttpResponse, ApiError> {
    let patch = body.validate()?;
    let precondition = precondition(&request);

    let update = posts::Write::Update(posts::Update {
        id,
        patch,
        precondition,
    });
    let post = saved(write(&state, ctx, update).await?)?;

    Ok(post_response(HttpResponse::Ok(), &post))
}

pub async fn delete(
    id: PostId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams::parse(&request, &["hard"])?;
    let mode = if query.flag("hard")? {
        DeleteMode::Hard
    } else {
        DeleteMode::Soft
    };
    let precondition = precondition(&request);

    let delete = posts::Write::Delete(posts::Delete {
        id,
        mode,
        precondition,
    });
    write(&state, ctx, delete).await?;

    Ok(HttpResponse::NoContent().finish())
}
