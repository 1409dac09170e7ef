//! Queries on posts. Every function ignores posts that are deleted.
//! Deleting a user deletes its posts in the same transaction, so a visible
//! post always belongs to a visible user.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::dialect::Dialect;
use super::models::{NewPostRow, PostChanges, PostRow};
use super::schema::{posts, users};
use super::users::check_precondition;
use super::{with_conn, DbConn, DbError};
use crate::domain::{
    DeleteMode, Direction, NewPost, Page, PageRequest, Post, PostFilter, PostId, PostPatch,
    PostSort, Precondition, UserId,
};

pub fn find(conn: &mut DbConn, id: PostId) -> Result<Post, DbError> {
    with_conn!(conn, c => {
        posts::table
            .find(id.get())
            .filter(posts::deleted_at.is_null())
            .select(PostRow::as_select())
            .first(c)
            .map(Post::from)
            .map_err(DbError::from)
    })
}

/// Lists posts. With `require_user`, a missing or deleted user is
/// `NotFound` rather than an empty page.
pub fn list(
    conn: &mut DbConn,
    filter: PostFilter,
    require_user: bool,
    sort: PostSort,
    page: PageRequest,
) -> Result<Page<Post>, DbError> {
    macro_rules! filtered {
        () => {{
            let mut query = posts::table
                .filter(posts::deleted_at.is_null())
                .into_boxed();
            if let Some(user_id) = filter.user_id {
                query = query.filter(posts::user_id.eq(user_id.get()));
            }
            query
        }};
    }

    with_conn!(conn, c => c.snapshot_transaction(|c| {
        if let (true, Some(user_id)) = (require_user, filter.user_id) {
            let live: i64 = users::table
                .find(user_id.get())
                .filter(users::deleted_at.is_null())
                .count()
                .get_result(c)?;
            if live == 0 {
                return Err(DbError::NotFound);
            }
        }

        let total: i64 = filtered!().count().get_result(c)?;
        let query = filtered!().select(PostRow::as_select());
        let query = match sort {
            PostSort::Id(Direction::Ascending) => query.order(posts::id.asc()),
            PostSort::Id(Direction::Descending) => query.order(posts::id.desc()),
            PostSort::Title(Direction::Ascending) => query.order((posts::title.asc(), posts::id.asc())),
            PostSort::Title(Direction::Descending) => {
                query.order((posts::title.desc(), posts::id.desc()))
            }
            PostSort::CreatedAt(Direction::Ascending) => {
                query.order((posts::created_at.asc(), posts::id.asc()))
            }
            PostSort::CreatedAt(Direction::Descending) => {
                query.order((posts::created_at.desc(), posts::id.desc()))
            }
        };
        let items = query
            .limit(page.limit())
            .offset(page.offset())
            .load(c)?
            .into_iter()
            .map(Post::from)
            .collect();
        Ok(Page { items, total })
    }))
}

/// Inserts a post for a user that exists and is not deleted. The user row is
/// locked meanwhile, so a concurrent delete cannot leave the new post behind.
pub fn insert(
    conn: &mut DbConn,
    user_id: UserId,
    post: &NewPost,
    now: NaiveDateTime,
) -> Result<Post, DbError> {
    let row = NewPostRow {
        user_id: user_id.get(),
        title: post.title.as_str(),
        content: post.content.as_str(),
        created_at: now,
        updated_at: now,
    };

    with_conn!(conn, c => c.write_transaction(|c| {
        c.lock_live_user(user_id.get())?.ok_or(DbError::NotFound)?;
        diesel::insert_into(posts::table)
            .values(&row)
            .returning(PostRow::as_returning())
            .get_result(c)
            .map(Post::from)
            .map_err(DbError::from)
    }))
}

/// Inserts several posts with one statement, in the transaction that the
/// caller has open, after locking their users in another. Returns them in
/// the order given. A missing or deleted user fails with `NotFound`, so the
/// caller rolls back and inserts the posts one by one.
pub fn insert_many(
    conn: &mut DbConn,
    new: &[(UserId, &NewPost)],
    now: NaiveDateTime,
) -> Result<Vec<Post>, DbError> {
    let mut user_ids: Vec<i64> = new.iter().map(|(user_id, _)| user_id.get()).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let rows: Vec<NewPostRow> = new
        .iter()
        .map(|(user_id, post)| NewPostRow {
            user_id: user_id.get(),
            title: post.title.as_str(),
            content: post.content.as_str(),
            created_at: now,
            updated_at: now,
        })
        .collect();

    with_conn!(conn, c => {
        if c.lock_live_users(&user_ids)? != user_ids.len() {
            return Err(DbError::NotFound);
        }
        let mut inserted: Vec<PostRow> = diesel::insert_into(posts::table)
            .values(&rows)
            .returning(PostRow::as_returning())
            .get_results(c)?;
        // Matched by user, title and content, so nothing depends on the
        // order of RETURNING. Equal posts of one user are interchangeable;
        // among them, lower ids go to earlier writes.
        inserted.sort_by_key(|row| row.id);
        let mut posts: Vec<Option<Post>> =
            inserted.into_iter().map(|row| Some(Post::from(row))).collect();
        rows.iter()
            .map(|row| {
                posts
                    .iter_mut()
                    .find(|post| {
                        post.as_ref().is_some_and(|post| {
                            post.user_id.get() == row.user_id
                                && post.title == row.title
                                && post.content == row.content
                        })
                    })
                    .and_then(Option::take)
                    .ok_or(DbError::NotFound)
            })
            .collect()
    })
}

/// Applies a merge patch; a full replacement is a patch with every field.
/// A patch that changes no value leaves the version alone and returns the
/// post as it is.
pub fn update(
    conn: &mut DbConn,
    id: PostId,
    patch: &PostPatch,
    precondition: &Precondition,
    now: NaiveDateTime,
) -> Result<Post, DbError> {
    with_conn!(conn, c => c.write_transaction(|c| {
        let current = c.lock_live_post(id.get())?.ok_or(DbError::NotFound)?;
        check_precondition(precondition, current.version)?;
        let unchanged = patch.title.as_ref().is_none_or(|title| title.as_str() == current.title)
            && patch.content.as_ref().is_none_or(|content| content.as_str() == current.content);
        if unchanged {
            return Ok(Post::from(current));
        }

        let changes = PostChanges {
            title: patch.title.as_ref().map(|title| title.as_str()),
            content: patch.content.as_ref().map(|content| content.as_str()),
            version: current.version + 1,
            updated_at: now,
        };
        diesel::update(posts::table.find(id.get()))
            .set(&changes)
            .returning(PostRow::as_returning())
            .get_result(c)
            .map(Post::from)
            .map_err(DbError::from)
    }))
}

pub fn delete(
    conn: &mut DbConn,
    id: PostId,
    mode: DeleteMode,
    precondition: &Precondition,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    with_conn!(conn, c => c.write_transaction(|c| {
        let current = c.lock_live_post(id.get())?.ok_or(DbError::NotFound)?;
        check_precondition(precondition, current.version)?;

        match mode {
            DeleteMode::Soft => {
                diesel::update(posts::table.find(id.get()))
                    .set((
                        posts::deleted_at.eq(now),
                        posts::version.eq(current.version + 1),
                        posts::updated_at.eq(now),
                    ))
                    .execute(c)?;
            }
            DeleteMode::Hard => {
                diesel::delete(posts::table.find(id.get())).execute(c)?;
            }
        }
        Ok(())
    }))
}
