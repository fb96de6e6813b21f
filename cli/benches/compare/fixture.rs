//! The migration sets and the baselines' copies of them: the upgrade from base to head as
//! flotilla plans it, turned into one psql transaction, a sqlx-cli migrations dir, and the
//! `flotilla render` script for sqlite3 — always the exact text flotilla sends its agents.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use flotilla_core::Dialect;
use flotilla_revision::{Goal, Graph, PlannedStep, RenderRequest, TargetHistory, plan, render};

/// The 5-revision PostgreSQL set of issue 8 (users, calendars, restoration_configurations
/// with indexes and FKs, sample rows, a column and an index).
pub(crate) fn pg5_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fixtures/pg5")
}

/// The repository's example set (10 revisions; `flotilla demo` rolls it out).
pub(crate) fn repo_migrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

/// A migration set and the upgrade of an empty database to its head.
pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    graph: Graph,
    pub(crate) steps: Vec<PlannedStep>,
    dialect: Dialect,
}

impl Fixture {
    pub(crate) fn load(dir: PathBuf, dialect: Dialect) -> Result<Fixture> {
        let graph = Graph::load_dir(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        let steps = plan(&graph, &TargetHistory::default(), &Goal::Head, dialect)
            .map_err(|e| anyhow!("{}: {e}", dir.display()))?
            .steps;
        Ok(Fixture {
            dir,
            graph,
            steps,
            dialect,
        })
    }

    /// Every up section in plan order inside one transaction: the raw lower bound.
    pub(crate) fn one_transaction(&self) -> Result<String> {
        let mut sql = String::from("BEGIN;\n");
        for s in &self.steps {
            anyhow::ensure!(
                s.transactional,
                "{} is not transactional: it cannot join one transaction",
                s.revision
            );
            sql.push_str(&s.sql);
            sql.push('\n');
        }
        sql.push_str("COMMIT;\n");
        Ok(sql)
    }

    /// A sqlx-cli migrations dir: `<n>_<revision>.sql` per step (simple, non-reversible
    /// migrations; sqlx runs each in its own transaction, as flotilla does).
    pub(crate) fn write_sqlx_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (i, s) in self.steps.iter().enumerate() {
            let mut text = String::new();
            if !s.transactional {
                text.push_str("-- no-transaction\n");
            }
            text.push_str(&s.sql);
            text.push('\n');
            let file = dir.join(format!("{}_{}.sql", i + 1, s.revision.replace('.', "_")));
            std::fs::write(&file, text).with_context(|| file.display().to_string())?;
        }
        Ok(())
    }

    /// What `flotilla render --to head` prints: each transactional revision in its own
    /// transaction, the others statement by statement.
    pub(crate) fn rendered(&self) -> Result<String> {
        render(
            &self.graph,
            &RenderRequest {
                dialect: self.dialect,
                to: Goal::Head,
                from: None,
                down: false,
            },
        )
        .map_err(|e| anyhow!("render {}: {e}", self.dir.display()))
    }
}
