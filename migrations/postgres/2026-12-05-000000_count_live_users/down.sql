DROP INDEX users_live_id_idx;
DROP FUNCTION fold_live_user_counts();
DROP TRIGGER users_count_truncate ON users;
DROP FUNCTION reset_live_user_counts();
DROP TRIGGER users_count_delete ON users;
DROP TRIGGER users_count_update ON users;
DROP TRIGGER users_count_insert ON users;
DROP FUNCTION count_live_users();
DROP TABLE live_user_counts;
