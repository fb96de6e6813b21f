//! The coordinator's Prometheus metrics: names and HELP texts ([`describe`]), the fleet
//! gauges derived from a fleet status (targets by revision, version skew, drift), rollouts
//! by state and the current rollout's targets by state.
//!
//! **Architecture invariant:** this module only records what it is given; what to record
//! (reading the store, the fleet view, catalogs) is the engine's (`engine/report.rs`).

use std::collections::BTreeMap;

use flotilla_core::project::Project;
use flotilla_proto as pb;

use crate::rollout::{RolloutState, TargetRecord, TargetState};

const ROLLOUT_STATES: [RolloutState; 9] = [
    RolloutState::Pending,
    RolloutState::Running,
    RolloutState::Paused,
    RolloutState::Succeeded,
    RolloutState::CompletedWithFailures,
    RolloutState::Blocked,
    RolloutState::Failed,
    RolloutState::Halted,
    RolloutState::Aborted,
];

const TARGET_STATES: [TargetState; 6] = [
    TargetState::Pending,
    TargetState::Running,
    TargetState::Succeeded,
    TargetState::Failed,
    TargetState::Skipped,
    TargetState::Blocked,
];

/// HELP of `flotilla_fleet_targets`, a family the `/metrics` listener renders itself
/// (`flotilla_rpc::prometheus`): its revisions come and go.
const FLEET_TARGETS_HELP: &str = "Reachable targets by current revision (heads, comma-separated; base = none); a revision no target is at has no series";

/// HELP texts and units of the coordinator's metrics (and the embedded agents').
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "flotilla_coordinator_rollouts",
        Unit::Count,
        "Rollouts in the state store, by state"
    );
    describe_counter!(
        "flotilla_coordinator_rollouts_finished_total",
        Unit::Count,
        "Rollouts this coordinator ran to an end, by final state"
    );
    describe_gauge!(
        "flotilla_coordinator_rollout_targets",
        Unit::Count,
        "Targets of the rollout this coordinator runs (or ran last), by state"
    );
    describe_counter!(
        "flotilla_coordinator_targets_finished_total",
        Unit::Count,
        "Targets this coordinator brought to a final state, by state"
    );
    describe_gauge!(
        "flotilla_coordinator_lock_held",
        Unit::Count,
        "1 while this coordinator holds the fleet lock (leads), else 0"
    );
    describe_counter!(
        "flotilla_coordinator_lock_acquired_total",
        Unit::Count,
        "Times this coordinator took the fleet lock"
    );
    describe_counter!(
        "flotilla_coordinator_lease_losses_total",
        Unit::Count,
        "Times this coordinator lost the fleet lock while leading (all rollout work cancelled)"
    );
    describe_gauge!(
        "flotilla_fleet_version_skew",
        Unit::Count,
        "Distinct revisions across the reachable fleet (1 = uniform)"
    );
    describe_gauge!(
        "flotilla_fleet_drift_targets",
        Unit::Count,
        "Targets that drift: history with revisions the graph lacks or checksums that differ, or a schema fingerprint that differs from the reference of its dialect and applied set"
    );
    // Counters exist from the start at 0, so `increase()` (and the alert rules in
    // deploy/prometheus/) see their first increment; a series born at 1 would hide it.
    for state in ROLLOUT_STATES.into_iter().filter(|s| s.is_terminal()) {
        metrics::counter!("flotilla_coordinator_rollouts_finished_total", "state" => state.as_str())
            .increment(0);
    }
    for state in TARGET_STATES.into_iter().filter(|s| s.is_terminal()) {
        metrics::counter!("flotilla_coordinator_targets_finished_total", "state" => state.as_str())
            .increment(0);
    }
    metrics::counter!("flotilla_coordinator_lock_acquired_total").increment(0);
    metrics::counter!("flotilla_coordinator_lease_losses_total").increment(0);
}

/// Record the fleet gauges from one fleet status. The drift gauge only when `schema_known`:
/// the targets' `drift` lists include schema drift (a status without it would undercount).
pub fn record_fleet(project: &Project, targets: &[pb::FleetTarget], schema_known: bool) {
    let mut by_revision: BTreeMap<String, u64> = BTreeMap::new();
    let mut drift = 0u64;
    for t in targets {
        let Some(s) = &t.status else { continue };
        if count_revision(&mut by_revision, s) && !t.drift.is_empty() {
            drift += 1;
        }
    }
    record_fleet_counts(project, &by_revision, schema_known.then_some(drift));
}

/// Count a readable target's revision (its heads, `base` without any) in `by_revision`;
/// false for a target that could not be read.
pub(crate) fn count_revision(
    by_revision: &mut BTreeMap<String, u64>,
    s: &pb::TargetStatus,
) -> bool {
    if !s.error.is_empty() {
        return false;
    }
    let rev = if s.heads.is_empty() {
        "base".to_owned()
    } else {
        s.heads.join(",")
    };
    *by_revision.entry(rev).or_default() += 1;
    true
}

/// The fleet gauges from readable targets by revision, and the drifted ones when known.
pub(crate) fn record_fleet_counts(
    project: &Project,
    by_revision: &BTreeMap<String, u64>,
    drift: Option<u64>,
) {
    // Replaced as a whole: a revision no reachable target is at any more is no series at all.
    flotilla_rpc::prometheus::replace_gauge_family_part(
        "flotilla_fleet_targets",
        FLEET_TARGETS_HELP,
        "revision",
        ("project", project.to_string()),
        by_revision.iter().map(|(rev, n)| (rev.clone(), *n as f64)),
    );
    let project = project.to_string();
    metrics::gauge!("flotilla_fleet_version_skew", "project" => project.clone())
        .set(by_revision.len() as f64);
    if let Some(drift) = drift {
        metrics::gauge!("flotilla_fleet_drift_targets", "project" => project).set(drift as f64);
    }
}

/// Rollouts by state: `states` holds the state of every rollout the store has.
pub fn set_rollouts(states: impl IntoIterator<Item = RolloutState>) {
    let states: Vec<RolloutState> = states.into_iter().collect();
    for state in ROLLOUT_STATES {
        let n = states.iter().filter(|s| **s == state).count();
        metrics::gauge!("flotilla_coordinator_rollouts", "state" => state.as_str()).set(n as f64);
    }
}

/// Set the rollout-targets gauge from a rollout's target records.
pub fn set_rollout_targets<'a>(targets: impl IntoIterator<Item = &'a TargetRecord>) {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in targets {
        *counts.entry(t.state.as_str()).or_default() += 1;
    }
    for state in TARGET_STATES {
        let n = counts.get(state.as_str()).copied().unwrap_or(0);
        metrics::gauge!("flotilla_coordinator_rollout_targets", "state" => state.as_str())
            .set(n as f64);
    }
}

/// Targets that reached the final `state` (`flotilla_coordinator_targets_finished_total`):
/// a run target when it ends, and the targets a rollout's planning leaves skipped (already
/// at the goal) or blocked, or its abort leaves skipped; none of those ever runs.
pub fn targets_finished(state: TargetState, n: usize) {
    if n > 0 {
        metrics::counter!("flotilla_coordinator_targets_finished_total", "state" => state.as_str())
            .increment(n as u64);
    }
}

/// One target moved from `from` to `to`.
pub fn target_transition(from: TargetState, to: TargetState) {
    if from == to {
        return;
    }
    metrics::gauge!("flotilla_coordinator_rollout_targets", "state" => from.as_str())
        .decrement(1.0);
    metrics::gauge!("flotilla_coordinator_rollout_targets", "state" => to.as_str()).increment(1.0);
}
