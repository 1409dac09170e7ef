use super::{now, DbQuery};
use crate::db::{self, DbConn, DbError};
use crate::domain::{
    DeleteMode, IfMatch, NewUser, Page, PageRequest, User, UserFields, UserFilter, UserId,
    UserPatch, UserSort, UserWithPosts,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Find {
    pub id: UserId,
}

impl DbQuery for Find {
    type Output = User;
    const NAME: &'static str = "users.find";

    fn run(self, conn: &mut DbConn) -> Result<User, DbError> {
        db::users::find(conn, self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindWithPosts {
    pub id: UserId,
}

impl DbQuery for FindWithPosts {
    type Output = UserWithPosts;
    const NAME: &'static str = "users.find_with_posts";

    fn run(self, conn: &mut DbConn) -> Result<UserWithPosts, DbError> {
        db::users::find_with_posts(conn, self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub filter: UserFilter,
    pub sort: UserSort,
    pub page: PageRequest,
}

impl DbQuery for List {
    type Output = Page<User>;
    const NAME: &'static str = "users.list";

    fn run(self, conn: &mut DbConn) -> Result<Page<User>, DbError> {
        db::users::list(conn, &self.filter, self.sort, self.page)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub user: NewUser,
}

impl DbQuery for Insert {
    type Output = UserWithPosts;
    const NAME: &'static str = "users.insert";

    fn run(self, conn: &mut DbConn) -> Result<UserWithPosts, DbError> {
        db::users::insert(conn, &self.user, now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replace {
    pub id: UserId,
    pub fields: UserFields,
    pub if_match: Option<IfMatch>,
}

impl DbQuery for Replace {
    type Output = User;
    const NAME: &'static str = "users.replace";

    fn run(self, conn: &mut DbConn) -> Result<User, DbError> {
        db::users::replace(conn, self.id, &self.fields, self.if_match.as_ref(), now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub id: UserId,
    pub patch: UserPatch,
    pub if_match: Option<IfMatch>,
}

impl DbQuery for Update {
    type Output = User;
    const NAME: &'static str = "users.update";

    fn run(self, conn: &mut DbConn) -> Result<User, DbError> {
        db::users::update(conn, self.id, &self.patch, self.if_match.as_ref(), now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub id: UserId,
    pub mode: DeleteMode,
    pub if_match: Option<IfMatch>,
}

impl DbQuery for Delete {
    type Output = ();
    const NAME: &'static str = "users.delete";

    fn run(self, conn: &mut DbConn) -> Result<(), DbError> {
        db::users::delete(conn, self.id, self.mode, self.if_match.as_ref(), now())
    }
}
