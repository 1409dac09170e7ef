-- The number of users that are not deleted, kept by triggers so that a
-- listing reads its total from a few rows instead of counting the table.
-- The total is the sum over all slots. Each connection adds to the slot of
-- its backend process id, so concurrent writers seldom wait for each other
-- on the same row. The trigger is deferred to commit: taking the slot's
-- row lock last keeps it from joining a deadlock with the other locks of
-- the transaction, such as a wait on a unique email.
CREATE TABLE live_user_counts (
    slot INTEGER PRIMARY KEY,
    live BIGINT NOT NULL
);

INSERT INTO live_user_counts (slot, live)
SELECT slot, 0 FROM generate_series(0, 63) AS slot;

UPDATE live_user_counts
SET live = (SELECT count(*) FROM users WHERE deleted_at IS NULL)
WHERE slot = 0;

CREATE FUNCTION count_live_users() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    delta BIGINT := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.deleted_at IS NULL THEN
        delta := delta + 1;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.deleted_at IS NULL THEN
        delta := delta - 1;
    END IF;
    IF delta <> 0 THEN
        UPDATE live_user_counts SET live = live + delta
        WHERE slot = pg_backend_pid() % 64;
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER users_count_live
AFTER INSERT OR UPDATE OF deleted_at OR DELETE ON users
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION count_live_users();

-- TRUNCATE skips row triggers, so it resets the count itself.
CREATE FUNCTION reset_live_user_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE live_user_counts SET live = 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_count_truncate AFTER TRUNCATE ON users
FOR EACH STATEMENT EXECUTE FUNCTION reset_live_user_counts();

-- Pages of the listing in id order walk this index, which holds only the
-- users that are not deleted, instead of the whole table.
CREATE INDEX users_live_id_idx ON users (id) WHERE deleted_at IS NULL;
