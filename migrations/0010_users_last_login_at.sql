-- revision: 0010_users_last_login_at
-- revises: 0009_action_logs_status_index
-- description: users.last_login_at, nullable, filled in by the application

-- migrate:up postgres
ALTER TABLE users ADD COLUMN last_login_at timestamptz;

-- migrate:up mysql
ALTER TABLE users ADD COLUMN last_login_at datetime(6) NULL;

-- migrate:up sqlite
ALTER TABLE users ADD COLUMN last_login_at TEXT;

-- migrate:down
ALTER TABLE users DROP COLUMN last_login_at;
