-- revision: 0006_action_logs
-- revises: 0004_lowercase_user_emails
-- description: action_logs: background actions users start and their outcome (branch 2 of 2, merged in 0007)

-- migrate:up postgres
CREATE TABLE action_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    action_type varchar(64) NOT NULL,
    status varchar(16) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    payload jsonb NOT NULL DEFAULT '{}',
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX action_logs_tenant_started_idx ON action_logs (tenant_id, started_at);
CREATE INDEX action_logs_user_idx ON action_logs (user_id);

-- migrate:up mysql
CREATE TABLE action_logs (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id bigint NOT NULL,
    user_id bigint NOT NULL,
    action_type varchar(64) NOT NULL,
    status varchar(16) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    payload json NOT NULL DEFAULT ('{}'),
    error text NULL,
    started_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    finished_at datetime(6) NULL,
    INDEX action_logs_tenant_started_idx (tenant_id, started_at),
    INDEX action_logs_user_idx (user_id),
    CONSTRAINT action_logs_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
    CONSTRAINT action_logs_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- migrate:up sqlite
CREATE TABLE action_logs (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    action_type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    payload TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    started_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    finished_at TEXT
);
CREATE INDEX action_logs_tenant_started_idx ON action_logs (tenant_id, started_at);
CREATE INDEX action_logs_user_idx ON action_logs (user_id);

-- migrate:down
DROP TABLE action_logs;
