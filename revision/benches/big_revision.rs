//! Big revisions (issue 30): `flotilla check`'s phases on one generated data seed of 0.5, 1, 5
//! and 20 MB, to show they grow linearly with the file (seconds per MB roughly constant).
//!
//! Two kinds of file: `inserts` (one `INSERT` per line, strings with quotes and `;`) and
//! `plpgsql` (one function whose dollar-quoted body is the whole file). For each, the median
//! of `--runs` timings of: parse + graph (`Graph::from_sources`), lint (`lint_revision`: every
//! statement split and parsed per dialect), checksum (SHA-256 of the up section), render
//! (`render` from base to head), and the whole `check` (`lint_sources`). Prints a table and
//! saves it to `<target>/bench/big_revision.json`.
//!
//! `cargo bench --profile bench-fast -p flotilla-revision --bench big_revision -- [--sizes
//! 0.5,1,5,20] [--runs 3] [--out FILE]` (variables `FLOTILLA_BENCH_BIG_SIZES`,
//! `FLOTILLA_BENCH_BIG_RUNS`, `FLOTILLA_BENCH_OUT`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_core::{Dialect, checksum};
use flotilla_revision::{Goal, Graph, RenderRequest, lint_revision, lint_sources, render};

const MB: usize = 1_000_000;

/// The target dir this bench was built in (`<target>/tmp` is cargo's CARGO_TARGET_TMPDIR).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

struct Options {
    sizes: Vec<f64>,
    runs: usize,
    out: PathBuf,
}

fn options() -> Result<Options, String> {
    let mut sizes =
        std::env::var("FLOTILLA_BENCH_BIG_SIZES").unwrap_or_else(|_| "0.5,1,5,20".into());
    let mut runs = std::env::var("FLOTILLA_BENCH_BIG_RUNS").unwrap_or_else(|_| "3".into());
    let mut out = std::env::var("FLOTILLA_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir().join("bench").join("big_revision.json"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => sizes = value()?,
            "--runs" => runs = value()?,
            "--out" => out = PathBuf::from(value()?),
            "--bench" => {}
            _ => {
                return Err(format!(
                    "unknown argument {a:?}: expected --sizes, --runs or --out"
                ));
            }
        }
    }
    let sizes = sizes
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("bad size {s:?} in --sizes: expected MB like 0.5,1,5"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let runs = runs
        .parse::<usize>()
        .ok()
        .filter(|r| *r > 0)
        .ok_or(format!("bad --runs {runs:?}: expected a count >= 1"))?;
    Ok(Options { sizes, runs, out })
}

/// A revision of about `bytes` bytes of `INSERT`s into a table it creates.
fn inserts(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 4096);
    s.push_str("-- revision: seed\n-- description: generated data seed\n-- migrate:up\n");
    s.push_str("CREATE TABLE seed (id bigint PRIMARY KEY, name text NOT NULL, note text, amount numeric);\n");
    let mut i = 0u64;
    while s.len() < bytes {
        let _ = writeln!(
            s,
            "INSERT INTO seed (id, name, note, amount) VALUES ({i}, 'tenant {i}', 'it''s a note; with a semicolon #{}', {}.{:02});",
            i % 997,
            i * 7 % 100_000,
            i % 100
        );
        i += 1;
    }
    s.push_str("-- migrate:down\nDROP TABLE seed;\n");
    s
}

/// A revision of about `bytes` bytes that is one PL/pgSQL function (its PostgreSQL section;
/// the other dialects get a plain one): a dollar-quoted body with nested dollar quotes, `;`
/// on every line and `BEGIN ... END` blocks.
fn plpgsql(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 4096);
    s.push_str("-- revision: seed\n-- migrate:up\nCREATE TABLE seed (id bigint, name text);\n");
    s.push_str("-- migrate:up postgres\nCREATE TABLE seed (id bigint, name text);\n");
    s.push_str("CREATE FUNCTION load_seed() RETURNS void LANGUAGE plpgsql AS $body$\nDECLARE\n  n bigint := 0;\nBEGIN\n");
    let mut i = 0u64;
    while s.len() < bytes {
        let _ = writeln!(
            s,
            "  INSERT INTO seed VALUES ({i}, $q$it's ; {i}$q$);\n  IF n % 2 = 0 THEN n := n + {i}; ELSE n := n - 1; END IF;"
        );
        i += 1;
    }
    s.push_str("END\n$body$;\nSELECT load_seed();\n-- migrate:down\nDROP TABLE seed;\n");
    s
}

/// The median of `runs` timings of `f` (which returns something to keep it from being
/// optimized away) and the last result.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let v = f();
        times.push(start.elapsed());
        last = Some(std::hint::black_box(v));
    }
    times.sort();
    (times[times.len() / 2], last.expect("runs >= 1"))
}

struct Row {
    kind: &'static str,
    bytes: usize,
    statements: usize,
    phases: [(&'static str, Duration); 5],
}

fn measure(kind: &'static str, text: String, runs: usize) -> Result<Row, String> {
    let path = PathBuf::from(format!("{kind}.sql"));
    let bytes = text.len();
    let files = vec![(path.clone(), text.into_bytes())];
    let (parse, graph) = time(runs, || Graph::from_sources(files.clone()));
    let graph = graph.map_err(|e| format!("{kind}: the generated file does not parse: {e}"))?;
    let rev = graph
        .get("seed")
        .ok_or("the generated revision is missing")?;
    let (lint, diags) = time(runs, || lint_revision(rev));
    // The generated SQL is clean: only the missing down of nothing, nothing else.
    if let Some(d) = diags.iter().find(|d| d.code != "irreversible") {
        return Err(format!("{kind}: unexpected diagnostic {d}"));
    }
    let up = rev.up_sql(Dialect::Postgres);
    let statements = flotilla_core::split::split_statements(up, Dialect::Postgres).len();
    let (sum, digest) = time(runs, || checksum(up));
    if digest != rev.up_checksum(Dialect::Postgres) {
        return Err(format!("{kind}: the checksum differs from the parser's"));
    }
    let req = RenderRequest {
        dialect: Dialect::Postgres,
        to: Goal::Head,
        from: None,
        down: false,
    };
    let (rendered, script) = time(runs, || render(&graph, &req));
    let script = script.map_err(|e| format!("{kind}: render failed: {e}"))?;
    if !script.contains(up) {
        return Err(format!("{kind}: the rendered script lacks the up section"));
    }
    let (check, (checked, diags)) = time(runs, || lint_sources(files.clone()));
    if checked.is_none() || diags.iter().any(|d| d.code != "irreversible") {
        return Err(format!(
            "{kind}: check found problems in the generated file"
        ));
    }
    Ok(Row {
        kind,
        bytes,
        statements,
        phases: [
            ("parse_graph", parse),
            ("lint", lint),
            ("checksum", sum),
            ("render", rendered),
            ("check", check),
        ],
    })
}

fn profile() -> String {
    // <target>/<profile>/deps/big_revision-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|p| {
            Some(
                p.parent()?
                    .parent()?
                    .file_name()?
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("big_revision: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let opts = options()?;
    let mut rows = Vec::new();
    for kind in ["inserts", "plpgsql"] {
        for &mb in &opts.sizes {
            let bytes = (mb * MB as f64) as usize;
            let text = if kind == "inserts" {
                inserts(bytes)
            } else {
                plpgsql(bytes)
            };
            let row = measure(kind, text, opts.runs)?;
            let mbs = row.bytes as f64 / MB as f64;
            let mut line = format!("{kind:8} {mbs:7.2} MB {:>8} stmts", row.statements);
            for (name, d) in &row.phases {
                let _ = write!(
                    line,
                    "  {name} {:.3} s ({:.3} s/MB)",
                    d.as_secs_f64(),
                    d.as_secs_f64() / mbs
                );
            }
            println!("{line}");
            rows.push(row);
        }
    }
    let json = serde_json::json!({
        "bench": "big_revision",
        "profile": profile(),
        "runs": opts.runs,
        "rows": rows.iter().map(|r| {
            let mbs = r.bytes as f64 / MB as f64;
            let mut phases = serde_json::Map::new();
            for (name, d) in &r.phases {
                phases.insert(name.to_string(), serde_json::json!({
                    "seconds": d.as_secs_f64(),
                    "seconds_per_mb": d.as_secs_f64() / mbs,
                }));
            }
            serde_json::json!({
                "kind": r.kind,
                "bytes": r.bytes,
                "statements": r.statements,
                "phases": phases,
            })
        }).collect::<Vec<_>>(),
    });
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&opts.out, text)
        .map_err(|e| format!("cannot write {}: {e}", opts.out.display()))?;
    println!("profile {}; saved {}", profile(), opts.out.display());
    Ok(())
}
