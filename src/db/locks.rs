//! Row locks taken for a whole batch of writes before its first write.
//!
//! On PostgreSQL, each write locks the row it changes (`SELECT ... FOR
//! UPDATE`) when it runs. Two batches in flight at once that change the
//! same rows in different orders then wait on each other, and PostgreSQL
//! breaks the cycle after its `deadlock_timeout` by failing one of them.
//! Locking every row of a batch up front, users before posts and each by
//! id, gives all batches, of every troupe sharing the database, one order.
//! The writes then find their rows locked already.
//!
//! A post's user counts among the rows of a write to that post. A post
//! updated twice in one transaction makes PostgreSQL check its foreign key
//! again, which locks the user (`FOR KEY SHARE`) after the post, against
//! the order, unless the transaction holds the user already.

use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::schema::{posts, users};
use super::{DbConn, DbError};
use crate::domain::{PostId, UserId};

/// A row that a write locks. The order of the variants is the order of
/// the locks: users first, then posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowLock {
    User(UserId),
    Post(PostId),
}

/// Locks the live rows among `rows`, and the users of the posts among
/// them, users before posts and each kind by id, in the write transaction
/// that is open. SQLite needs no row locks, because its write transaction
/// holds the database's only write lock.
pub fn lock_rows(conn: &mut DbConn, rows: &[RowLock]) -> Result<(), DbError> {
    let DbConn::Pg(conn) = conn else {
        return Ok(());
    };
    if rows.is_empty() {
        return Ok(());
    }
    let mut user_ids = Vec::new();
    let mut post_ids = Vec::new();
    for row in rows {
        match row {
            RowLock::User(id) => user_ids.push(id.get()),
            RowLock::Post(id) => post_ids.push(id.get()),
        }
    }
    if !post_ids.is_empty() {
        user_ids.extend(owners(conn, &post_ids)?);
    }
    for ids in [&mut user_ids, &mut post_ids] {
        ids.sort_unstable();
        ids.dedup();
    }
    lock_users(conn, &user_ids)?;
    lock_posts(conn, &post_ids)?;
    Ok(())
}

/// Reads the users of the posts among `ids`. A post never changes its
/// user, so the read needs no lock.
fn owners(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<i64>> {
    posts::table
        .filter(posts::id.eq_any(ids))
        .select(posts::user_id)
        .load(conn)
}

/// Locks the live users among `ids` in id order. Deleted users are left
/// out, and the writes that name them fail with `NotFound` later.
fn lock_users(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    users::table
        .filter(users::id.eq_any(ids))
        .filter(users::deleted_at.is_null())
        .order(users::id)
        .select(users::id)
        .for_update()
        .load::<i64>(conn)
        .map(drop)
}

/// Locks the live posts among `ids` in id order, as `lock_users` does.
fn lock_posts(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    posts::table
        .filter(posts::id.eq_any(ids))
        .filter(posts::deleted_at.is_null())
        .order(posts::id)
        .select(posts::id)
        .for_update()
        .load::<i64>(conn)
        .map(drop)
}
