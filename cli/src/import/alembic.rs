//! Alembic projects: revisions are Python, so each revision's up and down SQL is rendered per
//! dialect by Alembic itself in offline mode (`upgrade A:B --sql` / `downgrade B:A --sql`, one
//! revision at a time, through the project's own `env.py` with `sqlalchemy.url` set to the
//! dialect), run by the user's Python (`alembic_offline.py`, embedded). Ids, `down_revision` tuples
//! (merges), branch labels and messages are kept. Alembic's own statements (the version table,
//! `BEGIN`/`COMMIT`, `-- Running` comments) are dropped. A revision whose up SQL is empty
//! (and is not a merge) or raises is a problem, not written, with the cause named (batch mode
//! needs a live table, a value without a literal form, live data read); a down that is empty
//! or raises is left out (the revision becomes irreversible) with a warning. JSON values in
//! `op.bulk_insert` rows are rendered as string literals of their JSON text. Every rendering
//! must be in the dialect asked for (an `env.py` preferring `DATABASE_URL` is refused).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_core::Dialect;

use super::{ImportError, ImportSet, Imported, Problem, ReadOptions, Sql, Tool};

const SCRIPT: &str = include_str!("alembic_offline.py");

#[derive(Debug, serde::Deserialize)]
struct Output {
    revisions: Vec<Rev>,
}

#[derive(Debug, serde::Deserialize)]
struct Rev {
    id: String,
    parents: Vec<String>,
    branch_labels: Vec<String>,
    doc: String,
    path: String,
    up: BTreeMap<String, Rendered>,
    down: BTreeMap<String, Rendered>,
}

#[derive(Debug, serde::Deserialize)]
struct Rendered {
    sql: Option<String>,
    error: Option<String>,
    /// The SQLAlchemy dialect Alembic actually rendered with (`postgresql`, `mysql`,
    /// `mariadb`, `sqlite`, ...).
    #[serde(default)]
    dialect: Option<String>,
}

/// The Flotilla dialect of a SQLAlchemy dialect name.
fn dialect_of(sqlalchemy: &str) -> Option<Dialect> {
    match sqlalchemy {
        "postgresql" => Some(Dialect::Postgres),
        "mysql" | "mariadb" => Some(Dialect::Mysql),
        "sqlite" => Some(Dialect::Sqlite),
        _ => None,
    }
}

/// Every rendering must be in the dialect it was asked for: an `env.py` that prefers its own
/// URL in offline mode (commonly `DATABASE_URL`) renders every dialect as that database's,
/// and the import would write PostgreSQL SQL into the MySQL and SQLite sections.
fn check_dialects(out: &Output) -> Result<(), ImportError> {
    for r in &out.revisions {
        for rendered in [&r.up, &r.down] {
            for (asked, got) in rendered {
                let Some(used) = got.dialect.as_deref() else {
                    continue;
                };
                let Ok(asked) = asked.parse::<Dialect>() else {
                    continue;
                };
                if dialect_of(used) != Some(asked) {
                    return Err(ImportError::DialectMismatch {
                        revision: r.id.clone(),
                        asked,
                        rendered: used.to_owned(),
                        database_url: std::env::var_os("DATABASE_URL").is_some(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Why Alembic could not render a revision offline, in words that name the cause (Alembic's
/// own message follows).
fn why_offline(d: Dialect, error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    let cause = if lower.contains("batch mode") && lower.contains("live database") {
        format!(
            "Alembic's batch mode on {d} recreates the table and must read its definition \
             from a live database, which offline mode does not have: pass the table to \
             batch_alter_table(copy_from=sa.Table(...)), or write its {d} SQL by hand"
        )
    } else if lower.contains("no literal value renderer") {
        format!(
            "a value in it (op.bulk_insert or op.execute) has a type SQLAlchemy cannot write \
             as a {d} SQL literal in offline mode: insert it with SQL text, or write the \
             revision by hand"
        )
    } else if lower.contains("get_bind")
        || lower.contains("mockconnection")
        || (lower.contains("nonetype") && (lower.contains("connect") || lower.contains("execute")))
    {
        format!("it reads live data, and offline mode has no {d} database to read")
    } else {
        format!("Alembic cannot render it offline for {d}")
    };
    format!("{cause} (Alembic: {error})")
}

/// `alembic.ini` for a project directory or the ini path itself.
fn ini_of(source: &Path) -> Result<PathBuf, ImportError> {
    let ini = if source.is_dir() {
        source.join("alembic.ini")
    } else {
        source.to_owned()
    };
    if !ini.is_file() {
        return Err(ImportError::NotASource {
            tool: Tool::Alembic,
            path: source.to_owned(),
        });
    }
    Ok(ini)
}

/// Run the renderer and return its JSON document.
fn run_alembic(ini: &Path, opts: &ReadOptions) -> Result<Output, ImportError> {
    let dir = ini
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let ini_name = ini.file_name().map(PathBuf::from).unwrap_or_default();
    let dialects = opts
        .dialects
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(&opts.python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&ini_name)
        .arg(&dialects)
        .args(opts.urls.iter().map(|(d, url)| format!("{d}={url}")))
        .current_dir(dir)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImportError::AlembicMissing {
                python: opts.python.clone(),
            },
            _ => ImportError::Alembic {
                message: format!("cannot run {}: {e}", opts.python),
            },
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout
        .lines()
        .any(|l| l.starts_with("FLOTILLA-IMPORT-MISSING"))
    {
        return Err(ImportError::AlembicMissing {
            python: opts.python.clone(),
        });
    }
    let Some(json) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FLOTILLA-IMPORT-JSON "))
    else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(ImportError::Alembic {
            message: format!(
                "{} (exit {}); check that `alembic history` works in {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                out.status.code().unwrap_or(-1),
                dir.display()
            ),
        });
    };
    serde_json::from_str(json).map_err(|e| ImportError::Alembic {
        message: format!("unreadable renderer output: {e}"),
    })
}

/// Per-dialect texts → plain (first dialect) plus the dialects that differ; or why not.
fn sql_of(rendered: &BTreeMap<String, Rendered>, dialects: &[Dialect]) -> Result<Sql, String> {
    let mut texts = Vec::new();
    for d in dialects {
        match rendered.get(&d.to_string()) {
            Some(Rendered {
                sql: Some(sql),
                error: None,
                ..
            }) => texts.push((*d, sql.trim().to_owned())),
            Some(Rendered { error: Some(e), .. }) => return Err(why_offline(*d, e)),
            _ => return Err(format!("no SQL rendered for {d}")),
        }
    }
    let Some((_, plain)) = texts.first().cloned() else {
        return Err("no dialect to render".into());
    };
    Ok(Sql {
        by_dialect: texts
            .into_iter()
            .skip(1)
            .filter(|(_, t)| *t != plain)
            .collect(),
        plain,
    })
}

fn is_empty(sql: &Sql) -> bool {
    sql.plain.is_empty() && sql.by_dialect.iter().all(|(_, t)| t.is_empty())
}

pub fn read(source: &Path, opts: &ReadOptions) -> Result<ImportSet, ImportError> {
    let ini = ini_of(source)?;
    let out = run_alembic(&ini, opts)?;
    check_dialects(&out)?;
    let base = ini.parent().unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_owned());
    let mut revisions = Vec::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for r in out.revisions {
        let path = Path::new(&r.path);
        let source = path
            .strip_prefix(&base)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/");
        let problem = |reason: String| Problem {
            revision: r.id.clone(),
            source: source.clone(),
            reason,
        };
        let merge = r.parents.len() > 1;
        let up = match sql_of(&r.up, &opts.dialects) {
            Ok(up) if is_empty(&up) && !merge => {
                problems.push(problem(
                    "its offline upgrade SQL is empty (Python-only logic?): not imported; write it as a revision by hand".into(),
                ));
                continue;
            }
            Ok(up) => up,
            Err(why) => {
                problems.push(problem(format!("upgrade: {why}; not imported")));
                continue;
            }
        };
        let down = match sql_of(&r.down, &opts.dialects) {
            Ok(down) if is_empty(&down) && !merge => {
                warnings.push(problem(
                    "its offline downgrade SQL is empty: imported without a down section (irreversible)".into(),
                ));
                None
            }
            Ok(down) => Some(down),
            Err(why) => {
                warnings.push(problem(format!(
                    "downgrade: {why}; imported without a down section (irreversible)"
                )));
                None
            }
        };
        revisions.push(Imported {
            id: r.id.clone(),
            parents: r.parents.clone(),
            description: r.doc.lines().next().unwrap_or("").trim().to_owned(),
            transactional: true,
            up,
            down,
            branch_labels: r.branch_labels.clone(),
            source,
        });
    }
    Ok(ImportSet {
        tool: Tool::Alembic,
        revisions,
        problems,
        warnings,
    })
}
