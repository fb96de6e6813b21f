//! The offline `flotilla` commands, run as the real binary on temporary migration dirs.

use std::path::Path;
use std::process::Command;

use expect_test::expect;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn flotilla(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("--migrations")
        .arg(dir)
        .args(args)
        .env_remove("FLOTILLA_MIGRATIONS")
        .env_remove("FLOTILLA_OUTPUT")
        .output()
        .expect("run flotilla");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let r = flotilla(dir, args);
    assert_eq!(
        r.code, 0,
        "flotilla {args:?} failed: {}{}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    serde_json::from_str(&ok(dir, &a)).expect("json output")
}

/// Fill a new revision's up and down sections.
fn fill(path: &str, up: &str, down: &str) {
    let text = std::fs::read_to_string(path).expect("read new file");
    let text = text
        .replace("-- migrate:up\n\n\n", &format!("-- migrate:up\n{up}\n\n"))
        .replace("-- migrate:down\n\n", &format!("-- migrate:down\n{down}\n"));
    std::fs::write(path, text).expect("write");
}

#[test]
fn new_merge_heads_graph_and_render() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("migrations");

    let created = json(&dir, &["new", "-m", "Create tenants"]);
    assert_eq!(created["revision"], "0001_create_tenants");
    assert_eq!(created["revises"], serde_json::json!([]));
    let p1 = created["path"].as_str().expect("path").to_owned();
    fill(
        &p1,
        "CREATE TABLE tenants (id integer PRIMARY KEY);",
        "DROP TABLE tenants;",
    );

    let out = ok(&dir, &["new", "-m", "users"]);
    assert!(out.starts_with("created "), "{out}");
    assert!(
        out.ends_with("0002_users.sql (revision 0002_users, revises 0001_create_tenants)\n"),
        "{out}"
    );
    let b = json(
        &dir,
        &[
            "new",
            "-m",
            "audit logs",
            "--revises",
            "0001_create_tenants",
        ],
    );
    assert_eq!(b["revision"], "0003_audit_logs");

    // Two heads now: `new` refuses, `heads` lists both.
    let r = flotilla(&dir, &["new", "-m", "more"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: several heads (0002_users, 0003_audit_logs): pass --revises <revision>, or merge them first with `flotilla merge 0002_users 0003_audit_logs -m \"...\"`\n"
    );
    assert_eq!(
        json(&dir, &["heads"]),
        serde_json::json!({"heads": ["0002_users", "0003_audit_logs"]})
    );

    let m = json(
        &dir,
        &[
            "merge",
            "0002_users",
            "0003_audit_logs",
            "-m",
            "merge users and audit",
        ],
    );
    assert_eq!(m["revision"], "0004_merge_users_and_audit");
    let r = flotilla(
        &dir,
        &["merge", "0001_create_tenants", "0002_users", "-m", "x"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is already an ancestor of"),
        "{}",
        r.stderr
    );
    let r = flotilla(&dir, &["new", "-m", "x", "--revises", "nope"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "error: unknown revision \"nope\" in --revises\n");

    expect![[r#"
        ● 0004_merge_users_and_audit (head, merge)  merge users and audit
        ├─┐
        │ ● 0003_audit_logs  audit logs
        ● │ 0002_users  users
        ├─┘
        ● 0001_create_tenants (root)  Create tenants
    "#]]
    .assert_eq(&ok(&dir, &["graph"]));
    expect![[r#"
        0001_create_tenants         (root)                          Create tenants
        0002_users                  <- 0001_create_tenants          users
        0003_audit_logs             <- 0001_create_tenants          audit logs
        0004_merge_users_and_audit  <- 0002_users, 0003_audit_logs  [head, merge] merge users and audit
    "#]]
    .assert_eq(&ok(&dir, &["revisions"]));
    let dot = ok(&dir, &["graph", "--format", "dot"]);
    assert!(dot.starts_with("digraph flotilla {"), "{dot}");
    assert!(
        dot.contains("\"0004_merge_users_and_audit\" -> \"0003_audit_logs\";"),
        "{dot}"
    );
    let g = json(&dir, &["graph"]);
    assert_eq!(
        g["branch_points"],
        serde_json::json!(["0001_create_tenants"])
    );
    assert_eq!(g["edges"].as_array().map(Vec::len), Some(4));

    let revs = json(&dir, &["revisions"]);
    assert_eq!(revs.as_array().map(Vec::len), Some(4));
    assert_eq!(revs[3]["head"], true);
    assert_eq!(
        revs[0]["children"],
        serde_json::json!(["0002_users", "0003_audit_logs"])
    );

    let script = ok(&dir, &["render", "--to", "head", "--dialect", "sqlite"]);
    assert!(
        script.contains("-- ==== 0001_create_tenants (up) ====\n"),
        "{script}"
    );
    assert!(
        script.contains("BEGIN;\nCREATE TABLE tenants (id integer PRIMARY KEY);\nCOMMIT;\n"),
        "{script}"
    );
    let down = ok(
        &dir,
        &["render", "--to", "head", "--down", "--dialect", "sqlite"],
    );
    assert!(
        down.contains("BEGIN;\nDROP TABLE tenants;\nCOMMIT;\n"),
        "{down}"
    );
    let plan = json(
        &dir,
        &[
            "render",
            "--to",
            "0002_users",
            "--from",
            "0001_create_tenants",
            "--dialect",
            "postgres",
        ],
    );
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(1));
    assert_eq!(plan["steps"][0]["revision"], "0002_users");
    assert_eq!(plan["steps"][0]["direction"], "up");
    assert_eq!(plan["goal_heads"], serde_json::json!(["0002_users"]));
    let r = flotilla(&dir, &["render", "--to", "head", "--dialect", "oracle"]);
    assert_eq!(r.code, 2, "usage error: {}", r.stderr);
}

#[test]
fn check_reports_errors_and_warnings_with_exit_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(
        dir.join("0001.sql"),
        "-- revision: 0001\n-- migrate:up\nCREATE TABLE t (id int, old text);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n-- migrate:down\nDROP TABLE t;\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("0002.sql"),
        "-- revision: 0002\n-- revises: 0001\n-- migrate:up\nALTER TABLE t\n  DROP COLUMN old;\nVACUUM\n",
    )
    .expect("write");
    let r = flotilla(dir, &["check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let text = r.stdout.replace(&dir.display().to_string(), "DIR");
    let text = text.split(", digest").next().unwrap_or_default();
    expect![[r#"
        DIR/0001.sql:4: warning[non_transactional_in_transaction]: `CREATE INDEX CONCURRENTLY` cannot run inside a transaction: set `-- transactional: false` in the header (one such statement per revision)
        DIR/0002.sql:1: warning[irreversible]: revision "0002" has no down section: a downgrade across it is refused
        DIR/0002.sql:4: warning[destructive]: dropping column old of t destroys its data: stop reading it in the application first (a release before); if it is intended, allow it with `-- lint: allow destructive` (the agent backs the table up first)
        DIR/0002.sql:6: warning[non_transactional_in_transaction]: `VACUUM` cannot run inside a transaction: set `-- transactional: false` in the header (one such statement per revision)
        DIR/0002.sql:6: warning[missing_semicolon]: the last statement of the up section does not end with `;`: rendered scripts would run it together with the next one
        2 revisions, heads: 0002"#]]
    .assert_eq(text);
    assert_eq!(flotilla(dir, &["check", "--strict"]).code, 3);

    std::fs::write(
        dir.join("0003.sql"),
        "-- revision: 0003\n-- revises: 0009\n-- migrate:up\n",
    )
    .expect("write");
    let r = flotilla(dir, &["check", "--output", "json"]);
    assert_eq!(r.code, 3);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 1);
    assert_eq!(v["warnings"], 6);
    assert_eq!(v["digest"], serde_json::Value::Null);
    let err = v["diagnostics"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["severity"] == "error"))
        .expect("an error diagnostic");
    assert_eq!(err["code"], "unknown_parent");
    assert_eq!(err["line"], 2);

    // Other commands refuse the invalid set with exit code 1 and every problem.
    let r = flotilla(dir, &["heads"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: invalid migration set (1 problem), nothing will be applied\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("0003.sql:2: revision \"0003\" revises unknown revision \"0009\""),
        "{}",
        r.stderr
    );
}

#[test]
fn check_validates_timeout_headers_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(
        dir.join("0001.sql"),
        "-- revision: 0001\n-- lock-timeout: 500ms\n-- statement-timeout: 10m\n-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;\n",
    )
    .expect("write");
    assert_eq!(flotilla(dir, &["check"]).code, 0);
    std::fs::write(
        dir.join("0002.sql"),
        "-- revision: 0002\n-- revises: 0001\n-- lock-timeout: 2 seconds\n-- migrate:up\nALTER TABLE t ADD COLUMN c int;\n-- migrate:down\nALTER TABLE t DROP COLUMN c;\n",
    )
    .expect("write");
    let r = flotilla(dir, &["check"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(
        text.contains("0002.sql:3: error[bad_timeout]: bad lock-timeout value \"2 seconds\""),
        "{text}"
    );
}

#[test]
fn missing_directory_is_an_error_with_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = flotilla(&tmp.path().join("absent"), &["revisions"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no such directory: create it or pass --migrations DIR"),
        "{}",
        r.stderr
    );
}
