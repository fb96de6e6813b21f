//! What the engine reports to the metrics after a rollout or a store change: rollouts by
//! state (read from the store) and the fleet gauges from the fleet view, with the drift gauge
//! recomputed from the fingerprints a rollout's Migrates reported.

use std::collections::HashMap;

use flotilla_proto as pb;

use crate::metrics;
use crate::rollout::{TargetState, targets_prefix};

use super::Engine;

/// Rollouts by state, from the store.
pub(crate) async fn refresh_rollouts(engine: &Engine) {
    let Ok(list) = engine.list().await else {
        return;
    };
    metrics::set_rollouts(list.iter().map(|r| r.state));
}

/// The fleet gauges from the coordinator's last view of every target (after a rollout
/// ended: the planning snapshot updated by each Migrate's closing report), with no Status
/// round (only when nothing is known yet are the agents asked, one Status each). After a
/// rollout that migrated targets (`migrated_by`), the drift gauge is recomputed too: the
/// fingerprints the rollout's Migrates reported (with the wave gate on) are used as they are,
/// and only the other targets' catalogs are read (one Validate per agent and dialect). After
/// a rollout that changed nothing no catalog is read and the drift gauge keeps its value.
pub(crate) async fn record_fleet_view(
    engine: &Engine,
    graph: &flotilla_revision::Graph,
    migrated_by: Option<(&str, Option<HashMap<String, String>>)>,
) {
    if migrated_by.is_none()
        && let Some(by_revision) = engine.view.revision_counts()
    {
        // No drift gauge to recompute: the revisions are counted in the view, not copied.
        metrics::record_fleet_counts(engine.project(), &by_revision, None);
        return;
    }
    let entries = if engine.view.is_empty() {
        match engine.snapshot(false).await {
            Ok(snap) => snap.targets,
            Err(_) => return,
        }
    } else {
        engine.view.targets()
    };
    let Some((rollout, known)) = migrated_by else {
        let targets = fleet_targets(graph, entries);
        metrics::record_fleet(engine.project(), &targets, false);
        return;
    };
    // The succeeded targets' fingerprints: from the run's final records when it had them,
    // else from the store.
    let mut fingerprints = match known {
        Some(f) => f,
        None => succeeded_fingerprints(engine, rollout).await,
    };
    let unknown: Vec<super::snapshot::FleetEntry> = entries
        .iter()
        .filter(|e| !fingerprints.contains_key(&e.status.target_id))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        for t in engine.validate_fleet(graph, &unknown).await.targets {
            if t.error.is_empty() {
                fingerprints.insert(t.target_id, t.fingerprint);
            }
        }
    }
    drop(unknown);
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
    drop(fingerprints);
    let drifted = crate::drift::drifted(&observed);
    drop(observed);
    let mut targets = fleet_targets(graph, entries);
    for d in drifted {
        if let Some(t) = targets
            .iter_mut()
            .find(|t| t.status.as_ref().is_some_and(|s| s.target_id == d.target))
        {
            t.drift
                .push(format!("schema differs from {}", d.reference_target));
        }
    }
    metrics::record_fleet(engine.project(), &targets, true);
}

/// The fingerprints `rollout`'s succeeded targets reported, from the store: each record is
/// decoded for these two fields only and its bytes dropped as it is read.
async fn succeeded_fingerprints(engine: &Engine, rollout: &str) -> HashMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Reported {
        target_id: String,
        state: TargetState,
        #[serde(default)]
        fingerprint: String,
    }
    let Ok(listed) = engine.store.list(&targets_prefix(rollout)).await else {
        return HashMap::new();
    };
    listed
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice::<Reported>(&value).ok())
        .filter(|t| t.state == TargetState::Succeeded && !t.fingerprint.is_empty())
        .map(|t| (t.target_id, t.fingerprint))
        .collect()
}

/// The gauges' view of `entries`, which nothing else reads: their statuses move, not copied.
fn fleet_targets(
    graph: &flotilla_revision::Graph,
    entries: Vec<super::snapshot::FleetEntry>,
) -> Vec<pb::FleetTarget> {
    entries
        .into_iter()
        .map(|e| pb::FleetTarget {
            agent_id: e.agent.id().to_owned(),
            drift: super::view::drift_of(graph, &e),
            status: Some(e.status),
        })
        .collect()
}
