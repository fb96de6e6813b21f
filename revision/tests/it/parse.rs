//! Parser and set validation: one test per error kind, each checking that the message names
//! the file and the line; the set is refused as a whole with every problem listed.

use std::path::{Path, PathBuf};

use flotilla_core::Dialect;
use flotilla_revision::{Graph, ParseErrorKind, Severity, lint_sources};

fn errors(files: &[(&str, &[u8])]) -> Vec<String> {
    let files = files
        .iter()
        .map(|(p, b)| (PathBuf::from(p), b.to_vec()))
        .collect();
    match Graph::from_sources(files) {
        Ok(_) => panic!("the set should be refused"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one(path: &str, text: &str) -> Vec<String> {
    errors(&[(path, text.as_bytes())])
}

const ROOT: (&str, &[u8]) = (
    "m/0001_root.sql",
    b"-- revision: 0001_root\n-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n",
);

#[test]
fn not_utf8_names_file_and_line_of_first_bad_byte() {
    let e = errors(&[(
        "m/0002_latin1.sql",
        b"-- revision: 0002\n-- migrate:up\nINSERT INTO t VALUES ('caf\xe9');\n",
    )]);
    assert_eq!(
        e,
        [
            "m/0002_latin1.sql:3: file is not valid UTF-8 (first bad byte in column 27): save it as UTF-8"
        ]
    );
}

#[test]
fn unknown_key() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\n-- revison: typo\n-- migrate:up\nSELECT 1;\n"
        ),
        [
            "m/a.sql:2: unknown header key \"revison\": expected revision, revises, description, transactional, lint, backup, lock-timeout or statement-timeout"
        ]
    );
}

#[test]
fn duplicate_key() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\n-- description: one\n-- description: two\n-- migrate:up\n"
        ),
        ["m/a.sql:3: header key \"description\" given twice"]
    );
}

#[test]
fn missing_revision() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- description: no id\n-- migrate:up\nSELECT 1;\n"
        ),
        ["m/a.sql:1: missing `-- revision: <id>` header"]
    );
}

#[test]
fn bad_revision_id_in_revision_and_revises() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: has space\n-- revises: ok, head\n-- migrate:up\n"
        ),
        [
            "m/a.sql:1: bad revision id \"has space\": expected 1 to 128 characters from A-Z a-z 0-9 _ . -",
            "m/a.sql:2: bad revision id \"head\": head, heads and base are reserved words",
        ]
    );
}

#[test]
fn bad_transactional() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\n-- transactional: maybe\n-- migrate:up\n"
        ),
        ["m/a.sql:2: bad transactional value \"maybe\": expected true or false"]
    );
}

#[test]
fn statement_outside_a_section() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\nCREATE TABLE t (id int);\n-- migrate:up\n"
        ),
        [
            "m/a.sql:2: statement outside a section: put SQL after `-- migrate:up` or `-- migrate:down`"
        ]
    );
}

#[test]
fn unknown_marker_or_dialect() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\n-- migrate:up\nSELECT 1;\n-- migrate:up oracle\nSELECT 2;\n-- migrate:sideways\n"
        ),
        [
            "m/a.sql:4: unknown marker \"-- migrate:up oracle\": expected `-- migrate:up`, `-- migrate:down`, `-- migrate:check` or `-- migrate:verify`, optionally followed by postgres, mysql or sqlite",
            "m/a.sql:6: unknown marker \"-- migrate:sideways\": expected `-- migrate:up`, `-- migrate:down`, `-- migrate:check` or `-- migrate:verify`, optionally followed by postgres, mysql or sqlite",
        ]
    );
}

#[test]
fn duplicate_section() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\n-- migrate:up\nSELECT 1;\n-- migrate:up mysql\nSELECT 2;\n-- migrate:up mariadb\nSELECT 3;\n-- migrate:up\n"
        ),
        [
            "m/a.sql:6: section `-- migrate:up mysql` given twice",
            "m/a.sql:8: section `-- migrate:up` given twice",
        ]
    );
}

#[test]
fn missing_up() {
    assert_eq!(
        one("m/a.sql", "-- revision: a\n\n-- migrate:down\nSELECT 1;\n"),
        ["m/a.sql:3: missing `-- migrate:up` section"]
    );
    assert_eq!(
        one("m/b.sql", "-- revision: b\n"),
        ["m/b.sql:1: missing `-- migrate:up` section"]
    );
}

#[test]
fn missing_up_for_a_dialect() {
    assert_eq!(
        one(
            "m/a.sql",
            "-- revision: a\n-- migrate:up postgres\nSELECT 1;\n-- migrate:up sqlite\nSELECT 1;\n"
        ),
        [
            "m/a.sql:2: no up section for mysql: add a plain `-- migrate:up` or `-- migrate:up mysql`"
        ]
    );
}

#[test]
fn duplicate_revision_names_both_files() {
    assert_eq!(
        errors(&[
            ROOT,
            (
                "m/0001_again.sql",
                b"-- description: copy\n-- revision: 0001_root\n-- migrate:up\n"
            ),
        ]),
        ["m/0001_again.sql:2: revision \"0001_root\" is already defined in m/0001_root.sql:1"]
    );
}

#[test]
fn unknown_parent() {
    assert_eq!(
        errors(&[
            ROOT,
            (
                "m/0002.sql",
                b"-- revision: 0002\n-- revises: 0001_root, 0001_rot\n-- migrate:up\n"
            ),
        ]),
        ["m/0002.sql:2: revision \"0002\" revises unknown revision \"0001_rot\""]
    );
}

#[test]
fn cycle_names_its_revisions() {
    assert_eq!(
        errors(&[
            ROOT,
            (
                "m/b.sql",
                b"-- revision: b\n-- revises: 0001_root, d\n-- migrate:up\n"
            ),
            ("m/c.sql", b"-- revision: c\n-- revises: b\n-- migrate:up\n"),
            ("m/d.sql", b"-- revision: d\n-- revises: c\n-- migrate:up\n"),
            ("m/e.sql", b"-- revision: e\n-- revises: e\n-- migrate:up\n"),
        ]),
        [
            "m/b.sql:2: revisions form a cycle: b -> d -> c -> b",
            "m/e.sql:2: revisions form a cycle: e -> e",
        ]
    );
}

#[test]
fn every_problem_of_the_set_is_reported() {
    let e = errors(&[
        ROOT,
        (
            "m/x.sql",
            b"-- revision: x\n-- colour: blue\n-- migrate:up\n",
        ),
        (
            "m/y.sql",
            b"-- revision: y\n-- revises: nothing\n-- migrate:up\n",
        ),
        ("m/z.sql", b"-- revises: y\n-- migrate:down\n"),
    ]);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with("m/x.sql:2: unknown header key"));
    assert!(e[1].starts_with("m/y.sql:2: revision \"y\" revises unknown"));
    assert!(e[2].starts_with("m/z.sql:1: missing `-- revision"));
    assert!(e[3].starts_with("m/z.sql:2: missing `-- migrate:up`"));
}

#[test]
fn load_dir_reads_nested_sql_files_and_skips_hidden_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &[u8]| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("0001.sql", b"-- revision: 0001\n-- migrate:up\nSELECT 1;\n");
    write(
        "2024/0002.sql",
        b"-- revision: 0002\n-- revises: 0001\n-- migrate:up\n",
    );
    write(".trash/0003.sql", b"not a migration");
    write("README.md", b"not sql");
    let g = Graph::load_dir(dir.path()).expect("valid set");
    assert_eq!(g.heads(), ["0002"]);
    assert_eq!(
        g.get("0002").map(|r| r.path.clone()),
        Some(dir.path().join("2024/0002.sql"))
    );

    let missing = dir.path().join("nope");
    let e = Graph::load_dir(&missing).expect_err("missing dir");
    assert!(matches!(e.0[0].kind, ParseErrorKind::Io { .. }));
    assert!(
        e.to_string()
            .contains("nope: cannot read: no such directory"),
        "{e}"
    );
}

/// The example set at the repository root: valid, one head, one branch and merge, one
/// non-transactional revision, and a single (intended) irreversible revision.
#[test]
fn example_migrations_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let g = Graph::load_dir(&dir).expect("example set is valid");
    assert!((8..=12).contains(&g.len()));
    assert_eq!(g.heads().len(), 1);
    assert_eq!(g.branch_points().len(), 1);
    assert_eq!(g.merge_points().len(), 1);
    assert_eq!(g.revisions().filter(|r| !r.transactional).count(), 1);
    let irreversible: Vec<_> = g.revisions().filter(|r| !r.is_reversible()).collect();
    assert_eq!(irreversible.len(), 1);
    assert!(irreversible[0].description.contains("IRREVERSIBLE"));
    for d in Dialect::ALL {
        for r in g.revisions() {
            assert_eq!(r.up_checksum(d), flotilla_core::checksum(r.up_sql(d)));
        }
    }
    let files = flotilla_revision::load_dir(&dir).expect("read");
    let (_, diags) = lint_sources(files);
    let codes: Vec<_> = diags.iter().map(|d| (d.severity, d.code)).collect();
    assert_eq!(codes, [(Severity::Warning, "irreversible")], "{diags:#?}");
}
