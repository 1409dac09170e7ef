DROP INDEX users_live_id_idx;
DROP TRIGGER users_count_update;
DROP TRIGGER users_count_delete;
DROP TRIGGER users_count_insert;
DROP TABLE live_user_counts;
