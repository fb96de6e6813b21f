//! `-- migrate:check` / `-- migrate:verify`: parsing with dialect variants, the checksum
//! (unchanged for revisions without them), the refusal of writing or empty guards (file and
//! line), and how `flotilla render` shows them.

use std::path::{Path, PathBuf};

use flotilla_core::{Dialect, checksum, step_checksum};
use flotilla_revision::{Goal, Graph, RenderRequest, Severity, lint_sources, parse_file, render};

const GUARDED: &str = "-- revision: 0002_unique_email
-- revises: 0001_users
-- migrate:check
SELECT email, count(*) FROM users GROUP BY email HAVING count(*) > 1;
-- migrate:up
CREATE UNIQUE INDEX users_email ON users (email);
-- migrate:verify
SELECT NOT EXISTS (SELECT 1 FROM users WHERE email IS NULL);
-- migrate:verify sqlite
SELECT count(*) = 0 FROM users WHERE email IS NULL;
-- migrate:down
DROP INDEX users_email;
";

const USERS: &str = "-- revision: 0001_users
-- migrate:up
CREATE TABLE users (id INT PRIMARY KEY, email TEXT);
-- migrate:down
DROP TABLE users;
";

fn parse(text: &str) -> Result<flotilla_revision::Revision, Vec<String>> {
    parse_file(Path::new("m/a.sql"), text.as_bytes())
        .map_err(|es| es.iter().map(ToString::to_string).collect())
}

#[test]
fn check_and_verify_sections_with_dialect_variants() {
    let r = parse(GUARDED).unwrap();
    let check = "SELECT email, count(*) FROM users GROUP BY email HAVING count(*) > 1;";
    for d in Dialect::ALL {
        assert_eq!(r.check_sql(d), Some(check), "{d}");
    }
    assert_eq!(
        r.verify_sql(Dialect::Postgres),
        Some("SELECT NOT EXISTS (SELECT 1 FROM users WHERE email IS NULL);")
    );
    assert_eq!(
        r.verify_sql(Dialect::Sqlite),
        Some("SELECT count(*) = 0 FROM users WHERE email IS NULL;")
    );
    // The sections do not leak into the up or down SQL.
    assert_eq!(
        r.up_sql(Dialect::Postgres),
        "CREATE UNIQUE INDEX users_email ON users (email);"
    );
    assert_eq!(r.down_sql(Dialect::Mysql), Some("DROP INDEX users_email;"));
    // The up checksum covers the check and the dialect's verify; the down checksum does not.
    assert_eq!(
        r.up_checksum(Dialect::Sqlite),
        step_checksum(
            r.up_sql(Dialect::Sqlite),
            check,
            "SELECT count(*) = 0 FROM users WHERE email IS NULL;"
        )
    );
    assert_ne!(
        r.up_checksum(Dialect::Sqlite),
        r.up_checksum(Dialect::Postgres)
    );
    assert_ne!(
        r.up_checksum(Dialect::Postgres),
        checksum(r.up_sql(Dialect::Postgres))
    );
    assert_eq!(
        r.down_checksum(Dialect::Postgres),
        Some(checksum("DROP INDEX users_email;"))
    );
}

#[test]
fn a_revision_without_guards_keeps_its_checksum() {
    let r = parse(USERS).unwrap();
    assert_eq!(
        r.up_checksum(Dialect::Postgres),
        checksum("CREATE TABLE users (id INT PRIMARY KEY, email TEXT);")
    );
    assert_eq!(r.check_sql(Dialect::Postgres), None);
    assert_eq!(r.verify_sql(Dialect::Postgres), None);
}

#[test]
fn editing_a_check_changes_the_checksum() {
    let a = parse(GUARDED).unwrap();
    let b = parse(&GUARDED.replace("count(*) > 1", "count(*) > 2")).unwrap();
    assert_ne!(
        a.up_checksum(Dialect::Postgres),
        b.up_checksum(Dialect::Postgres)
    );
    assert_eq!(a.up_sql(Dialect::Postgres), b.up_sql(Dialect::Postgres));
}

#[test]
fn writing_and_empty_guards_are_refused_with_file_and_line() {
    let e = parse(
        "-- revision: a
-- migrate:check
SELECT 1;
DELETE FROM users WHERE email IS NULL;
-- migrate:up
SELECT 1;
-- migrate:verify mysql
-- migrate:verify
WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x;
",
    )
    .unwrap_err();
    assert_eq!(
        e,
        [
            "m/a.sql:4: section `-- migrate:check` must only read (it starts with DELETE): write a query that returns no rows (or one true value) when all is well; change data in the up section",
            "m/a.sql:7: section `-- migrate:verify mysql` is empty: write its queries or remove the marker",
            "m/a.sql:9: section `-- migrate:verify` must only read (it contains UPDATE): write a query that returns no rows (or one true value) when all is well; change data in the up section",
        ]
    );
}

#[test]
fn check_reports_writing_guards_as_errors() {
    let files = vec![(
        PathBuf::from("m/a.sql"),
        b"-- revision: a\n-- migrate:up\nSELECT 1;\n-- migrate:check\nINSERT INTO t VALUES (1);\n"
            .to_vec(),
    )];
    let (graph, diags) = lint_sources(files);
    assert!(graph.is_none());
    let codes: Vec<(&str, Severity, Option<usize>)> =
        diags.iter().map(|d| (d.code, d.severity, d.line)).collect();
    assert_eq!(codes, [("writing_guard", Severity::Error, Some(5))]);
}

#[test]
fn check_warns_about_a_guard_without_a_final_semicolon() {
    let files = vec![(
        PathBuf::from("m/a.sql"),
        b"-- revision: a\n-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n-- migrate:verify\nSELECT true\n"
            .to_vec(),
    )];
    let (graph, diags) = lint_sources(files);
    assert!(graph.is_some());
    let found: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "m/a.sql:7: warning[missing_semicolon]: the last statement of the verify section does not end with `;`: rendered scripts would run it together with the next one"
        ]
    );
}

#[test]
fn render_shows_check_before_and_verify_inside_the_step() {
    let graph = Graph::from_sources(vec![
        (PathBuf::from("m/0001.sql"), USERS.as_bytes().to_vec()),
        (PathBuf::from("m/0002.sql"), GUARDED.as_bytes().to_vec()),
    ])
    .unwrap();
    let script = render(
        &graph,
        &RenderRequest {
            dialect: Dialect::Postgres,
            to: Goal::Head,
            from: Some("0001_users".into()),
            down: false,
        },
    )
    .unwrap();
    let r = graph.get("0002_unique_email").unwrap();
    let step = script
        .split("-- ==== 0002_unique_email (up) ====\n")
        .nth(1)
        .unwrap();
    let expected = format!(
        "-- checksum: {}
-- migrate:check: flotilla runs these under the target's lock first and refuses the step unless each returns no rows or one true value; run them yourself:
-- SELECT email, count(*) FROM users GROUP BY email HAVING count(*) > 1;
BEGIN;
CREATE UNIQUE INDEX users_email ON users (email);
-- migrate:verify: flotilla runs these after the step, before its commit, and rolls the step back unless each returns no rows or one true value:
-- SELECT NOT EXISTS (SELECT 1 FROM users WHERE email IS NULL);
COMMIT;
",
        r.up_checksum(Dialect::Postgres)
    );
    assert!(step.starts_with(&expected), "{step}");
    // A downgrade shows neither.
    let down = render(
        &graph,
        &RenderRequest {
            dialect: Dialect::Postgres,
            to: Goal::Head,
            from: Some("0001_users".into()),
            down: true,
        },
    )
    .unwrap();
    assert!(!down.contains("migrate:check") && !down.contains("migrate:verify"));
}
