-- The number of users that are not deleted, kept by triggers so that a
-- listing reads its total from a few rows instead of counting the table.
--
-- The total is the sum of `live` over all rows. Each session adds to the
-- row whose slot is its backend process id, which no other live session
-- shares, so concurrent writers never wait for each other here and the
-- row lock cannot join a deadlock. Slot 0 holds what was folded in from
-- sessions that have ended (fold_live_user_counts), which keeps the table
-- small. The triggers run once per statement, so a batch that inserts many
-- users in one statement updates its row once. The functions keep the
-- search_path of this migration, so they find live_user_counts whatever
-- the path of the session that writes users (pg_dump, for one, empties it),
-- and run as their owner, so a role that may write users needs no grant on
-- live_user_counts.

-- Writers wait until this migration commits, so no write falls between
-- the count below and the triggers that take over from it.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE live_user_counts (
    slot INTEGER PRIMARY KEY,
    live BIGINT NOT NULL
);

INSERT INTO live_user_counts (slot, live)
SELECT 0, count(*) FROM users WHERE deleted_at IS NULL;

CREATE FUNCTION count_live_users() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    delta BIGINT := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        delta := delta + (SELECT count(*) FROM new_rows WHERE deleted_at IS NULL);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        delta := delta - (SELECT count(*) FROM old_rows WHERE deleted_at IS NULL);
    END IF;
    IF delta <> 0 THEN
        INSERT INTO live_user_counts AS counts (slot, live)
        VALUES (pg_backend_pid(), delta)
        ON CONFLICT (slot) DO UPDATE SET live = counts.live + EXCLUDED.live;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_count_insert AFTER INSERT ON users
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION count_live_users();

CREATE TRIGGER users_count_update AFTER UPDATE ON users
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION count_live_users();

CREATE TRIGGER users_count_delete AFTER DELETE ON users
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION count_live_users();

-- TRUNCATE skips row and transition-table triggers, so it resets the count
-- itself.
CREATE FUNCTION reset_live_user_counts() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM live_user_counts WHERE slot <> 0;
    UPDATE live_user_counts SET live = 0 WHERE slot = 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_count_truncate AFTER TRUNCATE ON users
FOR EACH STATEMENT EXECUTE FUNCTION reset_live_user_counts();

-- Moves the rows of the calling session and of sessions that have ended
-- into slot 0. troupe calls it at start. A session that is still running
-- keeps its row, so a fold never waits on an open write transaction's lock.
CREATE FUNCTION fold_live_user_counts() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH folded AS (
        DELETE FROM live_user_counts
        WHERE slot <> 0
          AND (slot = pg_backend_pid() OR slot NOT IN (SELECT pid FROM pg_stat_activity))
        RETURNING live
    )
    UPDATE live_user_counts
    SET live = live + (SELECT COALESCE(sum(live), 0) FROM folded)
    WHERE slot = 0;
$$;

-- Pages of the listing in id order walk this index, which holds only the
-- users that are not deleted, instead of the whole table.
CREATE INDEX users_live_id_idx ON users (id) WHERE deleted_at IS NULL;
