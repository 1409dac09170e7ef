//! The messages the `UserStore` handles.

use std::sync::Arc;

use actix::prelude::*;

use crate::actors::{ActorError, RequestCtx};
use crate::domain::{
    DeleteMode, NewUser, Page, PageRequest, Precondition, User, UserFields, UserFilter, UserId,
    UserPatch, UserSort, UserWithPosts,
};

/// Defines a message to the `UserStore`: its fields and its reply.
macro_rules! store_message {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? } -> $output:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            pub ctx: RequestCtx,
            $(pub $field: $ty,)*
        }

        impl Message for $name {
            type Result = Result<$output, ActorError>;
        }
    };
}

store_message!(
    /// Reads one user, from the cache when it is there. The user is shared
    /// with the caches that keep it, so a hit copies no field.
    GetUser { id: UserId } -> Arc<User>
);
store_message!(
    /// Reads one user with its posts, always from the database.
    GetUserWithPosts { id: UserId } -> UserWithPosts
);
store_message!(
    /// Reads one page of users.
    ListUsers { filter: UserFilter, sort: UserSort, page: PageRequest } -> Page<User>
);
store_message!(
    /// Creates a user and its posts.
    CreateUser { user: NewUser } -> UserWithPosts
);
store_message!(
    /// Replaces a user's fields.
    ReplaceUser { id: UserId, fields: UserFields, precondition: Precondition } -> User
);
store_message!(
    /// Applies a merge patch to a user.
    PatchUser { id: UserId, patch: UserPatch, precondition: Precondition } -> User
);
store_message!(
    /// Deletes a user and its posts.
    DeleteUser { id: UserId, mode: DeleteMode, precondition: Precondition } -> ()
);

/// Sent by a write's reply future to its own store after the database has
/// replied and before the client gets the reply.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct WriteFinished {
    pub(super) id: UserId,
}
