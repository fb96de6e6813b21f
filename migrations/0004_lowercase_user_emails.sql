-- revision: 0004_lowercase_user_emails
-- revises: 0003_seed_demo_tenants
-- description: lowercase every user email (IRREVERSIBLE: the original casing is not kept, so there is no down section)

-- migrate:up
UPDATE users SET email = LOWER(email) WHERE email <> LOWER(email);
