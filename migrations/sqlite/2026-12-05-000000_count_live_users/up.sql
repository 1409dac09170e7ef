-- The number of users that are not deleted, kept by triggers so that a
-- listing reads its total from one row instead of counting the table.
-- SQLite has one writer at a time, so one slot is enough; the column layout
-- matches PostgreSQL's, where writers spread over several slots.
CREATE TABLE live_user_counts (
    slot INTEGER PRIMARY KEY,
    live INTEGER NOT NULL
);

INSERT INTO live_user_counts (slot, live)
SELECT 0, count(*) FROM users WHERE deleted_at IS NULL;

CREATE TRIGGER users_count_insert AFTER INSERT ON users
WHEN NEW.deleted_at IS NULL
BEGIN
    UPDATE live_user_counts SET live = live + 1 WHERE slot = 0;
END;

CREATE TRIGGER users_count_delete AFTER DELETE ON users
WHEN OLD.deleted_at IS NULL
BEGIN
    UPDATE live_user_counts SET live = live - 1 WHERE slot = 0;
END;

CREATE TRIGGER users_count_update AFTER UPDATE OF deleted_at ON users
WHEN (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL)
BEGIN
    UPDATE live_user_counts
    SET live = live + CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE -1 END
    WHERE slot = 0;
END;

-- Pages of the listing in id order walk this index, which holds only the
-- users that are not deleted, instead of the whole table.
CREATE INDEX users_live_id_idx ON users (id) WHERE deleted_at IS NULL;
