DROP INDEX users_live_id_idx;
DROP TRIGGER users_count_truncate ON users;
DROP FUNCTION reset_live_user_counts();
DROP TRIGGER users_count_live ON users;
DROP FUNCTION count_live_users();
DROP TABLE live_user_counts;
