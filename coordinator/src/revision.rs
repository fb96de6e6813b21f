//! Migration revisions: the file parser, the revision graph, the planner, the linter behind
//! `flotilla check` and the offline SQL renderer.
//!
//! **Architecture invariant:** this module does no I/O except [`load_dir`], which reads the
//! migration files and hands their bytes to the pure parser. Planning is a pure function of
//! the graph, a target's history and a goal.

mod graph;
pub mod lint;
mod parse;
mod plan;
mod render;

pub use graph::Graph;
pub use lint::{
    Diagnostic, LintConfig, RevisionFinding, Rule, Severity, lint_revision, lint_set, lint_sources,
};
pub use parse::{ParseError, ParseErrorKind, ParseErrors, Revision, load_dir, parse_file};
pub use plan::{
    AppliedRevision, Blocked, Goal, InvalidGoal, Plan, PlannedStep, TargetHistory, heads_of, plan,
};
pub use render::{RenderError, RenderRequest, render, render_plan};
