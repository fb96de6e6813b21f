//! The figures as tables (Markdown, ready for the README's Performance section) and the
//! targets of issues 8 and 30 checked against them.

use serde_json::{Value, json};

use crate::pg::PgResult;
use crate::sqlite::SqliteResult;

fn s(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn x(a: std::time::Duration, b: std::time::Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The PostgreSQL table: one column per N.
pub(crate) fn pg_table(results: &[PgResult], parallel: usize) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, f: &dyn Fn(&PgResult) -> String| {
        rows.push((label, results.iter().map(f).collect()));
    };
    row(
        format!("raw psql, 1 txn per DB, {parallel} sessions"),
        &|r| s(r.raw),
    );
    row(
        format!("sqlx-cli loop, {parallel} parallel"),
        &|r| s(r.sqlx),
    );
    let mps: Vec<u32> = results
        .first()
        .map(|r| r.flotilla.iter().map(|f| f.max_parallel).collect())
        .unwrap_or_default();
    for mp in &mps {
        let mp = *mp;
        row(
            format!("flotilla rollout --canary 0 --max-parallel {mp}"),
            &move |r| {
                r.run_at(mp).map_or("-".into(), |f| {
                    format!(
                        "{} ({} raw, {} sqlx-cli)",
                        s(f.wall),
                        x(f.wall, r.raw),
                        x(f.wall, r.sqlx)
                    )
                })
            },
        );
    }
    if mps.contains(&4) && mps.contains(&16) {
        row(
            "--max-parallel 16 / 4".into(),
            &|r| match (r.run_at(16), r.run_at(4)) {
                (Some(a), Some(b)) => x(a.wall, b.wall),
                _ => "-".into(),
            },
        );
    }
    for mp in &mps {
        let mp = *mp;
        row(
            format!("coordinator / agent CPU per target-step (mp {mp})"),
            &move |r| {
                r.run_at(mp).map_or("-".into(), |f| {
                    format!(
                        "{:.0} / {:.0} µs",
                        f.coordinator_us_per_step(),
                        f.agent_us_per_step()
                    )
                })
            },
        );
    }
    row("no-op: sqlx-cli loop".into(), &|r| s(r.sqlx_noop));
    row("no-op: flotilla rollout".into(), &|r| {
        format!(
            "{} ({} sqlx-cli)",
            s(r.flotilla_noop.wall),
            x(r.flotilla_noop.wall, r.sqlx_noop)
        )
    });
    row("no-op: flotilla validate".into(), &|r| {
        s(r.flotilla_validate)
    });
    let revisions = results.first().map_or(0, |r| r.revisions);
    let rounds = results.first().map_or(0, |r| r.rounds);
    let mut header =
        format!("| PostgreSQL, {revisions} revisions, fsync on, median of {rounds} round(s) |");
    let mut rule = String::from("|---|");
    for r in results {
        header.push_str(&format!(" N = {} |", r.tenants));
        rule.push_str("---|");
    }
    let mut out = format!("{header}\n{rule}\n");
    for (label, cells) in rows {
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    out
}

/// The SQLite table.
pub(crate) fn sqlite_table(r: &SqliteResult) -> String {
    let n = r.tenants;
    let mut rows = vec![
        (
            format!(
                "plain sqlite3 loop ({} at a time), {n} files",
                r.loop_parallel
            ),
            s(r.sqlite3_loop),
        ),
        (
            format!(
                "flotilla rollout --canary 0 --max-parallel {}",
                r.rollout.max_parallel
            ),
            format!(
                "{} ({} the loop)",
                s(r.rollout.wall),
                x(r.rollout.wall, r.sqlite3_loop)
            ),
        ),
        (
            "coordinator / agent CPU per target-step".into(),
            format!(
                "{:.0} / {:.0} µs",
                r.rollout.coordinator_us_per_step(),
                r.rollout.agent_us_per_step()
            ),
        ),
        (
            format!("no-op: flotilla rollout, {n} targets"),
            s(r.noop.wall),
        ),
        (
            format!("no-op: flotilla validate, {n} targets"),
            s(r.validate),
        ),
    ];
    if let Some(big) = &r.noop_big {
        rows.push((
            format!("no-op: flotilla rollout, {} targets", big.targets),
            format!(
                "{} (coordinator {:.0} µs/target)",
                s(big.wall),
                big.coordinator_us_per_step()
            ),
        ));
    }
    rows.push(("agent idle RSS, 1 target".into(), mib(r.agent_rss_one_kib)));
    rows.push((
        format!("agent idle RSS, {n} targets"),
        mib(r.agent_rss_tenants_kib),
    ));
    if let (Some(kib), Some(big)) = (r.agent_rss_big_kib, &r.noop_big) {
        rows.push((format!("agent idle RSS, {} targets", big.targets), mib(kib)));
    }
    rows.push((
        "peak RSS during the rollout: agent / coordinator".into(),
        format!(
            "{} / {}",
            mib(r.agent_peak_rss_rollout_kib),
            mib(r.coordinator_peak_rss_kib)
        ),
    ));
    let mut out = format!("| SQLite, {} revisions | |\n|---|---|\n", r.revisions);
    for (label, value) in rows {
        out.push_str(&format!("| {label} | {value} |\n"));
    }
    out
}

/// One target of issue 8 ("What it must show").
struct Criterion {
    what: String,
    value: f64,
    limit: f64,
    unit: &'static str,
}

impl Criterion {
    fn pass(&self) -> bool {
        self.value <= self.limit
    }
}

fn criteria(pg: &[PgResult], sqlite: Option<&SqliteResult>) -> Vec<Criterion> {
    let mut c = Vec::new();
    let secs = |d: std::time::Duration| d.as_secs_f64();
    // The largest N is the one the issue measures (200 by default).
    if let Some(r) = pg.iter().max_by_key(|r| r.tenants) {
        let n = r.tenants;
        let best = r.best_flotilla();
        c.push(Criterion {
            what: format!(
                "PostgreSQL {n}: flotilla (mp {}) / raw lower bound",
                best.max_parallel
            ),
            value: secs(best.wall) / secs(r.raw),
            limit: 1.15,
            unit: "x",
        });
        c.push(Criterion {
            what: format!(
                "PostgreSQL {n}: flotilla (mp {}) / sqlx-cli loop",
                best.max_parallel
            ),
            value: secs(best.wall) / secs(r.sqlx),
            limit: 1.0,
            unit: "x",
        });
        if let (Some(a), Some(b)) = (r.run_at(16), r.run_at(4)) {
            c.push(Criterion {
                what: format!("PostgreSQL {n}: --max-parallel 16 / 4 (or explain with a profile)"),
                value: secs(a.wall) / secs(b.wall),
                limit: 1.0,
                unit: "x",
            });
        }
        c.push(Criterion {
            what: format!("PostgreSQL {n}: no-op flotilla rollout / no-op sqlx-cli loop"),
            value: secs(r.flotilla_noop.wall) / secs(r.sqlx_noop),
            limit: 0.5,
            unit: "x",
        });
    }
    if let Some(r) = sqlite {
        if let Some(big) = &r.noop_big {
            c.push(Criterion {
                what: format!("SQLite: no-op rollout of {} targets at head", big.targets),
                value: secs(big.wall),
                limit: 2.0,
                unit: "s",
            });
        }
        c.push(Criterion {
            what: format!(
                "SQLite {} x {}: flotilla / plain sqlite3 loop",
                r.tenants, r.revisions
            ),
            value: r.ratio_to_loop(),
            limit: 1.3,
            unit: "x",
        });
        c.push(Criterion {
            what: "SQLite: coordinator CPU per target-step".into(),
            value: r.rollout.coordinator_us_per_step(),
            limit: 100.0,
            unit: "µs",
        });
        c.push(Criterion {
            what: format!("agent idle RSS serving {} SQLite targets", r.tenants),
            value: r.agent_rss_tenants_kib as f64 / 1024.0,
            limit: 16.0,
            unit: "MiB",
        });
    }
    c
}

/// The criteria as a table and as JSON; `more` are other sections' (what, value, limit, unit).
pub(crate) fn targets(
    pg: &[PgResult],
    sqlite: Option<&SqliteResult>,
    more: Vec<(String, f64, f64, &'static str)>,
) -> (String, Value) {
    let mut c = criteria(pg, sqlite);
    c.extend(
        more.into_iter()
            .map(|(what, value, limit, unit)| Criterion {
                what,
                value,
                limit,
                unit,
            }),
    );
    let mut table =
        String::from("| target (issues 8, 30) | measured | limit | |\n|---|---|---|---|\n");
    for k in &c {
        table.push_str(&format!(
            "| {} | {:.2} {} | ≤ {} {} | {} |\n",
            k.what,
            k.value,
            k.unit,
            k.limit,
            k.unit,
            if k.pass() { "pass" } else { "FAIL" }
        ));
    }
    let json = c
        .iter()
        .map(|k| json!({ "what": k.what, "value": k.value, "limit": k.limit, "unit": k.unit, "pass": k.pass() }))
        .collect();
    (table, Value::Array(json))
}
