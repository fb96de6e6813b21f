//! Big revisions (issue 30): diagnostics deep inside a multi-megabyte seed keep their file
//! lines, findings of thousands of statements are merged per dialect, and a section larger
//! than a step may carry is refused with its file and line. Correctness only; the timings are
//! `revision/benches/big_revision.rs`.

use std::fmt::Write as _;
use std::path::Path;

use flotilla_core::Dialect;
use flotilla_core::limits::MAX_STEP_SQL_BYTES;
use flotilla_revision::{
    Goal, Graph, RenderRequest, lint_revision, lint_sources, parse_file, render,
};

/// 10,000 seed statements of one to three lines (strings with line breaks and `;`, comments
/// with `;`), then the statements under test; returns the text and the line of each statement
/// under test.
fn seed_then(tail: &[&str]) -> (String, Vec<usize>) {
    let mut s = String::from(
        "-- revision: seed\n-- revises:\n-- migrate:up\nCREATE TABLE seed (id int, note text);\n",
    );
    for i in 0..10_000 {
        match i % 3 {
            0 => writeln!(s, "INSERT INTO seed VALUES ({i}, 'one line; {i}');"),
            1 => writeln!(
                s,
                "-- row {i}; a comment\nINSERT INTO seed VALUES ({i}, 'two\nlines');"
            ),
            _ => writeln!(
                s,
                "/* row {i};\n */ INSERT INTO seed\n  VALUES ({i}, 'a;b');"
            ),
        }
        .expect("write to a string");
    }
    let mut lines = Vec::new();
    for t in tail {
        lines.push(s.matches('\n').count() + 1);
        s.push_str(t);
        s.push('\n');
    }
    s.push_str("-- migrate:down\nDROP TABLE seed;\n");
    (s, lines)
}

/// `line: code (dialects)` of every diagnostic but the file checks.
fn diagnostics(text: &str) -> Vec<String> {
    let r = parse_file(Path::new("big.sql"), text.as_bytes()).expect("the file parses");
    lint_revision(&r)
        .iter()
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

#[test]
fn diagnostics_after_ten_thousand_statements_name_their_lines() {
    let (text, lines) = seed_then(&[
        "DROP TABLE users;",
        "-- why\nALTER TABLE accounts\n  DROP COLUMN legacy;",
        "FROBNICATE everything;",
        "SELECT 'unterminated last statement'",
    ]);
    assert!(lines[0] > 20_000, "the seed spans {} lines", lines[0]);
    let all = "(postgres, mysql, sqlite)";
    assert_eq!(
        diagnostics(&text),
        [
            format!("{}: destructive {all}", lines[0]),
            // A statement's line is its first word's, after its leading comment.
            format!("{}: destructive {all}", lines[1] + 1),
            format!("{}: unparsable {all}", lines[2]),
            format!("{}: missing_semicolon ()", lines[3]),
        ]
    );
}

#[test]
fn a_dialect_section_deep_in_the_file_counts_from_its_marker() {
    let (text, lines) = seed_then(&["-- migrate:up sqlite", "", "VACUUM;"]);
    // The plain section ends at the sqlite marker; the sqlite section holds only VACUUM,
    // whose line is counted from its own marker (a blank line after it).
    assert_eq!(
        diagnostics(&text),
        [format!(
            "{}: non_transactional_in_transaction (sqlite)",
            lines[2]
        )]
    );
}

#[test]
fn thousands_of_findings_are_merged_over_dialects_in_file_order() {
    let mut s = String::from("-- revision: drops\n-- migrate:up\n");
    for i in 0..3_000 {
        writeln!(s, "DROP TABLE t{i};").expect("write to a string");
    }
    s.push_str("-- migrate:down\nSELECT 1;\n");
    let diags = diagnostics(&s);
    assert_eq!(diags.len(), 3_000);
    for (i, d) in diags.iter().enumerate() {
        assert_eq!(
            *d,
            format!("{}: destructive (postgres, mysql, sqlite)", i + 3)
        );
    }
}

#[test]
fn a_big_seed_checks_and_renders_whole() {
    let (text, lines) = seed_then(&["SELECT 1;"]);
    let (graph, diags) = lint_sources(vec![(
        Path::new("big.sql").into(),
        text.clone().into_bytes(),
    )]);
    assert!(diags.is_empty(), "{diags:?}");
    let graph: Graph = graph.expect("a valid set");
    let up = graph
        .get("seed")
        .expect("the revision")
        .up_sql(Dialect::Postgres);
    assert_eq!(up.matches('\n').count() + 4, lines[0]);
    let script = render(
        &graph,
        &RenderRequest {
            dialect: Dialect::Postgres,
            to: Goal::Head,
            from: None,
            down: false,
        },
    )
    .expect("render");
    assert!(script.contains(&format!("BEGIN;\n{up}\nCOMMIT;\n")));
}

#[test]
fn a_section_over_the_step_limit_is_refused_with_its_file_and_line() {
    // 65 lines of 1 MiB comments: over the 64 MiB a step may carry.
    let line = format!("-- {}\n", "x".repeat((1 << 20) - 4));
    let mut s = String::from("-- revision: huge\n-- migrate:down\nSELECT 1;\n-- migrate:up\n");
    for _ in 0..65 {
        s.push_str(&line);
    }
    let bytes = 65 * line.len() - 1; // the final line break is trimmed
    assert!(bytes > MAX_STEP_SQL_BYTES);
    let errors = parse_file(Path::new("m/huge.sql"), s.as_bytes()).expect_err("refused");
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [format!(
            "m/huge.sql:4: section `-- migrate:up` holds 65.0 MiB ({bytes} bytes) of SQL; a step carries \
             at most 64.0 MiB (67108864 bytes): split it into several revisions"
        )]
    );
}
