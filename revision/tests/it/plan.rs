//! Data-driven planner tests: a compact graph, a table of (applied history, goal) and the plan
//! or blocked reason for each row, checked with expect-test.
//!
//! Graph spec: whitespace-separated `id[<parent,parent][!][~]` (`!` = no down section,
//! `~` = non-transactional). Applied spec: ids in application order; `id*` = recorded with a
//! wrong checksum, `dirty=id` = an unresolved dirty step.

use std::path::PathBuf;

use expect_test::{Expect, expect};
use flotilla_core::{Dialect, Direction, checksum};
use flotilla_revision::{AppliedRevision, Goal, Graph, TargetHistory, plan};

pub(crate) fn graph(spec: &str) -> Graph {
    let files = spec
        .split_whitespace()
        .map(|tok| {
            let irreversible = tok.contains('!');
            let non_tx = tok.contains('~');
            let tok = tok.trim_end_matches(['!', '~']);
            let (id, parents) = tok.split_once('<').unwrap_or((tok, ""));
            let mut text = format!(
                "-- revision: {id}\n-- revises: {parents}\n-- transactional: {}\n-- migrate:up\nSELECT 'up {id}';\n",
                !non_tx
            );
            if !irreversible {
                text.push_str(&format!("-- migrate:down\nSELECT 'down {id}';\n"));
            }
            (PathBuf::from(format!("{id}.sql")), text.into_bytes())
        })
        .collect();
    match Graph::from_sources(files) {
        Ok(g) => g,
        Err(e) => panic!("bad test graph {spec:?}: {e}"),
    }
}

pub(crate) fn history(g: &Graph, spec: &str) -> TargetHistory {
    let mut h = TargetHistory::default();
    for tok in spec.split_whitespace() {
        if let Some(d) = tok.strip_prefix("dirty=") {
            h.dirty = Some(d.to_owned());
            continue;
        }
        let (id, bad) = match tok.strip_suffix('*') {
            Some(id) => (id, true),
            None => (tok, false),
        };
        let sum = match (g.get(id), bad) {
            (Some(r), false) => r.up_checksum(Dialect::Postgres),
            _ => checksum(&format!("something else than {id}")),
        };
        h.applied.push(AppliedRevision {
            revision: id.to_owned(),
            checksum: sum[..].to_owned(),
        });
    }
    h
}

/// One line per case: `applied | goal | plan => heads afterwards` or the blocked reason.
fn table(spec: &str, cases: &[(&str, &str)]) -> String {
    let g = graph(spec);
    let mut out = String::new();
    for (applied, goal) in cases {
        let h = history(&g, applied);
        let result = match goal.parse::<Goal>() {
            Err(e) => format!("invalid goal: {e}"),
            Ok(goal) => match plan(&g, &h, &goal, Dialect::Postgres) {
                Ok(p) => {
                    let steps: Vec<String> = p
                        .steps
                        .iter()
                        .map(|s| {
                            let dir = match s.direction {
                                Direction::Up => "up",
                                Direction::Down => "down",
                            };
                            let tx = if s.transactional { "" } else { "(non-tx)" };
                            format!("{dir} {}{tx}", s.revision)
                        })
                        .collect();
                    let steps = if steps.is_empty() {
                        "nothing to do".to_owned()
                    } else {
                        steps.join(", ")
                    };
                    format!("{steps} => [{}]", p.goal_heads.join(" "))
                }
                Err(b) => format!("blocked[{}]: {b}", b.reason()),
            },
        };
        let applied = if applied.is_empty() { "-" } else { applied };
        out.push_str(&format!("{applied:<16} {goal:<6} {result}\n"));
    }
    out
}

fn check(spec: &str, cases: &[(&str, &str)], expect: Expect) {
    expect.assert_eq(&table(spec, cases));
}

#[test]
fn linear_history() {
    check(
        "a b<a c<b d<c",
        &[
            ("", "head"),
            ("a b", "head"),
            ("a b c d", "head"),
            ("a b c d", "base"),
            ("a b c d", "b"),
            ("a", "c"),
            ("", "+1"),
            ("a", "+2"),
            ("a b c", "-1"),
            ("a b c", "-3"),
            ("a b", "+0"),
        ],
        expect![[r#"
            -                head   up a, up b, up c, up d => [d]
            a b              head   up c, up d => [d]
            a b c d          head   nothing to do => [d]
            a b c d          base   down d, down c, down b, down a => []
            a b c d          b      down d, down c => [b]
            a                c      up b, up c => [c]
            -                +1     up a => [a]
            a                +2     up b, up c => [c]
            a b c            -1     down c => [b]
            a b c            -3     down c, down b, down a => []
            a b              +0     nothing to do => [b]
        "#]],
    );
}

#[test]
fn branches_and_merge() {
    // r ─┬─ a1 ── a2 ─┬─ m ── t
    //    └─ b1 ───────┘
    check(
        "r a1<r a2<a1 b1<r m<a2,b1 t<m",
        &[
            ("", "head"),
            ("r a1", "head"),
            ("r b1", "a2"),
            ("r a1 a2 b1 m t", "a2"),
            ("r a1 a2 b1 m t", "r"),
            ("r a1 a2 b1 m t", "-3"),
            ("r a1 a2 b1 m", "+1"),
            ("r b1", "+3"),
            ("r a1 b1", "base"),
        ],
        expect![[r#"
            -                head   up r, up a1, up a2, up b1, up m, up t => [t]
            r a1             head   up a2, up b1, up m, up t => [t]
            r b1             a2     down b1, up a1, up a2 => [a2]
            r a1 a2 b1 m t   a2     down t, down m, down b1 => [a2]
            r a1 a2 b1 m t   r      down t, down m, down b1, down a2, down a1 => [r]
            r a1 a2 b1 m t   -3     down t, down m, down b1 => [a2]
            r a1 a2 b1 m     +1     up t => [t]
            r b1             +3     up a1, up a2, up m => [m]
            r a1 b1          base   down b1, down a1, down r => []
        "#]],
    );
}

#[test]
fn several_heads_and_roots() {
    check(
        "r a<r b<r x y<x",
        &[
            ("", "head"),
            ("r", "+1"),
            ("", "heads"),
            ("r", "a"),
            ("r a b", "-1"),
            ("r a b", "b"),
            ("x y", "heads"),
        ],
        expect![[r#"
            -                head   blocked[several_heads]: several heads (a, b, y): name a revision as the goal, or merge them
            r                +1     blocked[several_heads]: several heads (a, b, y): name a revision as the goal, or merge them
            -                heads  up r, up a, up b, up x, up y => [a b y]
            r                a      up a => [a]
            r a b            -1     down b => [a]
            r a b            b      down a => [b]
            x y              heads  up r, up a, up b => [a b y]
        "#]],
    );
}

#[test]
fn partial_histories_and_non_transactional_steps() {
    // Two roots merged: applying from a history that has only one side.
    check(
        "x y m<x,y idx<m~ z<idx",
        &[
            ("x", "head"),
            ("y", "m"),
            ("x y m", "+1"),
            ("x y m idx z", "m"),
        ],
        expect![[r#"
            x                head   up y, up m, up idx(non-tx), up z => [z]
            y                m      up x, up m => [m]
            x y m            +1     up idx(non-tx) => [idx]
            x y m idx z      m      down z, down idx(non-tx) => [m]
        "#]],
    );
}

#[test]
fn every_blocked_reason() {
    check(
        "a b<a c<b! d<c",
        &[
            ("a zz", "head"),
            ("a b*", "head"),
            ("a dirty=b", "head"),
            ("b", "head"),
            ("a b c d", "a"),
            ("a b c d", "-2"),
            ("a b c", "nope"),
            ("a b c d", "+1"),
            ("a", "-2"),
            ("a", "not a goal"),
        ],
        expect![[r#"
            a zz             head   blocked[unknown_revision]: target has revision "zz" applied, which the migration set does not contain: restore its file or repair the target
            a b*             head   blocked[checksum_mismatch]: revision "b" was applied with checksum a7f4d8dbfd9612ed1aee1b3f5ad56eca77ead393caf9da6ec4ce1938366fa283 but its file now has 8c4e87532ec261fc05cbb48cf9c3e6b3e6ae1a33438a1349f7a21516603141cb: revert the edit and write a new revision instead
            a dirty=b        head   blocked[dirty]: revision "b" is dirty (a non-transactional step did not finish): inspect the target, then repair it
            b                head   blocked[missing_parent]: target has revision "b" applied but not its parent "a": repair or stamp the target
            a b c d          a      blocked[irreversible]: revision "c" has no down section for postgres: it cannot be downgraded
            a b c d          -2     blocked[irreversible]: revision "c" has no down section for postgres: it cannot be downgraded
            a b c            nope   blocked[unknown_goal]: unknown goal revision "nope"
            a b c d          +1     blocked[relative_out_of_range]: goal +1: only 0 of the 1 steps asked for are possible from the applied revisions
            a                -2     blocked[relative_out_of_range]: goal -2: only 1 of the 2 steps asked for are possible from the applied revisions
            a                not a goal invalid goal: invalid goal "not a goal": expected head, heads, base, +N, -N or a revision id
        "#]],
    );
}

#[test]
fn irreversible_is_fine_when_not_crossed() {
    check(
        "a b<a c<b! d<c",
        &[("a b c d", "c"), ("a b c d", "-1")],
        expect![[r#"
            a b c d          c      down d => [c]
            a b c d          -1     down d => [c]
        "#]],
    );
}

#[test]
fn steps_carry_dialect_sql_and_its_checksum() {
    let g = Graph::from_sources(vec![(
        PathBuf::from("0001.sql"),
        b"-- revision: 0001\n-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:up sqlite\nCREATE TABLE t (id INTEGER);\n-- migrate:down\nDROP TABLE t;\n".to_vec(),
    )])
    .expect("valid");
    for (d, sql) in [
        (Dialect::Postgres, "CREATE TABLE t (id int);"),
        (Dialect::Sqlite, "CREATE TABLE t (id INTEGER);"),
    ] {
        let p = plan(&g, &TargetHistory::default(), &Goal::Head, d).expect("plan");
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].sql, sql);
        assert_eq!(p.steps[0].checksum, checksum(sql));
        assert_eq!(g.expected(d), [("0001".to_owned(), checksum(sql))]);
    }
    let h = history(&g, "0001");
    let p = plan(&g, &h, &Goal::Base, Dialect::Mysql).expect("plan");
    assert_eq!(p.steps[0].sql, "DROP TABLE t;");
    assert_eq!(p.steps[0].checksum, checksum("DROP TABLE t;"));
}
