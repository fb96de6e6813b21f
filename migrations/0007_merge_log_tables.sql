-- revision: 0007_merge_log_tables
-- revises: 0005_audit_logs, 0006_action_logs
-- description: merge the audit_logs and action_logs branches

-- migrate:up

-- migrate:down
