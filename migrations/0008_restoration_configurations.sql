-- revision: 0008_restoration_configurations
-- revises: 0007_merge_log_tables
-- description: restoration_configurations: per-tenant point-in-time restore settings, with sample rows

-- migrate:up postgres
CREATE TABLE restoration_configurations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name varchar(128) NOT NULL,
    source_backup_id varchar(128) NOT NULL,
    target_database varchar(128) NOT NULL,
    point_in_time timestamptz,
    retention_days integer NOT NULL DEFAULT 7 CHECK (retention_days > 0),
    enabled boolean NOT NULL DEFAULT true,
    options jsonb NOT NULL DEFAULT '{}',
    created_by bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT restoration_configurations_tenant_name_key UNIQUE (tenant_id, name)
);
CREATE INDEX restoration_configurations_enabled_idx ON restoration_configurations (tenant_id, enabled);
CREATE INDEX restoration_configurations_created_by_idx ON restoration_configurations (created_by);

INSERT INTO restoration_configurations (tenant_id, name, source_backup_id, target_database, retention_days, options, created_by)
SELECT t.id, 'nightly', 'backup-acme-nightly', 'acme_restore', 14, '{"verify": true, "parallel_jobs": 4}', u.id
FROM tenants t JOIN users u ON u.tenant_id = t.id
WHERE t.slug = 'acme' AND u.email = 'alice@acme.example';
INSERT INTO restoration_configurations (tenant_id, name, source_backup_id, target_database, enabled)
SELECT id, 'weekly-drill', 'backup-globex-weekly', 'globex_drill', false FROM tenants WHERE slug = 'globex';

-- migrate:up mysql
CREATE TABLE restoration_configurations (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id bigint NOT NULL,
    name varchar(128) NOT NULL,
    source_backup_id varchar(128) NOT NULL,
    target_database varchar(128) NOT NULL,
    point_in_time datetime(6) NULL,
    retention_days int NOT NULL DEFAULT 7 CHECK (retention_days > 0),
    enabled boolean NOT NULL DEFAULT true,
    options json NOT NULL DEFAULT ('{}'),
    created_by bigint NULL,
    created_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    CONSTRAINT restoration_configurations_tenant_name_key UNIQUE (tenant_id, name),
    INDEX restoration_configurations_enabled_idx (tenant_id, enabled),
    INDEX restoration_configurations_created_by_idx (created_by),
    CONSTRAINT restoration_configurations_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
    CONSTRAINT restoration_configurations_created_by_fkey FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO restoration_configurations (tenant_id, name, source_backup_id, target_database, retention_days, options, created_by)
SELECT t.id, 'nightly', 'backup-acme-nightly', 'acme_restore', 14, '{"verify": true, "parallel_jobs": 4}', u.id
FROM tenants t JOIN users u ON u.tenant_id = t.id
WHERE t.slug = 'acme' AND u.email = 'alice@acme.example';
INSERT INTO restoration_configurations (tenant_id, name, source_backup_id, target_database, enabled)
SELECT id, 'weekly-drill', 'backup-globex-weekly', 'globex_drill', false FROM tenants WHERE slug = 'globex';

-- migrate:up sqlite
CREATE TABLE restoration_configurations (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    source_backup_id TEXT NOT NULL,
    target_database TEXT NOT NULL,
    point_in_time TEXT,
    retention_days INTEGER NOT NULL DEFAULT 7 CHECK (retention_days > 0),
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    options TEXT NOT NULL DEFAULT '{}',
    created_by INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT restoration_configurations_tenant_name_key UNIQUE (tenant_id, name)
);
CREATE INDEX restoration_configurations_enabled_idx ON restoration_configurations (tenant_id, enabled);
CREATE INDEX restoration_configurations_created_by_idx ON restoration_configurations (created_by);

INSERT INTO restoration_configurations (tenant_id, name, source_backup_id, target_database, retention_days, options, created_by)
SELECT t.id, 'nightly', 'backup-acme-nightly', 'acme_restore', 14, '{"verify": true, "parallel_jobs": 4}', u.id
FROM tenants t JOIN users u ON u.tenant_id = t.id
WHERE t.slug = 'acme' AND u.email = 'alice@acme.example';
INSERT INTO restoration_configurations (tenant_id, name, source_backup_id, target_database, enabled)
SELECT id, 'weekly-drill', 'backup-globex-weekly', 'globex_drill', 0 FROM tenants WHERE slug = 'globex';

-- migrate:down
DROP TABLE restoration_configurations;
