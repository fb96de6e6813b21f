//! The SQL linter (`flotilla check`): one test per rule on each dialect where it applies, a
//! `DROP TABLE` inside comments and strings that is not flagged, statements the parser cannot
//! read, and the two ways to allow a rule (file header, `lint.toml`).

use std::path::{Path, PathBuf};

use expect_test::{Expect, expect};
use flotilla_revision::{Diagnostic, Graph, LintConfig, Rule, lint_revision, lint_set, parse_file};

/// Lints one revision whose plain up section is `up` (every dialect runs it) after a
/// four-line header; returns `line: rule (dialects)` per rule finding, file checks left out.
fn lint(up: &str) -> Vec<String> {
    lint_file(&format!(
        "-- revision: r\n-- revises:\n-- description: d\n-- migrate:up\n{up}\n-- migrate:down\nSELECT 1;\n"
    ))
}

fn lint_file(text: &str) -> Vec<String> {
    let r = parse_file(Path::new("m/r.sql"), text.as_bytes()).expect("the file parses");
    render(&lint_revision(&r))
}

fn render(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .filter(|d| !matches!(d.code, "irreversible" | "missing_semicolon"))
        .map(|d| {
            let ds: Vec<&str> = d.dialects.iter().map(|d| d.as_str()).collect();
            format!(
                "{}: {} ({})",
                d.line.unwrap_or_default(),
                d.code,
                ds.join(", ")
            )
        })
        .collect()
}

fn check(up: &str, expect: Expect) {
    expect.assert_debug_eq(&lint(up));
}

/// One section per dialect: `-- migrate:up <dialect>` then its SQL.
fn per_dialect(pg: &str, my: &str, lite: &str) -> Vec<String> {
    lint_file(&format!(
        "-- revision: r\n-- migrate:up postgres\n{pg}\n-- migrate:up mysql\n{my}\n-- migrate:up sqlite\n{lite}\n"
    ))
}

#[test]
fn destructive_drop_table_on_every_dialect() {
    check(
        "DROP TABLE users;",
        expect![[r#"
            [
                "5: destructive (postgres, mysql, sqlite)",
            ]
        "#]],
    );
}

#[test]
fn destructive_drop_column_on_every_dialect() {
    check(
        "ALTER TABLE users\n  DROP COLUMN legacy;",
        expect![[r#"
            [
                "5: destructive (postgres, mysql, sqlite)",
            ]
        "#]],
    );
}

#[test]
fn destructive_drop_schema_database_and_truncate() {
    expect![[r#"
        [
            "3: destructive (postgres)",
            "4: destructive (postgres)",
            "6: destructive (mysql)",
            "7: destructive (mysql)",
            "9: destructive (sqlite)",
        ]
    "#]]
    .assert_debug_eq(&per_dialect(
        "DROP SCHEMA archive CASCADE;\nTRUNCATE audit_logs;",
        "DROP DATABASE archive;\nTRUNCATE TABLE audit_logs;",
        "DROP TABLE IF EXISTS audit_logs;",
    ));
}

#[test]
fn dropping_what_the_revision_created_or_an_index_is_not_destructive() {
    check(
        "CREATE TABLE tmp (id int);\nDROP TABLE tmp;\nDROP INDEX users_email_idx;",
        expect![[r#"
            []
        "#]],
    );
}

#[test]
fn drop_table_in_comments_and_strings_is_not_flagged() {
    check(
        "-- DROP TABLE users;\n/* DROP TABLE users; */\nINSERT INTO notes (body) VALUES ('DROP TABLE users;');\nSELECT 'x; DROP TABLE users' AS s;",
        expect![[r#"
            []
        "#]],
    );
    let pg = "DO $body$ BEGIN RAISE NOTICE 'DROP TABLE users'; END $body$;";
    // A dollar-quoted body is a string to the splitter: at worst unparsable, never destructive.
    let found = per_dialect(pg, "SELECT 1;", "SELECT 1;");
    assert!(
        found.iter().all(|f| !f.contains("destructive")),
        "{found:?}"
    );
}

#[test]
fn data_dependent_unique_index_and_not_null_on_every_dialect() {
    check(
        "CREATE UNIQUE INDEX users_email_key ON users (email);\nALTER TABLE users ADD COLUMN tier varchar(16) NOT NULL;",
        expect![[r#"
            [
                "5: data_dependent (postgres, mysql, sqlite)",
                "5: locking (postgres)",
                "6: data_dependent (postgres, mysql, sqlite)",
            ]
        "#]],
    );
    // With a default the new NOT NULL column is filled: not data-dependent.
    check(
        "ALTER TABLE users ADD COLUMN tier varchar(16) NOT NULL DEFAULT 'free';",
        expect![[r#"
            []
        "#]],
    );
}

#[test]
fn data_dependent_set_not_null_and_narrowing_types() {
    expect![[r#"
        [
            "3: data_dependent (postgres)",
            "4: data_dependent (postgres)",
            "4: locking (postgres)",
            "6: data_dependent (mysql)",
            "7: backward_incompatible (mysql)",
            "7: data_dependent (mysql)",
        ]
    "#]]
    .assert_debug_eq(&per_dialect(
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\nALTER TABLE users ALTER COLUMN email TYPE varchar(64);",
        "ALTER TABLE users MODIFY COLUMN email varchar(64) NOT NULL;\nALTER TABLE users CHANGE COLUMN email mail varchar(64);",
        "SELECT 1;",
    ));
}

#[test]
fn backward_incompatible_renames_on_every_dialect() {
    check(
        "ALTER TABLE users RENAME COLUMN email TO mail;\nALTER TABLE users RENAME TO members;",
        expect![[r#"
            [
                "5: backward_incompatible (postgres, mysql, sqlite)",
                "6: backward_incompatible (postgres, mysql, sqlite)",
            ]
        "#]],
    );
    expect![[r#"
        [
            "5: backward_incompatible (mysql)",
        ]
    "#]]
    .assert_debug_eq(&per_dialect(
        "SELECT 1;",
        "RENAME TABLE users TO members;",
        "SELECT 1;",
    ));
}

#[test]
fn locking_on_postgres_only() {
    check(
        "CREATE INDEX users_created_idx ON users (created_at);\nALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();\nALTER TABLE users ADD COLUMN seen_at timestamptz DEFAULT now();\nALTER TABLE users ADD CONSTRAINT users_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants (id) NOT VALID;",
        expect![[r#"
            [
                "5: locking (postgres)",
                "6: locking (postgres)",
            ]
        "#]],
    );
    // An index on a table the same revision creates locks nobody.
    check(
        "CREATE TABLE events (id int, at timestamptz);\nCREATE INDEX events_at_idx ON events (at);",
        expect![[r#"
            []
        "#]],
    );
    // A check constraint validated under the lock (and checked against every row).
    expect![[r#"
        [
            "3: data_dependent (postgres)",
            "3: locking (postgres)",
        ]
    "#]]
    .assert_debug_eq(&per_dialect(
        "ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role <> '');",
        "SELECT 1;",
        "SELECT 1;",
    ));
}

#[test]
fn non_transactional_in_a_transactional_revision() {
    expect![[r#"
        [
            "3: non_transactional_in_transaction (postgres)",
            "4: non_transactional_in_transaction (postgres)",
            "8: non_transactional_in_transaction (sqlite)",
        ]
    "#]]
    .assert_debug_eq(&per_dialect(
        "CREATE INDEX CONCURRENTLY users_created_idx ON users (created_at);\nVACUUM;",
        "SELECT 1;",
        "VACUUM;",
    ));
    // The same statements in a revision marked `-- transactional: false`: fine.
    let found = lint_file(
        "-- revision: r\n-- transactional: false\n-- migrate:up postgres\nCREATE INDEX CONCURRENTLY users_created_idx ON users (created_at);\n-- migrate:up\nSELECT 1;\n",
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn unparsable_statements_are_reported_on_every_dialect() {
    check(
        "CREATE TABLE ok (id int);\nFROBNICATE TABLE users WITH VIGOR;\nSELECT 1;",
        expect![[r#"
            [
                "6: unparsable (postgres, mysql, sqlite)",
            ]
        "#]],
    );
    let r = parse_file(
        Path::new("m/r.sql"),
        b"-- revision: r\n-- migrate:up\nFROBNICATE TABLE users;\n",
    )
    .expect("parses");
    let d = lint_revision(&r)
        .into_iter()
        .find(|d| d.code == "unparsable")
        .expect("an unparsable finding");
    assert_eq!(d.path, PathBuf::from("m/r.sql"));
    assert_eq!(d.line, Some(3));
    assert!(d.message.contains("cannot read this statement"), "{d}");
}

#[test]
fn findings_name_file_line_rule_and_what_to_do() {
    let r = parse_file(
        Path::new("m/0011_drop_legacy.sql"),
        b"-- revision: 0011\n-- migrate:up postgres\n\n  ALTER TABLE users DROP COLUMN legacy;\n-- migrate:up\nSELECT 1;\n",
    )
    .expect("parses");
    let d = lint_revision(&r)
        .into_iter()
        .find(|d| d.code == "destructive")
        .expect("a destructive finding");
    expect![[r#"m/0011_drop_legacy.sql:4: warning[destructive]: dropping column legacy of users destroys its data: stop reading it in the application first (a release before); if it is intended, allow it with `-- lint: allow destructive` (the agent backs the table up first) (on postgres)"#]]
    .assert_eq(&d.to_string());
}

#[test]
fn header_allow_silences_named_rules_only() {
    let found = lint_file(
        "-- revision: r\n-- lint: allow destructive, backward_incompatible\n-- migrate:up\nDROP TABLE users;\nALTER TABLE a RENAME TO b;\nCREATE UNIQUE INDEX i ON c (x);\n",
    );
    expect![[r#"
        [
            "6: data_dependent (postgres, mysql, sqlite)",
            "6: locking (postgres)",
        ]
    "#]]
    .assert_debug_eq(&found);
}

#[test]
fn header_with_unknown_rule_is_refused_with_file_and_line() {
    let e = parse_file(
        Path::new("m/r.sql"),
        b"-- revision: r\n-- lint: allow destructiv\n-- migrate:up\nSELECT 1;\n",
    )
    .expect_err("unknown rule");
    assert_eq!(
        e[0].to_string(),
        format!(
            "m/r.sql:2: unknown lint rule \"destructiv\": expected one of {}",
            Rule::names()
        )
    );
    let e = parse_file(
        Path::new("m/r.sql"),
        b"-- revision: r\n-- lint: destructive\n-- migrate:up\nSELECT 1;\n",
    )
    .expect_err("no allow");
    assert_eq!(
        e[0].to_string(),
        "m/r.sql:2: bad lint value \"destructive\": expected `allow <rule>[, <rule>...]`"
    );
    let e = parse_file(
        Path::new("m/r.sql"),
        b"-- revision: r\n-- backup: maybe\n-- migrate:up\nSELECT 1;\n",
    )
    .expect_err("bad backup");
    assert_eq!(
        e[0].to_string(),
        "m/r.sql:2: bad backup value \"maybe\": expected true or false"
    );
}

#[test]
fn lint_toml_allows_rules_for_the_whole_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = vec![(
        PathBuf::from("m/r.sql"),
        b"-- revision: r\n-- migrate:up\nDROP TABLE users;\nALTER TABLE a RENAME TO b;\n".to_vec(),
    )];
    let config =
        LintConfig::parse(Path::new("m/lint.toml"), "allow = [\"destructive\"]\n").expect("config");
    let (graph, diags) = lint_set(files, &config);
    assert!(graph.is_some());
    expect![[r#"
        [
            "4: backward_incompatible (postgres, mysql, sqlite)",
        ]
    "#]]
    .assert_debug_eq(&render(&diags));

    // Graph::load_dir reads lint.toml, and refuses a bad one naming file and line.
    std::fs::write(
        tmp.path().join("0001.sql"),
        "-- revision: 0001\n-- migrate:up\nSELECT 1;\n",
    )
    .expect("write");
    std::fs::write(tmp.path().join("lint.toml"), "allow = [\"locking\"]\n").expect("write");
    let g = Graph::load_dir(tmp.path()).expect("valid set");
    assert!(g.lint_config().allow.contains(&Rule::Locking));
    std::fs::write(tmp.path().join("lint.toml"), "\nallow = [\"lockin\"]\n").expect("write");
    let e = Graph::load_dir(tmp.path()).expect_err("bad lint.toml");
    let text = e.to_string();
    assert!(
        text.contains("lint.toml:2: unknown lint rule \"lockin\""),
        "{text}"
    );
}

#[test]
fn backup_tables_are_the_destructive_ones_or_every_changed_table_with_backup_true() {
    use flotilla_core::Dialect;
    use flotilla_revision::lint::backup_tables;
    let body = "-- migrate:up\nCREATE TABLE tmp (id int);\nALTER TABLE users DROP COLUMN legacy;\nUPDATE accounts SET x = 1;\nDELETE FROM sessions;\nDROP TABLE tmp;\n";
    let plain = parse_file(
        Path::new("m/r.sql"),
        format!("-- revision: r\n{body}").as_bytes(),
    )
    .expect("parses");
    assert_eq!(
        backup_tables(&plain, Dialect::Postgres, &LintConfig::default()),
        ["users"]
    );
    let all = parse_file(
        Path::new("m/r.sql"),
        format!("-- revision: r\n-- backup: true\n{body}").as_bytes(),
    )
    .expect("parses");
    assert!(all.backup);
    assert_eq!(
        backup_tables(&all, Dialect::Sqlite, &LintConfig::default()),
        ["users", "accounts", "sessions"]
    );
}
