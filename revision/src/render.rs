//! `flotilla render`: the SQL a plan would run, as one script for `psql`, `mariadb` or
//! `sqlite3` (Alembic's offline `--sql` mode). Transactional revisions are wrapped in their own
//! transaction; non-transactional ones run statement by statement. The script does not
//! maintain `flotilla_history`: it says so in its header and carries each step's checksum in a
//! comment. An up step's `-- migrate:check` and `-- migrate:verify` queries are shown as
//! comments (before the step, and before its commit): a script cannot refuse a step on a
//! query's rows, so the reader runs them.

use flotilla_core::{Dialect, Direction};

use super::graph::Graph;
use super::lint::scan;
use super::plan::{AppliedRevision, Blocked, Goal, Plan, TargetHistory, plan};

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderRequest {
    pub dialect: Dialect,
    /// The goal of the upgrade (`--to`).
    pub to: Goal,
    /// The revision the database is at (`--from`); `None` = base (empty database).
    pub from: Option<String>,
    /// Render the downgrade from `to` back to `from` (or base) instead.
    pub down: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("unknown --from revision {0:?}")]
    UnknownFrom(String),
    #[error(transparent)]
    Blocked(#[from] Blocked),
}

/// The plan behind a render request: from state → goal.
pub fn render_plan(graph: &Graph, req: &RenderRequest) -> Result<Plan, RenderError> {
    let from_state = |from: &Option<String>| -> Result<TargetHistory, RenderError> {
        let Some(from) = from else {
            return Ok(TargetHistory::default());
        };
        if !graph.contains(from) {
            return Err(RenderError::UnknownFrom(from.clone()));
        }
        let anc = graph.ancestors(from);
        Ok(history_of(graph, req.dialect, |id| anc.contains(id)))
    };
    if req.down {
        // Start where the upgrade to `to` would end (from base), go back to `from`.
        let up = plan(graph, &TargetHistory::default(), &req.to, req.dialect)?;
        let state: Vec<&str> = up.steps.iter().map(|s| s.revision.as_str()).collect();
        let start = history_of(graph, req.dialect, |id| state.contains(&id));
        let goal = match &req.from {
            None => Goal::Base,
            Some(f) if graph.contains(f) => Goal::Revision(f.clone()),
            Some(f) => return Err(RenderError::UnknownFrom(f.clone())),
        };
        Ok(plan(graph, &start, &goal, req.dialect)?)
    } else {
        Ok(plan(graph, &from_state(&req.from)?, &req.to, req.dialect)?)
    }
}

/// A history with every revision for which `applied` holds, in topological order.
fn history_of(graph: &Graph, d: Dialect, applied: impl Fn(&str) -> bool) -> TargetHistory {
    TargetHistory {
        applied: graph
            .revisions()
            .filter(|r| applied(&r.id))
            .map(|r| AppliedRevision {
                revision: r.id.clone(),
                checksum: r.up_checksum(d),
            })
            .collect(),
        dirty: None,
    }
}

/// Appends `sql` with every line commented out.
fn commented(out: &mut String, sql: &str) {
    for line in sql.lines() {
        out.push_str("-- ");
        out.push_str(line);
        out.push('\n');
    }
}

/// Renders the script for `req`.
pub fn render(graph: &Graph, req: &RenderRequest) -> Result<String, RenderError> {
    let plan = render_plan(graph, req)?;
    let d = req.dialect;
    let mut out = String::new();
    let from = req.from.as_deref().unwrap_or("base");
    let (what, a, b) = if req.down {
        ("downgrade", req.to.to_string(), from.to_owned())
    } else {
        ("upgrade", from.to_owned(), req.to.to_string())
    };
    out.push_str(&format!(
        "-- flotilla render: {what} from {a} to {b} ({d})\n"
    ));
    out.push_str(&format!("-- migration set digest: {}\n", graph.digest()));
    out.push_str(
        "-- this script does not record flotilla_history: stamp targets after running it\n",
    );
    out.push_str(match d {
        Dialect::Postgres => "-- run with: psql -v ON_ERROR_STOP=1 -f script.sql\n",
        Dialect::Mysql => "-- run with: mariadb DATABASE < script.sql\n",
        Dialect::Sqlite => "-- run with: sqlite3 -bail DATABASE < script.sql\n",
    });
    if plan.steps.is_empty() {
        out.push_str("-- nothing to do\n");
    }
    for step in &plan.steps {
        let Some(r) = graph.get(&step.revision) else {
            continue;
        };
        out.push('\n');
        out.push_str(&format!(
            "-- ==== {} ({}) ====\n",
            step.revision, step.direction
        ));
        if !r.description.is_empty() {
            out.push_str(&format!("-- description: {}\n", r.description));
        }
        out.push_str(&format!("-- checksum: {}\n", step.checksum));
        let stmts = scan(&step.sql, 1);
        if stmts.is_empty() {
            if !step.sql.is_empty() {
                out.push_str(&step.sql);
                out.push('\n');
            }
            out.push_str("-- (no statements)\n");
            continue;
        }
        let mut body = step.sql.clone();
        if stmts.last().is_some_and(|s| !s.terminated) {
            body.push_str("\n;");
        }
        let up = step.direction == Direction::Up;
        if up && let Some(check) = r.check_sql(d) {
            out.push_str(
                "-- migrate:check: flotilla runs these under the target's lock first and refuses \
                 the step unless each returns no rows or one true value; run them yourself:\n",
            );
            commented(&mut out, check);
        }
        if up && let Some(verify) = r.verify_sql(d) {
            body.push_str(
                "\n-- migrate:verify: flotilla runs these after the step, before its commit, and \
                 rolls the step back unless each returns no rows or one true value:\n",
            );
            commented(&mut body, verify);
            body.pop();
        }
        if step.transactional {
            out.push_str(match d {
                Dialect::Mysql => "START TRANSACTION;\n",
                Dialect::Postgres | Dialect::Sqlite => "BEGIN;\n",
            });
            out.push_str(&body);
            out.push_str("\nCOMMIT;\n");
        } else {
            out.push_str("-- non-transactional: runs outside a transaction\n");
            out.push_str(&body);
            out.push('\n');
        }
    }
    let n_up = plan
        .steps
        .iter()
        .filter(|s| s.direction == Direction::Up)
        .count();
    out.push_str(&format!(
        "\n-- end: {n_up} up, {} down; heads afterwards: {}\n",
        plan.steps.len() - n_up,
        if plan.goal_heads.is_empty() {
            "base".to_owned()
        } else {
            plan.goal_heads.join(", ")
        }
    ));
    Ok(out)
}
