//! Exists only as a benchmark baseline: troupe's users routes written the
//! common way, each handler running troupe's own query functions inside
//! `web::block` on a connection from an r2d2 pool, with no actors and no
//! cache. `bench/run` compares troupe against it.
//!
//! Environment: `DATABASE_URL` (as for troupe), `BIND` (default
//! `127.0.0.1:8082`), `DB_POOL_SIZE` (default 4, troupe's default) and
//! `INLINE`. It runs one HTTP worker per core and applies troupe's
//! migrations at start.
//!
//! With `INLINE=1`, each HTTP worker keeps one connection and runs every
//! query on its own thread. A query then blocks every other request of
//! that worker, so no real server should do it, but no read crosses a
//! thread: it shows what one query per read costs without any hop.
//!
//! Routes: `GET /healthz`, `GET /api/v1/users/{id}`,
//! `GET /api/v1/users?page=&limit=`, `POST /api/v1/users` and
//! `POST /api/v1/users/{id}/posts`.

use std::cell::RefCell;
use std::fmt;
use std::thread::available_parallelism;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use troupe::db::{self, DatabaseUrl, DbError, DbPool, PoolSettings};
use troupe::domain::{
    Age, Direction, Email, NewPost, NewUser, PageRequest, Post, PostContent, PostTitle, Timestamp,
    User, UserFields, UserFilter, UserId, UserName, UserSort,
};

#[derive(Deserialize)]
struct NewUserDto {
    name: String,
    email: String,
    age: Option<i64>,
}

#[derive(Deserialize)]
struct NewPostDto {
    title: String,
    content: String,
}

#[derive(Deserialize)]
struct PageQuery {
    page: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
struct UserDto {
    id: i64,
    name: String,
    email: String,
    age: Option<i32>,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
struct PostDto {
    id: i64,
    user_id: i64,
    title: String,
    content: String,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
struct PageDto {
    data: Vec<UserDto>,
    page: i64,
    limit: i64,
    total: i64,
}

fn rfc3339(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl From<User> for UserDto {
    fn from(u: User) -> Self {
        Self {
            id: u.id.get(),
            created_at: rfc3339(&u.created_at),
            updated_at: rfc3339(&u.updated_at),
            name: u.name,
            email: u.email,
            age: u.age,
        }
    }
}

impl From<Post> for PostDto {
    fn from(p: Post) -> Self {
        Self {
            id: p.id.get(),
            user_id: p.user_id.get(),
            created_at: rfc3339(&p.created_at),
            updated_at: rfc3339(&p.updated_at),
            title: p.title,
            content: p.content,
        }
    }
}

/// Every failure, mapped to a status and a short JSON body.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Invalid(String),
    Db(DbError),
    Blocking,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(m) | Self::Invalid(m) => f.write_str(m),
            Self::Db(e) => write!(f, "{e}"),
            Self::Blocking => f.write_str("blocking pool gone"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Db(DbError::NotFound) => StatusCode::NOT_FOUND,
            Self::Db(DbError::EmailTaken) => StatusCode::CONFLICT,
            Self::Db(DbError::Busy(_) | DbError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Db(_) | Self::Blocking => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if self.status_code().is_server_error() {
            eprintln!("request failed: {self:?}");
        }
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// The pool, and whether queries run on the HTTP worker's thread.
struct Database {
    pool: DbPool,
    inline: bool,
}

thread_local! {
    /// The connection an HTTP worker keeps in inline mode.
    static WORKER_CONN: RefCell<Option<db::DbConn>> = const { RefCell::new(None) };
}

/// Runs `f` on a pooled connection on actix-web's blocking thread pool, or
/// in inline mode on this thread's own connection.
async fn with_conn<T, F>(database: &Database, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut db::DbConn) -> Result<T, DbError> + Send + 'static,
{
    if database.inline {
        return WORKER_CONN
            .with_borrow_mut(|slot| {
                let conn = match slot {
                    Some(conn) => conn,
                    None => slot.insert(database.pool.get()?),
                };
                f(conn)
            })
            .map_err(ApiError::Db);
    }
    let pool = database.pool.clone();
    web::block(move || f(&mut pool.get()?))
        .await
        .map_err(|_| ApiError::Blocking)?
        .map_err(ApiError::Db)
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn invalid(e: troupe::domain::FieldError) -> ApiError {
    ApiError::Invalid(e.message)
}

fn now() -> chrono::NaiveDateTime {
    troupe::domain::now().naive_utc()
}

async fn get_user(
    database: web::Data<Database>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    let user = with_conn(&database, move |c| db::users::find(c, id)).await?;
    Ok(HttpResponse::Ok().json(UserDto::from(user)))
}

async fn list_users(
    database: web::Data<Database>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let paging = PageRequest::parse(query.page.as_deref(), query.limit.as_deref())
        .map_err(|e| ApiError::BadRequest(e.message))?;
    let sort = UserSort::Id(Direction::Ascending);
    let page = with_conn(&database, move |c| {
        db::users::list(c, &UserFilter::default(), sort, paging)
    })
    .await?;
    Ok(HttpResponse::Ok().json(PageDto {
        data: page.items.into_iter().map(UserDto::from).collect(),
        page: paging.page(),
        limit: paging.limit(),
        total: page.total,
    }))
}

async fn create_user(
    database: web::Data<Database>,
    body: web::Json<NewUserDto>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let fields = UserFields {
        name: UserName::parse(&body.name).map_err(invalid)?,
        email: Email::parse(&body.email).map_err(invalid)?,
        age: body.age.map(Age::parse).transpose().map_err(invalid)?,
    };
    let new = NewUser {
        fields,
        posts: Vec::new(),
    };
    let created = with_conn(&database, move |c| db::users::insert(c, &new, now())).await?;
    let user = UserDto::from(created.user);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/users/{}", user.id)))
        .json(user))
}

async fn create_post(
    database: web::Data<Database>,
    path: web::Path<String>,
    body: web::Json<NewPostDto>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    let post = NewPost {
        title: PostTitle::parse(&body.title).map_err(invalid)?,
        content: PostContent::parse(&body.content).map_err(invalid)?,
    };
    let post =
        PostDto::from(with_conn(&database, move |c| db::posts::insert(c, id, &post, now())).await?);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/posts/{}", post.id)))
        .json(post))
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = DatabaseUrl::parse(
        &std::env::var("DATABASE_URL").unwrap_or_else(|_| "./blocking.db".to_owned()),
    )?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8082".to_owned());
    let pool_size = match std::env::var("DB_POOL_SIZE") {
        Ok(raw) => raw.parse()?,
        Err(_) => 4,
    };
    db::migrations::run_pending(&url)?;
    let settings = PoolSettings {
        max_size: pool_size,
        min_idle: None,
        connection_timeout: Duration::from_secs(5),
        sqlite_busy_timeout: Duration::from_secs(5),
        pg_statement_timeout: Duration::from_secs(5),
    };
    let database = web::Data::new(Database {
        pool: DbPool::connect(&url, &settings)?,
        inline: std::env::var("INLINE").is_ok_and(|value| value == "1"),
    });
    let workers = available_parallelism().map_or(1, |n| n.get());

    HttpServer::new(move || {
        App::new()
            .app_data(database.clone())
            .route("/healthz", web::get().to(HttpResponse::Ok))
            .service(
                web::scope("/api/v1")
                    .route("/users", web::get().to(list_users))
                    .route("/users", web::post().to(create_user))
                    .route("/users/{id}", web::get().to(get_user))
                    .route("/users/{id}/posts", web::post().to(create_post)),
            )
    })
    .workers(workers)
    .bind(&bind)?
    .run()
    .await?;
    Ok(())
}
