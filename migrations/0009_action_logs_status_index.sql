-- revision: 0009_action_logs_status_index
-- revises: 0008_restoration_configurations
-- description: index action_logs by status without locking writes (CREATE INDEX CONCURRENTLY on PostgreSQL)
-- transactional: false

-- One statement per non-transactional revision: if it fails half-way the target is marked
-- dirty and an operator repairs it (PostgreSQL leaves an INVALID index behind: drop it first).
-- migrate:up
CREATE INDEX action_logs_status_idx ON action_logs (status, started_at);

-- migrate:up postgres
CREATE INDEX CONCURRENTLY action_logs_status_idx ON action_logs (status, started_at);

-- migrate:down postgres
DROP INDEX CONCURRENTLY action_logs_status_idx;

-- migrate:down mysql
DROP INDEX action_logs_status_idx ON action_logs;

-- migrate:down sqlite
DROP INDEX action_logs_status_idx;
