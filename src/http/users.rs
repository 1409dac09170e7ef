//! `/api/v1/users` handlers: decode and validate, send one message to the
//! user store, render the reply.

use std::sync::Arc;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Deserializer};

use super::body::{JsonBody, JsonObject};
use super::params::{if_none_match, precondition, query_error, NoQuery, QueryParams};
use super::posts::{post_fields, PostFieldsBody};
use super::problem::ApiError;
use super::representation::{page_response, with_etag, UserBody};
use super::AppState;
use crate::actors::{
    ActorError, CacheReplica, CreateUser, DeleteUser, GetUser, GetUserWithPosts, ListUsers,
    PatchUser, ReplaceUser, RequestCtx,
};
use crate::domain::{
    entity_tag, Age, DeleteMode, Email, FieldError, NewUser, User, UserFields, UserFilter, UserId,
    UserName, UserPatch, UserSort, ValidationError,
};

/// Posts that one create request may carry.
pub const MAX_POSTS_PER_CREATE: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    name: String,
    email: String,
    #[serde(default)]
    age: Option<i64>,
    #[serde(default)]
    posts: Option<Vec<JsonObject<PostFieldsBody>>>,
}

/// A full replacement: a missing `age` becomes null.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceUserBody {
    name: String,
    email: String,
    #[serde(default)]
    age: Option<i64>,
}

/// A JSON merge patch: the outer `Option` is presence, the inner one null.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchUserBody {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    age: Option<Option<i64>>,
}

/// Marks a field that appears in the JSON, even as `null`, as present.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

fn user_fields(
    errors: &mut ValidationError,
    name: &str,
    email: &str,
    age: Option<i64>,
) -> Option<UserFields> {
    let name = errors.collect(UserName::parse(name));
    let email = errors.collect(Email::parse(email));
    let age = age.map(|years| errors.collect(Age::parse(years)));
    Some(UserFields {
        name: name?,
        email: email?,
        age: match age {
            None => None,
            Some(age) => Some(age?),
        },
    })
}

impl CreateUserBody {
    fn validate(self) -> Result<NewUser, ValidationError> {
        let mut errors = ValidationError::default();
        let fields = user_fields(&mut errors, &self.name, &self.email, self.age);

        let raw_posts = self.posts.unwrap_or_default();
        if raw_posts.len() > MAX_POSTS_PER_CREATE {
            errors.errors.push(FieldError::new(
                "posts",
                "too_many",
                format!(
                    "posts may hold at most {MAX_POSTS_PER_CREATE} items, got {}",
                    raw_posts.len()
                ),
            ));
        }
        let mut posts = Vec::with_capacity(raw_posts.len());
        for (index, JsonObject(post)) in raw_posts.into_iter().enumerate() {
            match post_fields(post) {
                Ok(post) => posts.push(post),
                Err(post_errors) => errors
                    .errors
                    .extend(post_errors.nested(&format!("posts[{index}]")).errors),
            }
        }

        match fields {
            Some(fields) if errors.is_empty() => Ok(NewUser { fields, posts }),
            _ => Err(errors),
        }
    }
}

impl ReplaceUserBody {
    fn validate(self) -> Result<UserFields, ValidationError> {
        let mut errors = ValidationError::default();
        match user_fields(&mut errors, &self.name, &self.email, self.age) {
            Some(fields) if errors.is_empty() => Ok(fields),
            _ => Err(errors),
        }
    }
}

impl PatchUserBody {
    fn validate(self) -> Result<UserPatch, ValidationError> {
        let mut errors = ValidationError::default();
        let not_null =
            |field: &str| FieldError::new(field, "not_nullable", format!("{field} cannot be null"));

        let name = match self.name {
            None => None,
            Some(None) => errors.collect(Err(not_null("name"))),
            Some(Some(raw)) => errors
                .collect(UserName::parse(&raw))
                .map(Some)
                .unwrap_or(None),
        };
        let email = match self.email {
            None => None,
            Some(None) => errors.collect(Err(not_null("email"))),
            Some(Some(raw)) => errors.collect(Email::parse(&raw)).map(Some).unwrap_or(None),
        };
        let age = match self.age {
            None => None,
            Some(None) => Some(None),
            Some(Some(years)) => errors.collect(Age::parse(years)).map(Some),
        };

        if errors.is_empty() {
            Ok(UserPatch { name, email, age })
        } else {
            Err(errors)
        }
    }
}

/// Counts a message to the user store until its reply arrives or the request
/// is dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Sends a message to the user store and joins both layers of the result.
async fn ask<M, T>(state: &AppState, message: M) -> Result<T, ApiError>
where
    M: actix::Message<Result = Result<T, ActorError>> + Send + 'static,
    T: Send + 'static,
    crate::actors::UserStore: actix::Handler<M>,
{
    let _in_flight = InFlight::enter(&state.metrics.store_in_flight);
    let delivery = state.store.send(message).await;
    ActorError::flatten("user_store", delivery).map_err(ApiError::from)
}

/// Reads a user through this worker thread's cache replica, or through
/// the user store when the cache is off.
async fn read_cached(
    request: &HttpRequest,
    state: &AppState,
    message: GetUser,
) -> Result<Arc<User>, ApiError> {
    match request.app_data::<Option<Addr<CacheReplica>>>() {
        Some(Some(replica)) => {
            let delivery = replica.send(message).await;
            ActorError::flatten("cache_replica", delivery).map_err(ApiError::from)
        }
        _ => ask(state, message).await,
    }
}

fn user_response(mut builder: actix_web::HttpResponseBuilder, user: &User) -> HttpResponse {
    builder = with_etag(builder, user.version);
    builder.json(UserBody::from(user))
}

fn location(user: &User) -> String {
    format!("/api/v1/users/{}", user.id)
}

pub async fn create(
    state: web::Data<AppState>,
    ctx: RequestCtx,
    _: NoQuery,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> Result<HttpResponse, ApiError> {
    let had_posts = body.posts.is_some();
    let user = body.validate()?;

    let created = ask(&state, CreateUser { ctx, user }).await?;

    let posts = had_posts.then_some(created.posts.as_slice());
    Ok(with_etag(HttpResponse::Created(), created.user.version)
        .insert_header((header::LOCATION, location(&created.user)))
        .json(UserBody::new(&created.user, posts)))
}

pub async fn list(
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams::parse(
        &request,
        &["page", "limit", "sort", "min_age", "max_age", "email"],
    )?;
    let paging = query.page()?;
    let sort = UserSort::parse(query.get("sort")).map_err(query_error)?;
    let filter = UserFilter::parse(
        query.get("min_age"),
        query.get("max_age"),
        query.get("email"),
    )
    .map_err(query_error)?;

    let page = ask(
        &state,
        ListUsers {
            ctx,
            filter,
            sort,
            page: paging,
        },
    )
    .await?;

    Ok(page_response::<User, UserBody>(
        &request, &query, paging, page,
    ))
}

pub async fn get(
    id: UserId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
) -> Result<HttpResponse, ApiError> {
    let query = QueryParams::parse(&request, &["include"])?;

    match query.get("include") {
        None => {}
        Some("posts") => {
            let found = ask(&state, GetUserWithPosts { ctx, id }).await?;
            return Ok(HttpResponse::Ok().json(UserBody::new(&found.user, Some(&found.posts))));
        }
        Some(other) => {
            return Err(query_error(FieldError::new(
                "include",
                "invalid_value",
                format!(
                    "include must be posts, got {:?}",
                    other.chars().take(40).collect::<String>()
                ),
            )))
        }
    }

    let user = read_cached(&request, &state, GetUser { ctx, id }).await?;

    if if_none_match(&request, &entity_tag(user.version)) {
        return Ok(with_etag(HttpResponse::NotModified(), user.version).finish());
    }
    Ok(user_response(HttpResponse::Ok(), &user))
}

pub async fn replace(
    id: UserId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
    _: NoQuery,
    JsonBody(body): JsonBody<ReplaceUserBody>,
) -> Result<HttpResponse, ApiError> {
    let fields = body.validate()?;
    let precondition = precondition(&request);

    let user = ask(
        &state,
        ReplaceUser {
            ctx,
            id,
            fields,
            precondition,
        },
    )
    .await?;

    Ok(user_response(HttpResponse::Ok(), &user))
}

pub async fn patch(
    id: UserId,
    request: HttpRequest,
    state: web::Data<AppState>,
    ctx: RequestCtx,
    _: NoQuery,
    JsonBody(body): JsonBody<PatchUserBody>,
) -> Result<HttpResponse, ApiError> {
    let patch = body.validate()?;
    let precondition = precondition(&request);

    let user = ask(
        &state,
        PatchUser {
            ctx,
            id,
            patch,
            precondition,
        },
    )
    .await?;

    Ok(user_response(HttpResponse::Ok(), &user))
}

pub async fn delete(
    id: UserId,
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

    ask(
        &state,
        DeleteUser {
            ctx,
            id,
            mode,
            precondition,
        },
    )
    .await?;

    Ok(HttpResponse::NoContent().finish())
}
