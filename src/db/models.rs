//! Row types and their conversion into domain values.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{posts, users};
use crate::domain::{Post, PostId, User, UserId};

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub age: Option<i32>,
    pub version: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self {
            id: UserId::from_db(row.id),
            name: row.name,
            email: row.email,
            age: row.age,
            version: row.version,
            created_at: row.created_at.and_utc(),
            updated_at: row.updated_at.and_utc(),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUserRow<'a> {
    pub name: &'a str,
    pub email: &'a str,
    pub age: Option<i32>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Column changes of a user update; `None` leaves a column unchanged, and
/// `age: Some(None)` sets it to NULL.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges<'a> {
    pub name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub age: Option<Option<i32>>,
    pub version: i64,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = posts, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PostRow {
    pub id: i64,
    pub user_id: i64,
    pub title: String,
    pub content: String,
    pub version: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl From<PostRow> for Post {
    fn from(row: PostRow) -> Self {
        Self {
            id: PostId::from_db(row.id),
            user_id: UserId::from_db(row.user_id),
            title: row.title,
            content: row.content,
            version: row.version,
            created_at: row.created_at.and_utc(),
            updated_at: row.updated_at.and_utc(),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = posts)]
pub struct NewPostRow<'a> {
    pub user_id: i64,
    pub title: &'a str,
    pub content: &'a str,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Column changes of a post update; `None` leaves a column unchanged.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = posts)]
pub struct PostChanges<'a> {
    pub title: Option<&'a str>,
    pub content: Option<&'a str>,
    pub version: i64,
    pub updated_at: NaiveDateTime,
}
