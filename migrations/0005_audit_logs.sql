-- revision: 0005_audit_logs
-- revises: 0004_lowercase_user_emails
-- description: audit_logs: who did what to which object (branch 1 of 2, merged in 0007)

-- migrate:up postgres
CREATE TABLE audit_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    actor_user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    action varchar(64) NOT NULL,
    target_type varchar(64) NOT NULL,
    target_id varchar(128),
    metadata jsonb NOT NULL DEFAULT '{}',
    ip_address inet,
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_tenant_occurred_idx ON audit_logs (tenant_id, occurred_at);
CREATE INDEX audit_logs_actor_idx ON audit_logs (actor_user_id);

-- migrate:up mysql
CREATE TABLE audit_logs (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id bigint NOT NULL,
    actor_user_id bigint NULL,
    action varchar(64) NOT NULL,
    target_type varchar(64) NOT NULL,
    target_id varchar(128) NULL,
    metadata json NOT NULL DEFAULT ('{}'),
    ip_address varchar(45) NULL,
    occurred_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    INDEX audit_logs_tenant_occurred_idx (tenant_id, occurred_at),
    INDEX audit_logs_actor_idx (actor_user_id),
    CONSTRAINT audit_logs_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
    CONSTRAINT audit_logs_actor_user_id_fkey FOREIGN KEY (actor_user_id) REFERENCES users (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- migrate:up sqlite
CREATE TABLE audit_logs (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    actor_user_id INTEGER REFERENCES users (id) ON DELETE SET NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    ip_address TEXT,
    occurred_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX audit_logs_tenant_occurred_idx ON audit_logs (tenant_id, occurred_at);
CREATE INDEX audit_logs_actor_idx ON audit_logs (actor_user_id);

-- migrate:down
DROP TABLE audit_logs;
