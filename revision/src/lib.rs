//! Migration revisions: the file parser, the revision graph, the planner, the linter behind
//! `flotilla check` and the offline SQL renderer.
//!
//! **Architecture invariant:** this crate does no I/O except [`load_dir`] (with the
//! `lint.toml` beside the files, also read by [`Bundle::load_dir`]), which reads the migration files and hands their bytes to
//! the pure parser. Its dependencies cannot do more: no async runtime, no database driver, no
//! gRPC (`cargo tree -p flotilla-revision`). Planning is a pure function of the graph, a
//! target's history and a goal. (Importing other tools' directories runs their code and
//! writes files, so it lives with the CLI: `flotilla_cli::import`.)

mod bundle;
mod check;
mod graph;
pub mod lint;
mod parse;
mod plan;
mod render;
mod rule;

pub use bundle::{Bundle, BundleError};
pub use check::{lint_set, lint_sources};
pub use graph::Graph;
pub use lint::{Diagnostic, LintConfig, RevisionFinding, Severity, lint_revision};
pub use parse::{ParseError, ParseErrorKind, ParseErrors, Revision, load_dir, parse_file};
pub use plan::{
    AppliedRevision, Blocked, Goal, InvalidGoal, Plan, PlannedStep, TargetHistory, heads_of, plan,
};
pub use render::{RenderError, RenderRequest, render, render_plan};
pub use rule::Rule;
