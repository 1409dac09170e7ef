//! Table definitions shared by both backends. Written by hand, not by
//! `diesel print-schema`: SQLite's `INTEGER PRIMARY KEY` would print as a
//! 32-bit `Integer`, and ids are 64-bit everywhere.

diesel::table! {
    users (id) {
        id -> BigInt,
        name -> Text,
        email -> Text,
        age -> Nullable<Integer>,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    posts (id) {
        id -> BigInt,
        user_id -> BigInt,
        title -> Text,
        content -> Text,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// The number of users that are not deleted, kept by triggers on
    /// `users`. The total is the sum of `live` over every slot.
    live_user_counts (slot) {
        slot -> Integer,
        live -> BigInt,
    }
}

diesel::joinable!(posts -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, posts);
