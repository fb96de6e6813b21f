//! The coordinator's Prometheus metrics: names and HELP texts ([`describe`]), the fleet
//! gauges derived from a fleet status (targets by revision, version skew, drift), rollouts
//! by state (refreshed from the store) and the current rollout's targets by state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use flotilla_proto as pb;

use crate::engine::Engine;
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

/// Revision label values set before, so a revision no target is at any more drops to 0.
static SEEN_REVISIONS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

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
        "flotilla_fleet_targets",
        Unit::Count,
        "Reachable targets by current revision (heads, comma-separated; base = none)"
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
    flotilla_agent::telemetry::describe_agent_metrics();
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
pub fn record_fleet(targets: &[pb::FleetTarget], schema_known: bool) {
    let mut by_revision: BTreeMap<String, u64> = BTreeMap::new();
    let mut drift = 0u64;
    for t in targets {
        let Some(s) = &t.status else { continue };
        if !s.error.is_empty() {
            continue;
        }
        let rev = if s.heads.is_empty() {
            "base".to_owned()
        } else {
            s.heads.join(",")
        };
        *by_revision.entry(rev).or_default() += 1;
        if !t.drift.is_empty() {
            drift += 1;
        }
    }
    let mut seen = SEEN_REVISIONS.lock().unwrap_or_else(|p| p.into_inner());
    for rev in seen.iter().filter(|r| !by_revision.contains_key(*r)) {
        metrics::gauge!("flotilla_fleet_targets", "revision" => rev.clone()).set(0.0);
    }
    for (rev, n) in &by_revision {
        metrics::gauge!("flotilla_fleet_targets", "revision" => rev.clone()).set(*n as f64);
        seen.insert(rev.clone());
    }
    metrics::gauge!("flotilla_fleet_version_skew").set(by_revision.len() as f64);
    if schema_known {
        metrics::gauge!("flotilla_fleet_drift_targets").set(drift as f64);
    }
}

/// Rollouts by state, from the store.
pub async fn refresh_rollouts(engine: &Engine) {
    let Ok(list) = engine.list().await else {
        return;
    };
    for state in ROLLOUT_STATES {
        let n = list.iter().filter(|r| r.state == state).count();
        metrics::gauge!("flotilla_coordinator_rollouts", "state" => state.as_str()).set(n as f64);
    }
}

/// The fleet gauges from the coordinator's last view of every target (after a rollout
/// ended: the planning snapshot updated by each Migrate's closing report), with no Status
/// round (only when nothing is known yet are the agents asked, one Status each). After a
/// rollout that migrated targets (`migrated_by`), the drift gauge is recomputed too: the
/// fingerprints the rollout's Migrates reported (with the wave gate on) are used as they are,
/// and only the other targets' catalogs are read (one Validate per agent and dialect). After
/// a rollout that changed nothing no catalog is read and the drift gauge keeps its value.
pub async fn record_fleet_view(engine: &Engine, migrated_by: Option<&str>) {
    let entries = if engine.view.is_empty() {
        match engine.snapshot(false).await {
            Ok(snap) => snap.targets,
            Err(_) => return,
        }
    } else {
        engine.view.targets()
    };
    let mut targets: Vec<pb::FleetTarget> = entries
        .iter()
        .map(|e| pb::FleetTarget {
            agent_id: e.agent.id().to_owned(),
            drift: crate::api::drift_of(engine, e),
            status: Some(e.status.clone()),
        })
        .collect();
    let Some(rollout) = migrated_by else {
        record_fleet(&targets, false);
        return;
    };
    let mut fingerprints: std::collections::HashMap<String, String> =
        match engine.get(rollout).await {
            Ok((_, records)) => records
                .into_iter()
                .filter(|t| t.state == TargetState::Succeeded && !t.fingerprint.is_empty())
                .map(|t| (t.target_id, t.fingerprint))
                .collect(),
            Err(_) => Default::default(),
        };
    let unknown: Vec<crate::engine::snapshot::FleetEntry> = entries
        .iter()
        .filter(|e| !fingerprints.contains_key(&e.status.target_id))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        for t in engine.validate_fleet(&unknown).await.targets {
            if t.error.is_empty() {
                fingerprints.insert(t.target_id, t.fingerprint);
            }
        }
    }
    let observed: Vec<crate::drift::Observed> = entries
        .iter()
        .filter_map(|e| {
            Some(crate::drift::Observed {
                target: e.status.target_id.clone(),
                dialect: e.dialect()?.as_str().to_owned(),
                applied: e
                    .status
                    .applied
                    .iter()
                    .map(|a| a.revision.clone())
                    .collect(),
                fingerprint: fingerprints.get(&e.status.target_id)?.clone(),
                canary: e.is_canary(),
            })
        })
        .collect();
    for d in crate::drift::drifted(&observed) {
        if let Some(t) = targets
            .iter_mut()
            .find(|t| t.status.as_ref().is_some_and(|s| s.target_id == d.target))
        {
            t.drift
                .push(format!("schema differs from {}", d.reference_target));
        }
    }
    record_fleet(&targets, true);
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

/// One target moved from `from` to `to`.
pub fn target_transition(from: TargetState, to: TargetState) {
    if from == to {
        return;
    }
    metrics::gauge!("flotilla_coordinator_rollout_targets", "state" => from.as_str())
        .decrement(1.0);
    metrics::gauge!("flotilla_coordinator_rollout_targets", "state" => to.as_str()).increment(1.0);
}
