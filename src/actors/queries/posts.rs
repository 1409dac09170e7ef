use super::{now, DbQuery};
use crate::db::{self, DbConn, DbError, RowLock};
use crate::domain::{
    DeleteMode, NewPost, Page, PageRequest, Post, PostFilter, PostId, PostPatch, PostSort,
    Precondition, UserId,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Find {
    pub id: PostId,
}

impl DbQuery for Find {
    type Output = Post;
    const NAME: &'static str = "posts.find";

    fn run(self, conn: &mut DbConn) -> Result<Post, DbError> {
        db::posts::find(conn, self.id)
    }
}

/// Lists posts; with `require_user`, a missing user is `NotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub filter: PostFilter,
    pub require_user: bool,
    pub sort: PostSort,
    pub page: PageRequest,
}

impl DbQuery for List {
    type Output = Page<Post>;
    const NAME: &'static str = "posts.list";

    fn run(self, conn: &mut DbConn) -> Result<Page<Post>, DbError> {
        db::posts::list(conn, self.filter, self.require_user, self.sort, self.page)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub user_id: UserId,
    pub post: NewPost,
}

impl DbQuery for Insert {
    type Output = Post;
    const NAME: &'static str = "posts.insert";

    fn run(self, conn: &mut DbConn) -> Result<Post, DbError> {
        db::posts::insert(conn, self.user_id, &self.post, now())
    }
}

/// Applies a patch; a full replacement sends every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub id: PostId,
    pub patch: PostPatch,
    pub precondition: Precondition,
}

impl DbQuery for Update {
    type Output = Post;
    const NAME: &'static str = "posts.update";

    fn run(self, conn: &mut DbConn) -> Result<Post, DbError> {
        db::posts::update(conn, self.id, &self.patch, &self.precondition, now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub id: PostId,
    pub mode: DeleteMode,
    pub precondition: Precondition,
}

impl DbQuery for Delete {
    type Output = ();
    const NAME: &'static str = "posts.delete";

    fn run(self, conn: &mut DbConn) -> Result<(), DbError> {
        db::posts::delete(conn, self.id, self.mode, &self.precondition, now())
    }
}

/// Any post write, so that writes of different kinds can share a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Insert(Insert),
    Update(Update),
    Delete(Delete),
}

/// The result of a `Write`, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Saved(Post),
    Deleted,
}

impl DbQuery for Write {
    type Output = Written;
    const NAME: &'static str = "posts.write";

    fn name(&self) -> &'static str {
        match self {
            Self::Insert(_) => Insert::NAME,
            Self::Update(_) => Update::NAME,
            Self::Delete(_) => Delete::NAME,
        }
    }

    fn row_lock(&self) -> Option<RowLock> {
        match self {
            Self::Insert(insert) => Some(RowLock::User(insert.user_id)),
            Self::Update(Update { id, .. }) | Self::Delete(Delete { id, .. }) => {
                Some(RowLock::Post(*id))
            }
        }
    }

    /// Creates run together as two statements: one that locks their users,
    /// one that inserts the posts.
    fn run_together(writes: &[&Self], conn: &mut DbConn) -> Option<Result<Vec<Written>, DbError>> {
        let posts: Vec<(UserId, &NewPost)> = writes
            .iter()
            .map(|write| match write {
                Self::Insert(insert) => Some((insert.user_id, &insert.post)),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let created = db::posts::insert_many(conn, &posts, now());
        Some(created.map(|created| created.into_iter().map(Written::Saved).collect()))
    }

    fn run(self, conn: &mut DbConn) -> Result<Written, DbError> {
        match self {
            Self::Insert(insert) => insert.run(conn).map(Written::Saved),
            Self::Update(update) => update.run(conn).map(Written::Saved),
            Self::Delete(delete) => delete.run(conn).map(|()| Written::Deleted),
        }
    }
}
