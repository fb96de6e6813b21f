//! Offline commands: they read (or write) the migration files and never talk to a coordinator,
//! an agent or a database: `revisions`, `heads`, `graph`, `new`, `merge`, `check`, `render`,
//! `import`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use flotilla_core::Dialect;
use serde_json::json;

use crate::args::{GlobalArgs, OutputFormat};
use crate::error::CliError;
use crate::exit::Outcome;
use flotilla_revision::{
    Diagnostic, Goal, Graph, LintConfig, RenderRequest, Severity, lint_set, load_dir, render,
    render_plan,
};

mod history;
mod import;
mod tree;

pub(crate) use history::history;
pub use import::ImportArgs;

#[derive(Debug, Subcommand)]
pub enum OfflineCommand {
    /// List revisions in topological order with their parents; heads are marked
    Revisions,
    /// List the head revisions (those no revision revises)
    Heads,
    /// Show the revision graph as a tree, or as Graphviz with --format dot
    Graph {
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Write a new revision file NNNN_slug.sql revising the current head
    New {
        /// Description of the change (also makes the file name)
        #[arg(short, long)]
        message: String,
        /// Parent revision(s), comma separated; default: the single head
        #[arg(long, value_delimiter = ',')]
        revises: Vec<String>,
        /// Revision id; default: the file name without .sql
        #[arg(long)]
        id: Option<String>,
        /// Mark the revision non-transactional (e.g. CREATE INDEX CONCURRENTLY)
        #[arg(long)]
        non_transactional: bool,
    },
    /// Write a merge revision whose parents are the given revisions
    Merge {
        /// Revisions to merge (at least two), usually the heads
        #[arg(required = true, num_args = 2..)]
        revisions: Vec<String>,
        #[arg(short, long)]
        message: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Lint the migration set: errors (exit 3) and warnings
    Check {
        /// Exit 3 on warnings too
        #[arg(long)]
        strict: bool,
    },
    /// Print the SQL a plan would run, as a script for psql, mariadb or sqlite3
    Render {
        /// Goal: head, heads, base, a revision id or +N
        #[arg(long, default_value = "head")]
        to: Goal,
        /// Revision the database is at (default: an empty database)
        #[arg(long)]
        from: Option<String>,
        /// postgres, mysql (mariadb) or sqlite
        #[arg(long)]
        dialect: Dialect,
        /// Render the downgrade from --to back to --from (default: base)
        #[arg(long)]
        down: bool,
    },
    /// Convert Alembic, Flyway, sqlx or golang-migrate migrations into revision files
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
}

/// Runs one offline command, writing its output to `out`.
pub fn run(
    cmd: OfflineCommand,
    global: &GlobalArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let json = global.output == OutputFormat::Json;
    let dir = global.migrations.as_path();
    let text = match cmd {
        OfflineCommand::Revisions => revisions(&Graph::load_dir(dir)?, json)?,
        OfflineCommand::Heads => heads(&Graph::load_dir(dir)?, json)?,
        OfflineCommand::Graph { format } => {
            let g = Graph::load_dir(dir)?;
            match (json, format) {
                (true, _) => to_json(&graph_json(&g))?,
                (false, GraphFormat::Text) => tree::text(&g),
                (false, GraphFormat::Dot) => tree::dot(&g),
            }
        }
        OfflineCommand::New {
            message,
            revises,
            id,
            non_transactional,
        } => new(dir, &message, revises, id, !non_transactional, json)?,
        OfflineCommand::Merge {
            revisions,
            message,
            id,
        } => merge(dir, &message, revisions, id, json)?,
        OfflineCommand::Check { strict } => return check(dir, strict, json, out),
        OfflineCommand::Import(args) => return import::run(args, global, out),
        OfflineCommand::Render {
            to,
            from,
            dialect,
            down,
        } => {
            let g = Graph::load_dir(dir)?;
            let req = RenderRequest {
                dialect,
                to,
                from,
                down,
            };
            if json {
                let plan = render_plan(&g, &req)?;
                to_json(&json!({
                    "dialect": dialect,
                    "digest": g.digest(),
                    "steps": plan.steps,
                    "goal_heads": plan.goal_heads,
                    "script": render(&g, &req)?,
                }))?
            } else {
                render(&g, &req)?
            }
        }
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)?;
    Ok(Outcome::Success)
}

fn to_json(v: &serde_json::Value) -> Result<String, CliError> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}

fn revision_json(g: &Graph, r: &flotilla_revision::Revision, heads: &[&str]) -> serde_json::Value {
    json!({
        "revision": r.id,
        "parents": r.parents,
        "children": g.children(&r.id),
        "description": r.description,
        "transactional": r.transactional,
        "reversible": r.is_reversible(),
        "head": heads.contains(&r.id.as_str()),
        "root": r.parents.is_empty(),
        "merge": r.is_merge(),
        "path": r.path,
    })
}

fn graph_json(g: &Graph) -> serde_json::Value {
    let heads = g.heads();
    json!({
        "digest": g.digest(),
        "heads": heads,
        "roots": g.roots(),
        "branch_points": g.branch_points(),
        "merge_points": g.merge_points(),
        "revisions": g.revisions().map(|r| revision_json(g, r, &heads)).collect::<Vec<_>>(),
        "edges": g.revisions()
            .flat_map(|r| r.parents.iter().map(|p| json!({"revision": r.id, "revises": p})))
            .collect::<Vec<_>>(),
    })
}

fn revisions(g: &Graph, json: bool) -> Result<String, CliError> {
    let heads = g.heads();
    if json {
        let list: Vec<_> = g.revisions().map(|r| revision_json(g, r, &heads)).collect();
        return to_json(&serde_json::Value::Array(list));
    }
    if g.is_empty() {
        return Ok("no revisions\n".into());
    }
    let width = g.revisions().map(|r| r.id.len()).max().unwrap_or(0);
    let parents: Vec<String> = g
        .revisions()
        .map(|r| {
            if r.parents.is_empty() {
                "(root)".to_owned()
            } else {
                format!("<- {}", r.parents.join(", "))
            }
        })
        .collect();
    let pwidth = parents.iter().map(String::len).max().unwrap_or(0);
    let mut s = String::new();
    for (r, p) in g.revisions().zip(&parents) {
        let mut marks = Vec::new();
        if heads.contains(&r.id.as_str()) {
            marks.push("head");
        }
        marks.extend(tree::kind_marks(r));
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("[{}] ", marks.join(", "))
        };
        let line = format!("{:width$}  {p:pwidth$}  {marks}{}", r.id, r.description);
        s.push_str(line.trim_end());
        s.push('\n');
    }
    Ok(s)
}

fn heads(g: &Graph, json: bool) -> Result<String, CliError> {
    let heads = g.heads();
    if json {
        return to_json(&json!({ "heads": heads }));
    }
    let mut s = String::new();
    for h in &heads {
        let desc = g.get(h).map_or("", |r| r.description.as_str());
        s.push_str(format!("{h}  {desc}").trim_end());
        s.push('\n');
    }
    if heads.len() > 1 {
        s.push_str(&format!(
            "{} heads: merge them with `flotilla merge {} -m \"...\"`\n",
            heads.len(),
            heads.join(" ")
        ));
    }
    Ok(s)
}

/// The graph of `dir`, or an empty one when the directory does not exist yet.
fn load_or_empty(dir: &Path) -> Result<Graph, CliError> {
    if !dir.exists() {
        return Ok(Graph::default());
    }
    Ok(Graph::load_dir(dir)?)
}

fn new(
    dir: &Path,
    message: &str,
    revises: Vec<String>,
    id: Option<String>,
    transactional: bool,
    json: bool,
) -> Result<String, CliError> {
    let g = load_or_empty(dir)?;
    let parents = if revises.is_empty() {
        match g.heads().as_slice() {
            [] => Vec::new(),
            [h] => vec![(*h).to_owned()],
            hs => {
                return Err(CliError::Refused(format!(
                    "several heads ({}): pass --revises <revision>, or merge them first with `flotilla merge {} -m \"...\"`",
                    hs.join(", "),
                    hs.join(" ")
                )));
            }
        }
    } else {
        for p in &revises {
            if !g.contains(p) {
                return Err(CliError::Refused(format!(
                    "unknown revision {p:?} in --revises"
                )));
            }
        }
        revises
    };
    write_revision(dir, &g, message, parents, id, transactional, false, json)
}

fn merge(
    dir: &Path,
    message: &str,
    revisions: Vec<String>,
    id: Option<String>,
    json: bool,
) -> Result<String, CliError> {
    let g = Graph::load_dir(dir)?;
    for (i, r) in revisions.iter().enumerate() {
        if !g.contains(r) {
            return Err(CliError::Refused(format!("unknown revision {r:?}")));
        }
        if revisions[..i].contains(r) {
            return Err(CliError::Refused(format!("revision {r:?} given twice")));
        }
    }
    for a in &revisions {
        for b in &revisions {
            if a != b && g.ancestors(b).contains(a) {
                return Err(CliError::Refused(format!(
                    "{a:?} is already an ancestor of {b:?}: nothing to merge"
                )));
            }
        }
    }
    write_revision(dir, &g, message, revisions, id, true, true, json)
}

/// `[a-z0-9]+` words of `message` joined by `_`, at most 48 characters.
fn slug(message: &str) -> String {
    let mut s = String::new();
    for word in message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if s.len() + word.len() + 1 > 48 && !s.is_empty() {
            break;
        }
        if !s.is_empty() {
            s.push('_');
        }
        s.push_str(&word.to_ascii_lowercase());
    }
    s.truncate(48);
    if s.is_empty() { "revision".into() } else { s }
}

/// The next `NNNN` file number: one more than the largest numeric prefix of a revision file.
fn next_number(g: &Graph) -> u64 {
    g.revisions()
        .filter_map(|r| {
            let name = r.path.file_name()?.to_str()?;
            let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .map_or(1, |n| n + 1)
}

#[allow(clippy::too_many_arguments)]
fn write_revision(
    dir: &Path,
    g: &Graph,
    message: &str,
    parents: Vec<String>,
    id: Option<String>,
    transactional: bool,
    is_merge: bool,
    json: bool,
) -> Result<String, CliError> {
    let description = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if description.is_empty() {
        return Err(CliError::Refused("the message (-m) is empty".into()));
    }
    let stem = format!("{:04}_{}", next_number(g), slug(&description));
    let id = id.unwrap_or_else(|| stem.clone());
    if let Err(why) = flotilla_revision::parse_file(
        Path::new("--id"),
        format!("-- revision: {id}\n-- migrate:up\n").as_bytes(),
    ) {
        let why = why.first().map(|e| e.kind.to_string()).unwrap_or_default();
        return Err(CliError::Refused(why));
    }
    if g.contains(&id) {
        return Err(CliError::Refused(format!("revision {id:?} already exists")));
    }
    let path: PathBuf = dir.join(format!("{stem}.sql"));
    if path.exists() {
        return Err(CliError::Refused(format!(
            "{} already exists",
            path.display()
        )));
    }
    let body = if is_merge {
        "-- migrate:up\n\n-- migrate:down\n"
    } else {
        "-- migrate:up\n\n\n-- migrate:down\n\n"
    };
    let text = format!(
        "-- revision: {id}\n-- revises: {}\n-- description: {description}\n-- transactional: {transactional}\n\n{body}",
        parents.join(", ")
    );
    std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
        path: dir.to_owned(),
        source,
    })?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| CliError::Io {
            path: path.clone(),
            source,
        })?;
    if json {
        return to_json(&json!({ "revision": id, "path": path, "revises": parents }));
    }
    let revises = if parents.is_empty() {
        "a new root".to_owned()
    } else {
        format!("revises {}", parents.join(", "))
    };
    Ok(format!(
        "created {} (revision {id}, {revises})\n",
        path.display()
    ))
}

fn check(dir: &Path, strict: bool, json: bool, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let files = load_dir(dir)?;
    let n_files = files.len();
    let (config, config_error) = match LintConfig::load(dir) {
        Ok(c) => (c, None),
        Err(e) => (LintConfig::default(), Some(Diagnostic::from(e))),
    };
    let (graph, mut diags) = lint_set(files, &config);
    // A bad lint.toml makes the set invalid for every other command too.
    let graph = match config_error {
        Some(e) => {
            diags.insert(0, e);
            None
        }
        None => graph,
    };
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    let problems = errors > 0 || (strict && warnings > 0);
    let text = if json {
        to_json(&json!({
            "ok": !problems,
            "files": n_files,
            "revisions": graph.as_ref().map(Graph::len),
            "heads": graph.as_ref().map(Graph::heads),
            "digest": graph.as_ref().map(Graph::digest),
            "errors": errors,
            "warnings": warnings,
            "diagnostics": diags,
        }))?
    } else {
        let mut s = String::new();
        for d in &diags {
            s.push_str(&format!("{d}\n"));
        }
        match &graph {
            Some(g) => s.push_str(&format!(
                "{} revisions, heads: {}, digest {}\n",
                g.len(),
                if g.is_empty() {
                    "none".to_owned()
                } else {
                    g.heads().join(", ")
                },
                g.digest()
            )),
            None => s.push_str(
                "the migration set is invalid: nothing can be applied until the errors are fixed\n",
            ),
        }
        s.push_str(&format!("{errors} errors, {warnings} warnings\n"));
        s
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)?;
    Ok(if problems {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slug("Add restoration_configurations table!"),
            "add_restoration_configurations_table"
        );
        assert_eq!(slug("  ¿¡ "), "revision");
        assert!(slug(&"word ".repeat(40)).len() <= 48);
    }
}
