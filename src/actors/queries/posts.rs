use super::{now, DbQuery};
use crate::db::{self, DbConn, DbError};
use crate::domain::{
    DeleteMode, IfMatch, NewPost, Page, PageRequest, Post, PostFilter, PostId, PostPatch, PostSort,
    UserId,
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
    pub if_match: Option<IfMatch>,
}

impl DbQuery for Update {
    type Output = Post;
    const NAME: &'static str = "posts.update";

    fn run(self, conn: &mut DbConn) -> Result<Post, DbError> {
        db::posts::update(conn, self.id, &self.patch, self.if_match.as_ref(), now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub id: PostId,
    pub mode: DeleteMode,
    pub if_match: Option<IfMatch>,
}

impl DbQuery for Delete {
    type Output = ();
    const NAME: &'static str = "posts.delete";

    fn run(self, conn: &mut DbConn) -> Result<(), DbError> {
        db::posts::delete(conn, self.id, self.mode, self.if_match.as_ref(), now())
    }
}
