use super::{now, DbQuery};
use crate::db::{self, DbConn, DbError, RowLock};
use crate::domain::{
    DeleteMode, NewUser, Page, PageRequest, Precondition, User, UserFields, UserFilter, UserId,
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

/// Several `Find`s in one statement, for reads that arrive together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindMany {
    pub ids: Vec<UserId>,
}

impl DbQuery for FindMany {
    /// The live users among `ids`, in no set order.
    type Output = Vec<User>;
    const NAME: &'static str = "users.find_many";

    fn run(self, conn: &mut DbConn) -> Result<Vec<User>, DbError> {
        db::users::find_many(conn, &self.ids)
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
    pub precondition: Precondition,
}

impl DbQuery for Replace {
    type Output = User;
    const NAME: &'static str = "users.replace";

    fn run(self, conn: &mut DbConn) -> Result<User, DbError> {
        db::users::replace(conn, self.id, &self.fields, &self.precondition, now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub id: UserId,
    pub patch: UserPatch,
    pub precondition: Precondition,
}

impl DbQuery for Update {
    type Output = User;
    const NAME: &'static str = "users.update";

    fn run(self, conn: &mut DbConn) -> Result<User, DbError> {
        db::users::update(conn, self.id, &self.patch, &self.precondition, now())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub id: UserId,
    pub mode: DeleteMode,
    pub precondition: Precondition,
}

impl DbQuery for Delete {
    type Output = ();
    const NAME: &'static str = "users.delete";

    fn run(self, conn: &mut DbConn) -> Result<(), DbError> {
        db::users::delete(conn, self.id, self.mode, &self.precondition, now())
    }
}

/// Any user write, so that writes of different kinds can share a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Insert(Insert),
    Replace(Replace),
    Update(Update),
    Delete(Delete),
}

/// The result of a `Write`, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Inserted(UserWithPosts),
    Changed(User),
    Deleted,
}

impl DbQuery for Write {
    type Output = Written;
    const NAME: &'static str = "users.write";

    fn name(&self) -> &'static str {
        match self {
            Self::Insert(_) => Insert::NAME,
            Self::Replace(_) => Replace::NAME,
            Self::Update(_) => Update::NAME,
            Self::Delete(_) => Delete::NAME,
        }
    }

    fn row_lock(&self) -> Option<RowLock> {
        match self {
            Self::Insert(_) => None,
            Self::Replace(Replace { id, .. })
            | Self::Update(Update { id, .. })
            | Self::Delete(Delete { id, .. }) => Some(RowLock::User(*id)),
        }
    }

    /// Creates run together as two statements: one for the users, one for
    /// their posts.
    fn run_together(writes: &[&Self], conn: &mut DbConn) -> Option<Result<Vec<Written>, DbError>> {
        let users: Vec<&NewUser> = writes
            .iter()
            .map(|write| match write {
                Self::Insert(insert) => Some(&insert.user),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let created = db::users::insert_many(conn, &users, now());
        Some(created.map(|created| created.into_iter().map(Written::Inserted).collect()))
    }

    fn run(self, conn: &mut DbConn) -> Result<Written, DbError> {
        match self {
            Self::Insert(insert) => insert.run(conn).map(Written::Inserted),
            Self::Replace(replace) => replace.run(conn).map(Written::Changed),
            Self::Update(update) => update.run(conn).map(Written::Changed),
            Self::Delete(delete) => delete.run(conn).map(|()| Written::Deleted),
        }
    }
}
