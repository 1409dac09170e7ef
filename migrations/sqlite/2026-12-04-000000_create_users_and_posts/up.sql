-- INTEGER PRIMARY KEY is the 64-bit rowid; AUTOINCREMENT keeps SQLite from
-- reusing the id of a hard-deleted row, which would let an old entity tag
-- match a different resource. Timestamps are TEXT in one UTC
-- format ('YYYY-MM-DD HH:MM:SS.ffffff'), written only by troupe, so they sort
-- in time order.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    age INTEGER CHECK (age BETWEEN 0 AND 150),
    version INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

-- An email is taken only while its user is not deleted.
CREATE UNIQUE INDEX users_email_live_key ON users (lower(email)) WHERE deleted_at IS NULL;
CREATE INDEX users_name_idx ON users (name, id) WHERE deleted_at IS NULL;
CREATE INDEX users_created_at_idx ON users (created_at, id) WHERE deleted_at IS NULL;

CREATE TABLE posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);

CREATE INDEX posts_user_id_idx ON posts (user_id, id) WHERE deleted_at IS NULL;
