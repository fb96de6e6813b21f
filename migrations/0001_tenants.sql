-- revision: 0001_tenants
-- revises:
-- description: tenants: one row per customer organisation
-- transactional: true

-- migrate:up postgres
CREATE TABLE tenants (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug varchar(63) NOT NULL,
    name varchar(255) NOT NULL,
    plan varchar(32) NOT NULL DEFAULT 'free',
    settings jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_slug_key UNIQUE (slug)
);

-- migrate:up mysql
CREATE TABLE tenants (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    slug varchar(63) NOT NULL,
    name varchar(255) NOT NULL,
    plan varchar(32) NOT NULL DEFAULT 'free',
    settings json NOT NULL DEFAULT ('{}'),
    created_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT tenants_slug_key UNIQUE (slug)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- migrate:up sqlite
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    slug TEXT NOT NULL,
    name TEXT NOT NULL,
    plan TEXT NOT NULL DEFAULT 'free',
    settings TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT tenants_slug_key UNIQUE (slug)
);

-- migrate:down
DROP TABLE tenants;
