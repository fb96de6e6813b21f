//! The last state the coordinator saw of each target: replaced wholesale for every agent
//! that answers a fleet `Status`, and per target by the `MigrateFinished` event that closes
//! each successful Migrate. After a rollout the fleet gauges are recorded from here, so a
//! rollout costs no extra round of Status (and no catalog reads) once it ended: the agents
//! reported each target's state, under its migration lock, as the last step committed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_proto as pb;

use crate::fleet::AgentClient;

use super::snapshot::{FleetEntry, FleetSnapshot};

#[derive(Default)]
pub(crate) struct FleetView {
    entries: Mutex<BTreeMap<String, FleetEntry>>,
}

impl FleetView {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FleetEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fleet snapshot: for each agent that answered, its targets replace what was known of
    /// that agent (targets it no longer serves are forgotten); unreachable agents' targets
    /// keep their last known state.
    pub(crate) fn record_snapshot(&self, snap: &FleetSnapshot, answered: &[String]) {
        let mut entries = self.entries();
        entries.retain(|_, e| !answered.iter().any(|a| a == e.agent.id()));
        for e in &snap.targets {
            entries.insert(e.status.target_id.clone(), e.clone());
        }
    }

    /// One target's state as its Migrate reported it.
    pub(crate) fn record_target(&self, agent: &Arc<dyn AgentClient>, status: pb::TargetStatus) {
        self.entries().insert(
            status.target_id.clone(),
            FleetEntry {
                agent: agent.clone(),
                status,
            },
        );
    }

    /// Every known target, by id.
    pub(crate) fn targets(&self) -> Vec<FleetEntry> {
        self.entries().values().cloned().collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}

/// Revisions of a target that the graph lacks or whose checksum differs.
pub fn drift_of(graph: &flotilla_revision::Graph, e: &FleetEntry) -> Vec<String> {
    let Some(dialect) = e.dialect() else {
        return vec![];
    };
    e.status
        .applied
        .iter()
        .filter_map(|a| match graph.get(&a.revision) {
            None => Some(format!("{}: unknown revision", a.revision)),
            Some(r) if r.up_checksum(dialect) != a.checksum => {
                Some(format!("{}: checksum differs", a.revision))
            }
            Some(_) => None,
        })
        .collect()
}
