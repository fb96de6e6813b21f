//! The destructive-step refusal of `StartRollout` and `Plan`: an up step whose revision has
//! destructive lint findings (drop table/column/schema, truncate) that neither its file
//! (`-- lint: allow destructive`) nor `lint.toml` allows is refused before anything runs,
//! unless the spec says `allow_destructive`. Down steps are not checked: undoing what the up
//! section created is what a down section does, and downgrades already need
//! `allow_downgrade`.

use std::collections::BTreeMap;

use flotilla_core::{Dialect, Direction};

use crate::rollout::RolloutSpec;
use flotilla_revision::lint::{self, RevisionFinding};
use flotilla_revision::{Goal, Graph, PlannedStep};

use super::snapshot::{TargetPlanOutcome, plan_target};
use super::{Engine, EngineError};

/// How many findings the refusal names before it abbreviates.
const NAMED: usize = 10;

/// True when some revision of the graph has a destructive finding that is not allowed on
/// some dialect: only then is the fleet asked for a plan.
pub fn graph_has_unallowed(graph: &Graph) -> bool {
    graph.revisions().any(|r| {
        Dialect::ALL.iter().any(|d| {
            lint::destructive(r, *d, graph.lint_config())
                .iter()
                .any(|f| !f.allowed)
        })
    })
}

/// The not-allowed destructive findings of the up steps planned for targets, keyed by
/// (revision, dialect), with how many targets would run them.
#[derive(Default)]
pub struct Refusal {
    found: BTreeMap<(String, Dialect), (Vec<RevisionFinding>, usize)>,
}

impl Refusal {
    /// Adds one target's planned steps.
    pub fn add(&mut self, graph: &Graph, dialect: Dialect, steps: &[PlannedStep]) {
        for s in steps.iter().filter(|s| s.direction == Direction::Up) {
            let key = (s.revision.clone(), dialect);
            if let Some((_, n)) = self.found.get_mut(&key) {
                *n += 1;
                continue;
            }
            let Some(r) = graph.get(&s.revision) else {
                continue;
            };
            let findings: Vec<RevisionFinding> = lint::destructive(r, dialect, graph.lint_config())
                .into_iter()
                .filter(|f| !f.allowed)
                .collect();
            if !findings.is_empty() {
                self.found.insert(key, (findings, 1));
            }
        }
    }

    /// The refusal, naming each revision, file:line, rule and what to do; `None` when
    /// nothing destructive would run.
    pub fn error(&self, graph: &Graph) -> Option<EngineError> {
        let (revisions, named) = self.findings(graph)?;
        Some(EngineError::Destructive(format!(
            "refusing to run destructive steps of {revisions} ({named}); nothing was started: after review add \
             `-- lint: allow destructive` to the revision's header, or pass --allow-destructive \
             (allow_destructive)"
        )))
    }

    /// Why one target of a running rollout is left alone: re-planned from its agent's report
    /// (it changed since the rollout started), its plan now runs not-allowed destructive steps.
    pub fn blocked_target(&self, graph: &Graph) -> Option<String> {
        let (revisions, named) = self.findings(graph)?;
        Some(format!(
            "the target changed since the rollout started and its new plan runs destructive steps of \
             {revisions} ({named}); left untouched: after review add `-- lint: allow destructive` to \
             the revision's header, or start a rollout with --allow-destructive"
        ))
    }

    /// The revisions (comma-separated) and the findings named (abbreviated).
    fn findings(&self, graph: &Graph) -> Option<(String, String)> {
        if self.found.is_empty() {
            return None;
        }
        let mut named = Vec::new();
        let mut revisions: Vec<&str> = Vec::new();
        for ((rev, dialect), (findings, targets)) in &self.found {
            if !revisions.contains(&rev.as_str()) {
                revisions.push(rev);
            }
            let path = graph
                .get(rev)
                .map(|r| r.path.display().to_string())
                .unwrap_or_default();
            for f in findings {
                named.push(format!(
                    "revision {rev} ({dialect}, {targets} target{}) {path}:{}: {}: {}",
                    if *targets == 1 { "" } else { "s" },
                    f.finding.line,
                    f.finding.rule,
                    f.finding.message
                ));
            }
        }
        let total = named.len();
        named.truncate(NAMED);
        if total > NAMED {
            named.push(format!("and {} more", total - NAMED));
        }
        Some((revisions.join(", "), named.join("; ")))
    }
}

impl Engine {
    /// Refuse a rollout that would run not-allowed destructive steps, unless
    /// `spec.allow_destructive`. Asks the fleet (one `Status` per agent) only when the graph
    /// has such a revision at all.
    pub(super) async fn refuse_destructive(
        &self,
        graph: &Graph,
        spec: &RolloutSpec,
        goal: &Goal,
        traceparent: &str,
    ) -> Result<(), EngineError> {
        if spec.allow_destructive || !graph_has_unallowed(graph) {
            return Ok(());
        }
        let span = tracing::info_span!("preflight_destructive");
        crate::telemetry::set_remote_parent(
            &span,
            crate::telemetry::context_from_traceparent(traceparent),
        );
        let snap = tracing::Instrument::instrument(self.select(&spec.selector), span).await?;
        let mut refusal = Refusal::default();
        for e in &snap.targets {
            let Some(d) = e.dialect() else { continue };
            if let TargetPlanOutcome::Steps(steps) = plan_target(
                graph,
                &e.status,
                Some(d),
                goal,
                spec.allow_downgrade,
                spec.allow_foreign,
            ) {
                refusal.add(graph, d, &steps);
            }
        }
        match refusal.error(graph) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
