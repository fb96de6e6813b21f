-- revision: 0003_seed_demo_tenants
-- revises: 0002_users
-- description: sample tenants and users for demos and staging fleets

-- The same statements run on every dialect: no dialect sections needed.
-- migrate:up
INSERT INTO tenants (slug, name, plan) VALUES
    ('acme', 'Acme Corp', 'enterprise'),
    ('globex', 'Globex', 'team'),
    ('initech', 'Initech', 'free');

INSERT INTO users (tenant_id, email, display_name, role)
SELECT id, 'Alice@Acme.example', 'Alice Liddell', 'owner' FROM tenants WHERE slug = 'acme';
INSERT INTO users (tenant_id, email, display_name, role)
SELECT id, 'bob@acme.example', 'Bob Marley', 'admin' FROM tenants WHERE slug = 'acme';
INSERT INTO users (tenant_id, email, display_name, role)
SELECT id, 'Hank.Scorpio@Globex.example', 'Hank Scorpio', 'owner' FROM tenants WHERE slug = 'globex';
INSERT INTO users (tenant_id, email, display_name)
SELECT id, 'peter@initech.example', 'Peter Gibbons' FROM tenants WHERE slug = 'initech';

-- migrate:down
-- Users first: SQLite enforces ON DELETE CASCADE only with PRAGMA foreign_keys = ON.
DELETE FROM users WHERE tenant_id IN (SELECT id FROM tenants WHERE slug IN ('acme', 'globex', 'initech'));
DELETE FROM tenants WHERE slug IN ('acme', 'globex', 'initech');
