//! Queries on users. Every function ignores users that are deleted.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::expression::expression_types::NotSelectable;
use diesel::expression::{is_aggregate, AppearsOnTable, Expression, ValidGrouping};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::BigInt;

use super::dialect::Dialect;
use super::models::{NewPostRow, NewUserRow, PostRow, UserChanges, UserRow};
use super::schema::{posts, users};
use super::{with_conn, DbConn, DbError};
use crate::domain::{
    DeleteMode, Direction, NewUser, Page, PageRequest, Post, Precondition, User, UserFields,
    UserFilter, UserId, UserPatch, UserSort, UserWithPosts,
};

/// Posts embedded in a user representation, oldest first.
pub const MAX_EMBEDDED_POSTS: i64 = 100;

pub fn find(conn: &mut DbConn, id: UserId) -> Result<User, DbError> {
    with_conn!(conn, c => {
        users::table
            .find(id.get())
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .first(c)
            .map(User::from)
            .map_err(DbError::from)
    })
}

/// Reads the live users among `ids` with one statement, in no set order.
/// Ids of missing or deleted users are left out.
pub fn find_many(conn: &mut DbConn, ids: &[UserId]) -> Result<Vec<User>, DbError> {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    with_conn!(conn, c => {
        users::table
            .filter(users::id.eq_any(&ids))
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .load(c)
            .map(|rows| rows.into_iter().map(User::from).collect())
            .map_err(DbError::from)
    })
}

/// Reads a user and its first posts in one transaction, so both come from
/// the same snapshot.
pub fn find_with_posts(conn: &mut DbConn, id: UserId) -> Result<UserWithPosts, DbError> {
    with_conn!(conn, c => c.snapshot_transaction(|c| {
        let user: User = users::table
            .find(id.get())
            .filter(users::deleted_at.is_null())
            .select(UserRow::as_select())
            .first(c)?
            .into();
        let posts = posts::table
            .filter(posts::user_id.eq(id.get()))
            .filter(posts::deleted_at.is_null())
            .order(posts::id.asc())
            .limit(MAX_EMBEDDED_POSTS)
            .select(PostRow::as_select())
            .load(c)?
            .into_iter()
            .map(Post::from)
            .collect();
        Ok(UserWithPosts { user, posts })
    }))
}

pub fn list(
    conn: &mut DbConn,
    filter: &UserFilter,
    sort: UserSort,
    page: PageRequest,
) -> Result<Page<User>, DbError> {
    // Builds the filtered query afresh, because a boxed query cannot be
    // reused for both the count and the page.
    macro_rules! filtered {
        () => {{
            let mut query = users::table
                .filter(users::deleted_at.is_null())
                .into_boxed();
            if let Some(min_age) = filter.min_age {
                query = query.filter(users::age.ge(min_age));
            }
            if let Some(max_age) = filter.max_age {
                query = query.filter(users::age.le(max_age));
            }
            if let Some(email) = &filter.email {
                query = query.filter(users::email.eq(email.clone()));
            }
            query
        }};
    }

    // Orders a boxed query of users by `sort`, ties broken by id.
    macro_rules! sorted {
        ($query:expr) => {
            $query.order(ListingOrder::new(sort, Rows::Users))
        };
    }

    if filter.is_empty() {
        // One statement reads page and total from one snapshot, without a
        // transaction: one round trip to PostgreSQL instead of four. An
        // empty page carries no total, so it takes the transaction below.
        // SQLite skips the rows before `OFFSET` without computing their
        // select list, so there the total can sit in the page's own select
        // list. PostgreSQL gets it from `PageWithTotal`.
        let rows: Vec<(UserRow, i64)> = match conn {
            DbConn::Pg(c) => PageWithTotal {
                page: sorted!(filtered!().select(UserRow::as_select()))
                    .limit(page.limit())
                    .offset(page.offset()),
                order: ListingOrder::new(sort, Rows::Page),
            }
            .load(&mut **c),
            DbConn::Sqlite(c) => sorted!(filtered!().select((UserRow::as_select(), LiveUserTotal)))
                .limit(page.limit())
                .offset(page.offset())
                .load(&mut **c),
        }?;
        if let Some(&(_, total)) = rows.first() {
            let items = rows.into_iter().map(|(row, _)| User::from(row)).collect();
            return Ok(Page { items, total });
        }
    }

    with_conn!(conn, c => c.snapshot_transaction(|c| {
        let total: i64 = if filter.is_empty() {
            diesel::select(LiveUserTotal).get_result(c)?
        } else {
            filtered!().count().get_result(c)?
        };
        if page.offset() >= total {
            return Ok(Page { items: Vec::new(), total });
        }
        let items = sorted!(filtered!().select(UserRow::as_select()))
            .limit(page.limit())
            .offset(page.offset())
            .load(c)?
            .into_iter()
            .map(User::from)
            .collect();
        Ok(Page { items, total })
    }))
}

/// A subquery of the number of users that are not deleted, summed from the
/// counts the triggers keep instead of scanning `users`. It works as a query
/// of its own or in a select list. The cast is there because PostgreSQL
/// sums a `BIGINT` column into a `NUMERIC`.
///
/// It is an expression type rather than a `diesel::dsl::sql` literal
/// because Diesel never keeps a statement with a literal in it prepared,
/// while a statement built from this type is prepared once per connection.
#[derive(Debug, Clone, Copy, QueryId)]
struct LiveUserTotal;

impl Expression for LiveUserTotal {
    type SqlType = BigInt;
}

impl<DB: Backend> QueryFragment<DB> for LiveUserTotal {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("(SELECT CAST(COALESCE(SUM(live), 0) AS BIGINT) FROM live_user_counts)");
        Ok(())
    }
}

impl<QS> AppearsOnTable<QS> for LiveUserTotal {}

impl<QS> SelectableExpression<QS> for LiveUserTotal {}

impl<GroupBy> ValidGrouping<GroupBy> for LiveUserTotal {
    type IsAggregate = is_aggregate::Never;
}

/// `SELECT page.*, <live-user total> FROM (<page>) AS page ORDER BY <order>`:
/// a page of users with the live-user total on each row, from one
/// statement and so from one snapshot.
///
/// The total is added outside the page's query because PostgreSQL computes
/// the select list of every row it reads, including the rows `OFFSET`
/// skips. With the total in the page's own select list, each skipped row
/// would cost a projection of all its columns. `order` restates the page's
/// order over the columns of `page`, since SQL keeps no order through a
/// subquery.
struct PageWithTotal<Q> {
    page: Q,
    order: ListingOrder,
}

/// The name of the page's subquery in [`PageWithTotal`].
const PAGE: &str = "page";

impl<Q: Query> Query for PageWithTotal<Q> {
    type SqlType = (Q::SqlType, BigInt);
}

impl<Q> QueryId for PageWithTotal<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, DB> QueryFragment<DB> for PageWithTotal<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        out.push_identifier(PAGE)?;
        out.push_sql(".*, ");
        LiveUserTotal.walk_ast(out.reborrow())?;
        out.push_sql(" FROM (");
        self.page.walk_ast(out.reborrow())?;
        out.push_sql(") AS ");
        out.push_identifier(PAGE)?;
        out.push_sql(" ORDER BY ");
        self.order.walk_ast(out.reborrow())
    }
}

impl<Q, Conn> RunQueryDsl<Conn> for PageWithTotal<Q> {}

/// The `ORDER BY` list of a listing: the column `sort` names, then the id
/// in the same direction so rows with equal values keep one order. One
/// definition serves both the page's own query and the query that
/// [`PageWithTotal`] wraps around it, so the two orders cannot drift apart.
#[derive(Debug, Clone, Copy)]
struct ListingOrder {
    sort: UserSort,
    rows: Rows,
}

/// The relation a [`ListingOrder`] reads its columns from.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// The `users` table.
    Users,
    /// The page's subquery in [`PageWithTotal`].
    Page,
}

impl ListingOrder {
    fn new(sort: UserSort, rows: Rows) -> Self {
        Self { sort, rows }
    }

    /// Returns the column the listing is sorted by and its direction.
    fn key(self) -> (&'static str, Direction) {
        match self.sort {
            UserSort::Id(direction) => (users::id::NAME, direction),
            UserSort::Name(direction) => (users::name::NAME, direction),
            UserSort::CreatedAt(direction) => (users::created_at::NAME, direction),
        }
    }

    /// Writes one item of the list: the qualified column and its direction.
    fn push_key<DB: Backend>(
        self,
        column: &str,
        direction: Direction,
        out: &mut AstPass<'_, '_, DB>,
    ) -> QueryResult<()> {
        match self.rows {
            Rows::Users => users::table.walk_ast(out.reborrow())?,
            Rows::Page => out.push_identifier(PAGE)?,
        }
        out.push_sql(".");
        out.push_identifier(column)?;
        if direction == Direction::Descending {
            out.push_sql(" DESC");
        }
        Ok(())
    }
}

impl Expression for ListingOrder {
    type SqlType = NotSelectable;
}

impl AppearsOnTable<users::table> for ListingOrder {}

impl<DB: Backend> QueryFragment<DB> for ListingOrder {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let (column, direction) = self.key();
        self.push_key(column, direction, &mut out)?;
        if column != users::id::NAME {
            out.push_sql(", ");
            self.push_key(users::id::NAME, direction, &mut out)?;
        }
        Ok(())
    }
}

/// Inserts a user and its posts in one transaction.
pub fn insert(
    conn: &mut DbConn,
    new: &NewUser,
    now: NaiveDateTime,
) -> Result<UserWithPosts, DbError> {
    let row = new_user_row(new, now);

    with_conn!(conn, c => c.write_transaction(|c| {
        let user: User = diesel::insert_into(users::table)
            .values(&row)
            .returning(UserRow::as_returning())
            .get_result(c)?
            .into();

        let mut posts = Vec::with_capacity(new.posts.len());
        for post in &new.posts {
            let row = NewPostRow {
                user_id: user.id.get(),
                title: post.title.as_str(),
                content: post.content.as_str(),
                created_at: now,
                updated_at: now,
            };
            let post: PostRow = diesel::insert_into(posts::table)
                .values(&row)
                .returning(PostRow::as_returning())
                .get_result(c)?;
            posts.push(Post::from(post));
        }
        Ok::<_, DbError>(UserWithPosts { user, posts })
    }))
}

/// Inserts several users and their posts with one statement for the users
/// and one for the posts, in the transaction that the caller has open, and
/// returns them in the order given. A taken email fails the statement, so
/// the caller rolls back and inserts the users one by one.
pub fn insert_many(
    conn: &mut DbConn,
    new: &[&NewUser],
    now: NaiveDateTime,
) -> Result<Vec<UserWithPosts>, DbError> {
    let rows: Vec<NewUserRow> = new.iter().map(|user| new_user_row(user, now)).collect();

    with_conn!(conn, c => {
        let inserted: Vec<UserRow> = diesel::insert_into(users::table)
            .values(&rows)
            .returning(UserRow::as_returning())
            .get_results(c)?;
        // Matched by email, which the unique index makes unique among the
        // rows just inserted, so nothing depends on the order of RETURNING.
        let mut by_email: HashMap<String, User> = inserted
            .into_iter()
            .map(|row| (row.email.clone(), User::from(row)))
            .collect();
        let mut created = Vec::with_capacity(new.len());
        for user in new {
            let user = by_email.remove(user.fields.email.as_str()).ok_or(DbError::NotFound)?;
            created.push(UserWithPosts { user, posts: Vec::new() });
        }

        let post_rows: Vec<NewPostRow> = new
            .iter()
            .zip(&created)
            .flat_map(|(user, stored)| {
                user.posts.iter().map(move |post| NewPostRow {
                    user_id: stored.user.id.get(),
                    title: post.title.as_str(),
                    content: post.content.as_str(),
                    created_at: now,
                    updated_at: now,
                })
            })
            .collect();
        if !post_rows.is_empty() {
            let mut posts: Vec<PostRow> = diesel::insert_into(posts::table)
                .values(&post_rows)
                .returning(PostRow::as_returning())
                .get_results(c)?;
            // Ids grow in insertion order, as `insert` returns them.
            posts.sort_by_key(|post| post.id);
            let mut by_user: HashMap<i64, Vec<Post>> = HashMap::new();
            for post in posts {
                by_user.entry(post.user_id).or_default().push(Post::from(post));
            }
            for stored in &mut created {
                stored.posts = by_user.remove(&stored.user.id.get()).unwrap_or_default();
            }
        }
        Ok(created)
    })
}

fn new_user_row(new: &NewUser, now: NaiveDateTime) -> NewUserRow<'_> {
    NewUserRow {
        name: new.fields.name.as_str(),
        email: new.fields.email.as_str(),
        age: new.fields.age.map(|age| age.get()),
        created_at: now,
        updated_at: now,
    }
}

/// Replaces every client-set field of a user.
pub fn replace(
    conn: &mut DbConn,
    id: UserId,
    fields: &UserFields,
    precondition: &Precondition,
    now: NaiveDateTime,
) -> Result<User, DbError> {
    let patch = UserPatch {
        name: Some(fields.name.clone()),
        email: Some(fields.email.clone()),
        age: Some(fields.age),
    };
    update(conn, id, &patch, precondition, now)
}

/// Applies a merge patch. A patch that changes no value, an empty one
/// included, leaves the version and `updated_at` alone and returns the user
/// as it is.
pub fn update(
    conn: &mut DbConn,
    id: UserId,
    patch: &UserPatch,
    precondition: &Precondition,
    now: NaiveDateTime,
) -> Result<User, DbError> {
    with_conn!(conn, c => c.write_transaction(|c| {
        let current = c.lock_live_user(id.get())?.ok_or(DbError::NotFound)?;
        check_precondition(precondition, current.version)?;
        let unchanged = patch.name.as_ref().is_none_or(|name| name.as_str() == current.name)
            && patch.email.as_ref().is_none_or(|email| email.as_str() == current.email)
            && patch.age.is_none_or(|age| age.map(|age| age.get()) == current.age);
        if unchanged {
            return Ok(User::from(current));
        }

        let changes = UserChanges {
            name: patch.name.as_ref().map(|name| name.as_str()),
            email: patch.email.as_ref().map(|email| email.as_str()),
            age: patch.age.map(|age| age.map(|age| age.get())),
            version: current.version + 1,
            updated_at: now,
        };
        diesel::update(users::table.find(id.get()))
            .set(&changes)
            .returning(UserRow::as_returning())
            .get_result(c)
            .map(User::from)
            .map_err(DbError::from)
    }))
}

/// Deletes a user and its posts in one transaction.
pub fn delete(
    conn: &mut DbConn,
    id: UserId,
    mode: DeleteMode,
    precondition: &Precondition,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    with_conn!(conn, c => c.write_transaction(|c| {
        let current = c.lock_live_user(id.get())?.ok_or(DbError::NotFound)?;
        check_precondition(precondition, current.version)?;

        match mode {
            DeleteMode::Soft => {
                diesel::update(posts::table)
                    .filter(posts::user_id.eq(id.get()))
                    .filter(posts::deleted_at.is_null())
                    .set(posts::deleted_at.eq(now))
                    .execute(c)?;
                diesel::update(users::table.find(id.get()))
                    .set((
                        users::deleted_at.eq(now),
                        users::version.eq(current.version + 1),
                        users::updated_at.eq(now),
                    ))
                    .execute(c)?;
            }
            DeleteMode::Hard => {
                diesel::delete(posts::table.filter(posts::user_id.eq(id.get()))).execute(c)?;
                diesel::delete(users::table.find(id.get())).execute(c)?;
            }
        }
        Ok(())
    }))
}

/// Fails with `PreconditionFailed` unless `precondition` allows `version`.
pub(super) fn check_precondition(precondition: &Precondition, version: i64) -> Result<(), DbError> {
    if precondition.allows(version) {
        Ok(())
    } else {
        Err(DbError::PreconditionFailed)
    }
}
