//! Validated value types, free of HTTP, actix and Diesel. Each type is built
//! by a fallible constructor, so a value that exists is valid.

mod error;
mod ids;
mod listing;
mod post;
mod precondition;
mod user;

pub use error::{FieldError, ValidationError};
pub use ids::{InvalidId, PostId, UserId};
pub use listing::{Direction, PageRequest, PostFilter, PostSort, UserFilter, UserSort};
pub use post::{NewPost, Post, PostContent, PostFields, PostPatch, PostTitle};
pub use precondition::{entity_tag, IfMatch, Precondition};
pub use user::{Age, Email, NewUser, User, UserFields, UserName, UserPatch, UserWithPosts};

/// Timestamps are kept in UTC with microsecond precision, the precision that
/// PostgreSQL stores, so a value reads back exactly as it was written.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Returns the current time truncated to whole microseconds.
pub fn now() -> Timestamp {
    let now = chrono::Utc::now();
    let micros = now.timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or(now)
}

/// The kind of removal a DELETE performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Marks the rows deleted; reads stop returning them.
    Soft,
    /// Removes the rows.
    Hard,
}

/// One page of a listing and the number of rows across all pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}
