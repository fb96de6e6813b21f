//! The pre-flight check of `StartRollout`: a dry plan of the selected targets, before the
//! rollout record exists, so a downgrade that would block targets is refused up front and
//! nothing runs (unless the spec says `allow_blocked`).

use flotilla_core::{Dialect, Direction};
use flotilla_proto as pb;

use crate::rollout::RolloutSpec;
use flotilla_revision::{Blocked, Goal, Graph};

use super::snapshot::{TargetPlanOutcome, history_of, plan_target};
use super::{Engine, EngineError};

/// How many blocked targets the refusal names before it abbreviates.
const NAMED: usize = 5;

/// Why the downgrade this plan asks for blocks the target, if it does: the goal crosses an
/// irreversible revision, or needs down steps and the spec does not allow downgrades.
/// Blocks for other reasons (history drift, dirty step, unreachable) are not the
/// downgrade's doing: those targets are blocked by the rollout as before.
pub fn downgrade_block(
    graph: &Graph,
    status: &pb::TargetStatus,
    dialect: Option<Dialect>,
    goal: &Goal,
    allow_downgrade: bool,
) -> Option<String> {
    let d = dialect.filter(|_| status.error.is_empty())?;
    let by_downgrade = match flotilla_revision::plan(graph, &history_of(status), goal, d) {
        Err(Blocked::Irreversible { .. }) => true,
        Ok(plan) => !allow_downgrade && plan.steps.iter().any(|s| s.direction == Direction::Down),
        Err(_) => false,
    };
    if !by_downgrade {
        return None;
    }
    match plan_target(graph, status, dialect, goal, allow_downgrade) {
        TargetPlanOutcome::Blocked(why) => Some(why),
        TargetPlanOutcome::Steps(_) => None,
    }
}

impl Engine {
    /// Refuse a rollout whose downgrade would block selected targets, naming them, unless
    /// `spec.allow_blocked`. One `Status` per agent, like planning, in a `preflight` span of
    /// the rollout's trace (`traceparent`: the StartRollout span).
    pub(super) async fn preflight(
        &self,
        spec: &RolloutSpec,
        goal: &Goal,
        traceparent: &str,
    ) -> Result<(), EngineError> {
        // Goals that only go up never plan a down step: nothing to check, no extra Status.
        let up_only =
            matches!(goal, Goal::Head | Goal::Heads) || matches!(goal, Goal::Relative(n) if *n > 0);
        if spec.allow_blocked || up_only {
            return Ok(());
        }
        let span = tracing::info_span!("preflight");
        crate::telemetry::set_remote_parent(
            &span,
            crate::telemetry::context_from_traceparent(traceparent),
        );
        let snap = tracing::Instrument::instrument(self.select(&spec.selector), span).await?;
        let blocked: Vec<(String, String)> = snap
            .targets
            .iter()
            .filter_map(|e| {
                downgrade_block(
                    &self.graph,
                    &e.status,
                    e.dialect(),
                    goal,
                    spec.allow_downgrade,
                )
                .map(|why| (e.status.target_id.clone(), why))
            })
            .collect();
        if blocked.is_empty() {
            return Ok(());
        }
        let mut named: Vec<String> = blocked
            .iter()
            .take(NAMED)
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        if blocked.len() > NAMED {
            named.push(format!("and {} more", blocked.len() - NAMED));
        }
        Err(EngineError::WouldBlock(format!(
            "goal {:?} would block {} of the {} selected targets, which cannot go down to it ({}); \
             nothing was started: pass --allow-blocked (allow_blocked) to migrate the other targets \
             and leave these untouched, or choose another goal (see `flotilla plan`)",
            spec.goal,
            blocked.len(),
            snap.targets.len(),
            named.join("; ")
        )))
    }
}
