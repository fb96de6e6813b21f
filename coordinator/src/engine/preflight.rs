//! The pre-flight checks of `StartRollout`, before the rollout record exists: the selector
//! must match at least one target (else INVALID_ARGUMENT, nothing recorded: a typo in a
//! selector must not pass as a rollout that "succeeded" on zero targets), and a dry plan of
//! the selected targets refuses a downgrade that would block some of them (unless the spec
//! says `allow_blocked`).

use flotilla_core::{Dialect, Direction};
use flotilla_proto as pb;

use crate::rollout::{RolloutSpec, Selector};
use flotilla_revision::{Blocked, Goal, Graph};

use super::snapshot::{FleetSnapshot, TargetPlanOutcome, history_of, plan_target};
use super::{Engine, EngineError};

/// The refusal of a selection that matched nothing: INVALID_ARGUMENT naming the selector
/// when every agent answered (`fleet_size` targets were listed, if known), UNAVAILABLE
/// naming the agents that did not (their targets might have matched). `what`: what was not
/// done.
pub fn empty_selection(
    selector: &Selector,
    fleet_size: Option<usize>,
    unreachable: &[(String, String)],
    what: &str,
) -> EngineError {
    let of = match fleet_size {
        Some(n) if unreachable.is_empty() => format!("none of the fleet's {n} targets"),
        Some(n) => format!("none of the {n} targets of the reachable agents"),
        None => "no target".into(),
    };
    if unreachable.is_empty() {
        return EngineError::InvalidArgument(format!(
            "selector {} matched {of}: {what}; check the labels and target ids with \
             `flotilla status`",
            selector.describe()
        ));
    }
    let agents = unreachable
        .iter()
        .map(|(a, e)| format!("{a} ({e})"))
        .collect::<Vec<_>>()
        .join(", ");
    EngineError::Unavailable(format!(
        "selector {} matched {of}, and agents {agents} did not answer: {what}; retry when \
         they are reachable",
        selector.describe()
    ))
}

/// `snap` (already restricted to `selector`) refused when it holds no target.
pub fn require_selected(
    snap: &FleetSnapshot,
    selector: &Selector,
    fleet_size: usize,
    what: &str,
) -> Result<(), EngineError> {
    if snap.targets.is_empty() {
        return Err(empty_selection(
            selector,
            Some(fleet_size),
            &snap.unreachable,
            what,
        ));
    }
    Ok(())
}

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
    // Only the downgrade's reason: another tool's table is not the downgrade's doing.
    match plan_target(graph, status, dialect, goal, allow_downgrade, true) {
        TargetPlanOutcome::Blocked(why) => Some(why),
        TargetPlanOutcome::Steps(_) => None,
    }
}

impl Engine {
    /// Refuse a rollout whose selector matches no target: every agent lists its targets
    /// (`identities_only`: no database is read), one call each, in a `selection` span of the
    /// rollout's trace (`traceparent`: the StartRollout span).
    pub(super) async fn require_selection(
        &self,
        selector: &Selector,
        traceparent: &str,
    ) -> Result<(), EngineError> {
        let span = tracing::info_span!("selection");
        crate::telemetry::set_remote_parent(
            &span,
            crate::telemetry::context_from_traceparent(traceparent),
        );
        let listing = tracing::Instrument::instrument(self.listing(), span).await?;
        let size = listing.targets.len();
        let mut selected = listing;
        selected.targets.retain(|e| e.matches(selector));
        require_selected(&selected, selector, size, "nothing was started")
    }

    /// Refuse a rollout whose downgrade would block selected targets, naming them, unless
    /// `spec.allow_blocked`. One `Status` per agent, like planning, in a `preflight` span of
    /// the rollout's trace (`traceparent`: the StartRollout span).
    pub(super) async fn preflight(
        &self,
        graph: &Graph,
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
                downgrade_block(graph, &e.status, e.dialect(), goal, spec.allow_downgrade)
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
